"""HTTP requests answered without a task: the proxy's common case, made cheap.

The proxy's connections (``http_protocol.GuardedHttpToolsProtocol``) offer each
request whose whole body has arrived to ``DirectHTTP``. A request for an
application's route, with nothing the ASGI path must see to first (a
``request_timeout_s``, ``X-Forwarded-*`` headers, the built-in ``/-/`` paths, a
replica in this very process), is sent to a replica from the read callback: at
once when a replica is free, else it waits in the router's queue as itself and
is sent when a slot frees. A complete answer — the replica's one batch of ASGI
messages, what every non-streaming response is — is written through the
request's uvicorn cycle from the link's read callback: no task, no coroutine
chain, no ASGI ``receive``.

Everything else is handed to the ordinary ASGI path (``HTTPProxy``) with what
was read so far (``http_proxy.OPENED``): a streamed response, an error, a
replica that was gone (tried elsewhere), a lost link, a full write buffer, a
deployment deleted while the request waited. That path answers it as it answers
every request, so status codes, headers and metrics are the same either way. A
client that leaves cancels the call at the replica (or its place in the queue).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Optional, Tuple

from ..context import RequestContext
from ..http_protocol import DirectHandler
from ..routing.started_call import hold_slot
from ..routing.transport import ItemReader, LostLink, MuxConnection, StartedCall
from ..serialization import loads
from ..types import WireMessage
from ..wire import DONE, HTTP_METHOD, ITEM
from .http_proxy import MATCHED_ROUTE, OPENED, HTTPProxy, strip_root_path
from .proxy_metrics import STARTED, HTTPMetrics

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from ..http_protocol import GuardedHttpToolsProtocol
    from ..routing.router import ReplicaSlot, Router

__all__ = ["DirectHTTP", "DirectExchange"]

logger = logging.getLogger("dserve.proxy")


class DirectHTTP(DirectHandler):
    """The ``direct`` handler of one proxy's connections."""

    def __init__(self, proxy: HTTPProxy, recorder: HTTPMetrics) -> None:
        self.proxy = proxy
        self.recorder = recorder
        self.answered = 0  # requests answered here
        self.handed_over = 0  # requests taken, then handed to the ASGI path

    def __call__(self, connection: "GuardedHttpToolsProtocol", cycle: "RequestResponseCycle") -> bool:
        proxy = self.proxy
        if proxy.request_timeout_s or cycle.flow.write_paused:
            return False
        scope = cycle.scope
        path = strip_root_path(scope["path"], proxy.root_path)
        if path.startswith("/-/"):
            return False
        route = proxy.match(path)
        if route is None:
            return False
        for name, _ in scope["headers"]:
            if name.startswith(b"x-forwarded-"):  # uvicorn's proxy-headers middleware rewrites the client
                return False
        router = proxy.runtime.router(route[1], route[2])
        if not router.exists or not router._ready.is_set():
            return False
        ctx = proxy.request_context(scope, route)
        exchange = DirectExchange(self, connection, cycle, router, route, ctx)
        free = router.free_slot(ctx.multiplexed_model_id)
        if free is not None:
            slot, channel = free
            if type(channel) is not MuxConnection:
                return False  # a replica in this process: the ASGI path calls it directly
            exchange.begin()
            slot.in_flight += 1
            exchange.take(slot, channel)
            return True
        local = proxy.runtime.local_address
        if any(s.address == local for s in router.slots):
            return False
        exchange.begin()
        if not router.enqueue(exchange):  # full: the ASGI path answers 503
            exchange.hand_over(None)
        return True


    def rejected(self, cycle: "RequestResponseCycle", status: int) -> None:
        """Counted and logged as the ASGI path would have: with its route, if it has one."""
        scope = cycle.scope
        route = self.proxy.match(strip_root_path(scope["path"], self.proxy.root_path))
        if route is not None:
            scope[MATCHED_ROUTE] = route
        self.recorder.end(scope, self.recorder.begin(), status, [])


class DirectExchange(StartedCall):
    """One request taken by ``DirectHTTP``: queued, sent, answered or handed on.

    Queued in a router, it is its own waiter (``future``, ``model_id``, ``take``)."""

    __slots__ = ("handler", "connection", "cycle", "router", "route", "ctx", "model_id", "started", "slot",
                 "conn", "id", "finished", "turn")

    def __init__(self, handler: DirectHTTP, connection: "GuardedHttpToolsProtocol", cycle: "RequestResponseCycle",
                 router: "Router", route: Tuple[str, str, str], ctx: RequestContext) -> None:
        self.handler, self.connection, self.cycle, self.router, self.route, self.ctx = (
            handler, connection, cycle, router, route, ctx)
        self.model_id = ctx.multiplexed_model_id
        self.started = 0.0
        self.slot: Optional["ReplicaSlot"] = None
        self.conn: Optional[MuxConnection] = None
        self.id = -1
        self.finished = False
        self.turn: Optional[_Turn] = None  # set when a task took the request over while it was queued

    def begin(self) -> None:
        self.cycle.scope[MATCHED_ROUTE] = self.route
        self.started = self.handler.recorder.begin()
        self.connection.exchange = self

    # ---- the router's waiter ----
    @property
    def future(self) -> "DirectExchange":
        return self

    def done(self) -> bool:
        """Answered, handed on, or its task gave up the turn (cancelling a task cancels the
        future it awaits)."""
        return self.finished or (self.turn is not None and self.turn.future.done())

    def set_exception(self, exc: BaseException) -> None:
        """The deployment went away while this request waited."""
        if self.turn is not None:
            self.finished = True
            if not self.turn.future.done():
                self.turn.future.set_exception(exc)
            return
        self.hand_over(_Failed(exc))

    def take(self, slot: "ReplicaSlot", channel: Any = None) -> None:
        """Send the request on ``slot`` (counted in flight already)."""
        router = self.router
        if channel is None:
            channel = router.runtime.channel(slot)
        if type(channel) is MuxConnection:
            i = channel.start_call(slot.key, HTTP_METHOD, self._request(), {}, self.ctx.to_wire(), self, stream=True)
            if i is not None:
                self.slot, self.conn, self.id = slot, channel, i
                router.num_requests += 1
                if self.turn is not None:  # its task reads the reply
                    self.finished = True
                    self.turn.future.set_result(self._rest(None))
                return
        # its link is not up (or the replica is here): the ASGI path routes it, from the next
        # loop turn (here, inside the router's dispatch, the release would hand the slot to the
        # next queued request, which would bounce the same way: a recursion as deep as the queue)
        asyncio.get_running_loop().call_soon(self._bounce, slot)

    def _bounce(self, slot: "ReplicaSlot") -> None:
        self.router.release(slot)
        if self.finished:
            return
        if self.turn is None:
            self.hand_over(None)
            return
        self.finished = True
        if not self.turn.future.done():  # its task routes it afresh
            self.turn.future.set_result(self.router.stream(HTTP_METHOD, self._request(), {}, self.ctx, copy=False))

    def _request(self) -> Tuple[dict, bytes]:
        """What the replica gets: the forwarded scope and the body (as it was when a task took
        the request over: the task's ``receive`` empties the cycle's body)."""
        if self.turn is not None:
            return self.turn.request
        return (self.handler.proxy.forwarded_scope(self.cycle.scope, self.route), bytes(self.cycle.body))

    # ---- the reply ----
    def deliver(self, msg: WireMessage) -> None:
        if ITEM in msg and DONE in msg and not self.cycle.flow.write_paused:
            self.router.release(self.slot)  # type: ignore[arg-type]
            try:
                messages = loads(msg[ITEM])
            except Exception as exc:  # noqa: BLE001 - e.g. a class this process cannot import: a 500
                self.hand_over(_Failed(exc))
                return
            self.respond(messages)
        else:
            self.hand_over(self._rest(msg))

    def lost(self, error: BaseException) -> None:
        self.hand_over(self._rest(LostLink(error)))

    def _rest(self, first: Any) -> ItemReader:
        reader = self.conn.adopt(self.id, first, self.ctx.request_id)  # type: ignore[union-attr]
        return hold_slot(self.router, self.slot, reader)  # type: ignore[arg-type]

    def respond(self, messages: list) -> None:
        """Write a complete answer through the request's cycle (its sends never wait here:
        the write buffer was not full and the writes are corked until this turn ends)."""
        self._finish()
        self.handler.answered += 1
        cycle = self.cycle
        status, headers = 0, []
        try:
            for message in messages:
                if message["type"] == "http.response.start":
                    headers = message["headers"] = [*message.get("headers", ()), self.rid_header()]
                    status = message["status"]
                _run(cycle.send(message))
            if not cycle.response_complete and not cycle.disconnected:
                raise RuntimeError("the replica's answer ended before its response was complete")
        except Exception:  # noqa: BLE001 - as uvicorn does for an app that breaks the protocol
            logger.exception("request %s: invalid answer from the replica", self.ctx.request_id)
            if not cycle.response_started:
                status = 500
                _run(cycle.send({"type": "http.response.start", "status": 500,
                                 "headers": [(b"content-type", b"text/plain; charset=utf-8"), self.rid_header()]}))
                _run(cycle.send({"type": "http.response.body", "body": b"Internal Server Error"}))
            else:
                self.connection.transport.close()
        self.handler.recorder.end(cycle.scope, self.started, 0 if cycle.disconnected else status, headers)

    def rid_header(self) -> Tuple[bytes, bytes]:
        return (b"x-request-id", self.ctx.request_id.encode())

    def hand_over(self, opened: Any) -> None:
        """Let the ASGI path answer, from ``opened`` (the reply stream so far; None: from the start)."""
        self.finished = True
        self._start_task(opened)

    def _start_task(self, opened: Any) -> None:
        if self.connection.exchange is self:
            self.connection.exchange = None
        self.handler.handed_over += 1
        scope = self.cycle.scope
        scope[STARTED] = self.started
        scope[OPENED] = (opened, self.ctx)
        self.connection.start_held(self.cycle)

    def to_task(self) -> None:
        """Hand this request to the ASGI path now, wherever it stands (the proxy is stopping:
        uvicorn's shutdown waits for its tasks, then cancels them). A queued one keeps its
        place in the queue: its task waits for the turn (``_Turn``)."""
        if self.finished or self.turn is not None:
            return
        if self.conn is None:  # queued (or bouncing)
            turn = _Turn(self, self._request())
            self.turn = turn
            self._start_task(turn)
        else:
            self.hand_over(self._rest(None))

    def client_gone(self) -> None:
        """The client closed its connection: cancel the call (or leave the queue)."""
        self.finished = True
        router = self.router
        if self.conn is not None:
            if self.id in self.conn._pending:
                self.conn.cancel(self.id)
                router.release(self.slot)  # type: ignore[arg-type]
        else:
            router._leave(self)  # type: ignore[arg-type]
        logger.info("client disconnected; request %s cancelled", self.ctx.request_id)
        self.handler.recorder.end(self.cycle.scope, self.started, 0, [])

    def _finish(self) -> None:
        self.finished = True
        if self.connection.exchange is self:
            self.connection.exchange = None


class _Turn:
    """A queued request's place in its router's queue, kept when its ASGI task takes it over
    (the proxy is stopping): the reply stream, once the exchange has had its turn — the
    call's reader, ``Router.stream`` if its slot could not be used, or the queue's error.
    Closed before then (its client left, its task was cancelled), it leaves the queue."""

    __slots__ = ("exchange", "request", "future", "stream")

    def __init__(self, exchange: DirectExchange, request: Tuple[dict, bytes]) -> None:
        self.exchange, self.request = exchange, request
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.stream: Any = None

    def __aiter__(self) -> "_Turn":
        return self

    async def __anext__(self) -> Any:
        if self.stream is None:
            self.stream = await self.future
        return await self.stream.__anext__()

    def _leave(self) -> None:
        exchange = self.exchange
        if not exchange.finished:
            exchange.finished = True
            exchange.router._leave(exchange)  # type: ignore[arg-type]
            self.future.cancel()

    async def aclose(self) -> None:
        self._leave()
        if self.stream is None and self.future.done() and not self.future.cancelled() and self.future.exception() is None:
            self.stream = self.future.result()
        if self.stream is not None:
            await self.stream.aclose()

    def close(self) -> None:
        self._leave()
        if self.stream is None and self.future.done() and not self.future.cancelled() and self.future.exception() is None:
            self.stream = self.future.result()
        if isinstance(self.stream, ItemReader):
            self.stream.close()
        elif self.stream is not None:  # Router.stream, an async generator: closed where it runs
            asyncio.ensure_future(self.stream.aclose())


class _Failed:
    """A reply stream that fails at once (the ASGI path answers the error)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __aiter__(self) -> "_Failed":
        return self

    async def __anext__(self) -> Any:
        raise self.error

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        pass


def _run(coroutine: Any) -> None:
    """Run a coroutine that does not wait (uvicorn's ``send`` with room to write) to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the response's write waited")
