"""Run the proxy's ASGI app with uvicorn on a Dask worker's own event loop.

Not in a thread (a thread with its own loop halves throughput through GIL
ping-pong with the worker loop). The listening socket is created here with
``IPPROTO_TCP`` (asyncio only sets TCP_NODELAY on accepted sockets whose
protocol says TCP: otherwise Nagle plus delayed ACKs add ~40 ms), uvicorn is
kept away from the worker's signal handlers, and shutdown is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any, Optional

import uvicorn

from ..config import HTTPOptions
from ..runtime import get_runtime
from .http_proxy import ROUTES_KEY, HTTPProxy

__all__ = ["ProxyServer", "PortInUseError"]

logger = logging.getLogger("dserve.proxy")


class PortInUseError(OSError):
    pass


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handling: the Dask worker owns SIGINT/SIGTERM."""

    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


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


class ProxyServer:
    """One HTTP proxy: the ASGI app, its uvicorn server and its route-table watch."""

    def __init__(self, options: HTTPOptions) -> None:
        self.options = options
        self.runtime = get_runtime()
        self.app = HTTPProxy(self.runtime, options.root_path, options.request_timeout_s)
        self.server: Optional[_EmbeddedServer] = None
        self.task: Optional[asyncio.Task] = None
        self.port = options.port

    async def start(self) -> None:
        sock = bind_socket(self.options.host, self.options.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="httptools",
            ws="auto",
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_keep_alive=int(self.options.keep_alive_timeout_s),
            timeout_graceful_shutdown=2,
            ssl_keyfile=self.options.ssl_keyfile,
            ssl_certfile=self.options.ssl_certfile,
            ssl_keyfile_password=self.options.ssl_keyfile_password,
            ssl_ca_certs=self.options.ssl_ca_certs,
        )
        self.server = _EmbeddedServer(config)
        self.runtime.watch(ROUTES_KEY, self.app.update_routes)
        self.task = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        for _ in range(500):
            if self.server.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()

    async def stop(self, timeout: float = 5.0) -> None:
        self.runtime.unwatch(ROUTES_KEY)
        if self.server is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except Exception:
            self.server.force_exit = True
            self.task.cancel()
