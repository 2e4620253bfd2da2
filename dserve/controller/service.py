"""The controller's RPC surface: what ``serve.*``, the REST API and the CLI call.

Each method here is registered as the scheduler handler ``dserve_<name>`` (see
``plugin.RPC_HANDLERS``). They change the goal state, then checkpoint, publish
and wake the reconciler; waiting calls wait for reconcile ticks, never block
the scheduler's loop.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..config import (
    LOGS_DEFAULT_TAIL, LOGS_READ_TIMEOUT_S, PROXY_START_WAIT_S, HTTPOptions, ProxyLocation, gRPCOptions, validate_name,
    validate_num_replicas, validate_route_prefix,
)
from ..logs import merge as merge_logs
from ..schema import MULTI_APP, ApplicationStatus
from ..serialization import loads
from ..spec import ApplicationSpec
from ..types import ReplicaSetSnapshot
from ..wire import LOGS_OP
from .application_state import ApplicationState
from .autoscaling import policy_import_error
from .runtime_env import apply_runtime_env
from .store import PROXY_OPTION_KEYS

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["ControllerService", "proxy_settings", "proxy_messages"]


def proxy_settings(options: Dict[str, Any]) -> tuple:
    """(HTTPOptions, ProxyLocation, gRPCOptions) from the controller's options."""
    http = HTTPOptions(**options.get("http_options", {}))
    grpc = gRPCOptions(**options.get("grpc_options", {}))
    return http, ProxyLocation.parse(options.get("proxy_location")), grpc


def proxy_messages(proxies: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """Why each proxy that has a problem has it: its HTTP server's message, then its gRPC
    server's (only proxies with something to say)."""
    out = {}
    for host, p in proxies.items():
        text = "; ".join(m for m in (p.get("message"), p.get("grpc_message")) if m)
        if text:
            out[host] = text
    return out


class ControllerService:
    """The ``dserve_*`` scheduler RPC handlers, over the controller's parts."""

    def __init__(self, controller: "Controller") -> None:
        self.controller = controller
        self.serving = True  # False after a shutdown, until the next start or deploy

    @property
    def _store(self) -> Any:
        return self.controller.store

    async def _ready(self) -> None:
        await self.controller.ready()

    def _changed(self) -> None:
        """The goal state changed: persist it, publish it, act on it."""
        self._store.checkpoint()
        self.controller.publisher.notify_change()
        self.controller.reconciler.wake()

    async def _ensure_serving(self) -> None:
        """After a shutdown, the next start or deploy brings the proxies back."""
        if not self.serving:
            self.serving = True
            await self.controller.proxies.reconfigure(*proxy_settings(self.controller.options))

    # ---- handlers ----
    async def ping(self) -> Dict[str, Any]:
        await self._ready()
        return {"ok": True, "started_at": self.controller.started_at}

    async def start(self, options: Dict[str, Any], wait: bool = True) -> Dict[str, Any]:
        """(Re)apply proxy options from serve.start; wait briefly for the proxies."""
        await self._ready()
        await self._ensure_serving()
        controller = self.controller
        logging_config = options.get("logging_config")
        if logging_config is not None and logging_config != controller.options.get("logging_config"):
            controller.options["logging_config"] = dict(logging_config)  # the proxies follow the route table
            self._store.checkpoint()
            controller.publisher.notify_change()
        if set(PROXY_OPTION_KEYS) & set(options):
            async with controller.proxies.lock:  # concurrent starts apply one after the other, whole
                merged = {**controller.options, **options}
                for key in ("http_options", "grpc_options"):  # fields not given keep their current values
                    if key in options:
                        merged[key] = {**controller.options.get(key, {}), **options[key]}
                settings = proxy_settings(merged)
                if settings != controller.proxies.settings:
                    await controller.proxies.apply(*settings)
                controller.options.clear()
                controller.options.update(merged)
                self._store.set_proxy_options({k: merged[k] for k in options if k in PROXY_OPTION_KEYS})
                self._store.checkpoint()
        controller.reconciler.step()
        deadline = time.monotonic() + (PROXY_START_WAIT_S if wait else 0)
        while time.monotonic() < deadline and controller.proxies.starting:
            await controller.reconciler.next_tick(0.5)
        return {"ok": True, "proxies": controller.proxies.status(), "serve_page": controller.serve_page}

    async def deploy_config(self, config: Dict[str, Any], mode: str = MULTI_APP,
                            force: bool = False) -> Dict[str, Any]:
        """Declarative deploy of a whole config (see ``declarative``)."""
        await self._ready()
        await self._ensure_serving()
        return await self.controller.declarative.deploy(config, mode, force)

    async def deploy(self, spec: bytes) -> Dict[str, Any]:
        """Deploy or update applications; returns at once (see ``wait``)."""
        await self._ready()
        await self._ensure_serving()
        specs: List[ApplicationSpec] = loads(spec)
        error = self._check_specs(specs) or self._check_routes(specs) or await policy_import_error(
            [d for app_spec in specs for d in app_spec.deployments])
        if error:
            return {"error": error}
        for app_spec in specs:  # `dserve run --working-dir/--runtime-env*`: applied before any replica starts
            try:
                await apply_runtime_env(self.controller, app_spec.source.get("runtime_env") or {})
            except Exception as exc:  # noqa: BLE001 - the caller's deploy fails with the reason
                return {"error": f"runtime_env of application {app_spec.name!r}: {type(exc).__name__}: {exc}"}
        apps = self._store.apps
        for app_spec in specs:
            app = apps.get(app_spec.name)
            if app is None:
                apps[app_spec.name] = ApplicationState(self.controller, app_spec)
            else:  # a deleted app that is not gone yet is taken over
                app.apply(app_spec)
        self._changed()
        return {"ok": True}

    @staticmethod
    def _check_specs(specs: List[ApplicationSpec]) -> str:
        """Names, prefixes and replica counts follow the rules ``serve.run`` checks (for any client)."""
        try:
            for s in specs:
                validate_name(s.name, "application name")
                validate_route_prefix(s.route_prefix)
                for d in s.deployments:
                    validate_name(d.name, "deployment name")
                    validate_num_replicas(d.config.num_replicas)
                    if d.config.autoscaling_config is not None:
                        validate_num_replicas(d.config.autoscaling_config.max_replicas, "max_replicas")
        except ValueError as exc:
            return str(exc)
        return ""

    def _check_routes(self, specs: List[ApplicationSpec]) -> str:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            return f"application names must be unique, got {names}"
        taken = {a.route_prefix: a.name for a in self._store.apps.values() if a.route_prefix and not a.deleting}
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

    async def wait(self, name: str, timeout: float = 5.0) -> Dict[str, Any]:
        """Wait until an application is RUNNING or DEPLOY_FAILED (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            app = self._store.apps.get(name)
            if app is None:
                return {"status": ApplicationStatus.NOT_STARTED.value, "message": f"no application named {name!r}"}
            status = app.status
            if status in (ApplicationStatus.RUNNING, ApplicationStatus.DEPLOY_FAILED) or time.monotonic() >= deadline:
                return {"status": status.value, "message": app.message}
            await self.controller.reconciler.next_tick(deadline - time.monotonic())

    async def delete(self, names: List[str], wait: bool = True, timeout: float = 60.0) -> Dict[str, Any]:
        apps = self._store.apps
        for name in names:
            app = apps.get(name)
            if app is not None:
                app.delete()
        self._changed()
        deadline = time.monotonic() + timeout
        while wait and any(n in apps for n in names) and time.monotonic() < deadline:
            await self.controller.reconciler.next_tick(deadline - time.monotonic())
        return {"ok": True, "remaining": [n for n in names if n in apps]}

    async def shutdown(self, timeout: float = 60.0) -> Dict[str, Any]:
        """Delete every application and stop the proxies (the cluster keeps running)."""
        result = await self.delete(list(self._store.apps), wait=True, timeout=timeout)
        proxies = self.controller.proxies
        await proxies.reconfigure(proxies.http_options, ProxyLocation.Disabled, proxies.grpc_options)
        self.serving = False
        return result

    async def status(self) -> Dict[str, Any]:
        proxies = self.controller.proxies.status()
        return {
            "applications": {name: app.status_dict() for name, app in self._store.apps.items()},
            "proxies": {host: p["status"] for host, p in proxies.items()},
            "proxy_messages": proxy_messages(proxies),
            "proxy_details": proxies,
            "rest_port": self.controller.rest_port,
            "serve_page": self.controller.serve_page,
            "restored_from_checkpoint": self._store.restored_from_checkpoint,
            "checkpoint_message": self._store.checkpoint_message,
        }

    async def app_info(self, name: str) -> Optional[Dict[str, Any]]:
        app = self._store.live(name)
        if app is None:
            return None
        return {"name": name, "ingress": app.ingress, "route_prefix": app.route_prefix,
                "deployments": list(app.deployments)}

    async def report_running(self, counts: Dict[str, int], totals: Optional[Dict[str, List[int]]] = None,
                             custom: Optional[Dict[str, Dict[str, float]]] = None,
                             stats_errors: Optional[Dict[str, str]] = None) -> None:
        """A worker's replicas and how many requests each is running; the request totals
        of those whose totals changed (see ``traffic``); new custom metrics
        (``record_autoscaling_stats``) and the stats errors of replicas that have them."""
        self.controller.metrics.report_running(counts)
        if custom or stats_errors:
            self.controller.metrics.report_custom(custom or {}, stats_errors or {})
        if totals:
            self.controller.traffic.report(totals)

    async def report_queued(self, source: str, counts: Dict[str, int]) -> None:
        """A caller's queued requests per deployment (at once when one waits on zero replicas)."""
        self.controller.metrics.report_queued(source, counts)
        if any(counts.values()):
            self.controller.reconciler.wake()

    async def report_models(self, replica_id: str, model_ids: List[str]) -> bool:
        """A replica's multiplexed models changed (routers prefer replicas holding a model)."""
        app_name, dep_name, _ = replica_id.split("#", 2)
        app = self._store.apps.get(app_name)
        dep = app.deployments.get(dep_name) if app is not None else None
        return dep.report_models(replica_id, model_ids) if dep is not None else False

    async def logs(self, app: Optional[str] = None, deployment: Optional[str] = None,
                   tail: Optional[int] = LOGS_DEFAULT_TAIL, cursor: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
        """Log lines of the replicas (and proxies) from every worker's rings, oldest first: the
        last ``tail``, or the ones after ``cursor`` (returned by the previous call)."""
        scheduler = self.controller.scheduler
        msg = {"op": LOGS_OP, "app": app, "deployment": deployment, "tail": tail, "cursor": cursor}
        try:
            replies = await asyncio.wait_for(
                scheduler.broadcast(msg=msg, workers=list(scheduler.workers), on_error="ignore"), LOGS_READ_TIMEOUT_S)
        except asyncio.TimeoutError:
            return {"error": f"the workers did not answer within {LOGS_READ_TIMEOUT_S}s"}
        return merge_logs(replies.values(), tail, cursor)

    async def listen(self, versions: Dict[str, int], timeout: float = 20.0) -> Dict[str, ReplicaSetSnapshot]:
        """Long poll: the replica sets (and route table) whose version differs from the caller's."""
        return await self.controller.publisher.listen(versions, timeout)
