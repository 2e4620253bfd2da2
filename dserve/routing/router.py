"""Router: picks a replica for each call and enforces the deployment's limits.

One router per deployment per process (shared by every handle and proxy
route to it). Power of two choices on this caller's in-flight counts, never
more than ``max_ongoing_requests`` in flight to one replica; callers beyond
that wait in a FIFO queue bounded by ``max_queued_requests`` (then
``BackPressureError``) and are dispatched the moment a slot frees, with no
back-off timer; a caller who gives up while queued leaves the queue at once. Multiplexed requests prefer replicas holding their model.

Locality: a replica on this process's own host (``Runtime.local_host``; the host
part of the replica's worker address) is preferred when it is no busier than the
power-of-two choice; otherwise, or with no local replica free, calls go across
hosts. Whether a replica is local is worked out once, when the replica set
arrives, not per request.
"""
from __future__ import annotations

import asyncio
import collections
import random
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Deque, List, Optional, Tuple

from distributed.comm import get_address_host

from ..context import RequestContext
from ..event_loop import post
from ..exceptions import BackPressureError, DeploymentUnavailableError
from ..types import ReplicaSetSnapshot, Scope
from .router_metrics import track_router
from .started_call import CallFuture, Started
from .transport import MuxConnection, Undelivered

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
    local: bool = False  # on this process's host


def _host(address: str) -> Optional[str]:
    try:
        return get_address_host(address)
    except ValueError:  # not a Dask address (local testing mode's in-process replicas)
        return None


class _Waiter:
    """A caller of ``assign`` waiting for a slot (a started call waits as itself: ``Started``)."""

    __slots__ = ("future", "model_id")

    def __init__(self, future: asyncio.Future, model_id: str) -> None:
        self.future = future
        self.model_id = model_id

    def take(self, slot: ReplicaSlot) -> None:
        self.future.set_result(slot)


class Router:
    """Routes calls for one deployment from this process to its replicas."""

    def __init__(self, runtime: Any, app: str, deployment: str, *, track: bool = True) -> None:
        """``runtime``: the process's ``Runtime``, or a ``Lane`` (routers of one caller loop)."""
        self.runtime = runtime
        self.app = app
        self.deployment = deployment
        self.version = -1
        self.local = False
        self.exists = True
        self.slots: List[ReplicaSlot] = []
        self.max_queued = -1
        self.waiters: Deque[_Waiter] = collections.deque()
        self.has_local = False  # some replica is on this process's host
        self._ready = asyncio.Event()
        self.num_requests = 0  # routed so far (metrics)
        self.snapshot: Optional[ReplicaSetSnapshot] = None  # the last replica set
        self.followers: "weakref.WeakSet[Router]" = weakref.WeakSet()  # lanes' routers (``routing.lane``)
        if track:
            track_router(self)

    # ---- replica set updates (from the controller's long poll) ----
    def follow(self, router: "Router") -> None:
        """Copy this router's replica sets to ``router``, a lane's (home loop thread)."""
        self.followers.add(router)
        if self.snapshot is not None:
            self._tell(router, self.snapshot)

    def _tell(self, follower: "Router", snapshot: ReplicaSetSnapshot) -> None:
        try:
            post(follower.runtime.loop, follower.update, snapshot)
        except RuntimeError:  # the follower's loop is closed
            self.followers.discard(follower)

    def update(self, snapshot: ReplicaSetSnapshot) -> None:
        self.snapshot = snapshot
        for follower in list(self.followers):
            self._tell(follower, snapshot)
        self.version = snapshot["version"]
        self.exists = snapshot.get("exists", True)
        self.max_queued = snapshot.get("max_queued", -1)
        old = {s.replica_id: s for s in self.slots}
        here = getattr(self.runtime, "local_host", None)
        slots = []
        for r in snapshot.get("replicas", []):
            slot = old.pop(r["id"], None)
            if slot is None:
                slot = ReplicaSlot(r["id"], r["address"], r["key"], r["max_ongoing"])
                slot.local = here is not None and _host(slot.address) == here
            slot.max_ongoing = r["max_ongoing"]
            slot.models = frozenset(r.get("models", ()))
            slots.append(slot)
        for slot in old.values():
            slot.gone = True
        self.slots = slots
        self.has_local = any(s.local for s in slots)
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
        best = a if a.in_flight <= b.in_flight else b
        if self.has_local and not best.local:  # a local replica no busier wins
            local = min((s for s in free if s.local), key=lambda s: s.in_flight, default=None)
            if local is not None and local.in_flight <= best.in_flight:
                return local
        return best

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
            waiter.take(slot)

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
        waiter = _Waiter(future, model_id)
        self.waiters.append(waiter)
        self.runtime.report_queued(self)
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up (cancelled, timed out, disconnected)
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # a slot came just as it gave up: pass it on
            else:
                self._leave(waiter)
            raise

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter that gave up leaves the queue at once: it no longer counts against
        ``max_queued_requests`` nor in the queue length the controller sees."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass  # already taken off (dispatched or failed)

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

    @property
    def num_queued_with_followers(self) -> int:
        return len(self.waiters) + sum(len(f.waiters) for f in list(self.followers))

    # ---- calls ----
    async def _on_replica(self, model_id: str, use: Callable[[ReplicaSlot, Any], Awaitable[Any]],
                          hold: bool) -> Tuple[ReplicaSlot, Any]:
        """The one routing skeleton: assign a replica, ``use`` it through its channel
        (in this process or over the transport); a replica that was never reached
        is dropped and another tried. With ``hold`` the slot stays taken (streams,
        sessions) until the caller releases it."""
        self.num_requests += 1
        while True:
            slot = await self.assign(model_id)
            try:
                result = await use(slot, self.runtime.channel(slot))
            except Undelivered:
                self.release(slot)
                self.drop(slot)
                continue
            except BaseException:
                self.release(slot)
                raise
            if not hold:
                self.release(slot)
            return slot, result

    async def call(self, method: str, args: tuple, kwargs: dict, ctx: RequestContext, *, copy: bool = True) -> Any:
        """One unary call. ``copy=False`` lets a replica in this very process
        take the arguments as they are (the proxy's freshly built requests)."""
        wire_ctx = ctx.to_wire()
        _, result = await self._on_replica(
            ctx.multiplexed_model_id,
            lambda slot, channel: channel.call(slot.key, method, args, kwargs, wire_ctx, copy),
            hold=False,
        )
        return result

    def start_call(self, method: str, args: tuple, kwargs: dict, ctx: RequestContext) -> Optional[CallFuture]:
        """Start a unary call with no task (``routing.started_call``): sent at once when a
        replica is free, else queued and sent the moment one frees. None until the router
        knows its replicas (use ``call``). On this router's loop."""
        if not self.exists or not self._ready.is_set():
            return None
        future = CallFuture()
        call = future.call = Started(self, future, (method, args, kwargs, ctx), ctx.multiplexed_model_id)
        free = self.free_slot(call.model_id)
        if free is not None:
            slot, channel = free
            if type(channel) is not MuxConnection:
                return None  # a replica in this process: the general path calls it directly
            slot.in_flight += 1
            call.take(slot, channel)
            return future
        if not self.enqueue(call):
            future.set_exception(BackPressureError(num_queued_requests=len(self.waiters),
                                                   max_queued_requests=self.max_queued))
        return future

    def free_slot(self, model_id: str = "") -> Optional[Tuple[ReplicaSlot, Any]]:
        """A free replica's slot (not taken yet) and its channel, when no one waits ahead."""
        if self.waiters:
            return None
        slot = self._pick(model_id)
        return None if slot is None else (slot, self.runtime.channel(slot))

    def enqueue(self, waiter: Any) -> bool:
        """Queue a call made without a task (``take(slot)``, or ``future.set_exception``); False: full."""
        if self.max_queued != -1 and len(self.waiters) >= self.max_queued:
            return False
        self.waiters.append(waiter)
        self.runtime.report_queued(self)
        return True

    async def stream(
        self, method: str, args: tuple, kwargs: dict, ctx: RequestContext, *, copy: bool = True
    ) -> AsyncIterator[Any]:
        """One streaming call; items are yielded as the replica produces them."""
        wire_ctx = ctx.to_wire()
        slot, items = await self._on_replica(
            ctx.multiplexed_model_id,
            lambda slot, channel: channel.stream(slot.key, method, args, kwargs, wire_ctx, copy),
            hold=True,
        )
        try:
            async for item in items:
                yield item
        finally:
            try:
                await items.aclose()
            finally:
                self.release(slot)

    async def websocket(self, scope: Scope, ctx: RequestContext) -> "WebSocketSession":
        """Open a WebSocket session on a replica (it holds one request slot while open)."""
        wire_ctx = ctx.to_wire()
        slot, (outbound, push) = await self._on_replica(
            ctx.multiplexed_model_id,
            lambda slot, channel: channel.websocket(slot.key, scope, wire_ctx),
            hold=True,
        )
        return WebSocketSession(self, slot, outbound, push)


class WebSocketSession:
    """A WebSocket session through a router: push client events in, iterate the app's messages out."""

    def __init__(self, router: Router, slot: ReplicaSlot, outbound: AsyncIterator[dict],
                 push: Callable[[dict], None]) -> None:
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
