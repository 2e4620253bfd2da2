"""Soak: tens of thousands of HTTP requests, zero errors, bounded memory."""
import asyncio
import os

import httpx
import psutil
import pytest

import dserve as serve
from conftest import proxy_url

pytestmark = pytest.mark.slow

TOTAL = 20_000
CONCURRENCY = 16


@serve.deployment(num_replicas=2)
class Echo:
    async def __call__(self, request):
        return {"n": int(request.query_params["n"])}


def worker_rss():
    from distributed import Client
    from dserve.runtime import current_runtime

    with Client(current_runtime().scheduler_address) as client:
        pids = client.run(os.getpid)
    return sum(psutil.Process(pid).memory_info().rss for pid in pids.values())


async def drive(url, total):
    errors = 0
    counter = iter(range(total))

    async def one(client):
        nonlocal errors
        for n in counter:
            r = await client.get(url, params={"n": n})
            if r.status_code != 200 or r.json() != {"n": n}:
                errors += 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*[one(client) for _ in range(CONCURRENCY)])
    return errors


def test_soak_zero_errors_bounded_memory(serve_instance):
    serve.run(Echo.bind(), name="soak", route_prefix="/soak")
    url = f"{proxy_url()}/soak"
    assert asyncio.run(drive(url, 2_000)) == 0  # warm-up
    before = worker_rss()
    errors = asyncio.run(drive(url, TOTAL))
    after = worker_rss()
    assert errors == 0
    growth = (after - before) / before
    print(f"soak: {TOTAL} requests, RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB ({growth:+.1%})")
    assert growth < 0.05
    assert pending_requests() == 0  # no bookkeeping left behind per request


def pending_requests():
    from distributed import Client
    from dserve.runtime import current_runtime

    def count():
        from dserve.runtime import current_runtime as here

        runtime = here()
        return sum(len(c._pending) for c in runtime.connections.values()) if runtime else 0

    with Client(current_runtime().scheduler_address) as client:
        return sum(client.run(count).values())
