"""One proxy: its HTTP ASGI app served by uvicorn on the worker's own event loop,
and the gRPC proxy beside it when servicer functions are configured; and the
worker plugin through which the controller starts and stops it
(``dserve_proxy_start``/``dserve_proxy_stop`` worker handlers).

Not in a thread: a thread with its own loop halves throughput through GIL
ping-pong with the worker loop (see ``uvicorn_server`` for the socket and
signal details).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Dict, Optional

from distributed.diagnostics.plugin import WorkerPlugin

from ..config import HTTPOptions, gRPCOptions
from ..runtime import get_runtime
from ..types import RouteTable
from ..uvicorn_server import ConnectionLimits, EmbeddedServer, GuardedHttpToolsProtocol, config, fd_bounded
from ..wire import ROUTES_KEY
from .grpc_proxy import GRPCProxy
from .http_proxy import HTTPProxy

__all__ = ["ProxyServer", "ProxyWorkerPlugin", "PROXY_PLUGIN_NAME"]

PROXY_PLUGIN_NAME = "dserve-proxy"

logger = logging.getLogger("dserve.proxy")


def connection_limits(o: HTTPOptions) -> ConnectionLimits:
    """The protocol's limits from the proxy's options (connections bounded by the open-file limit)."""
    cap = fd_bounded(o.max_connections)
    if cap != o.max_connections:
        logger.warning("dserve proxy: max_connections %s lowered to %s by this process's open-file limit",
                       o.max_connections, cap)
    return ConnectionLimits(max_header_bytes=o.max_request_header_bytes, max_body_bytes=o.max_request_body_bytes,
                            header_timeout_s=o.request_header_timeout_s, body_timeout_s=o.request_body_timeout_s,
                            max_connections=cap)


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

    def _on_routes(self, snapshot: RouteTable) -> None:
        self.app.update_routes(snapshot)
        if self.grpc is not None:
            self.grpc.update_routes(snapshot)

    @property
    def task(self) -> Optional[asyncio.Task]:
        return self.server.task if self.server is not None else None

    async def start(self) -> None:
        o = self.options
        protocol = functools.partial(GuardedHttpToolsProtocol, limits=connection_limits(o))
        self.server = EmbeddedServer(config(
            self.app, http=protocol, ws="auto", timeout_keep_alive=int(o.keep_alive_timeout_s),
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


class ProxyWorkerPlugin(WorkerPlugin):
    """Lets the controller start and stop this worker's proxy (at most one; starts
    and stops never overlap)."""

    name = PROXY_PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.proxy: Optional[ProxyServer] = None
        self.lock = asyncio.Lock()
        worker.handlers["dserve_proxy_start"] = self.start
        worker.handlers["dserve_proxy_stop"] = self.stop

    async def teardown(self, worker: Any) -> None:
        for name in ("dserve_proxy_start", "dserve_proxy_stop"):
            worker.handlers.pop(name, None)
        await self.stop()

    async def start(self, options: dict, grpc_options: Optional[dict] = None) -> Dict[str, Any]:
        """Start (or keep) this worker's HTTP (and gRPC) proxy; the controller elected us."""
        async with self.lock:
            http, grpc = HTTPOptions(**options), gRPCOptions(**(grpc_options or {}))
            if self.proxy is not None:
                same = self.proxy.options == http and self.proxy.grpc_options == grpc
                if same and not self.proxy.task.done():
                    return {"ok": True, "port": self.proxy.port, "grpc_port": self.proxy.grpc_port}
                await self._stop()
            proxy = ProxyServer(http, grpc)
            try:
                await proxy.start()
            except OSError as exc:
                return {"error": f"HTTP proxy could not start on {self.worker.address}: {exc.strerror or exc}"}
            except Exception as exc:  # noqa: BLE001 - reported in the proxy's status
                return {"error": f"HTTP proxy could not start on {self.worker.address}: {exc!r}"}
            self.proxy = proxy
            return {"ok": True, "port": proxy.port, "grpc_port": proxy.grpc_port}

    async def stop(self) -> Dict[str, Any]:
        async with self.lock:
            return await self._stop()

    async def _stop(self) -> Dict[str, Any]:
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            await proxy.stop()
        return {"ok": True}
