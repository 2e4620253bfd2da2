"""Serving an ASGI app with uvicorn on a Dask server's own event loop.

Used by the HTTP proxies (on workers) and the REST admin API (on the
scheduler). The listening socket is created here with ``IPPROTO_TCP``
(asyncio only sets TCP_NODELAY on accepted sockets whose protocol says TCP:
otherwise Nagle plus delayed ACKs add ~40 ms), uvicorn is kept away from the
host process's signal handlers, and shutdown is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from typing import Any, Optional

import uvicorn

__all__ = ["PortInUseError", "bind_socket", "EmbeddedServer"]


class PortInUseError(OSError):
    pass


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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

    def capture_signals(self) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return contextlib.nullcontext()

    async def start_serving(self, host: str, port: int) -> None:
        sock = bind_socket(host, port)
        self.port = sock.getsockname()[1]
        self.task = asyncio.ensure_future(self.serve(sockets=[sock]))
        for _ in range(500):
            if self.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()

    async def stop(self, timeout: float = 5.0) -> None:
        if self.task is None:
            return
        self.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except Exception:  # noqa: BLE001
            self.force_exit = True
            self.task.cancel()


def config(app: Any, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings shared by dserve's servers."""
    base = dict(http="httptools", lifespan="off", access_log=False, log_level="warning",
                server_header=False, timeout_graceful_shutdown=2)
    base.update(kwargs)
    return uvicorn.Config(app, **base)
