"""The worker end of the data plane, spoken to directly: the wire format, the secret, TLS.

Callers ask a worker where its data-plane port is (``dserve_data_address`` over the
worker's Dask comm) and then speak msgpack batches on a raw stream. These tests open
that stream by hand: a correct introduction gets calls answered; a wrong secret, no
introduction or garbage bytes get the link dropped — and the worker keeps serving.
(On a TLS cluster the port speaks only TLS with the cluster's certificates: test_tls.)
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, Optional

import msgpack
import pytest
from distributed import Security
from distributed.core import rpc

import dserve as serve
from dserve.serialization import dumps, loads
from dserve.wire import CONTEXT, DATA_ADDRESS_OP, GONE, HELLO, ID, KEY, METHOD, PAYLOAD, RESULT


@serve.deployment
class Pid:
    def __call__(self, x: int) -> Dict[str, int]:
        return {"pid": os.getpid(), "x": x}


def replica_on_worker(name: str) -> tuple:
    """(worker address, actor key) of the deployment's single replica, as its router knows it
    (the handle was used, so the router exists and has its replicas)."""
    from dserve.runtime import current_runtime

    slot = current_runtime().routers[(name, "Pid")].slots[0]
    return slot.address, slot.key


async def data_address(worker: str, security: Optional[Security] = None) -> Dict[str, Any]:
    args = security.get_connection_args("client") if security is not None else {}
    async with rpc(worker, connection_args=args) as r:
        return await getattr(r, DATA_ADDRESS_OP)()


async def exchange(host: str, port: int, batches: list, ssl_context: Any = None, raw: bytes = b"") -> list:
    """Send batches (or raw bytes) on a fresh connection; the batches read back until the
    peer closes or 5 s pass."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl_context), 5)
    writer.write(raw or b"".join(msgpack.packb(b, use_bin_type=True) for b in batches))
    await writer.drain()
    unpacker = msgpack.Unpacker(raw=False)
    got: list = []
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return got + ["closed"]
            unpacker.feed(data)
            got.extend(unpacker)
            if got and any(RESULT in m or GONE in m for batch in got for m in batch):
                return got
    except asyncio.TimeoutError:
        return got + ["timeout"]
    finally:
        writer.close()


def call(key: str, x: int, i: int = 0) -> dict:
    return {ID: i, KEY: key, METHOD: "__call__", PAYLOAD: dumps(((x,), {})), CONTEXT: {}}


@pytest.fixture(scope="module")
def app(serve_instance):
    handle = serve.run(Pid.bind(), name="plane", route_prefix=None)
    assert handle.remote(1).result(timeout_s=30)["x"] == 1
    worker, key = replica_on_worker("plane")
    info = asyncio.run(data_address(worker))
    yield handle, key, info
    serve.delete("plane")


def test_the_worker_tells_where_its_data_plane_listens(app):
    handle, key, info = app
    assert sorted(info) == ["host", "port", "secret", "tls"]
    assert info["host"] == "127.0.0.1" and info["tls"] is False and len(info["secret"]) == 32


def test_an_introduced_link_gets_its_calls_answered(app):
    handle, key, info = app
    got = asyncio.run(exchange(info["host"], info["port"], [[{HELLO: info["secret"]}], [call(key, 7, i=5)]]))
    replies = [m for batch in got if batch not in ("closed", "timeout") for m in batch]
    assert len(replies) == 1 and replies[0][ID] == 5
    assert loads(replies[0][RESULT])["x"] == 7


def test_a_call_to_a_replica_not_there_is_marked_undelivered(app):
    handle, key, info = app
    got = asyncio.run(exchange(info["host"], info["port"], [[{HELLO: info["secret"]}, call("no-such-key", 1)]]))
    assert got[0][0][GONE] == "replica not on this worker or not accepting"


@pytest.mark.parametrize("first", [
    pytest.param([[{HELLO: "0" * 32}], [call("k", 1)]], id="wrong-secret"),
    pytest.param([[call("k", 1)]], id="no-introduction"),
])
def test_a_link_without_the_secret_is_dropped_and_the_worker_keeps_serving(app, first):
    handle, key, info = app
    first[-1][0][KEY] = key
    got = asyncio.run(exchange(info["host"], info["port"], first))
    assert got == ["closed"]  # nothing answered, the link closed
    assert handle.remote(2).result(timeout_s=30)["x"] == 2


def test_garbage_bytes_drop_the_link_and_the_worker_keeps_serving(app):
    handle, key, info = app
    got = asyncio.run(exchange(info["host"], info["port"], [], raw=b"\xc1" * 64))  # 0xc1: never valid msgpack
    assert got == ["closed"]
    assert handle.remote(3).result(timeout_s=30)["x"] == 3
