"""Serving an ASGI app with uvicorn on a Dask server's own event loop.

Used by the HTTP proxies (on workers) and the REST admin API (on the
scheduler). The listening socket is created here (with ``SO_REUSEPORT`` when
several proxies of one host share the port) with ``IPPROTO_TCP``
(asyncio only sets TCP_NODELAY on accepted sockets whose protocol says TCP:
otherwise Nagle plus delayed ACKs add ~40 ms), uvicorn is kept away from the
host process's signal handlers, and shutdown is bounded.

``GuardedHttpToolsProtocol`` adds the limits uvicorn lacks (see
``ConnectionLimits``), enforced while a request arrives, before any of it reaches
the ASGI app: headers too large 431, a body too large 413, headers or body too
slow 408, connections beyond the limit 503. uvicorn's keep-alive timer only runs
after a response, so without the header timer a client trickling a byte every
few seconds would hold its socket forever. A rejected connection is closed
gracefully: the answer, then our half-close, then what the client still sends
is read and dropped for ``REJECT_LINGER_S`` (closing with unread data would
reset the connection and the client could lose the answer). Its timers cost
nothing per request: one timer per connection, moved forward lazily (a request
only sets a deadline). Its writes are corked for one loop turn
(``CorkedTransport``): uvicorn writes a response's head and body separately, and
on loopback each ``send`` is the dearest thing a proxy does.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any, Optional

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import PROXY_FD_RESERVE, REJECT_LINGER_S

__all__ = ["PortInUseError", "bind_socket", "reuse_port_supported", "EmbeddedServer", "ConnectionLimits",
           "GuardedHttpToolsProtocol", "CorkedTransport", "fd_bounded"]

logger = logging.getLogger("dserve.proxy")

# asyncio reads up to 256 KiB per recv on a plain Protocol: an allocation that size is an
# mmap + mremap + munmap per read (glibc's mmap threshold is 128 KiB), whatever arrived
READ_CHUNK_BYTES = 64 * 1024


class PortInUseError(OSError):
    pass


def reuse_port_supported() -> bool:
    """Can several processes listen on one port (``SO_REUSEPORT``: Linux, the BSDs, macOS)?"""
    return hasattr(socket, "SO_REUSEPORT")


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; with ``reuse_port`` other processes may listen on the same
    host and port (``SO_REUSEPORT``: the kernel spreads new connections among them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        if not reuse_port_supported():
            sock.close()
            raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this platform")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(exc.errno, f"port {port} on {host} is already in use") from None
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handling (the Dask process owns SIGINT/SIGTERM),
    started as a task on the running loop and stopped within a bound."""

    task: Optional[asyncio.Task] = None
    port: int = 0
    sock: Optional[socket.socket] = None

    def capture_signals(self) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return contextlib.nullcontext()

    async def start_serving(self, host: str, port: int, reuse_port: bool = False) -> None:
        sock = self.sock = bind_socket(host, port, reuse_port)
        self.port = sock.getsockname()[1]
        self.task = asyncio.ensure_future(self.serve(sockets=[sock]))
        for _ in range(500):
            if self.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if self.task.done():
            self._release()
            self.task.result()

    def _release(self) -> None:
        """A server task that died (cancelled or failed) never shut down: close its
        listening socket and its connections so the port can be served again."""
        for server in getattr(self, "servers", []):
            server.close()
        if self.sock is not None:
            self.sock.close()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()

    async def stop(self, timeout: float = 5.0) -> None:
        if self.task is None:
            return
        if self.task.done():
            self._release()
            return
        self.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except Exception:  # noqa: BLE001
            self.force_exit = True
            self.task.cancel()
            self._release()


def config(app: Any, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings shared by dserve's servers."""
    base = dict(http="httptools", lifespan="off", access_log=False, log_level="warning",
                server_header=False, timeout_graceful_shutdown=2)
    base.update(kwargs)
    return uvicorn.Config(app, **base)


@dataclass(frozen=True)
class ConnectionLimits:
    """What ``GuardedHttpToolsProtocol`` enforces (None: no limit)."""

    max_header_bytes: Optional[int] = None
    max_body_bytes: Optional[int] = None
    header_timeout_s: Optional[float] = None
    body_timeout_s: Optional[float] = None
    max_connections: Optional[int] = None
    linger_s: float = REJECT_LINGER_S


def fd_bounded(max_connections: Optional[int], reserve: int = PROXY_FD_RESERVE) -> Optional[int]:
    """``max_connections`` bounded by the process's open-file limit less a reserve, so that
    connections beyond it are answered 503 before the process runs out of descriptors."""
    if max_connections is None:
        return None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return max_connections
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return max_connections
    return max(1, min(max_connections, max(soft - reserve, soft // 2)))


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


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``ConnectionLimits``. ``phase`` is where the
    connection stands: idle (between requests), headers, body (until the body's last
    byte), upgraded (a WebSocket now), rejected (answered, closing)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.timer: Optional[asyncio.TimerHandle] = None  # fires at or before ``deadline``
        self.deadline: Optional[float] = None  # when the current phase times out (None: never)
        self.phase = "idle"
        self.received = 0  # the current request's line and headers (as parsed), then its body
        self.raw_header_bytes = 0  # bytes fed while its headers are incomplete (httptools buffers them)

    # ---- timers and rejection ----
    def _arm(self, seconds: Optional[float]) -> None:
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
        if self.loop.time() < deadline:  # moved forward since: wait for it
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
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase == "rejected":
            return  # lingering: read and drop
        if self.phase == "idle" and self.deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm(self.limits.header_timeout_s)
        super().data_received(data)
        if self.phase == "headers":
            self.raw_header_bytes += len(data)
            limit = self.limits.max_header_bytes
            if limit is not None and self.raw_header_bytes > limit:
                self._reject(431, f"Request line and headers exceed {limit} bytes.")

    def send_400_response(self, msg: str) -> None:
        if self.phase != "rejected":
            self._disarm()
            self.phase = "rejected"
            super().send_400_response(msg)

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
        if self.deadline is None:
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
        super().on_headers_complete()
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

    def on_message_complete(self) -> None:
        if self.phase == "rejected":
            return
        if self.phase == "body":
            self._disarm()
            self.phase = "idle"
        super().on_message_complete()
