"""Planned changes lose nothing: rolling updates and scale-down under HTTP load."""
import threading
import time

import httpx
import pytest

import dserve as serve
from conftest import proxy_url, wait_for

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


class Load:
    def __init__(self, url, threads=6):
        self.url = url
        self.results, self.failures = [], []
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        with httpx.Client(timeout=30) as client:
            while not self.stop_flag.is_set():
                try:
                    r = client.get(self.url)
                    (self.results if r.status_code == 200 else self.failures).append(r.text)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join()


def test_rolling_update_and_scale_down_lose_no_request(serve_instance):
    serve.run(make("v1", 2).bind(), name="svc", route_prefix="/svc")
    load = Load(f"{proxy_url()}/svc")
    wait_for(lambda: len(load.results) > 20, what="load running")
    serve.run(make("v2", 3).bind(), name="svc", route_prefix="/svc")  # new code: rolling update, scale up
    wait_for(lambda: load.results[-20:] == ["v2"] * 20, timeout=30, what="v2 serving")
    serve.run(make("v2", 1).bind(), name="svc", route_prefix="/svc")  # same code: scale down 3 -> 1
    wait_for(lambda: serve.status().applications["svc"].deployments["Svc"].replica_states == {"RUNNING": 1},
             timeout=30, what="scaled down to 1")
    time.sleep(0.5)
    load.stop()
    assert load.failures == []
    assert {"v1", "v2"} <= set(load.results)
    serve.delete("svc")
