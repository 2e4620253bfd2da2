"""Streams are flow controlled end to end: a slow reader pauses the producer in the replica.

The replica counts what it has produced; a reader that stops after a few items
must leave the producer at most a bounded window ahead (handle streams, HTTP
streaming responses), instead of queues growing without bound in between.
"""
from __future__ import annotations

import threading

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
