"""Caller end of the multiplexed data plane: one Dask comm per replica worker.

Every request to any replica on a worker travels over the same comm, tagged
with an id; replies (and stream items) come back tagged with it. When the comm
drops, every request still waiting on it fails with ``ActorDiedError``.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Any, Dict, Optional, Union

from distributed.comm import connect

from ..exceptions import ActorDiedError
from ..wire import MUX_OP, Coalescer, decode

__all__ = ["MuxConnection", "StreamEnd", "Channel"]


class Channel:
    """A minimal single-consumer queue (cheaper than ``asyncio.Queue`` per request)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque = collections.deque()
        self.waiter: Optional[asyncio.Future] = None

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class StreamEnd:
    """Marker put on a stream's queue after its last item."""

    __slots__ = ("error",)

    def __init__(self, error: Optional[BaseException] = None) -> None:
        self.error = error


class MuxConnection:
    """One comm to one worker, shared by every request from this process."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ids = itertools.count()
        self._pending: Dict[int, Union[asyncio.Future, Channel]] = {}
        self._comm: Any = None
        self._out: Optional[Coalescer] = None
        self._connecting: Optional[asyncio.Future] = None
        self._reader: Optional[asyncio.Task] = None
        self.closed = False

    async def _ensure(self) -> None:
        if self._out is not None and not self._out.closed:
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> None:
        try:
            comm = await connect(self.address, timeout=10)
        except Exception as exc:
            raise ActorDiedError(f"cannot reach replica worker {self.address}: {exc}") from exc
        await comm.write({"op": MUX_OP, "reply": False})
        self._comm = comm
        self._out = Coalescer(comm)
        self._reader = asyncio.ensure_future(self._read(comm, self._out))

    async def _read(self, comm: Any, out: Coalescer) -> None:
        error: BaseException = ActorDiedError(f"connection to replica worker {self.address} closed")
        try:
            while True:
                batch = decode(await comm.read())
                pending = self._pending
                for msg in batch:
                    target = pending.get(msg["i"])
                    if target is None:
                        continue
                    if isinstance(target, Channel):
                        if "c" not in msg or "d" in msg:  # the stream's last message
                            del pending[msg["i"]]
                        target.put_nowait(msg)
                    else:
                        del pending[msg["i"]]
                        if not target.done():
                            target.set_result(msg)
        except Exception as exc:
            error = ActorDiedError(
                f"lost the connection to replica worker {self.address} while requests were in flight: {exc!r}"
            )
        finally:
            out.abort()
            if self._out is out:
                self._out = None
            pending, self._pending = self._pending, {}
            for target in pending.values():
                if isinstance(target, Channel):
                    target.put_nowait(StreamEnd(error))
                elif not target.done():
                    target.set_exception(error)

    async def request(self, key: str, method: str, payload: bytes, ctx: dict) -> tuple[int, asyncio.Future]:
        """Send a unary request; the future resolves to the reply message."""
        await self._ensure()
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        self._out.send({"i": i, "k": key, "m": method, "p": payload, "c": ctx})
        return i, fut

    async def stream(self, key: str, method: str, payload: bytes, ctx: dict) -> tuple[int, Channel]:
        """Send a streaming request; items (then the end message) arrive on the channel."""
        await self._ensure()
        i = next(self._ids)
        queue = Channel()
        self._pending[i] = queue
        self._out.send({"i": i, "k": key, "m": method, "p": payload, "c": ctx, "s": 1})
        return i, queue

    async def websocket(self, key: str, payload: bytes, ctx: dict) -> tuple[int, Channel]:
        """Open a WebSocket session; the app's ASGI messages arrive on the channel."""
        await self._ensure()
        i = next(self._ids)
        queue = Channel()
        self._pending[i] = queue
        self._out.send({"i": i, "k": key, "m": "", "p": payload, "c": ctx, "ws": 1})
        return i, queue

    def push(self, i: int, event: dict) -> None:
        """Send a client event (``websocket.receive`` / ``websocket.disconnect``) to session ``i``."""
        if self._out is not None:
            self._out.send({"i": i, "w": event})

    def cancel(self, i: int) -> None:
        """Ask the worker to cancel request ``i`` (its reply is then dropped)."""
        target = self._pending.pop(i, None)
        if target is not None and self._out is not None:
            self._out.send({"i": i, "x": 1})

    def close(self) -> None:
        self.closed = True
        if self._out is not None:
            self._out.abort()
        if self._reader is not None:
            self._reader.cancel()
