"""Both ends of the data plane: how a call reaches a replica and its reply comes back.

Caller end: a ``MuxConnection`` is one Dask comm to one replica worker, shared by
every call from this process to any replica there; calls are tagged with an id
and replies (and stream items) come back tagged with it. A replica in the
caller's own process is reached through an ``InProcessChannel`` instead: the same
three operations (``call``, ``stream``, ``websocket``) with no socket.

Worker end: ``serve_mux`` is the worker's ``dserve_mux`` comm handler; each call
runs in its own task against the replica object found in ``worker.state.actors``.

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
from ..serialization import dumps, loads, pack_exception, unpack_exception
from ..types import Message, Scope, WireContext, WireMessage
from ..wire import (
    CANCEL, CONTEXT, CREDIT, DONE, ERROR, EVENT, GONE, ID, ITEM, KEY, KIND, METHOD, MUX_OP, PAYLOAD, RESULT, STREAM,
    WEBSOCKET, Coalescer, Credit, Inbox, LastItem, decode,
)

__all__ = ["Undelivered", "MuxConnection", "InProcessChannel", "serve_mux"]

logger = logging.getLogger("dserve.transport")

Push = Callable[[dict], None]


class Undelivered(Exception):
    """The call never reached the replica (unreachable worker, replica gone): retry elsewhere."""


class _Lost:
    """Put on a stream's inbox when the connection drops."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# ---------------------------------------------------------------- caller end
class MuxConnection:
    """One comm to one worker, shared by every call from this process."""

    def __init__(self, address: str, connection_args: Optional[dict] = None) -> None:
        self.address = address
        self.connection_args = connection_args or {}
        self._ids = itertools.count()
        self._pending: Dict[int, Union[asyncio.Future, Inbox]] = {}
        self._out: Optional[Coalescer] = None
        self._connecting: Optional[asyncio.Future] = None
        self._reader: Optional[asyncio.Task] = None
        self._lost = False  # a connection to this address dropped: it is most likely gone for good
        self.closed = False

    async def _ensure(self) -> Coalescer:
        out = self._out
        if out is not None and not out.closed:
            return out
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        if self._out is None:
            raise Undelivered(f"connection to replica worker {self.address} closed")
        return self._out

    async def _connect(self) -> None:
        timeout = RECONNECT_TIMEOUT_S if self._lost else CONNECT_TIMEOUT_S
        try:
            comm = await connect(self.address, timeout=timeout, **self.connection_args)
            await comm.write({"op": MUX_OP, "reply": False})
        except Exception as exc:  # noqa: BLE001 - nothing was sent: the router tries another replica
            raise Undelivered(f"cannot reach replica worker {self.address}: {exc}") from exc
        self._out = Coalescer(comm)
        self._reader = asyncio.ensure_future(self._read(comm, self._out))

    async def _read(self, comm: Any, out: Coalescer) -> None:
        error: BaseException = ActorDiedError(f"connection to replica worker {self.address} closed")
        try:
            while True:
                pending = self._pending
                for msg in decode(await comm.read()):
                    target = pending.get(msg[ID])
                    if target is None:
                        continue
                    if type(target) is Inbox:
                        if ITEM not in msg or DONE in msg:  # the stream's last message
                            del pending[msg[ID]]
                        target.put_nowait(msg)
                    else:
                        del pending[msg[ID]]
                        if not target.done():
                            target.set_result(msg)
        except Exception as exc:  # noqa: BLE001 - every waiter below learns of it
            error = ActorDiedError(
                f"lost the connection to replica worker {self.address} while requests were in flight: {exc!r}"
            )
        finally:
            self._lost = True
            out.abort()
            if self._out is out:
                self._out = None
            pending, self._pending = self._pending, {}
            for target in pending.values():
                if type(target) is Inbox:
                    target.put_nowait(_Lost(error))
                elif not target.done():
                    target.set_exception(error)

    async def _send(self, msg: WireMessage, target: Union[asyncio.Future, Inbox]) -> int:
        out = await self._ensure()
        i = msg[ID] = next(self._ids)
        self._pending[i] = target
        out.send(msg)
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
        if type(first) is not _Lost and GONE in first:
            raise Undelivered(first[GONE])
        return self._items(i, inbox, first, ctx.get("rid", ""))

    async def websocket(self, key: str, scope: Scope, ctx: WireContext) -> Tuple[AsyncIterator[Message], Push]:
        """Open a WebSocket session: the app's messages, and a function that pushes client events."""
        inbox = Inbox()
        i = await self._send({KEY: key, METHOD: "", PAYLOAD: dumps(scope), CONTEXT: ctx, KIND: WEBSOCKET}, inbox)
        return self._items(i, inbox, None, ctx.get("rid", "")), lambda event: self._push(i, event)

    async def _items(self, i: int, inbox: Inbox, msg: Any, request_id: str) -> AsyncIterator[Any]:
        finished = False
        consumed = 0  # items taken since credit was last returned
        try:
            while True:
                if msg is None:
                    msg = await inbox.get()
                if type(msg) is _Lost:
                    finished = True
                    raise msg.error
                if ITEM in msg:
                    yield loads(msg[ITEM])
                    if DONE not in msg:
                        msg = None
                        consumed += 1
                        if consumed >= STREAM_WINDOW // 2 and self._out is not None:
                            self._out.send({ID: i, CREDIT: consumed})
                            consumed = 0
                        continue
                finished = True
                if DONE in msg:
                    return
                if ERROR in msg:
                    raise unpack_exception(msg[ERROR])
                raise RequestCancelledError(request_id)  # GONE after it started: the replica stopped
        finally:
            if not finished:
                self.cancel(i)

    def _push(self, i: int, event: dict) -> None:
        if self._out is not None:
            self._out.send({ID: i, EVENT: event})

    def cancel(self, i: int) -> None:
        """Ask the worker to cancel call ``i`` (its reply is then dropped)."""
        target = self._pending.pop(i, None)
        if target is not None and self._out is not None:
            self._out.send({ID: i, CANCEL: 1})

    def close(self) -> None:
        self.closed = True
        if self._out is not None:
            self._out.abort()
        if self._reader is not None:
            self._reader.cancel()


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


# ---------------------------------------------------------------- worker end
async def serve_mux(comm: Any, actors: Dict[str, Any]) -> None:
    """Serve multiplexed calls from one caller until its comm closes; its calls
    still running here are then cancelled."""
    out = Coalescer(comm)
    tasks: Dict[int, asyncio.Task] = {}
    inboxes: Dict[int, asyncio.Queue] = {}  # WebSocket sessions: client events
    credits: Dict[int, Credit] = {}  # streams and sessions: what they may still send
    try:
        while True:
            for msg in decode(await comm.read()):
                i = msg[ID]
                if CREDIT in msg:
                    credit = credits.get(i)
                    if credit is not None:
                        credit.grant(msg[CREDIT])
                    continue
                if EVENT in msg:
                    inbox = inboxes.get(i)
                    if inbox is not None:
                        inbox.put_nowait(msg[EVENT])
                    continue
                if CANCEL in msg:
                    task = tasks.pop(i, None)
                    if task is not None:
                        task.cancel()
                    continue
                replica = actors.get(msg[KEY])
                if replica is None or not getattr(replica, "accepting", False):
                    out.send({ID: i, GONE: "replica not on this worker or not accepting"})
                    continue
                kind = msg.get(KIND)
                if kind == WEBSOCKET:
                    inboxes[i] = inbox = asyncio.Queue()
                    credits[i] = credit = Credit(STREAM_WINDOW)
                    task = asyncio.ensure_future(_serve_websocket(replica, msg, inbox, out, credit))
                    task.add_done_callback(lambda _t, i=i: (inboxes.pop(i, None), credits.pop(i, None)))
                elif kind == STREAM:
                    credits[i] = credit = Credit(STREAM_WINDOW)
                    task = asyncio.ensure_future(_serve_stream(replica, msg, out, credit))
                    task.add_done_callback(lambda _t, i=i: credits.pop(i, None))
                else:
                    task = asyncio.ensure_future(_serve_unary(replica, msg, out))
                tasks[i] = task
                task.add_done_callback(lambda _t, i=i: tasks.pop(i, None))
    except Exception as exc:  # noqa: BLE001 - the caller went away (or sent garbage)
        logger.debug("data-plane connection from %s ended: %r", getattr(comm, "peer_address", "?"), exc)
    finally:
        out.abort()
        for task in list(tasks.values()):
            task.cancel()


async def _serve_unary(replica: Any, msg: WireMessage, out: Coalescer) -> None:
    i = msg[ID]
    try:
        args, kwargs = loads(msg[PAYLOAD])
        result = await replica.call(msg[METHOD], args, kwargs, msg.get(CONTEXT))
        out.send({ID: i, RESULT: dumps(result)})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
        _log_failure("request to", replica, exc)
        out.send({ID: i, ERROR: pack_exception(exc)})


async def _serve_stream(replica: Any, msg: WireMessage, out: Coalescer, credit: Credit) -> None:
    def open_items() -> AsyncIterator[Any]:
        args, kwargs = loads(msg[PAYLOAD])
        return replica.stream(msg[METHOD], args, kwargs, msg.get(CONTEXT))
    await _send_items(msg[ID], open_items, replica, "stream from", out, credit)


async def _serve_websocket(replica: Any, msg: WireMessage, inbox: asyncio.Queue, out: Coalescer,
                           credit: Credit) -> None:
    def open_items() -> AsyncIterator[Any]:
        return replica.websocket(loads(msg[PAYLOAD]), inbox.get, msg.get(CONTEXT))
    await _send_items(msg[ID], open_items, replica, "WebSocket session on", out, credit)


async def _send_items(i: int, open_items: Callable[[], AsyncIterator[Any]], replica: Any, what: str,
                      out: Coalescer, credit: Credit) -> None:
    """Send a stream's items as the caller's credit allows, then its end (or its error)."""
    items = None
    try:
        items = open_items()
        async for item in items:
            if type(item) is LastItem:  # the generator knows it is done: one message
                out.send({ID: i, ITEM: dumps(item.value), DONE: 1})
                return
            await credit.take()  # a slow reader pauses the generator here
            out.send({ID: i, ITEM: dumps(item)})
        out.send({ID: i, DONE: 1})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
        _log_failure(what, replica, exc)
        out.send({ID: i, ERROR: pack_exception(exc)})
    finally:
        if items is not None:
            await items.aclose()


def _log_failure(what: str, replica: Any, exc: BaseException) -> None:
    if type(exc).__name__ == "UnknownMethodError":  # raised at the caller, who made the mistake: not logged
        return
    # a wrong signature is the caller's mistake: no user traceback
    user_error = not isinstance(exc, (TypeError, AttributeError))
    logger.warning("%s %s failed: %r", what, replica.replica_id, exc, exc_info=user_error)
