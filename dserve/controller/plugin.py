"""The controller: a Dask SchedulerPlugin, the thin shell over dserve's control plane.

Installed by ``dask scheduler --preload dserve`` or registered by the client
(``serve.start``). The shell only wires Dask to the parts that do the work:

- ``store.GoalStore``: applications → deployments, and the checkpoint;
- ``reconciler.Reconciler``: the loop that closes the gap, one contained step per deployment;
- ``proxy_state.ProxyManager``: where proxies run, starting and stopping them;
- ``publisher.Publisher``: versions and the long poll routers and proxies follow;
- ``service.ControllerService``: the ``dserve_*`` RPC handlers (``RPC_HANDLERS``);
- ``rest.server``: the REST admin API, started once the controller is ready;
- ``dashboard``: the Serve page on the scheduler's dashboard server (``/serve``).

It never sits on the request path and never blocks the scheduler's event loop:
actors are created through the controller's own asynchronous Client, made in a
background task (awaiting it in ``start`` would deadlock a starting scheduler).
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

import dask
from distributed import Client
from distributed.comm import get_address_host
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps as dask_dumps

from ..actors.worker_plugin import PLUGIN_NAME, DServeWorkerPlugin
from ..autoscale import LoadMetrics
from ..config import CONTROLLER_NAME, DEFAULT_REST_PORT
from ..exceptions import RayServeException
from ..proxy.server import PROXY_PLUGIN_NAME, ProxyWorkerPlugin
from ..dashboard import install_serve_page, serve_page_url
from ..rest.server import rest_token, start_rest_server
from .application_state import ApplicationState
from .cluster_coupling import ClusterCoupling
from .declarative import DeclarativeDeployer
from .metrics import ControllerMetrics
from .placement import PlacementLedger, placement_mode
from .proxy_state import ProxyManager
from .publisher import Publisher
from .reconciler import Reconciler
from .service import ControllerService, proxy_settings
from .store import GoalStore
from .traffic import Traffic

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import WorkerState

__all__ = ["Controller", "CONTROLLER_NAME", "RPC_HANDLERS"]

logger = logging.getLogger("dserve.controller")

# scheduler handler name -> ControllerService method
RPC_HANDLERS = {
    f"dserve_{name}": name
    for name in ("ping", "start", "deploy", "deploy_config", "wait", "delete", "shutdown", "status",
                 "app_info", "report_running", "report_queued", "report_models", "listen", "logs")
}


def _client_security(scheduler: "Scheduler") -> Any:
    """The scheduler's ``Security`` for a client in its process: on a TLS cluster started
    from the command line only the scheduler's certificate is set, so the client uses it."""
    security = copy.copy(scheduler.security)
    if not security.tls_client_cert and security.tls_scheduler_cert:
        security.tls_client_cert = security.tls_scheduler_cert
        security.tls_client_key = security.tls_scheduler_key
    return security


def options_from_dask_config() -> Dict[str, Any]:
    """Cluster-level defaults from Dask's config: a ``dserve:`` section in Dask's
    YAML, or ``DASK_DSERVE__HTTP_PORT=...`` style environment variables."""
    section = dask.config.get("dserve", {}) or {}
    get = lambda key: section.get(key, section.get(key.replace("-", "_")))  # noqa: E731
    options: Dict[str, Any] = {}
    http = {k: get(f"http-{k}") for k in ("host", "port", "root-path", "request-timeout-s", "max-request-header-bytes",
                                          "max-request-body-bytes", "request-header-timeout-s",
                                          "request-body-timeout-s", "max-connections", "proxies-per-host")}
    http = {k.replace("-", "_"): v for k, v in http.items() if v is not None}
    if http:
        options["http_options"] = http
    for key in ("proxy-location", "rest-port", "rest-host", "rest-token", "state-path", "placement"):
        if get(key) is not None:
            options[key.replace("-", "_")] = get(key)
    grpc = get("grpc-options")
    if grpc:
        options["grpc_options"] = json.loads(grpc) if isinstance(grpc, str) else dict(grpc)
    return options


class Controller(SchedulerPlugin):
    """dserve's control plane, living in the Dask scheduler."""

    name = CONTROLLER_NAME
    idempotent = True

    def __init__(self, options: Optional[Dict[str, Any]] = None) -> None:
        self.given_options: Dict[str, Any] = dict(options or {})
        self.options: Dict[str, Any] = {**options_from_dask_config(), **self.given_options}
        self.scheduler: Optional["Scheduler"] = None
        self.client: Optional[Client] = None
        self.started_at = time.time()
        self.store = GoalStore(self.options)
        self.publisher = Publisher(self.store)
        self.reconciler = Reconciler(self.store, self._app_removed, self._extra_steps)
        self.proxies = ProxyManager(self, *proxy_settings(self.options))
        self.service = ControllerService(self)
        self.declarative = DeclarativeDeployer(self)
        self.ledger = PlacementLedger()
        self.placement = placement_mode(self.options.get("placement"))  # "isolated" or "colocated"
        self.metrics = LoadMetrics()
        self.traffic = Traffic()  # request rates and latencies for the Serve page
        self.telemetry = ControllerMetrics(self)  # Prometheus metrics at the scheduler's /metrics
        self.store.on_checkpoint = self.telemetry.checkpoint_ms.observe
        self.reconciler.on_step = self.telemetry.loop_done
        self.coupling = ClusterCoupling(self)
        self.applied_envs: Set[str] = set()  # runtime_env plugins already registered
        self.rest_server: Any = None
        self.auth_token: Optional[str] = None  # set at boot (None: DSERVE_AUTH_MODE=disabled)
        self.serve_page: Optional[str] = None  # the Serve page's URL
        self.rest_port: Optional[int] = None
        self._closing = False
        self._ready = asyncio.Event()
        self._boot_error: Optional[BaseException] = None
        self._boot_task: Optional[asyncio.Task] = None

    def __reduce__(self) -> tuple:
        # registered from a client: only the options travel; the scheduler builds the rest
        return (type(self), (self.given_options,))

    # ---- SchedulerPlugin hooks ----
    async def start(self, scheduler: "Scheduler") -> None:
        """Register the RPC handlers and the adaptive coupling; boot in the background."""
        self.scheduler = scheduler
        for handler, method in RPC_HANDLERS.items():
            scheduler.handlers[handler] = getattr(self.service, method)
        self.coupling.install()
        self.telemetry.register()
        # /serve on the scheduler's dashboard server
        self.serve_page = serve_page_url(scheduler) if install_serve_page(scheduler) else None
        self._check_worker_ttl(scheduler)
        self._boot_task = asyncio.ensure_future(self._boot())

    async def _boot(self) -> None:
        try:
            self.client = await Client(
                self.scheduler.address, asynchronous=True, direct_to_workers=True,
                name="dserve-controller", set_as_default=False, security=_client_security(self.scheduler),
            )
            for plugin, name in ((DServeWorkerPlugin(), PLUGIN_NAME), (ProxyWorkerPlugin(), PROXY_PLUGIN_NAME)):
                await self.scheduler.register_worker_plugin(None, dask_dumps(plugin), name=name, idempotent=True)
            self.store.restore(lambda spec: ApplicationState(self, spec))
            if self.store.proxy_options:  # set at runtime before a restart: they stand
                await self.proxies.reconfigure(*proxy_settings(self.options))
            self.declarative.resume()
        except Exception as exc:  # noqa: BLE001 - every RPC reports it (see ``ready``)
            logger.exception("dserve controller failed to start")
            self._boot_error = exc
            self._ready.set()
            return
        self._ready.set()
        self.reconciler.start()
        self.auth_token = rest_token(self.options)  # the REST API and the Serve page require it
        self.rest_server = await start_rest_server(self, self.options, DEFAULT_REST_PORT, self.auth_token)
        self.rest_port = self.rest_server.port if self.rest_server is not None else None
        logger.info("dserve controller ready on %s", self.scheduler.address)

    async def ready(self) -> None:
        """Wait until the controller has booted; raise why if it could not."""
        await self._ready.wait()
        if self._boot_error is not None:
            raise RayServeException(f"the dserve controller failed to start: {self._boot_error!r}")

    async def before_close(self) -> None:
        """The scheduler (or the embedded cluster, at exit) is closing: stop reacting to workers
        leaving and stop reconciling (no replica or proxy is started into a closing cluster)."""
        self._closing = True
        await self.reconciler.stop()

    async def close(self) -> None:
        """Stop the REST API, the loop and its tasks, the client; unregister the handlers."""
        self._closing = True
        self.coupling.uninstall()
        self.telemetry.unregister()
        if self.rest_server is not None:
            await self.rest_server.stop()
        await self.reconciler.stop()
        if self._boot_task is not None:
            self._boot_task.cancel()
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.close(), 5)
            except Exception as exc:  # noqa: BLE001 - the scheduler is going away anyway
                logger.info("dserve: closing the controller's client failed: %r", exc)
        for name in RPC_HANDLERS:
            self.scheduler.handlers.pop(name, None)

    def add_worker(self, scheduler: "Scheduler", worker: str) -> None:
        """A worker joined: it may host replicas or a proxy."""
        self.reconciler.wake()

    def remove_worker(self, scheduler: "Scheduler", worker: str, **kwargs: Any) -> None:
        """A worker left: forget its replicas (they are replaced) and its resources."""
        # also fires while the cluster shuts down: never re-place into a dying cluster
        if self._closing or scheduler.status != Status.running:
            return
        for app in self.store.apps.values():
            for dep in app.deployments.values():
                dep.worker_lost(worker)
        self.ledger.forget(worker)
        self.reconciler.wake()

    def valid_workers_downscaling(self, scheduler: "Scheduler", workers: List["WorkerState"]) -> List["WorkerState"]:
        """Never offer a worker hosting replicas or a proxy for retirement."""
        return self.coupling.removable(workers)

    # ---- what the parts ask of the cluster ----
    def placeable_workers(self) -> List["WorkerState"]:
        return [ws for ws in self.scheduler.workers.values() if ws.status == Status.running]

    def proxy_workers(self) -> Set[str]:
        """Workers running a proxy, or elected to run one (O(workers))."""
        return set(self.proxies.proxies).union(ws.address for ws in self.proxies.elect())

    def worker_alive(self, address: str) -> bool:
        return address in self.scheduler.workers

    def scheduler_host(self) -> str:
        return get_address_host(self.scheduler.address)

    # ---- reconciler callbacks ----
    def deployment_removed(self, dep: Any) -> None:
        """A deleted deployment's last replica is gone: forget everything kept under its
        key (load samples and reports, traffic, autoscaling decisions, placement notes)."""
        self.metrics.drop(dep.key)
        self.traffic.forget(dep.key)
        self.telemetry.decisions.forget({"deployment": dep.name, "application": dep.app})
        self.coupling.note_unplaceable(dep.key, None)

    def _app_removed(self) -> None:
        self.store.checkpoint()
        self.publisher.notify_change()

    def _extra_steps(self) -> None:
        """After the deployments' steps: the proxies, and load reports gone stale."""
        self.metrics.prune()
        self.proxies.reconcile()

    @staticmethod
    def _check_worker_ttl(scheduler: "Scheduler") -> None:
        """A hint, at info level: on a LocalCluster (where workers die loudly) it never matters."""
        ttl = getattr(scheduler, "worker_ttl", None)
        if not ttl or ttl > 60:
            logger.info(
                "dserve: distributed.scheduler.worker-ttl is %s; a silently lost worker goes unnoticed that long. "
                "30s is recommended for serving (DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=30s).", ttl or "unset")

