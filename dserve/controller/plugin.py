"""The controller: a Dask SchedulerPlugin that owns dserve's goal state.

Installed by ``dask scheduler --preload dserve`` or registered by the client
(``serve.start``). It answers the ``dserve_*`` scheduler RPCs (deploy, wait,
delete, status, long-poll of replica sets), reconciles applications on an
event-driven loop with a short tick, and reacts to workers joining and
leaving. It never sits on the request path and never blocks the scheduler's
event loop: actors are created through its own asynchronous Client, started
in a background task (awaiting it in ``start`` would deadlock a starting
scheduler).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Set

from distributed import Client
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps as dask_dumps

from ..actors.worker_plugin import PLUGIN_NAME, DServeWorkerPlugin
from ..config import HTTPOptions, ProxyLocation, gRPCOptions
from ..proxy.http_proxy import ROUTES_KEY
from ..schema import ApplicationStatus, ProxyStatus
from ..serialization import loads
from .application_state import ApplicationSpec, ApplicationState
from .declarative import MULTI_APP, DeclarativeDeployer
from ..autoscale import LoadMetrics
from . import checkpoint
from .cluster_coupling import ClusterCoupling
from .placement import PlacementLedger
from .proxy_state import ProxyState

__all__ = ["Controller", "CONTROLLER_NAME"]

logger = logging.getLogger("dserve.controller")

CONTROLLER_NAME = "dserve-controller"
RECONCILE_TICK_S = 0.5


def options_from_dask_config() -> Dict[str, Any]:
    """Cluster-level defaults from Dask's config: a ``dserve:`` section in Dask's
    YAML, or ``DASK_DSERVE__HTTP_PORT=...`` style environment variables."""
    import dask

    section = dask.config.get("dserve", {}) or {}
    get = lambda key: section.get(key, section.get(key.replace("-", "_")))  # noqa: E731
    options: Dict[str, Any] = {}
    http = {k: get(f"http-{k}") for k in ("host", "port", "root-path", "request-timeout-s")}
    http = {k.replace("-", "_"): v for k, v in http.items() if v is not None}
    if http:
        options["http_options"] = http
    for key in ("proxy-location", "rest-port", "rest-host", "rest-token", "state-path"):
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
        self.options: Dict[str, Any] = dict(options or {})

    # ---- SchedulerPlugin hooks ----
    async def start(self, scheduler: Any) -> None:
        self.options = {**options_from_dask_config(), **self.options}
        self.scheduler = scheduler
        self.apps: Dict[str, ApplicationState] = {}
        self.ledger = PlacementLedger()
        self.client: Optional[Client] = None
        self.unplaceable: Dict[str, tuple] = {}
        self._versions = itertools.count(1)
        self._changed = asyncio.Event()
        self._ticked = asyncio.Event()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._tasks: Set[asyncio.Task] = set()
        self._closing = False
        self.started_at = time.time()
        self.proxy_state = ProxyState(self, *self._proxy_options(self.options))
        self._routes: Dict[str, Any] = {"version": 0, "routes": {}}
        self.declarative = DeclarativeDeployer(self)
        self.metrics = LoadMetrics()
        self.serving = True  # False after a shutdown, until the next start or deploy
        self.restored_from_checkpoint = False
        self.applied_envs: Set[str] = set()
        for name in dir(self):
            if name.startswith("rpc_"):
                scheduler.handlers["dserve_" + name[4:]] = getattr(self, name)
        self.coupling = ClusterCoupling(self)
        self.coupling.install()
        self._check_worker_ttl(scheduler)
        self._boot_task = asyncio.ensure_future(self._boot())

    async def _boot(self) -> None:
        self.client = await Client(
            self.scheduler.address, asynchronous=True, direct_to_workers=True,
            name="dserve-controller", set_as_default=False,
        )
        await self.scheduler.register_worker_plugin(
            None, dask_dumps(DServeWorkerPlugin()), name=PLUGIN_NAME, idempotent=True
        )
        self._restore()
        self._ready.set()
        self._loop_task = asyncio.ensure_future(self._reconcile_loop())
        await self._start_rest()
        logger.info("dserve controller ready on %s", self.scheduler.address)

    # ---- goal state on disk ----
    @property
    def state_path(self) -> Optional[str]:
        return self.options.get("state_path") or os.environ.get("DSERVE_STATE_PATH")

    def checkpoint(self) -> None:
        """Write the goal state (after every change to it) when a state path is set."""
        path = self.state_path
        if not path:
            return
        apps = [app.spec for app in self.apps.values() if not app.deleting and not app.building]
        try:
            checkpoint.save(path, {
                "apps": apps,
                "declarative": {"mode": self.declarative.mode, "config": self.declarative.config},
                "options": {k: v for k, v in self.options.items() if k != "rest_token"},
            })
        except OSError as exc:
            logger.error("dserve: could not write the state file %s: %s", path, exc)

    def _restore(self) -> None:
        path = self.state_path
        if not path:
            if not self.options.get("embedded"):
                logger.warning("dserve: no state path set (--dserve-state-path, dask config dserve.state-path or "
                               "DSERVE_STATE_PATH); applications live in memory only and a scheduler restart "
                               "loses them")
            return
        state = checkpoint.load(path)
        if not state:
            return
        for spec in state.get("apps", []):
            app = ApplicationState(self, spec)
            app.recovering = True
            self.apps[spec.name] = app
        declarative = state.get("declarative") or {}
        self.declarative.mode = declarative.get("mode")
        self.declarative.config = declarative.get("config")
        self.restored_from_checkpoint = bool(self.apps)
        logger.info("dserve: restored %d application(s) from %s", len(self.apps), path)

    async def _start_rest(self) -> None:
        """The REST admin API on the scheduler's loop; a busy port is logged, not fatal."""
        from ..rest import create_app
        from ..uvicorn_server import EmbeddedServer, config

        port = self.options.get("rest_port", 52365)
        self.rest_server = None
        self.rest_port: Optional[int] = None
        if port is None or int(port) < 0:
            return
        host = self.options.get("rest_host", "127.0.0.1")
        token = self.options.get("rest_token") or os.environ.get("DSERVE_REST_TOKEN")
        server = EmbeddedServer(config(create_app(self, token)))
        try:
            await server.start_serving(host, int(port))
        except OSError as exc:
            logger.warning("dserve REST API not started on %s:%s: %s", host, port, exc)
            return
        self.rest_server, self.rest_port = server, server.port
        logger.info("dserve REST API on http://%s:%s", host, server.port)

    async def before_close(self) -> None:
        self._closing = True

    async def close(self) -> None:
        self._closing = True
        self.coupling.uninstall()
        if getattr(self, "rest_server", None) is not None:
            await self.rest_server.stop()
        for task in [getattr(self, "_loop_task", None), getattr(self, "_boot_task", None), *self._tasks]:
            if task is not None:
                task.cancel()
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.close(), 5)
            except Exception:
                pass
        for name in list(self.scheduler.handlers):
            if name.startswith("dserve_"):
                del self.scheduler.handlers[name]

    def add_worker(self, scheduler: Any = None, worker: Optional[str] = None) -> None:
        self.wake()

    def remove_worker(self, scheduler: Any = None, worker: Optional[str] = None, **kwargs: Any) -> None:
        # also fires while the cluster shuts down: never re-place into a dying cluster
        if self._closing or self.scheduler.status != Status.running or worker is None:
            return
        for app in self.apps.values():
            for dep in app.deployments.values():
                dep.worker_lost(worker)
        self.ledger.forget(worker)
        self.wake()

    @staticmethod
    def _check_worker_ttl(scheduler: Any) -> None:
        ttl = getattr(scheduler, "worker_ttl", None)
        if not ttl or ttl > 60:
            logger.warning(
                "dserve: distributed.scheduler.worker-ttl is %s; a silently lost worker goes unnoticed that long. "
                "30s is recommended for serving (DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=30s).", ttl or "unset")

    @staticmethod
    def _proxy_options(options: Dict[str, Any]) -> tuple:
        http = HTTPOptions(**options.get("http_options", {}))
        grpc = gRPCOptions(**options.get("grpc_options", {}))
        return http, ProxyLocation.parse(options.get("proxy_location")), grpc

    def scheduler_host(self) -> str:
        from distributed.comm import get_address_host

        return get_address_host(self.scheduler.address)

    # ---- helpers used by the state objects ----
    def next_version(self) -> int:
        return next(self._versions)

    def notify_change(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def wake(self) -> None:
        if hasattr(self, "_wake"):
            self._wake.set()

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("dserve controller task failed", exc_info=task.exception())

    def placeable_workers(self) -> List[Any]:
        return [ws for ws in self.scheduler.workers.values() if ws.status == Status.running]

    def worker_alive(self, address: str) -> bool:
        return address in self.scheduler.workers

    def note_unplaceable(self, key: str, demand: Optional[Dict[str, float]], count: int = 0) -> None:
        """``count`` replicas of ``key`` needing ``demand`` each cannot be placed (0 / None: all placed)."""
        if demand and count:
            self.unplaceable[key] = (demand, count)
        else:
            self.unplaceable.pop(key, None)

    def valid_workers_downscaling(self, scheduler: Any, workers: List[Any]) -> List[Any]:
        """Never offer a worker hosting replicas or a proxy for retirement."""
        return self.coupling.removable(workers)

    # ---- reconcile loop ----
    async def _reconcile_loop(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), RECONCILE_TICK_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:
                logger.exception("dserve reconcile step failed")
            event, self._ticked = self._ticked, asyncio.Event()
            event.set()

    def reconcile(self) -> None:
        for name, app in list(self.apps.items()):
            if app.reconcile():
                del self.apps[name]
                self.checkpoint()
                self.notify_change()
        self.proxy_state.reconcile()

    async def _next_tick(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ticked.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ---- RPC handlers (scheduler.handlers["dserve_<name>"]) ----
    async def rpc_ping(self) -> Dict[str, Any]:
        await self._ready.wait()
        return {"ok": True, "started_at": self.started_at}

    def _ensure_serving(self) -> None:
        """After a shutdown, the next start or deploy brings the proxies back."""
        if not self.serving:
            self.serving = True
            self.proxy_state = ProxyState(self, *self._proxy_options(self.options))

    async def rpc_start(self, options: Dict[str, Any], wait: bool = True) -> Dict[str, Any]:
        """(Re)apply proxy options from serve.start; wait briefly for the proxies."""
        await self._ready.wait()
        self._ensure_serving()
        if {"http_options", "proxy_location", "grpc_options"} & set(options):
            merged = {**self.options, **options}
            for key in ("http_options", "grpc_options"):  # fields not given keep their current values
                if key in options:
                    merged[key] = {**self.options.get(key, {}), **options[key]}
            http, location, grpc = self._proxy_options(merged)
            state = self.proxy_state
            if (http, location, grpc) != (state.http_options, state.location, state.grpc_options):
                await self.proxy_state.stop_all()
                self.proxy_state = ProxyState(self, http, location, grpc)
            self.options = merged
        self.reconcile()
        deadline = time.monotonic() + (15 if wait else 0)
        while time.monotonic() < deadline and any(
            p["status"] == ProxyStatus.STARTING for p in self.proxy_state.proxies.values()
        ):
            await self._next_tick(0.5)
        return {"ok": True, "proxies": self.proxy_state.status()}

    async def rpc_deploy_config(self, config: Dict[str, Any], mode: str = MULTI_APP,
                                force: bool = False) -> Dict[str, Any]:
        """Declarative deploy of a whole config (see ``declarative``)."""
        await self._ready.wait()
        self._ensure_serving()
        return await self.declarative.deploy(config, mode, force)

    async def rpc_deploy(self, spec: bytes) -> Dict[str, Any]:
        """Deploy or update applications; returns at once (see rpc_wait)."""
        await self._ready.wait()
        self._ensure_serving()
        specs: List[ApplicationSpec] = loads(spec)
        error = self._check_routes(specs)
        if error:
            return {"error": error}
        for app_spec in specs:
            app = self.apps.get(app_spec.name)
            if app is None or app.deleting:
                if app is not None:  # deleted but not gone: take it over
                    app.apply(app_spec)
                else:
                    self.apps[app_spec.name] = ApplicationState(self, app_spec)
            else:
                app.apply(app_spec)
        self.checkpoint()
        self.notify_change()
        self.wake()
        return {"ok": True}

    def _check_routes(self, specs: List[ApplicationSpec]) -> str:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            return f"application names must be unique, got {names}"
        taken = {a.route_prefix: a.name for a in self.apps.values() if a.route_prefix and not a.deleting}
        for s in specs:
            if s.route_prefix is None:
                continue
            owner = taken.get(s.route_prefix)
            if owner is not None and owner != s.name and owner not in names:
                return (
                    f"Prefix {s.route_prefix} is being used by application \"{owner}\". "
                    f"Failed to deploy application \"{s.name}\"."
                )
            taken[s.route_prefix] = s.name
        return ""

    async def rpc_wait(self, name: str, timeout: float = 5.0) -> Dict[str, Any]:
        """Wait until an application is RUNNING or DEPLOY_FAILED (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            app = self.apps.get(name)
            if app is None:
                return {"status": ApplicationStatus.NOT_STARTED.value, "message": f"no application named {name!r}"}
            status = app.status
            if status in (ApplicationStatus.RUNNING, ApplicationStatus.DEPLOY_FAILED) or time.monotonic() >= deadline:
                return {"status": status.value, "message": app.message}
            await self._next_tick(deadline - time.monotonic())

    async def rpc_delete(self, names: List[str], wait: bool = True, timeout: float = 60.0) -> Dict[str, Any]:
        for name in names:
            app = self.apps.get(name)
            if app is not None:
                app.delete()
        self.checkpoint()
        self.notify_change()
        self.wake()
        deadline = time.monotonic() + timeout
        while wait and any(n in self.apps for n in names) and time.monotonic() < deadline:
            await self._next_tick(deadline - time.monotonic())
        return {"ok": True, "remaining": [n for n in names if n in self.apps]}

    async def rpc_shutdown(self, timeout: float = 60.0) -> Dict[str, Any]:
        result = await self.rpc_delete(list(self.apps), wait=True, timeout=timeout)
        await self.proxy_state.stop_all()
        self.proxy_state = ProxyState(self, self.proxy_state.http_options, ProxyLocation.Disabled,
                                      self.proxy_state.grpc_options)
        self.serving = False
        return result

    async def rpc_status(self) -> Dict[str, Any]:
        return {
            "applications": {name: app.status_dict() for name, app in self.apps.items()},
            "proxies": {host: p["status"] for host, p in self.proxy_state.status().items()},
            "proxy_details": self.proxy_state.status(),
            "rest_port": getattr(self, "rest_port", None),
            "restored_from_checkpoint": self.restored_from_checkpoint,
        }

    async def rpc_app_info(self, name: str) -> Optional[Dict[str, Any]]:
        app = self.apps.get(name)
        if app is None or app.deleting:
            return None
        return {"name": name, "ingress": app.ingress, "route_prefix": app.route_prefix,
                "deployments": list(app.deployments)}

    async def rpc_report_running(self, counts: Dict[str, int]) -> None:
        """A worker's replicas and how many requests each is running."""
        self.metrics.report_running(counts)

    async def rpc_report_queued(self, source: str, counts: Dict[str, int]) -> None:
        """A caller's queued requests per deployment (at once when one waits on zero replicas)."""
        self.metrics.report_queued(source, counts)
        if any(counts.values()):
            self.wake()

    async def rpc_report_models(self, replica_id: str, model_ids: List[str]) -> bool:
        """A replica's multiplexed models changed (routers prefer replicas holding a model)."""
        app_name, dep_name, _ = replica_id.split("#", 2)
        app = self.apps.get(app_name)
        dep = app.deployments.get(dep_name) if app is not None else None
        return dep.report_models(replica_id, model_ids) if dep is not None else False

    def _route_table(self) -> Dict[str, Any]:
        table = {
            app.route_prefix: {"app": name, "ingress": app.ingress}
            for name, app in self.apps.items()
            if app.route_prefix and app.ingress and not app.deleting
        }
        apps = {name: app.ingress for name, app in self.apps.items() if app.ingress and not app.deleting}
        if table != self._routes["routes"] or apps != self._routes.get("apps"):
            self._routes = {"version": self.next_version(), "routes": table, "apps": apps}
        return self._routes

    def _snapshot(self, key: str) -> Dict[str, Any]:
        if key == ROUTES_KEY:
            return self._route_table()
        app_name, _, dep_name = key.partition("#")
        app = self.apps.get(app_name)
        dep = app.deployments.get(dep_name) if app is not None else None
        if dep is None:
            return {"version": 0, "exists": False, "replicas": []}
        return dep.snapshot()

    async def rpc_listen(self, versions: Dict[str, int], timeout: float = 20.0) -> Dict[str, Any]:
        """Long poll: the replica sets whose version differs from the caller's."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._changed
            updates = {}
            for key, version in versions.items():
                snap = self._snapshot(key)
                if snap["version"] != version:
                    updates[key] = snap
            remaining = deadline - time.monotonic()
            if updates or remaining <= 0:
                return updates
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return {}
