"""Planned changes lose nothing: rolling updates and scale-down under HTTP load."""
import pytest

import dserve as serve
from conftest import HTTPLoad, proxy_url, wait_for

pytestmark = pytest.mark.slow


def make(version, replicas):
    @serve.deployment(name="Svc", num_replicas=replicas, graceful_shutdown_wait_loop_s=0.1,
                      graceful_shutdown_timeout_s=10)
    class Svc:
        async def __call__(self, request):
            import asyncio

            await asyncio.sleep(0.05)  # requests are in flight while replicas change
            return version

    return Svc


def test_rolling_update_and_scale_down_lose_no_request(clean):
    serve.run(make("v1", 2).bind(), name="svc", route_prefix="/svc")
    load = HTTPLoad(f"{proxy_url()}/svc", threads=6)
    wait_for(lambda: len(load.results) > 20, what="load running")
    serve.run(make("v2", 3).bind(), name="svc", route_prefix="/svc")  # new code: rolling update, scale up
    wait_for(lambda: load.results[-20:] == ["v2"] * 20, timeout=30, what="v2 serving")
    serve.run(make("v2", 1).bind(), name="svc", route_prefix="/svc")  # same code: scale down 3 -> 1
    wait_for(lambda: serve.status().applications["svc"].deployments["Svc"].replica_states == {"RUNNING": 1},
             timeout=30, what="scaled down to 1")
    after = len(load.results)
    wait_for(lambda: len(load.results) >= after + 20, what="requests served by the one remaining replica")
    load.stop()
    assert load.failures == []
    assert set(load.results) == {"v1", "v2"}
    assert load.results[-20:] == ["v2"] * 20
