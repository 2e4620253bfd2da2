"""HTTPOptions: request timeout, root_path, an occupied port."""
import asyncio
import socket

import httpx
import pytest

import dserve as serve
from conftest import free_port, proxy_details, wait_for


@pytest.fixture
def own_instance():
    """A dserve instance of this test's own: the tests change its proxy options."""
    serve.start(http_options={"port": free_port()})
    yield serve
    serve.shutdown()


@serve.deployment
class Sleepy:
    async def __call__(self, request):
        await asyncio.sleep(float(request.query_params.get("s", "0")))
        return "awake"


def test_request_timeout_is_408(own_instance):
    port = free_port()
    serve.start(http_options={"port": port, "request_timeout_s": 0.5})
    serve.run(Sleepy.bind(), name="sleepy", route_prefix="/sleepy")
    r = httpx.get(f"http://127.0.0.1:{port}/sleepy", params={"s": 3}, timeout=10)
    assert (r.status_code, r.text) == (408, f"Request {r.headers['x-request-id']} timed out after 0.5s.")
    r = httpx.get(f"http://127.0.0.1:{port}/sleepy", timeout=10)
    assert (r.status_code, r.text) == (200, "awake")


def test_root_path(own_instance):
    port = free_port()
    serve.start(http_options={"port": port, "root_path": "/base"})
    serve.run(Sleepy.bind(), name="sleepy", route_prefix="/sleepy")
    r = httpx.get(f"http://127.0.0.1:{port}/base/sleepy", timeout=10)
    assert (r.status_code, r.text) == (200, "awake")


def test_port_in_use_gives_a_status_message_not_a_dead_worker(own_instance):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        serve.start(http_options={"port": busy})
        details = wait_for(lambda: [d for d in proxy_details().values() if d["status"] == "UNHEALTHY"],
                           what="an unhealthy proxy")
        assert "already in use" in details[0]["message"]
        # the worker still hosts replicas
        serve.run(Sleepy.bind(), name="sleepy2", route_prefix="/s2")
        assert serve.status().applications["sleepy2"].status == "RUNNING"
    finally:
        blocker.close()
    port = free_port()
    serve.start(http_options={"port": port})
    assert list(serve.status().proxies.values()) == ["HEALTHY"]
    assert httpx.get(f"http://127.0.0.1:{port}/s2", timeout=10).text == "awake"


def test_proxy_location_disabled_and_head_only(own_instance):
    serve.start(http_options={"port": free_port()}, proxy_location="Disabled")
    assert serve.status().proxies == {}
    port = free_port()
    serve.start(http_options={"port": port}, proxy_location="HeadOnly")
    details = wait_for(lambda: [d for d in proxy_details().values() if d["status"] == "HEALTHY"],
                       what="a proxy on the scheduler's host")
    assert len(details) == 1 and details[0]["port"] == port
