"""Autoscaling of running deployments: Ray's default policy, a custom policy, scale to zero."""
import asyncio
import os
import sys
import threading
import time

import httpx
import pytest

import dserve as serve
from conftest import APPS_DIR, proxy_url, wait_for



def running(app, dep):
    return serve.status().applications[app].deployments[dep].replica_states.get("RUNNING", 0)


def autoscaling_info(app, dep):
    """The controller's autoscaling view of one deployment (target, last decision)."""
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    return _sync(rt, rt.rpc("dserve_status"))["applications"][app]["deployments"][dep]["autoscaling"]


@serve.deployment(
    max_ongoing_requests=10,
    autoscaling_config={"min_replicas": 1, "max_replicas": 10, "target_ongoing_requests": 2,
                        "upscale_delay_s": 2.0, "downscale_delay_s": 1.0, "look_back_period_s": 0.5},
)
class Held:
    async def __call__(self, gate=None):
        while gate is not None and not os.path.exists(gate):  # in flight until the test opens the gate
            await asyncio.sleep(0.01)
        return "ok"


def test_default_policy_scales_to_load_over_target_after_the_delay(clean, tmp_path):
    h = serve.run(Held.bind(), name="held")
    assert running("held", "Held") == 1
    gate = str(tmp_path / "gate")
    start = time.monotonic()
    held = [h.remote(gate) for _ in range(8)]  # 8 requests in flight / target_ongoing_requests 2 = 4 replicas
    wait_for(lambda: running("held", "Held") == 4, timeout=30, what="scale up to 4")
    assert time.monotonic() - start >= 2.0  # not before upscale_delay_s
    info = autoscaling_info("held", "Held")
    assert info["target_replicas"] == 4
    assert info["last_decision"].startswith("scaled up from 1 to 4: average load 8.00")
    open(gate, "w").close()
    assert [r.result(timeout_s=30) for r in held] == ["ok"] * 8
    wait_for(lambda: running("held", "Held") == 1, timeout=30, what="scale back down to min_replicas")
    assert autoscaling_info("held", "Held")["last_decision"].startswith("scaled down from 4 to 1")


@pytest.fixture
def policies():
    """tests/apps on sys.path, where the controller (in this process) imports custom policies from."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(APPS_DIR)
        yield
    sys.modules.pop("autoscale_policies", None)


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 5,
                                      "policy": "autoscale_policies:three_replicas"})
def steady(request=None):
    return "ok"


def test_custom_policy_sets_the_replica_count(policies, clean):
    h = serve.run(steady.bind(), name="custom")
    wait_for(lambda: running("custom", "steady") == 3, timeout=30, what="three replicas")
    dep = serve.status().applications["custom"].deployments["steady"]
    assert dep.replica_states == {"RUNNING": 3}
    info = autoscaling_info("custom", "steady")
    assert (info["target_replicas"], info["last_decision"]) == (3, "custom policy chose 3 (was 1)")
    assert h.remote().result(timeout_s=30) == "ok"


@serve.deployment(
    max_ongoing_requests=10,
    autoscaling_config={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                        "upscale_delay_s": 0.2, "downscale_delay_s": 1.0, "look_back_period_s": 1.0},
)
class Busy:
    async def __call__(self, seconds=0.2):
        await asyncio.sleep(seconds)
        return "ok"


def drive(handle, workers, seconds, errors, done):
    stop = time.monotonic() + seconds

    def loop():
        while time.monotonic() < stop:
            try:
                handle.remote().result(timeout_s=30)
                done.append(1)
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def test_replicas_follow_load_and_lose_no_request(clean):
    h = serve.run(Busy.bind(), name="busy")
    assert running("busy", "Busy") == 1
    errors, done = [], []
    threads = drive(h, 6, 6.0, errors, done)
    wait_for(lambda: running("busy", "Busy") == 3, timeout=20, what="scale up to 3")
    info = autoscaling_info("busy", "Busy")
    assert info["target_replicas"] == 3 and "scaled up" in info["last_decision"]
    for t in threads:
        t.join()
    wait_for(lambda: running("busy", "Busy") == 1, timeout=30, what="scale back down to 1")
    assert errors == [] and len(done) > 0

    def settled():  # the stopped replicas drain first: DOWNSCALING until they are gone
        dep = serve.status().applications["busy"].deployments["Busy"]
        return (dep.status, dep.status_trigger) == ("HEALTHY", "DOWNSCALE_COMPLETED")
    wait_for(settled, timeout=30, what="HEALTHY after the downscale")


@serve.deployment(
    autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1,
                        "upscale_delay_s": 0.1, "downscale_delay_s": 0.5, "downscale_to_zero_delay_s": 0.5,
                        "look_back_period_s": 0.5},
)
def sleepy(request=None):
    return "awake"


def test_scale_to_zero_and_cold_start_over_handle_and_http(clean):
    h = serve.run(sleepy.bind(), name="zero", route_prefix="/zero")
    assert running("zero", "sleepy") == 0
    start = time.monotonic()
    assert h.remote().result(timeout_s=30) == "awake"
    assert time.monotonic() - start < 10
    wait_for(lambda: running("zero", "sleepy") == 0, timeout=30, what="scale to zero")
    r = httpx.get(f"{proxy_url()}/zero", timeout=30)
    assert (r.status_code, r.text) == (200, "awake")
