"""Router: picks a replica for each call and enforces the deployment's limits.

One router per deployment per process (shared by every handle and proxy
route to it). Power of two choices on this caller's in-flight counts, never
more than ``max_ongoing_requests`` in flight to one replica; callers beyond
that wait in a FIFO queue bounded by ``max_queued_requests`` (then
``BackPressureError``) and are dispatched the moment a slot frees, with no
back-off timer. Multiplexed requests prefer replicas holding their model.
"""
from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Deque, Dict, List, Optional

from ..context import RequestContext
from ..exceptions import ActorDiedError, BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ..serialization import dumps, loads, unpack_exception
from ..wire import LastItem
from .mux import StreamEnd

__all__ = ["Router", "ReplicaSlot"]


@dataclass(eq=False)
class ReplicaSlot:
    replica_id: str
    address: str
    key: str
    max_ongoing: int
    in_flight: int = 0
    models: frozenset = field(default_factory=frozenset)
    gone: bool = False


class _Waiter:
    __slots__ = ("future", "model_id")

    def __init__(self, future: asyncio.Future, model_id: str) -> None:
        self.future = future
        self.model_id = model_id


class Router:
    """Routes calls for one deployment from this process to its replicas."""

    def __init__(self, runtime: Any, app: str, deployment: str) -> None:
        self.runtime = runtime
        self.app = app
        self.deployment = deployment
        self.version = -1
        self.local = False
        self.exists = True
        self.slots: List[ReplicaSlot] = []
        self.max_queued = -1
        self.waiters: Deque[_Waiter] = collections.deque()
        self._ready = asyncio.Event()

    # ---- replica set updates (from the controller's long poll) ----
    def update(self, snapshot: Dict[str, Any]) -> None:
        self.version = snapshot["version"]
        self.exists = snapshot.get("exists", True)
        self.max_queued = snapshot.get("max_queued", -1)
        old = {s.replica_id: s for s in self.slots}
        slots = []
        for r in snapshot.get("replicas", []):
            slot = old.pop(r["id"], None)
            if slot is None:
                slot = ReplicaSlot(r["id"], r["address"], r["key"], r["max_ongoing"])
            slot.max_ongoing = r["max_ongoing"]
            slot.models = frozenset(r.get("models", ()))
            slots.append(slot)
        for slot in old.values():
            slot.gone = True
        self.slots = slots
        self._ready.set()
        if not self.exists:
            self._fail_waiters(DeploymentUnavailableError(f"{self.app}#{self.deployment}"))
        else:
            self._dispatch()

    def _fail_waiters(self, exc: BaseException) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    # ---- replica choice ----
    def _pick(self, model_id: str = "") -> Optional[ReplicaSlot]:
        free = [s for s in self.slots if s.in_flight < s.max_ongoing and not s.gone]
        if not free:
            return None
        if model_id:
            holders = [s for s in free if model_id in s.models]
            if holders:
                free = holders
        if len(free) == 1:
            return free[0]
        a, b = random.sample(free, 2)
        return a if a.in_flight <= b.in_flight else b

    def _dispatch(self) -> None:
        while self.waiters:
            waiter = self.waiters[0]
            if waiter.future.done():
                self.waiters.popleft()
                continue
            slot = self._pick(waiter.model_id)
            if slot is None:
                return
            self.waiters.popleft()
            slot.in_flight += 1
            waiter.future.set_result(slot)

    async def assign(self, model_id: str = "") -> ReplicaSlot:
        """Reserve a slot on a replica, waiting in the queue if all are busy."""
        if not self._ready.is_set():
            await self._ready.wait()
        if not self.exists:
            raise DeploymentUnavailableError(f"{self.app}#{self.deployment}")
        if not self.waiters:
            slot = self._pick(model_id)
            if slot is not None:
                slot.in_flight += 1
                return slot
        if self.max_queued != -1 and len(self.waiters) >= self.max_queued:
            raise BackPressureError(num_queued_requests=len(self.waiters), max_queued_requests=self.max_queued)
        future = asyncio.get_running_loop().create_future()
        self.waiters.append(_Waiter(future, model_id))
        self.runtime.report_queued(self)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())
            raise

    def release(self, slot: ReplicaSlot) -> None:
        slot.in_flight -= 1
        if self.waiters:
            self._dispatch()

    def drop(self, slot: ReplicaSlot) -> None:
        """Stop routing to a replica its worker says is gone (until the next update)."""
        slot.gone = True

    @property
    def num_queued(self) -> int:
        return len(self.waiters)

    # ---- calls ----
    async def call(self, method: str, args: tuple, kwargs: dict, ctx: RequestContext, *, copy: bool = True) -> Any:
        """One unary call. ``copy=False`` lets a replica in this very process
        take the arguments as they are (the proxy's freshly built requests)."""
        if _has_responses(args, kwargs):
            args, kwargs = await _resolve_responses(args, kwargs)
        payload = None
        wire_ctx = ctx.to_wire()
        while True:
            slot = await self.assign(ctx.multiplexed_model_id)
            try:
                replica = self.runtime.local_replica(slot)
                if replica is not None:  # same process: no socket, no mux
                    if copy:
                        payload = payload or dumps((args, kwargs))
                        result = await replica.call(method, payload, wire_ctx)
                        return loads(dumps(result))
                    return await replica.call_args(method, args, kwargs, wire_ctx)
                payload = payload or dumps((args, kwargs))
                conn = self.runtime.connection(slot.address)
                try:
                    i, fut = await conn.request(slot.key, method, payload, wire_ctx)
                except ActorDiedError:  # the worker is unreachable: nothing was sent, try another
                    self.drop(slot)
                    continue
                try:
                    msg = await fut
                except asyncio.CancelledError:
                    conn.cancel(i)
                    raise
            finally:
                self.release(slot)
            if "r" in msg:
                return loads(msg["r"])
            if "e" in msg:
                raise unpack_exception(msg["e"])
            self.drop(slot)  # "g": that replica is gone; try another

    async def stream(
        self, method: str, args: tuple, kwargs: dict, ctx: RequestContext, *, copy: bool = True
    ) -> AsyncIterator[Any]:
        """One streaming call; items are yielded as the replica produces them."""
        if _has_responses(args, kwargs):
            args, kwargs = await _resolve_responses(args, kwargs)
        payload = None
        wire_ctx = ctx.to_wire()
        while True:
            slot = await self.assign(ctx.multiplexed_model_id)
            try:
                replica = self.runtime.local_replica(slot)
                if replica is not None:
                    if copy:
                        payload = payload or dumps((args, kwargs))
                        items = replica.stream(method, payload, wire_ctx)
                    else:
                        items = replica.stream_args(method, args, kwargs, wire_ctx)
                    try:  # close explicitly: finalizer hooks cost a syscall and hold the slot
                        async for item in items:
                            if isinstance(item, LastItem):
                                yield item.value if not copy else loads(dumps(item.value))
                                return
                            yield loads(dumps(item)) if copy else item
                    finally:
                        await items.aclose()
                    return
                payload = payload or dumps((args, kwargs))
                conn = self.runtime.connection(slot.address)
                try:
                    i, queue = await conn.stream(slot.key, method, payload, wire_ctx)
                except ActorDiedError:  # unreachable: nothing was sent, try another
                    self.drop(slot)
                    continue
                first = True
                finished = False
                try:
                    while True:
                        msg = await queue.get()
                        if isinstance(msg, StreamEnd):
                            finished = True
                            raise msg.error
                        if "c" in msg:
                            first = False
                            yield loads(msg["c"])
                            if "d" not in msg:
                                continue
                        finished = True
                        if "d" in msg:
                            return
                        if "e" in msg:
                            raise unpack_exception(msg["e"])
                        if first:  # "g": gone before it started; retry elsewhere
                            break
                        raise RequestCancelledError(ctx.request_id)
                finally:
                    if not finished:
                        conn.cancel(i)
            finally:
                self.release(slot)
            self.drop(slot)


    async def websocket(self, scope: dict, ctx: RequestContext) -> "WebSocketSession":
        """Open a WebSocket session on a replica (it holds one request slot while open)."""
        wire_ctx = ctx.to_wire()
        while True:
            slot = await self.assign(ctx.multiplexed_model_id)
            replica = self.runtime.local_replica(slot)
            if replica is not None:
                inbox: asyncio.Queue = asyncio.Queue()
                return WebSocketSession(self, slot, replica.websocket(scope, inbox.get, wire_ctx), inbox.put_nowait)
            conn = self.runtime.connection(slot.address)
            try:
                i, channel = await conn.websocket(slot.key, dumps(scope), wire_ctx)
            except ActorDiedError:
                self.release(slot)
                self.drop(slot)
                continue
            except BaseException:
                self.release(slot)
                raise
            return WebSocketSession(self, slot, _channel_items(channel, conn, i), lambda event: conn.push(i, event))


class WebSocketSession:
    """A WebSocket session through a router: push client events in, iterate the app's messages out."""

    def __init__(self, router: Router, slot: ReplicaSlot, outbound: AsyncIterator[dict], push: Any) -> None:
        self.router, self.slot, self.outbound, self.push = router, slot, outbound, push
        self.closed = False

    def __aiter__(self) -> AsyncIterator[dict]:
        return self.outbound

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                await self.outbound.aclose()
            finally:
                self.router.release(self.slot)


async def _channel_items(channel: Any, conn: Any, i: int) -> AsyncIterator[dict]:
    finished = False
    try:
        while True:
            msg = await channel.get()
            if isinstance(msg, StreamEnd):
                finished = True
                raise msg.error
            if "c" in msg:
                yield loads(msg["c"])
            if "d" in msg or "e" in msg or "g" in msg:
                finished = True
                if "e" in msg:
                    raise unpack_exception(msg["e"])
                return
    finally:
        if not finished:
            conn.cancel(i)


_response_type: Any = None


def _has_responses(args: tuple, kwargs: dict) -> bool:
    global _response_type
    if _response_type is None:
        from ..handle import DeploymentResponse

        _response_type = DeploymentResponse
    return any(isinstance(a, _response_type) for a in args) or any(
        isinstance(v, _response_type) for v in kwargs.values()
    )


async def _resolve_responses(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace DeploymentResponse arguments by their results (chained calls)."""
    DeploymentResponse = _response_type
    if any(isinstance(a, DeploymentResponse) for a in args):
        args = tuple([await a if isinstance(a, DeploymentResponse) else a for a in args])
    if any(isinstance(v, DeploymentResponse) for v in kwargs.values()):
        kwargs = {k: (await v if isinstance(v, DeploymentResponse) else v) for k, v in kwargs.items()}
    return args, kwargs
