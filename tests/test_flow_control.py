"""Streams are flow controlled end to end: a slow reader pauses the producer in the replica.

The replica counts what it has produced; a reader that stops after a few items
must leave the producer at most a bounded window ahead (handle streams, HTTP
streaming responses), instead of queues growing without bound in between.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from starlette.responses import StreamingResponse

import dserve as serve
from dserve.config import STREAM_WINDOW
from conftest import proxy_url, wait_for

CHUNK = b"x" * 65536
TOTAL = 2000  # 128 MiB if it all flowed


@serve.deployment(max_ongoing_requests=4)
class Producer:
    def __init__(self):
        self.produced = 0

    async def items(self, n: int):
        for _ in range(n):
            self.produced += 1
            yield CHUNK

    def count(self) -> int:
        return self.produced

    async def __call__(self, request):
        async def body():
            for _ in range(TOTAL):
                self.produced += 1
                yield CHUNK
        return StreamingResponse(body(), media_type="application/octet-stream")


@pytest.fixture
def producer(serve_instance):
    handle = serve.run(Producer.bind(), name="flow", route_prefix="/flow")
    yield handle
    serve.delete("flow")


def settled(handle) -> int:
    """The produced count once it stops moving."""
    last = [-1]

    def still():
        now = handle.count.remote().result(timeout_s=10)
        same, last[0] = now == last[0], now
        return same
    wait_for(still, timeout=30, interval=0.5, what="the producer to pause")
    return last[0]


def test_a_slow_handle_stream_reader_pauses_the_replica(producer):
    stream = producer.options(stream=True, method_name="items").remote(TOTAL)
    for _ in range(3):
        assert next(stream) == CHUNK
    produced = settled(producer)
    # in flight at most: the replica's window, the handle's queue, the generators in between
    assert STREAM_WINDOW == 16
    assert 3 < produced <= 60
    stream.cancel()
    # the cancelled call ends at the replica at once: deleting the app does not wait out the
    # graceful shutdown (20 s) for a request still open there (the stream object is still alive)
    started = time.monotonic()
    serve.delete("flow")
    assert time.monotonic() - started < 5
    assert stream.cancelled()


def test_a_slow_http_client_pauses_the_replica(producer):
    done = threading.Event()
    received = [0]

    def slow_client():
        with httpx.Client(timeout=60) as client, client.stream("GET", f"{proxy_url()}/flow") as r:
            for chunk in r.iter_bytes(65536):
                received[0] += len(chunk)
                if received[0] >= 4 * len(CHUNK):
                    done.wait(60)  # stop reading
                    return

    reader = threading.Thread(target=slow_client)
    reader.start()
    try:
        produced = settled(producer)
        # bounded by the windows and the socket buffers, far below the 2000 chunks of the response
        assert produced < 400
    finally:
        done.set()
        reader.join(60)


QUARTER_MIB = b"y" * (256 * 1024)


@serve.deployment
class Firehose:
    """Streams 1 GiB as fast as it is taken."""

    async def __call__(self, request):
        async def body():
            for _ in range(4096):
                yield QUARTER_MIB
        return StreamingResponse(body(), media_type="application/octet-stream")


def test_a_1_gib_stream_to_a_client_reading_1_mib_per_s_keeps_memory_flat(serve_instance):
    """RSS of every worker process (proxy and replica) sampled while a client reads a 1 GiB
    response at 1 MiB/s: growth stays under 50 MiB (without flow control the whole
    gigabyte would pile up in the proxy within seconds)."""
    import time

    import psutil
    from distributed import Client

    from dserve.runtime import current_runtime

    serve.run(Firehose.bind(), name="firehose", route_prefix="/firehose")
    url = f"{proxy_url()}/firehose"
    with Client(current_runtime().scheduler_address, timeout=30) as client:
        pids = list(client.run(lambda: __import__("os").getpid()).values())
    procs = [psutil.Process(pid) for pid in pids]
    baseline = [p.memory_info().rss for p in procs]
    peak = list(baseline)
    read = 0
    try:
        with httpx.Client(timeout=60) as http, http.stream("GET", url) as r:
            assert r.status_code == 200
            start = time.monotonic()
            for chunk in r.iter_bytes(64 * 1024):
                read += len(chunk)
                while read > (time.monotonic() - start) * (1 << 20):  # 1 MiB/s
                    time.sleep(0.01)
                peak = [max(m, p.memory_info().rss) for m, p in zip(peak, procs)]
                if time.monotonic() - start > 12:
                    break
    finally:
        serve.delete("firehose")
    growth_mib = max(p - b for p, b in zip(peak, baseline)) / (1 << 20)
    assert 10 * (1 << 20) <= read < 14 * (1 << 20)  # the client really read slowly for 12 s
    assert growth_mib < 50, f"a worker's RSS grew by {growth_mib:.0f} MiB"
