"""Calls started without a task: the common handle call and proxied request, made cheap.

When a deployment's router has a free replica, no one queued ahead and a live
link to the replica's worker, a unary call needs no coroutine at all: the
message is sent at once (``Router.start_call``) and the reply, parsed where the
link reads it, settles the caller's future directly; with every replica busy the
call waits in the router's queue as itself and is sent the moment a slot frees.
That saves the task and the chain of coroutine frames a call otherwise runs
through (about a third of a call's CPU in the caller, measured). A link still
connecting, a replica in this very process and chained responses take the general
path (a task). ``open_stream`` starts a stream the same way when a replica is free
at once (the proxies' requests).

The caller's future is a ``CallFuture``: cancelling it (``response.cancel()``, or
cancelling the task awaiting it) cancels the call at the replica and frees its
slot. A reply saying the replica was not there (``GONE``) retries the call on the
general path, which picks another replica.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

from ..event_loop import copy_outcome
from ..serialization import loads, unpack_exception
from ..types import WireMessage
from ..wire import ERROR, RESULT
from .transport import ItemReader, MuxConnection, StartedCall, Undelivered

if TYPE_CHECKING:
    from .router import ReplicaSlot, Router

__all__ = ["CallFuture", "Started", "open_stream", "hold_slot"]


class CallFuture(asyncio.Future):
    """A started call's result; cancelling it cancels the call."""

    call: Optional["Started"] = None

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        if self.call is not None:
            self.call.cancel()
        return True


class Started(StartedCall):
    """One unary call made through ``Router.start_call``: queued, then sent on a slot; settles
    the caller's future."""

    __slots__ = ("router", "slot", "conn", "id", "future", "request", "model_id", "retry")

    def __init__(self, router: "Router", future: CallFuture, request: tuple, model_id: str) -> None:
        self.router, self.future, self.request, self.model_id = router, future, request, model_id
        self.slot: Optional["ReplicaSlot"] = None
        self.conn: Optional["MuxConnection"] = None
        self.id: Optional[int] = None
        self.retry: Optional[asyncio.Future] = None

    def take(self, slot: "ReplicaSlot", channel: Any = None) -> None:
        """Send the call on ``slot`` (already counted in flight): now when its worker's link is
        up, else in a task that connects first (or calls a replica in this process)."""
        self.slot = slot
        router = self.router
        router.num_requests += 1
        method, args, kwargs, ctx = self.request
        if channel is None:
            channel = router.runtime.channel(slot)
        if type(channel) is MuxConnection:
            try:
                i = channel.start_call(slot.key, method, args, kwargs, ctx.to_wire(), self)
            except Exception as exc:  # noqa: BLE001 - arguments that do not pickle: the caller's error
                router.release(slot)
                self.future.set_exception(exc)
                return
            if i is not None:
                self.conn, self.id = channel, i
                return
        self._go_general(_call_on(router, slot, channel, self.request))

    def _go_general(self, coro: Any) -> None:
        self.retry = asyncio.ensure_future(coro)
        self.retry.add_done_callback(self._settle)

    def deliver(self, msg: WireMessage) -> None:
        self.router.release(self.slot)  # type: ignore[arg-type]
        future = self.future
        if future.done():
            return
        if RESULT in msg:
            try:
                future.set_result(loads(msg[RESULT]))
            except Exception as exc:  # noqa: BLE001 - a result that does not unpickle here
                future.set_exception(exc)
        elif ERROR in msg:
            future.set_exception(unpack_exception(msg[ERROR]))
        else:  # GONE: it never reached a replica; the general path tries another
            self.router.drop(self.slot)  # type: ignore[arg-type]
            method, args, kwargs, ctx = self.request
            self._go_general(self.router.call(method, args, kwargs, ctx))

    def _settle(self, task: asyncio.Future) -> None:
        copy_outcome(task, self.future)

    def lost(self, error: BaseException) -> None:
        self.router.release(self.slot)  # type: ignore[arg-type]
        if not self.future.done():
            self.future.set_exception(error)

    def cancel(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
        elif self.conn is not None:
            if self.id in self.conn._pending:
                self.conn.cancel(self.id)  # type: ignore[arg-type]
                self.router.release(self.slot)  # type: ignore[arg-type]
        else:  # still queued
            self.router._leave(self)  # type: ignore[arg-type]


async def _call_on(router: "Router", slot: "ReplicaSlot", channel: Any, request: tuple) -> Any:
    """A started call whose link is not up yet (or whose replica is in this process)."""
    method, args, kwargs, ctx = request
    try:
        result = await channel.call(slot.key, method, args, kwargs, ctx.to_wire(), True)
    except Undelivered:
        router.release(slot)
        router.drop(slot)
        return await router.call(method, args, kwargs, ctx)
    except BaseException:
        router.release(slot)
        raise
    router.release(slot)
    return result


def open_stream(router: "Router", method: str, args: tuple, ctx: Any) -> Optional[ItemReader]:
    """Open a streaming call at once, with no task, when a replica is free, no one waits
    ahead and its link is up; None: use ``Router.stream``. The reader's first item may raise
    ``Undelivered`` (that replica was gone: call ``Router.stream``, which picks another);
    close it (``aclose``) to free the slot. The proxies' path for every request."""
    free = router.free_slot(ctx.multiplexed_model_id) if router.exists and router._ready.is_set() else None
    if free is None:
        return None
    slot, channel = free
    if type(channel) is not MuxConnection:
        return None
    reader = channel.start_stream(slot.key, method, args, {}, ctx.to_wire())
    if reader is None:
        return None
    slot.in_flight += 1
    router.num_requests += 1
    return hold_slot(router, slot, reader)


def hold_slot(router: "Router", slot: "ReplicaSlot", reader: ItemReader) -> ItemReader:
    """``reader``, which frees ``slot`` when closed (and stops routing to its replica if
    the call never reached it)."""
    def closed() -> None:
        router.release(slot)
        if reader.undelivered:
            router.drop(slot)

    reader.on_close = closed
    return reader
