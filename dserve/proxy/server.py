"""One proxy: its HTTP ASGI app served by uvicorn on the worker's own event loop,
and the gRPC proxy beside it when servicer functions are configured; and the
worker plugin through which the controller starts, checks and stops it
(``dserve_proxy_start``/``dserve_proxy_check``/``dserve_proxy_stop`` worker
handlers).

HTTP and gRPC are independent: a gRPC proxy that cannot start (a servicer
function that does not import, its port taken) is reported as ``grpc_error``
while HTTP serves. HTTP's limits (``HTTPOptions``) are enforced by
``uvicorn_server.GuardedHttpToolsProtocol``.

Where it listens: ``HTTPOptions.host``, or its worker's own loopback alias when
hosts are simulated on one machine (``bind_host``); with
``HTTPOptions.proxies_per_host`` > 1 the listening sockets (HTTP and gRPC) set
``SO_REUSEPORT`` so that several proxies of one host share the port.

Not in a thread: a thread with its own loop halves throughput through GIL
ping-pong with the worker loop (see ``uvicorn_server`` for the socket and
signal details).
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from typing import Any, Dict, Optional

from distributed.comm import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin

from ..config import HTTPOptions, LoggingConfig, gRPCOptions
from ..logs import close_sink, open_sink, reconfigure_sink
from ..metrics import enabled as metrics_enabled
from ..runtime import get_runtime
from ..types import RouteTable
from ..http_protocol import ConnectionLimits, GuardedHttpToolsProtocol
from ..uvicorn_server import EmbeddedServer, config, fd_bounded, reuse_port_supported
from ..wire import ROUTES_KEY
from .grpc_proxy import GRPCProxy
from .http_proxy import HTTPProxy
from .direct import DirectHTTP
from .proxy_metrics import HTTPMetrics, forget_application

__all__ = ["ProxyServer", "ProxyWorkerPlugin", "PROXY_PLUGIN_NAME", "bind_host"]

PROXY_PLUGIN_NAME = "dserve-proxy"

logger = logging.getLogger("dserve.proxy")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_host(configured: str, worker_address: Optional[str]) -> str:
    """The address a proxy binds: ``HTTPOptions.host``, except on loopback aliases.

    Several hosts can be simulated on one machine with workers on loopback aliases
    (``dask worker --host 127.0.0.2``; Linux routes all of 127/8 to loopback). When
    the configured host is a loopback address (127.x or localhost) and this proxy's
    worker runs on another IPv4 loopback address, the proxy binds its worker's
    address: every simulated host then serves the same port on its own address
    instead of all colliding on 127.0.0.1. On real hosts (a worker on 10.0.0.5)
    127.0.0.1 stays 127.0.0.1 on each machine: nothing changes. The gRPC proxy
    binds the same address."""
    if not worker_address or not _loopback(configured):
        return configured
    try:
        worker_host = get_address_host(worker_address)
        worker_ip = ipaddress.ip_address(worker_host)
    except ValueError:
        return configured
    if worker_ip.version == 4 and worker_ip.is_loopback and worker_host != configured:
        return worker_host
    return configured


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
        self.direct: Optional[DirectHTTP] = None  # its requests answered without a task
        self.host = options.host  # what it binds: see ``bind_host``
        self.port = options.port
        self.grpc_port: Optional[int] = None
        self.grpc_error: Optional[str] = None
        self._last_routes: RouteTable = {}
        self.log_key = f"proxy@{self.runtime.local_address}"
        self._logging: dict = {}

    def _on_routes(self, snapshot: RouteTable) -> None:
        for gone in set(self._last_routes.get("apps") or {}) - set(snapshot.get("apps") or {}):
            forget_application(gone)  # a deleted application's request series
        self._last_routes = snapshot
        self.app.update_routes(snapshot)
        logging_config = snapshot.get("logging") or {}
        if logging_config != self._logging:
            self._logging = logging_config
            reconfigure_sink(self.log_key, LoggingConfig(**logging_config))
        if self.grpc is not None:
            self.grpc.update_routes(snapshot)

    @property
    def task(self) -> Optional[asyncio.Task]:
        return self.server.task if self.server is not None else None

    def _served_app(self) -> HTTPMetrics:
        """The proxy app, wrapped to record request metrics (unless they are off) and the access log."""
        host = self.runtime.local_address or ""
        node_ip = get_address_host(host) if host else ""
        return HTTPMetrics(self.app, self.options.root_path, host, node_ip, metrics_enabled(),
                           self.app.access_log_enabled)

    async def start(self) -> None:
        """Start HTTP (its failure raises), then gRPC (its failure is kept in ``grpc_error``)."""
        o = self.options
        file_name = "proxy_" + get_address_host(self.runtime.local_address or "local").replace(":", "_") + ".log"
        open_sink(self.log_key, "ProxyActor", file_name=file_name, component="proxy")
        served = self._served_app()
        self.direct = DirectHTTP(self.app, served)
        protocol = functools.partial(GuardedHttpToolsProtocol, limits=connection_limits(o), direct=self.direct)
        self.server = EmbeddedServer(config(
            served, http=protocol, ws="auto", timeout_keep_alive=int(o.keep_alive_timeout_s),
            ssl_keyfile=o.ssl_keyfile, ssl_certfile=o.ssl_certfile,
            ssl_keyfile_password=o.ssl_keyfile_password, ssl_ca_certs=o.ssl_ca_certs,
        ))
        self.host = bind_host(o.host, self.runtime.local_address)
        reuse_port = o.proxies_per_host > 1 and reuse_port_supported()
        await self.server.start_serving(self.host, o.port, reuse_port)
        self.port = self.server.port
        self.runtime.watch(ROUTES_KEY, self._on_routes)
        g = self.grpc_options
        if g.grpc_servicer_functions:  # the gRPC proxy starts only when servicers are given
            grpc = GRPCProxy(self.runtime, g.grpc_servicer_functions, g.request_timeout_s)
            try:
                await grpc.start(self.host, g.port, reuse_port)
            except Exception as exc:  # noqa: BLE001 - reported as the gRPC proxy's status
                self.grpc_error = f"gRPC proxy could not start: {exc!r}"
                logger.warning("dserve: %s (HTTP serves on port %s)", self.grpc_error, self.port)
                return
            self.grpc, self.grpc_port = grpc, grpc.port
            self.grpc.update_routes(self._last_routes)

    def check(self) -> Dict[str, Any]:
        """HTTP's state (is its server task still running?) and gRPC's."""
        task = self.task
        error = None
        if task is None:
            error = "the HTTP server was never started"
        elif task.done():
            exc = None if task.cancelled() else task.exception()
            error = f"the HTTP server stopped: {exc!r}" if exc is not None else "the HTTP server stopped"
        return {"ok": error is None, "error": error, "host": self.host, "port": self.port, "grpc_port": self.grpc_port,
                "grpc_error": self.grpc_error}

    async def stop(self, timeout: float = 5.0) -> None:
        self.runtime.unwatch(ROUTES_KEY)
        self.app.draining = True
        if self.grpc is not None:
            self.grpc.draining = True
            await self.grpc.stop(2.0)
        if self.server is not None:
            await self.server.stop(timeout)
        close_sink(self.log_key)


class ProxyWorkerPlugin(WorkerPlugin):
    """Lets the controller start, check and stop this worker's proxy (at most one;
    starts and stops never overlap)."""

    name = PROXY_PLUGIN_NAME
    idempotent = True
    HANDLERS = ("dserve_proxy_start", "dserve_proxy_check", "dserve_proxy_stop")

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.proxy: Optional[ProxyServer] = None
        self.lock = asyncio.Lock()
        worker.handlers["dserve_proxy_start"] = self.start
        worker.handlers["dserve_proxy_check"] = self.check
        worker.handlers["dserve_proxy_stop"] = self.stop

    async def teardown(self, worker: Any) -> None:
        for name in self.HANDLERS:
            worker.handlers.pop(name, None)
        await self.stop()

    async def start(self, options: dict, grpc_options: Optional[dict] = None) -> Dict[str, Any]:
        """Start (or keep) this worker's HTTP (and gRPC) proxy; the controller elected us."""
        async with self.lock:
            http, grpc = HTTPOptions(**options), gRPCOptions(**(grpc_options or {}))
            if self.proxy is not None:
                same = self.proxy.options == http and self.proxy.grpc_options == grpc
                if same and self.proxy.check()["ok"]:
                    return self.proxy.check()
                await self._stop()
            proxy = ProxyServer(http, grpc)
            try:
                await proxy.start()
            except OSError as exc:
                return {"error": f"HTTP proxy could not start on {self.worker.address}: {exc.strerror or exc}"}
            except Exception as exc:  # noqa: BLE001 - reported in the proxy's status
                return {"error": f"HTTP proxy could not start on {self.worker.address}: {exc!r}"}
            self.proxy = proxy
            return proxy.check()

    async def check(self) -> Dict[str, Any]:
        """The controller's health check: is the proxy's HTTP server still running?"""
        proxy = self.proxy
        if proxy is None:
            return {"ok": False, "error": f"no proxy is running on {self.worker.address}"}
        return proxy.check()

    async def stop(self) -> Dict[str, Any]:
        async with self.lock:
            return await self._stop()

    async def _stop(self) -> Dict[str, Any]:
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            await proxy.stop()
        return {"ok": True}
