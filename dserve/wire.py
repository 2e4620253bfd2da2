"""The data-plane wire format and the write coalescer both ends use.

Callers keep one Dask comm per replica worker and multiplex every request over
it (the worker plugin's ``dserve_mux`` handler). Each write is one
msgpack-encoded list of small dicts; user payloads inside are pickled bytes.

caller -> worker:  {"i": id, "k": replica key, "m": method, "p": payload, "c": ctx, "s": stream?}
                   {"i": id, "x": 1}                 cancel request ``id``
                   {"i": id, ..., "ws": 1}           open a WebSocket session (payload: the scope)
                   {"i": id, "w": event}             a client event for WebSocket session ``id``
worker -> caller:  {"i": id, "r": payload}           unary result
                   {"i": id, "e": packed exception}  user (or replica) error
                   {"i": id, "g": reason}            replica not here: retry elsewhere
                   {"i": id, "c": payload}           one stream item
                   {"i": id, "d": 1}                 stream finished (may ride on the last "c")
"""
from __future__ import annotations

import asyncio
from typing import Any, List

import msgpack

MUX_OP = "dserve_mux"

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(batch: List[dict]) -> bytes:
    """One write: the batch packed by us, so Dask's comm only frames bytes
    (no per-message ``sizeof`` walk or serializer dispatch)."""
    return _packb(batch)


def decode(data: bytes) -> List[dict]:
    return msgpack.unpackb(data, raw=False)


class LastItem:
    """Yielded by a replica-side generator for its final item, so the item and
    the end of the stream travel as one message."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Coalescer:
    """Write messages at once when the comm is idle; batch what queues up while a
    write is pending (no fixed interval, unlike ``distributed.batched.BatchedSend``)."""

    __slots__ = ("comm", "buffer", "writing", "closed")

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.buffer: list = []
        self.writing = False
        self.closed = False

    def send(self, msg: dict) -> None:
        if self.closed:
            return
        self.buffer.append(msg)
        if not self.writing:
            self.writing = True
            asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let messages made in the same loop turn join this write
            while self.buffer and not self.closed:
                batch, self.buffer = self.buffer, []
                await self.comm.write(_packb(batch))
        except Exception:
            self.abort()
        finally:
            self.writing = False

    def abort(self) -> None:
        self.closed = True
        self.buffer = []
        try:
            self.comm.abort()
        except Exception:
            pass
