"""Proxy lifecycle: HTTP and gRPC fail independently, a proxy whose server died is
restarted by the controller's health check, /-/healthz says whether the proxy is
ready, and concurrent reconfigurations leave no proxy running unknown."""
import asyncio
import threading
import time

import httpx
import pytest
from distributed import Client

import dserve as serve
from conftest import free_port, proxy_details, wait_for
from dserve.proxy.http_proxy import HTTPProxy
from dserve.proxy.server import PROXY_PLUGIN_NAME
from dserve.runtime import current_runtime


@serve.deployment
class Hello:
    def __call__(self, request):
        return "hello"


def healthy(port=None):
    return [p for p in proxy_details().values() if p["status"] == "HEALTHY" and port in (None, p["port"])]


def proxy_id(dask_worker):
    """A token naming the worker's proxy object (not ``id()``: a stopped proxy is freed at once
    and its replacement may be allocated at the same address)."""
    import uuid

    proxy = dask_worker.plugins[PROXY_PLUGIN_NAME].proxy
    if proxy is None:
        return None
    if not hasattr(proxy, "test_token"):
        proxy.test_token = uuid.uuid4().hex
    return proxy.test_token


def on_workers(fn):
    """Run ``fn(dask_worker)`` on every worker; {address: result}."""
    with Client(current_runtime().scheduler_address, timeout=30) as client:
        return client.run(fn)


def test_a_bad_grpc_servicer_leaves_http_serving(serve_instance):
    port, grpc_port = free_port(), free_port()
    serve.start(http_options={"port": port},
                grpc_options={"port": grpc_port, "grpc_servicer_functions": ["nope:add"]})
    try:
        details = wait_for(lambda: healthy(port), what="a healthy HTTP proxy")[0]
        assert details["grpc_status"] == "UNHEALTHY"
        assert details["grpc_message"] == "gRPC proxy could not start: ModuleNotFoundError(\"No module named 'nope'\")"
        assert details["grpc_port"] is None
        assert list(serve.status().proxies.values()) == ["HEALTHY"]
        serve.run(Hello.bind(), name="hello", route_prefix="/hello")
        assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10).text == "hello"
    finally:
        serve.start(http_options={"port": port}, grpc_options={"port": grpc_port, "grpc_servicer_functions": []})
    details = wait_for(lambda: healthy(port), what="a healthy HTTP proxy without gRPC")[0]
    assert (details["grpc_status"], details["grpc_message"]) == (None, "")


@pytest.mark.parametrize("death", ["exit", "cancel"])
def test_a_proxy_whose_server_died_is_restarted(serve_instance, death):
    port = free_port()
    serve.start(http_options={"port": port})
    serve.run(Hello.bind(), name="hello", route_prefix="/hello")
    wait_for(lambda: healthy(port), what="a healthy proxy")

    def end_uvicorn(dask_worker):  # the server task ends; nobody tells the controller
        proxy = dask_worker.plugins[PROXY_PLUGIN_NAME].proxy
        if proxy is not None:
            if death == "exit":
                proxy.server.should_exit = True
            else:
                proxy.server.task.cancel()
        return proxy_id(dask_worker)

    dead = [i for i in on_workers(end_uvicorn).values() if i is not None]
    assert len(dead) == 1
    wait_for(lambda: dead[0] not in on_workers(proxy_id).values(), timeout=30, what="the proxy restarted")
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/hello", timeout=5).text == "hello", timeout=30,
             what="the restarted proxy serving")
    assert list(serve.status().proxies.values()) == ["HEALTHY"]


def test_healthz_is_503_until_routes_arrive_and_while_draining(serve_instance):
    proxy = HTTPProxy(current_runtime())

    async def healthz():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            r = await client.get("/-/healthz")
            return r.status_code, r.text

    assert asyncio.run(healthz()) == (503, "Route table is not populated yet.")
    proxy.update_routes({"routes": {}})
    assert asyncio.run(healthz()) == (200, "success")
    proxy.draining = True
    assert asyncio.run(healthz()) == (503, "This node is being drained.")


def test_healthz_of_a_started_proxy_is_200(serve_instance):
    port = free_port()
    serve.start(http_options={"port": port})
    wait_for(lambda: healthy(port), what="a healthy proxy")
    r = httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10)
    assert (r.status_code, r.text) == (200, "success")


def running_proxies():
    """{worker address: port} of the proxies the workers actually run."""
    def port_of(dask_worker):
        proxy = dask_worker.plugins[PROXY_PLUGIN_NAME].proxy
        return None if proxy is None else proxy.port

    return {addr: port for addr, port in on_workers(port_of).items() if port is not None}


def test_concurrent_starts_leave_no_proxy_unknown(serve_instance):
    for round_ in range(4):
        ports = [free_port(), free_port()]
        calls = [dict(http_options={"port": ports[0]}, proxy_location="EveryNode"),
                 dict(http_options={"port": ports[1]}, proxy_location="Disabled")]
        if round_ % 2:
            calls.reverse()
        threads = [threading.Thread(target=serve.start, kwargs=kwargs) for kwargs in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: all(p["status"] == "HEALTHY" for p in proxy_details().values()), what="proxies settled")
        deadline = time.monotonic() + 2  # starts in flight would land within this
        while time.monotonic() < deadline:
            known = {p["worker"]: p["port"] for p in proxy_details().values()}
            assert running_proxies() == known
    serve.start(http_options={"port": free_port()}, proxy_location="EveryNode")
