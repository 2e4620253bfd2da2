"""The proxies' HTTP/1.1 connections: uvicorn's httptools protocol, guarded, with cheap timers and writes.

``GuardedHttpToolsProtocol`` adds the limits uvicorn lacks (see
``ConnectionLimits``), enforced while a request arrives, before any of it reaches
the ASGI app: headers too large 431, a body too large 413, headers or body too
slow 408, connections beyond the limit 503. uvicorn's keep-alive timer only runs
after a response, so without the header timer a client trickling a byte every
few seconds would hold its socket forever. A rejected connection is closed
gracefully: the answer, then our half-close, then what the client still sends
is read and dropped for ``REJECT_LINGER_S`` (closing with unread data would
reset the connection and the client could lose the answer).

What a request costs the connection is kept small: one timer per connection
(header, body, linger and keep-alive deadlines alike), moved forward lazily — a
request only sets a deadline; writes corked for one loop turn
(``CorkedTransport``: uvicorn writes a response's head and body separately, one
``send`` each); reads of at most ``READ_CHUNK_BYTES`` (asyncio's default 256 KiB
read buffer is an mmap + mremap + munmap per read, whatever arrived).

A request may also be answered without an ASGI task at all: given a ``direct``
handler (the HTTP proxy's ``proxy.direct``), a request whose whole body arrives
within the read-buffer limit is held until its last byte and offered to it; the
handler either takes it (and answers through the request's cycle later) or
declines, and the ASGI task starts as usual.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .config import REJECT_LINGER_S
from .timers import TIMER_SLACK_S

__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol", "CorkedTransport", "READ_CHUNK_BYTES", "Exchange",
           "DirectHandler"]

logger = logging.getLogger("dserve.proxy")

READ_CHUNK_BYTES = 64 * 1024  # below glibc's 128 KiB mmap threshold: reads come from the heap


@dataclass(frozen=True)
class ConnectionLimits:
    """What ``GuardedHttpToolsProtocol`` enforces (None: no limit)."""

    max_header_bytes: Optional[int] = None
    max_body_bytes: Optional[int] = None
    header_timeout_s: Optional[float] = None
    body_timeout_s: Optional[float] = None
    max_connections: Optional[int] = None
    linger_s: float = REJECT_LINGER_S


_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


class CorkedTransport:
    """A transport whose writes made during one event-loop turn leave in one ``write``
    (one ``send`` system call instead of one per ASGI message); everything else is
    the wrapped transport's. Closing flushes first."""

    __slots__ = ("transport", "loop", "buffer", "scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.buffer: list = []
        self.scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.buffer.append(data)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        self.scheduled = False
        buffer = self.buffer
        if buffer:
            self.buffer = []
            if not self.transport.is_closing():
                self.transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.buffer = []
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _answer(status: int, text: str) -> bytes:
    body = text.encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))


class Exchange:
    """A request taken by a ``direct`` handler, until it is answered."""

    __slots__ = ()

    def client_gone(self) -> None:
        """The client closed the connection first."""

    def to_task(self) -> None:
        """Let the ASGI app finish this request, in a task (the server is shutting down)."""


class DirectHandler:
    """What a connection offers its held requests to (the HTTP proxy's ``proxy.direct``)."""

    def __call__(self, connection: "GuardedHttpToolsProtocol", cycle: RequestResponseCycle) -> bool:
        """Whether it took the request (then it sets ``connection.exchange`` until the
        answer is complete); False: run the ASGI app."""
        return False

    def rejected(self, cycle: RequestResponseCycle, status: int) -> None:
        """A held request the connection ended itself mid-body (``status`` 408, 413, 400 for
        a malformed body; 0: its client left, or it was closed without an answer): no ASGI
        app saw it, count it here."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``ConnectionLimits``. ``phase`` is where the
    connection stands: idle (between requests), headers, body (until the body's last
    byte), upgraded (a WebSocket now), rejected (answered, closing)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, direct: Optional[DirectHandler] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.direct = direct
        self.holding = False  # inside ``on_headers_complete``: a request's task may be held back
        self.held: Optional[RequestResponseCycle] = None  # a request waiting for its last byte
        self.exchange: Optional[Exchange] = None  # the request a ``direct`` handler is answering
        self.timer: Optional[asyncio.TimerHandle] = None  # fires at or before ``deadline``
        self.deadline: Optional[float] = None  # when the current phase times out (None: never)
        self.keeping_alive = False  # the deadline is the keep-alive one (idle after a response)
        self.phase = "idle"
        self.received = 0  # the current request's line and headers (as parsed), then its body
        self.raw_header_bytes = 0  # bytes fed while its headers are incomplete (httptools buffers them)

    # ---- timers and rejection ----
    def _arm(self, seconds: Optional[float]) -> None:
        self.keeping_alive = False
        if seconds is None:
            self.deadline = None
            return
        self.deadline = deadline = self.loop.time() + seconds
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._tick)
        elif self.timer.when() > deadline:  # sooner than the timer: move it
            self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._tick)

    def _disarm(self) -> None:
        self.deadline = None  # the timer, if any, finds nothing due and stops

    def _tick(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None:
            return
        if self.loop.time() + TIMER_SLACK_S < deadline:  # moved forward since: wait for it
            self.timer = self.loop.call_at(deadline, self._tick)
            return
        self.deadline = None
        self._expired()

    def _expired(self) -> None:
        if self.phase == "headers":
            self._reject(408, f"Request headers not received within {self.limits.header_timeout_s}s.")
        elif self.phase == "body":
            self._reject(408, f"Request body not received within {self.limits.body_timeout_s}s.")
        else:  # idle and silent since the accept (or since stray bytes), or done lingering
            self.transport.close()

    def _reject(self, status: int, text: str) -> None:
        phase, self.phase = self.phase, "rejected"
        self._disarm()
        cycle = self.cycle
        if phase == "body":  # only if this request's app has not answered (and none queued before it)
            writable = not self.pipeline and cycle is not None and not cycle.response_started
        else:  # a new request's headers: only if the previous response is complete
            writable = cycle is None or cycle.response_complete
        self._drop_held(status if writable else 0)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app (if any) sees http.disconnect; its sends are dropped
            cycle.message_event.set()
        logger.info("proxy answered %s to %s: %s", status if writable else "nothing (closed)", self.client, text)
        if not writable:
            self.transport.close()
            return
        self.transport.write(_answer(status, text))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()
            self._arm(self.limits.linger_s)
        else:
            self.transport.close()

    # ---- connection ----
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.limits.max_connections
        over = limit is not None and len(self.connections) >= limit
        super().connection_made(transport)
        if hasattr(transport, "max_size"):  # reads of at most 64 KiB come from the heap, not an mmap per read
            transport.max_size = READ_CHUNK_BYTES  # type: ignore[attr-defined]
        self.transport = CorkedTransport(transport, self.loop)  # type: ignore[assignment]
        if over:
            self._reject(503, f"This proxy is at its limit of {limit} open connections; try again later.")
        else:
            self._arm(self.limits.header_timeout_s)  # the first request's headers are due from the accept

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._drop_held(0)  # its client left mid-body: counted as the ASGI path counts it (499)
        super().connection_lost(exc)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone()

    # ---- requests answered without a task (``direct``) ----
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self.holding and app is self.app and not cycle.waiting_for_100_continue:
            self.held = cycle  # offered to ``direct`` once its body is complete
            return
        super()._start_asgi_task(cycle, app)

    def start_held(self, cycle: RequestResponseCycle) -> None:
        """Run the ASGI app for a request held back or declined by ``direct``."""
        super()._start_asgi_task(cycle, self.app)

    def _offer(self, cycle: RequestResponseCycle) -> None:
        if not self.direct(self, cycle):  # type: ignore[misc]
            self.start_held(cycle)

    def data_received(self, data: bytes) -> None:
        if self.phase == "rejected":
            return  # lingering: read and drop
        if self.phase == "idle" and (self.deadline is None or self.keeping_alive) and (self.cycle is None or self.cycle.response_complete):
            self._arm(self.limits.header_timeout_s)
        super().data_received(data)
        if self.phase == "headers":
            self.raw_header_bytes += len(data)
            limit = self.limits.max_header_bytes
            if limit is not None and self.raw_header_bytes > limit:
                self._reject(431, f"Request line and headers exceed {limit} bytes.")

    def shutdown(self) -> None:
        exchange = self.exchange
        if exchange is not None:  # uvicorn's shutdown waits for, then cancels, tasks: make it one
            exchange.to_task()
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        if self.phase != "rejected":
            self._disarm()
            self.phase = "rejected"
            self._drop_held(400)  # e.g. a malformed chunk mid-body
            super().send_400_response(msg)

    def _drop_held(self, status: int) -> None:
        """The request held back from the ASGI app ends here with ``status`` (0: no answer):
        the direct handler counts it, as the ASGI path would have."""
        held, self.held = self.held, None
        if held is not None:
            self.direct.rejected(held, status)  # type: ignore[union-attr]

    def handle_websocket_upgrade(self) -> None:
        if self.phase != "rejected":
            self._disarm()
            self.phase = "upgraded"
            corked = self.transport
            if isinstance(corked, CorkedTransport):  # the WebSocket protocol writes for itself
                corked.flush()
                self.transport = corked.transport
            super().handle_websocket_upgrade()

    # ---- parser callbacks ----
    def on_message_begin(self) -> None:
        if self.phase == "rejected":
            return
        super().on_message_begin()
        self.phase, self.received, self.raw_header_bytes = "headers", 0, 0
        if self.deadline is None or self.keeping_alive:
            self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        if self.phase != "rejected":
            self.received += len(url)
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase != "rejected":
            self.received += len(name) + len(value) + 4
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.phase == "rejected":
            return
        limits = self.limits
        if limits.max_header_bytes is not None and self.received > limits.max_header_bytes:
            self._reject(431, f"Request line and headers are {self.received} bytes; the limit is {limits.max_header_bytes}.")
            return
        if limits.max_body_bytes is not None:
            declared = next((v for k, v in self.headers if k == b"content-length"), b"0")
            if declared.isdigit() and int(declared) > limits.max_body_bytes:
                self._reject(413, f"Request body is {int(declared)} bytes; the limit is {limits.max_body_bytes}.")
                return
        self.holding = self.direct is not None
        try:
            super().on_headers_complete()
        finally:
            self.holding = False
        self.received = 0
        if self.parser.should_upgrade() and self._should_upgrade():
            self.phase = "upgrading"
            self._disarm()
        else:
            self.phase = "body"
            self._arm(limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if self.phase != "body":
            return
        self.received += len(body)
        limit = self.limits.max_body_bytes
        if limit is not None and self.received > limit:
            self._reject(413, f"Request body exceeds {limit} bytes.")
            return
        super().on_body(body)
        held = self.held
        if held is not None and self.flow.read_paused:  # more than the read buffer: stream it to the app
            self.held = None
            self.start_held(held)

    def on_response_complete(self) -> None:
        """uvicorn's, with its keep-alive timer (a ``call_later`` and a cancel per request)
        folded into this connection's one lazy timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.phase == "idle":
            self._arm(self.timeout_keep_alive)
            self.keeping_alive = True  # idle and silent this long: closed (``_expired``)

    def on_message_complete(self) -> None:
        if self.phase == "rejected":
            return
        if self.phase == "body":
            self._disarm()
            self.phase = "idle"
        super().on_message_complete()
        held = self.held
        if held is not None:
            self.held = None
            self._offer(held)
