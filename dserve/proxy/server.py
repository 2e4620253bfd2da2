"""One HTTP proxy: its ASGI app served by uvicorn on the worker's own event loop.

Not in a thread: a thread with its own loop halves throughput through GIL
ping-pong with the worker loop (see ``uvicorn_server`` for the socket and
signal details).
"""
from __future__ import annotations

from typing import Optional

from ..config import HTTPOptions
from ..runtime import get_runtime
from ..uvicorn_server import EmbeddedServer, config
from .http_proxy import ROUTES_KEY, HTTPProxy

__all__ = ["ProxyServer"]


class ProxyServer:
    """The proxy ASGI app, its uvicorn server and its route-table watch."""

    def __init__(self, options: HTTPOptions) -> None:
        self.options = options
        self.runtime = get_runtime()
        self.app = HTTPProxy(self.runtime, options.root_path, options.request_timeout_s)
        self.server: Optional[EmbeddedServer] = None
        self.port = options.port

    @property
    def task(self):
        return self.server.task if self.server is not None else None

    async def start(self) -> None:
        o = self.options
        self.server = EmbeddedServer(config(
            self.app, ws="auto", timeout_keep_alive=int(o.keep_alive_timeout_s),
            ssl_keyfile=o.ssl_keyfile, ssl_certfile=o.ssl_certfile,
            ssl_keyfile_password=o.ssl_keyfile_password, ssl_ca_certs=o.ssl_ca_certs,
        ))
        self.runtime.watch(ROUTES_KEY, self.app.update_routes)
        await self.server.start_serving(o.host, o.port)
        self.port = self.server.port

    async def stop(self, timeout: float = 5.0) -> None:
        self.runtime.unwatch(ROUTES_KEY)
        if self.server is not None:
            await self.server.stop(timeout)
