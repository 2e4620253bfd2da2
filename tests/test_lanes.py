"""Handle calls from a caller's own event loop: lanes and calls started without a task.

A loop that makes ``LANE_AFTER_CALLS`` calls gets routers and connections of its own
(``routing.lane``); a unary call made on its router's loop is sent at once and settled
by the reply (``routing.started_call``). These tests check what that path must keep:
the same answers, replica-set updates, the limits (queue, backpressure), cancellation
reaching the replica, typed errors, and no leftovers once the loop is gone.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

import dserve as serve
from dserve.exceptions import BackPressureError, RequestCancelledError
from dserve.routing.lane import LANE_AFTER_CALLS
from dserve.routing.started_call import CallFuture
from dserve.runtime import current_runtime

from conftest import wait_for


@serve.deployment
class Echo:
    def __call__(self, x: int) -> dict:
        return {"x": x, "pid": os.getpid()}


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Gate:
    """Holds each call until the file ``release`` exists; writes a line to ``log`` for each
    call that enters and each that is cancelled while held (the test reads it: the
    replica's slot is the very thing under test, so it cannot be asked)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def _log(self, what: str) -> None:
        with open(os.path.join(self.folder, "log"), "a") as f:
            f.write(what + "\n")

    async def __call__(self, hold: bool = True) -> str:
        self._log("entered")
        try:
            while hold and not os.path.exists(os.path.join(self.folder, "release")):
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self._log("cancelled")
            raise
        return "through"


def _lines(folder) -> list:
    path = folder / "log"
    return path.read_text().split() if path.exists() else []


async def _warm(handle: serve.handle.DeploymentHandle, *args: object) -> None:
    """Make enough calls on this loop that it gets its lane."""
    for _ in range(LANE_AFTER_CALLS):
        await handle.remote(*args)


def test_a_busy_loop_routes_its_own_calls_with_the_same_answers(clean):
    handle = serve.run(Echo.bind(), name="echo", route_prefix=None)
    runtime = current_runtime()

    async def main() -> tuple:
        results = [await handle.remote(i) for i in range(LANE_AFTER_CALLS + 20)]
        burst = await asyncio.gather(*[handle.remote(i) for i in range(200)])
        lane = runtime._lanes._lanes[asyncio.get_running_loop()]
        router = lane.routers[("echo", "Echo")]
        return results, burst, router.num_requests, type(handle.remote(0)._future)

    results, burst, lane_requests, future_type = asyncio.run(main())
    assert [r["x"] for r in results] == list(range(LANE_AFTER_CALLS + 20))
    assert [r["x"] for r in burst] == list(range(200))
    # the 32nd call made the lane; it and every later call went through it
    assert lane_requests == 20 + 1 + 200
    assert future_type is CallFuture


def test_a_lane_follows_replica_set_changes(clean):
    handle = serve.run(Echo.bind(), name="echo", route_prefix=None)

    async def main() -> set:
        await _warm(handle, 0)
        lane = current_runtime()._lanes._lanes[asyncio.get_running_loop()]
        router = lane.routers[("echo", "Echo")]
        assert len(router.slots) == 1
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: serve.run(Echo.options(num_replicas=2).bind(), name="echo", route_prefix=None))
        deadline = time.monotonic() + 30
        while len([s for s in router.slots if not s.gone]) != 2:
            assert time.monotonic() < deadline, "the lane never saw the second replica"
            await asyncio.sleep(0.05)
        pids = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.update(r["pid"] for r in await asyncio.gather(*[handle.remote(i) for i in range(20)]))
        return pids

    assert len(asyncio.run(main())) == 2


def test_a_lane_keeps_the_queue_limit_and_cancellation_reaches_the_replica(clean, tmp_path):
    handle = serve.run(Gate.bind(str(tmp_path)), name="gate", route_prefix=None)

    async def main() -> str:
        await _warm(handle, False)
        first = handle.remote()  # runs (max_ongoing_requests=1) and is held
        second = handle.remote()  # queued (max_queued_requests=1)
        with pytest.raises(BackPressureError):
            await handle.remote()
        deadline = time.monotonic() + 10
        while _lines(tmp_path).count("entered") < LANE_AFTER_CALLS + 1:
            assert time.monotonic() < deadline, "the held call never started"
            await asyncio.sleep(0.02)
        first.cancel()
        with pytest.raises(RequestCancelledError):
            await first
        deadline = time.monotonic() + 10
        while "cancelled" not in _lines(tmp_path):
            assert time.monotonic() < deadline, "the replica never saw the cancellation"
            await asyncio.sleep(0.02)
        (tmp_path / "release").touch()
        return await asyncio.wait_for(second, 10)

    assert asyncio.run(main()) == "through"  # the queued call took the slot the cancelled one freed
    assert _lines(tmp_path).count("cancelled") == 1
    assert _lines(tmp_path).count("entered") == LANE_AFTER_CALLS + 2


def test_a_closed_loop_leaves_no_follower_behind(clean):
    handle = serve.run(Echo.bind(), name="echo", route_prefix=None)
    runtime = current_runtime()

    async def main() -> None:
        await _warm(handle, 0)

    asyncio.run(main())
    home = runtime.routers[("echo", "Echo")]
    wait_for(lambda: len(home.followers) == 1 or not home.followers, timeout=10)
    home.update(home.snapshot)  # what the next replica-set change does: the dead loop is dropped
    wait_for(lambda: len(home.followers) == 0, timeout=10, what="the closed loop's router dropped")
    assert handle.remote(7).result()["x"] == 7  # sync callers are unaffected


@serve.deployment(max_ongoing_requests=10)
class Mortal:
    async def __call__(self, hold: bool) -> int:
        if hold:
            await asyncio.sleep(60)
        return os.getpid()

    def die(self) -> None:
        os._exit(1)


def test_calls_in_flight_on_a_lane_fail_typed_when_the_replica_process_dies(clean):
    from dserve.exceptions import ActorDiedError

    handle = serve.run(Mortal.bind(), name="mortal", route_prefix=None)

    async def main() -> tuple:
        await _warm(handle, False)
        pid = await handle.remote(False)
        held = [handle.remote(True) for _ in range(3)]
        await asyncio.sleep(0)  # sent
        fatal = handle.die.remote()
        started = time.monotonic()
        outcomes = await asyncio.wait_for(asyncio.gather(*held, fatal, return_exceptions=True), 30)
        return outcomes, time.monotonic() - started, pid

    outcomes, took, pid = asyncio.run(main())
    assert [type(o) for o in outcomes] == [ActorDiedError] * 4
    assert took < 30
    # a replacement replica answers, in another process
    assert wait_for(lambda: handle.remote(False).result(timeout_s=5) != pid, timeout=60)


@serve.deployment(max_ongoing_requests=1, autoscaling_config={
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 0.1,
    "downscale_delay_s": 600, "look_back_period_s": 0.5})
class Slow:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.05)
        return x


def test_a_lanes_queue_reaches_the_autoscaler(clean):
    """One replica, one call at a time: only the queue in the caller's lane can ask for a second."""
    handle = serve.run(Slow.bind(), name="slow", route_prefix=None)

    def running() -> int:
        return serve.status().applications["slow"].deployments["Slow"].replica_states.get("RUNNING", 0)

    async def main() -> int:
        await _warm(handle, 0)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            results = await asyncio.gather(*[handle.remote(i) for i in range(10)])
            assert results == list(range(10))
            if await loop.run_in_executor(None, running) == 2:
                return 2
        return await loop.run_in_executor(None, running)

    assert asyncio.run(main()) == 2
