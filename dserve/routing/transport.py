"""The caller end of the data plane: how a call reaches a replica and its reply comes back.

A ``MuxConnection`` is one link (``routing.link``: a raw TCP/TLS stream of
msgpack batches) to one replica worker's data-plane port, shared by every call
from this process to any replica there; calls are tagged with an id and replies
(and stream items) come back tagged with it. The port and its secret are asked
of the worker once per connection, over the worker's Dask comm
(``DATA_ADDRESS_OP``), with the process's Dask security. A replica in the
caller's own process is reached through an ``InProcessChannel`` instead: the
same three operations (``call``, ``stream``, ``websocket``) with no socket. The
worker end is ``routing.worker_end``.

A call that provably never reached a replica raises ``Undelivered`` so that the
router can try another; a connection lost with calls in flight fails them with
``ActorDiedError`` (they may have run: calls are executed at most once).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, AsyncIterator, Callable, Dict, Optional, Tuple, Union

from distributed.comm import connect

from ..config import CONNECT_TIMEOUT_S, RECONNECT_TIMEOUT_S, STREAM_WINDOW
from ..exceptions import ActorDiedError, RequestCancelledError
from ..serialization import dumps, loads, unpack_exception
from ..types import Message, Scope, WireContext, WireMessage
from ..wire import (
    CANCEL, CONTEXT, CREDIT, DATA_ADDRESS_OP, DONE, ERROR, EVENT, GONE, HELLO, ID, ITEM, KEY, KIND, METHOD,
    PAYLOAD, RESULT, STREAM, WEBSOCKET, Inbox, LastItem,
)
from .link import Link, open_link

__all__ = ["Undelivered", "MuxConnection", "InProcessChannel", "StartedCall", "ItemReader", "LostLink"]

logger = logging.getLogger("dserve.transport")

Push = Callable[[dict], None]


class Undelivered(Exception):
    """The call never reached the replica (unreachable worker, replica gone): retry elsewhere."""


class LostLink:
    """Put on a stream's inbox when the connection drops."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class MuxConnection:
    """One link to one worker, shared by every call from this process."""

    def __init__(self, address: str, connection_args: Optional[dict] = None) -> None:
        self.address = address
        self.connection_args = connection_args or {}
        self._ids = itertools.count()
        self._pending: Dict[int, Union[asyncio.Future, Inbox]] = {}
        self._link: Optional[Link] = None
        self._connecting: Optional[asyncio.Future] = None
        self._lost = False  # a connection to this address dropped: it is most likely gone for good
        self.closed = False

    async def _ensure(self) -> Link:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        if self._link is None or self._link.closed:
            raise Undelivered(f"connection to replica worker {self.address} closed")
        return self._link

    async def _connect(self) -> None:
        timeout = RECONNECT_TIMEOUT_S if self._lost else CONNECT_TIMEOUT_S
        try:
            comm = await connect(self.address, timeout=timeout, **self.connection_args)
            try:
                await comm.write({"op": DATA_ADDRESS_OP, "reply": True})
                info = await asyncio.wait_for(comm.read(), timeout)
            finally:
                await comm.close()
            if not isinstance(info, dict) or "port" not in info:
                raise RuntimeError(f"the worker did not say where its data plane listens: {info!r}")
            ssl_context = self.connection_args.get("ssl_context") if info["tls"] else None
            if info["tls"] and ssl_context is None:
                raise RuntimeError("the worker's data plane uses TLS and this process has no TLS context")
            link = Link(self._on_batch, self._on_lost)
            await open_link(info["host"], info["port"], link, {HELLO: info["secret"]}, timeout, ssl_context)
        except Exception as exc:  # noqa: BLE001 - nothing was sent: the router tries another replica
            raise Undelivered(f"cannot reach replica worker {self.address}: {exc}") from exc
        self._link = link

    def _on_batch(self, batch: list) -> None:
        pending = self._pending
        for msg in batch:
            target = pending.get(msg[ID])
            if target is None:
                continue
            kind = type(target)
            if kind is Inbox:
                if ITEM not in msg or DONE in msg:  # the stream's last message
                    del pending[msg[ID]]
                target.put_nowait(msg)
            else:
                del pending[msg[ID]]
                if kind is not asyncio.Future:  # a started call (``start_call``)
                    target.deliver(msg)
                elif not target.done():
                    target.set_result(msg)

    def _on_lost(self, exc: Optional[BaseException]) -> None:
        self._lost = True
        self._link = None
        reason = f": {exc!r}" if exc is not None else ""
        error = ActorDiedError(
            f"lost the connection to replica worker {self.address} while requests were in flight{reason}")
        pending, self._pending = self._pending, {}
        for target in pending.values():
            kind = type(target)
            if kind is Inbox:
                target.put_nowait(LostLink(error))
            elif kind is not asyncio.Future:
                target.lost(error)
            elif not target.done():
                target.set_exception(error)

    async def _send(self, msg: WireMessage, target: Union[asyncio.Future, Inbox]) -> int:
        link = self._link
        if link is None or link.closed:
            link = await self._ensure()
        i = msg[ID] = next(self._ids)
        self._pending[i] = target
        link.send(msg)
        return i

    def start_call(self, key: str, method: str, args: tuple, kwargs: dict, ctx: WireContext,
                   reply: "StartedCall", stream: bool = False) -> Optional[int]:
        """Send a call now, without a task, when the link is up; ``reply.deliver(msg)``
        gets its answer (``reply.lost(error)`` if the link drops). None: the link is not up
        (use ``call``). A ``stream`` call's first message goes to ``reply``; to read on,
        ``adopt`` the stream."""
        link = self._link
        if link is None or link.closed:
            return None
        i = next(self._ids)
        msg = {ID: i, KEY: key, METHOD: method, PAYLOAD: dumps((args, kwargs)), CONTEXT: ctx}
        if stream:
            msg[KIND] = STREAM
        self._pending[i] = reply
        link.send(msg)
        return i

    async def call(self, key: str, method: str, args: tuple, kwargs: dict, ctx: WireContext, copy: bool) -> Any:
        """One unary call; its result, or the replica's exception raised here."""
        fut = asyncio.get_running_loop().create_future()
        i = await self._send({KEY: key, METHOD: method, PAYLOAD: dumps((args, kwargs)), CONTEXT: ctx}, fut)
        try:
            msg = await fut
        except asyncio.CancelledError:
            self.cancel(i)
            raise
        if RESULT in msg:
            return loads(msg[RESULT])
        if ERROR in msg:
            raise unpack_exception(msg[ERROR])
        raise Undelivered(msg[GONE])

    async def stream(
        self, key: str, method: str, args: tuple, kwargs: dict, ctx: WireContext, copy: bool
    ) -> AsyncIterator[Any]:
        """Open a streaming call; returns its items once the first message shows it started."""
        inbox = Inbox()
        msg = {KEY: key, METHOD: method, PAYLOAD: dumps((args, kwargs)), CONTEXT: ctx, KIND: STREAM}
        i = await self._send(msg, inbox)
        try:
            first = await inbox.get()
        except asyncio.CancelledError:
            self.cancel(i)
            raise
        if type(first) is not LostLink and GONE in first:
            raise Undelivered(first[GONE])
        return self._items(i, inbox, first, ctx.get("rid", ""))

    async def websocket(self, key: str, scope: Scope, ctx: WireContext) -> Tuple[AsyncIterator[Message], Push]:
        """Open a WebSocket session: the app's messages, and a function that pushes client events."""
        inbox = Inbox()
        i = await self._send({KEY: key, METHOD: "", PAYLOAD: dumps(scope), CONTEXT: ctx, KIND: WEBSOCKET}, inbox)
        return self._items(i, inbox, None, ctx.get("rid", "")), lambda event: self._push(i, event)

    def _items(self, i: int, inbox: Inbox, msg: Any, request_id: str) -> "ItemReader":
        return ItemReader(self, i, inbox, msg, request_id)

    def start_stream(self, key: str, method: str, args: tuple, kwargs: dict, ctx: WireContext) -> Optional["ItemReader"]:
        """Open a streaming call now, without a task, when the link is up: its items, whose
        first read may raise ``Undelivered`` (the replica was not there). None: the link is
        not up (use ``stream``)."""
        link = self._link
        if link is None or link.closed:
            return None
        i = next(self._ids)
        inbox = self._pending[i] = Inbox()
        link.send({ID: i, KEY: key, METHOD: method, PAYLOAD: dumps((args, kwargs)), CONTEXT: ctx, KIND: STREAM})
        return ItemReader(self, i, inbox, None, ctx.get("rid", ""), check_gone=True)

    def adopt(self, i: int, first: Any, request_id: str) -> "ItemReader":
        """The items of stream ``i`` (started by ``start_call``), from its first message on
        (or a ``LostLink`` in its place; None: none has come yet)."""
        inbox = Inbox()
        if first is None or (type(first) is not LostLink and ITEM in first and DONE not in first):
            self._pending[i] = inbox  # more to come
        return ItemReader(self, i, inbox, first, request_id, check_gone=True)

    def _push(self, i: int, event: dict) -> None:
        if self._link is not None:
            self._link.send({ID: i, EVENT: event})

    def cancel(self, i: int) -> None:
        """Ask the worker to cancel call ``i`` (its reply is then dropped)."""
        target = self._pending.pop(i, None)
        if target is not None and self._link is not None:
            self._link.send({ID: i, CANCEL: 1})

    def close(self) -> None:
        self.closed = True
        if self._link is not None:
            self._link.abort()


class ItemReader:
    """The items of one stream (or WebSocket session) as they arrive, returning credit as
    they are read; closing it early cancels the call at the replica. A plain async
    iterator (not a generator): no per-stream generator hooks, and ``aclose`` is cheap."""

    __slots__ = ("conn", "id", "inbox", "msg", "request_id", "consumed", "finished", "check_gone", "undelivered",
                 "on_close")

    def __init__(self, conn: MuxConnection, i: int, inbox: Inbox, first: Any, request_id: str,
                 check_gone: bool = False) -> None:
        self.conn, self.id, self.inbox, self.msg, self.request_id = conn, i, inbox, first, request_id
        self.consumed = 0  # items taken since credit was last returned
        self.finished = False
        self.check_gone = check_gone  # opened by ``start_stream``: its first message may say GONE
        self.undelivered = False  # it did: the replica was not there
        self.on_close: Optional[Callable[[], None]] = None

    def __aiter__(self) -> "ItemReader":
        return self

    async def __anext__(self) -> Any:
        if self.finished:
            raise StopAsyncIteration
        msg = self.msg
        if msg is None:
            msg = await self.inbox.get()
        else:
            self.msg = None
        if type(msg) is LostLink:
            self.finished = True
            raise msg.error
        if ITEM in msg:
            self.check_gone = False
            if DONE in msg:
                self.finished = True
            else:
                self.consumed += 1
                if self.consumed >= STREAM_WINDOW // 2 and self.conn._link is not None:
                    self.conn._link.send({ID: self.id, CREDIT: self.consumed})
                    self.consumed = 0
            return loads(msg[ITEM])
        self.finished = True
        if DONE in msg:
            raise StopAsyncIteration
        if ERROR in msg:
            raise unpack_exception(msg[ERROR])
        if self.check_gone:
            self.undelivered = True
            raise Undelivered(msg[GONE])
        raise RequestCancelledError(self.request_id)  # GONE after it started: the replica stopped

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.conn.cancel(self.id)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


class StartedCall:
    """What ``MuxConnection.start_call`` tells about a call's answer (see ``Router.start_call``)."""

    __slots__ = ()

    def deliver(self, msg: WireMessage) -> None:
        raise NotImplementedError

    def lost(self, error: BaseException) -> None:
        raise NotImplementedError


class InProcessChannel:
    """The same operations as ``MuxConnection`` on a replica in this very process.

    With ``copy`` the arguments and results are pickled and unpickled, as a remote
    call would see them; without it (the proxy's freshly built requests) they
    are handed over as they are.
    """

    __slots__ = ("replica", "closed")

    def __init__(self, replica: Any) -> None:
        self.replica = replica
        self.closed = False

    async def call(self, key: str, method: str, args: tuple, kwargs: dict, ctx: WireContext, copy: bool) -> Any:
        if copy:
            args, kwargs = loads(dumps((args, kwargs)))
            return loads(dumps(await self.replica.call(method, args, kwargs, ctx)))
        return await self.replica.call(method, args, kwargs, ctx)

    async def stream(
        self, key: str, method: str, args: tuple, kwargs: dict, ctx: WireContext, copy: bool
    ) -> AsyncIterator[Any]:
        if copy:
            args, kwargs = loads(dumps((args, kwargs)))
        return self._items(self.replica.stream(method, args, kwargs, ctx), copy)

    @staticmethod
    async def _items(items: AsyncIterator[Any], copy: bool) -> AsyncIterator[Any]:
        try:  # closed explicitly: finalizer hooks cost a syscall and hold the slot
            async for item in items:
                if type(item) is LastItem:
                    yield loads(dumps(item.value)) if copy else item.value
                    return
                yield loads(dumps(item)) if copy else item
        finally:
            await items.aclose()

    async def websocket(self, key: str, scope: Scope, ctx: WireContext) -> Tuple[AsyncIterator[Message], Push]:
        inbox: asyncio.Queue = asyncio.Queue()
        return self.replica.websocket(scope, inbox.get, ctx), inbox.put_nowait

    def close(self) -> None:
        self.closed = True
