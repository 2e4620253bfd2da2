"""Ray Serve behaviours of the control API: a proxy that cannot bind its port, ``serve.*`` control
calls from inside replicas (async methods included), event-loop use in a sync constructor, rolling
updates of ``max_ongoing_requests`` and ``last_deployed_time_s``."""
from __future__ import annotations

import asyncio
import socket
import time
import warnings

import pytest

import dserve as serve
from dserve.schema import ProxyStatus
from conftest import free_port, proxy_details, wait_for


def _occupied_port() -> socket.socket:
    """A plain listening socket on 127.0.0.1 holding a port nobody else may take."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    return blocker


def test_a_proxy_that_cannot_bind_its_port_warns_the_caller_and_says_why_in_status():
    # Ray Serve's proxy fails its readiness check with the port in its error and shows UNHEALTHY in
    # serve.status().proxies; serve.start itself returns. dserve returns too, warns the caller with
    # the reason, and keeps the reason in serve.status().proxy_messages (the proxy is retried).
    first, second = _occupied_port(), _occupied_port()
    busy, busy2 = first.getsockname()[1], second.getsockname()[1]
    try:
        with pytest.warns(RuntimeWarning) as caught:  # a fresh instance: the embedded cluster starts here
            serve.start(http_options={"port": busy})
        worker = proxy_details()["127.0.0.1"]["worker"]
        expected = f"HTTP proxy could not start on {worker}: port {busy} on 127.0.0.1 is already in use"
        assert [str(w.message) for w in caught] == [f"dserve: the proxy on 127.0.0.1 is UNHEALTHY: {expected}"]
        assert caught[0].filename == __file__  # it points at the caller's line
        status = serve.status()
        assert status.proxies == {"127.0.0.1": ProxyStatus.UNHEALTHY}
        assert status.proxy_messages == {"127.0.0.1": expected}

        with pytest.warns(RuntimeWarning) as caught:  # a running instance given another taken port
            serve.start(http_options={"port": busy2})
        expected = expected.replace(f"port {busy} ", f"port {busy2} ")
        assert [str(w.message) for w in caught] == [f"dserve: the proxy on 127.0.0.1 is UNHEALTHY: {expected}"]
        assert serve.status().proxy_messages == {"127.0.0.1": expected}
    finally:
        first.close()
        second.close()
    try:
        port = free_port()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a proxy that starts: no warning
            serve.start(http_options={"port": port})
        status = serve.status()
        assert (status.proxies, status.proxy_messages) == ({"127.0.0.1": ProxyStatus.HEALTHY}, {})
    finally:
        serve.shutdown()


def test_the_status_table_shows_why_a_proxy_is_unhealthy():
    from dserve.status_view import status_table

    tree = {"applications": {}, "proxies": {"127.0.0.1": "UNHEALTHY", "127.0.0.2": "HEALTHY"},
            "proxy_messages": {"127.0.0.1": "HTTP proxy could not start on tcp://127.0.0.1:1: port 8 on "
                                            "127.0.0.1 is already in use\nsecond line"}}
    assert status_table(tree).splitlines()[3:] == [
        "PROXY      STATUS     MESSAGE",
        "127.0.0.1  UNHEALTHY  HTTP proxy could not start on tcp://127.0.0.1:1: port 8 on 127.0.0.1 is already in use …",
        "127.0.0.2  HEALTHY",
    ]


# ---- serve.* control calls from inside replicas -------------------------------------------------

@serve.deployment
class Echo:
    def __call__(self, x):
        return f"echo {x}"


@serve.deployment
class Operator:
    """Ray users call serve.* synchronously in replicas, in async methods too."""

    async def __call__(self):
        return {name: app.status for name, app in serve.status().applications.items()}

    def sync_status(self):
        return {name: app.status for name, app in serve.status().applications.items()}

    async def call_app(self, name, x):
        return await serve.get_app_handle(name).remote(x)

    async def call_deployment(self, app, deployment, x):
        return await serve.get_deployment_handle(deployment, app).remote(x)

    async def missing_app(self):
        try:
            serve.get_app_handle("nope")
        except Exception as exc:  # noqa: BLE001 - returned for the test to pin
            return type(exc).__name__, str(exc)

    async def delete(self, name):
        serve.delete(name)

    async def deploy_and_call(self, name, x):
        handle = serve.run(Echo.bind(), name=name, route_prefix=None)
        return await handle.remote(x)


@pytest.fixture(scope="module")
def operator(serve_instance):
    serve.run(Echo.bind(), name="victim", route_prefix="/victim")
    handle = serve.run(Operator.bind(), name="probe", route_prefix="/probe")
    yield handle
    for name in list(serve.status().applications):
        serve.delete(name)


def test_serve_status_from_an_async_replica_method(operator):
    assert operator.remote().result(timeout_s=30) == {"victim": "RUNNING", "probe": "RUNNING"}
    assert operator.sync_status.remote().result(timeout_s=30) == {"victim": "RUNNING", "probe": "RUNNING"}


def test_handles_from_an_async_replica_method(operator):
    assert operator.call_app.remote("victim", 1).result(timeout_s=30) == "echo 1"
    assert operator.call_deployment.remote("victim", "Echo", 2).result(timeout_s=30) == "echo 2"
    assert operator.missing_app.remote().result(timeout_s=30) == (
        "RayServeException", "Application 'nope' does not exist.")


def test_serve_run_and_delete_from_an_async_replica_method(operator):
    assert operator.deploy_and_call.remote("child", 3).result(timeout_s=60) == "echo 3"
    assert serve.status().applications["child"].status == "RUNNING"
    assert operator.delete.remote("victim").result(timeout_s=30) is None
    wait_for(lambda: "victim" not in serve.status().applications, timeout=30, what="victim deleted")
    assert operator.remote().result(timeout_s=30) == {"probe": "RUNNING", "child": "RUNNING"}


# ---- a sync constructor finds the replica's event loop -------------------------------------------

@serve.deployment
class Ticker:
    def __init__(self):
        self.ticks = 0
        self.seen_in_task = None
        self.task = asyncio.get_running_loop().create_task(self.tick())
        self.helper = asyncio.create_task(self.note_context())  # asyncio's own helper, too
        self.later = []
        asyncio.get_running_loop().call_later(0.01, self.later.append, "called later")

    async def tick(self):
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def note_context(self):
        self.seen_in_task = serve.get_replica_context().deployment

    async def __call__(self):
        deadline = time.monotonic() + 20
        while self.ticks < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {"ticks >= 3": self.ticks >= 3, "task running": not self.task.done(),
                "same loop": self.task.get_loop() is asyncio.get_running_loop(),
                "helper saw": self.seen_in_task, "later": self.later}


def test_a_sync_constructor_can_create_tasks_on_the_replica_loop(operator):
    handle = serve.run(Ticker.bind(), name="ticker", route_prefix=None)
    assert handle.remote().result(timeout_s=30) == {
        "ticks >= 3": True, "task running": True, "same loop": True, "helper saw": "Ticker",
        "later": ["called later"]}
    serve.delete("ticker")
