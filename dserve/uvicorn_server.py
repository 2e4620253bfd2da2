"""Serving an ASGI app with uvicorn on a Dask server's own event loop.

Used by the HTTP proxies (on workers) and the REST admin API (on the
scheduler). The listening socket is created here (with ``SO_REUSEPORT`` when
several proxies of one host share the port) with ``IPPROTO_TCP``
(asyncio only sets TCP_NODELAY on accepted sockets whose protocol says TCP:
otherwise Nagle plus delayed ACKs add ~40 ms), uvicorn is kept away from the
host process's signal handlers, and shutdown is bounded.

The proxies' connections are ``http_protocol.GuardedHttpToolsProtocol``.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any, Optional

import uvicorn

from .config import PROXY_FD_RESERVE

__all__ = ["PortInUseError", "bind_socket", "reuse_port_supported", "EmbeddedServer", "config", "fd_bounded"]

logger = logging.getLogger("dserve.proxy")



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
