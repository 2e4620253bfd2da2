"""One proxy: its HTTP ASGI app served by uvicorn on the worker's own event loop,
and the gRPC proxy beside it when servicer functions are configured.

Not in a thread: a thread with its own loop halves throughput through GIL
ping-pong with the worker loop (see ``uvicorn_server`` for the socket and
signal details).
"""
from __future__ import annotations

from typing import Optional

from ..config import HTTPOptions, gRPCOptions
from ..runtime import get_runtime
from ..uvicorn_server import EmbeddedServer, config
from .grpc_proxy import GRPCProxy
from .http_proxy import ROUTES_KEY, HTTPProxy

__all__ = ["ProxyServer"]


class ProxyServer:
    """The proxy ASGI app, its uvicorn server and its route-table watch."""

    def __init__(self, options: HTTPOptions, grpc_options: Optional[gRPCOptions] = None) -> None:
        self.options = options
        self.grpc_options = grpc_options or gRPCOptions()
        self.runtime = get_runtime()
        self.app = HTTPProxy(self.runtime, options.root_path, options.request_timeout_s)
        self.server: Optional[EmbeddedServer] = None
        self.grpc: Optional[GRPCProxy] = None
        self.port = options.port
        self.grpc_port: Optional[int] = None

    def _on_routes(self, snapshot: dict) -> None:
        self.app.update_routes(snapshot)
        if self.grpc is not None:
            self.grpc.update_routes(snapshot)

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
        g = self.grpc_options
        if g.grpc_servicer_functions:  # the gRPC proxy starts only when servicers are given
            self.grpc = GRPCProxy(self.runtime, g.grpc_servicer_functions, g.request_timeout_s)
            await self.grpc.start(o.host, g.port)
            self.grpc_port = self.grpc.port
        self.runtime.watch(ROUTES_KEY, self._on_routes)
        try:
            await self.server.start_serving(o.host, o.port)
        except BaseException:
            if self.grpc is not None:
                await self.grpc.stop(0)
            raise
        self.port = self.server.port

    async def stop(self, timeout: float = 5.0) -> None:
        self.runtime.unwatch(ROUTES_KEY)
        self.app.draining = True
        if self.grpc is not None:
            self.grpc.draining = True
            await self.grpc.stop(2.0)
        if self.server is not None:
            await self.server.stop(timeout)
