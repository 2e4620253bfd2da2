"""The Python API: start / run / delete / status / shutdown and handle getters.

Every call here is a scheduler RPC to the controller (the same controller
methods the REST API and the CLI use). The process keeps one ``Runtime``
(see ``runtime``) and, when it started one, the embedded cluster.
"""
from __future__ import annotations

import asyncio
import logging
import time
import warnings
from typing import Any, Dict, Optional, Union

import dask
from distributed.protocol.pickle import dumps as dask_dumps

from .cluster import close_embedded_cluster, find_address, find_security, start_embedded_cluster
from .auth import default_token_path
from .config import HTTPOptions, LoggingConfig, ProxyLocation, gRPCOptions, logging_config as _logging_config
from .controller import CONTROLLER_NAME, Controller
from .build import application_spec
from .deployment import _UNSET, Application
from .event_loop import home_loop, in_loop_thread, worker_or_none
from .exceptions import DeploymentFailedError, RayServeException
from .handle import DeploymentHandle
from .local_testing import local_ingress, run_local
from .runtime import Runtime, current_runtime, get_runtime, set_connector, set_runtime
from .schema import ServeStatus
from .serialization import dumps

__all__ = [
    "start", "run", "delete", "status", "shutdown", "get_app_handle", "get_deployment_handle",
]

logger = logging.getLogger("dserve")

_owned_cluster: Any = None
_serve_page_logged = False


def _sync(runtime: Runtime, coro: Any, timeout: Optional[float] = None) -> Any:
    if in_loop_thread(runtime.loop):
        coro.close()
        raise RuntimeError(
            "this dserve call blocks; it cannot run on the event loop dserve uses in this "
            "process (call it from sync code, or from a thread)"
        )
    return asyncio.run_coroutine_threadsafe(coro, runtime.loop).result(timeout)


async def _ensure_controller(runtime: Runtime, options: Dict[str, Any]) -> Dict[str, Any]:
    """Install the controller on the scheduler unless it is there (idempotent); its answer
    to ``dserve_start``."""
    await runtime.rpc(
        "register_scheduler_plugin",
        plugin=dask_dumps(Controller(options)),
        name=CONTROLLER_NAME,
        idempotent=True,
    )
    if await runtime.rpc("dserve_ping") is None:
        raise RayServeException("the dserve controller could not be installed on the scheduler")
    return await runtime.rpc("dserve_start", options=options)


def _connect(address: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
             security: Any = None) -> Runtime:
    """Connect this process to dserve (starting the controller, or a cluster, if needed)."""
    global _owned_cluster
    runtime = current_runtime()
    if runtime is None and address is None and worker_or_none() is not None:
        runtime = get_runtime()  # inside a replica or a Dask task: the worker's own
    if runtime is not None and not runtime.closed and runtime.scheduler_address and (
        address is None or address == runtime.scheduler_address
    ):
        if options:  # on the loop's own thread (an async replica method) the proxies start meanwhile
            wait = not in_loop_thread(runtime.loop)
            _warn_unhealthy_proxies(runtime.call("dserve_start", result_timeout=60, options=options, wait=wait))
        return runtime
    scheduler_address = find_address(address)
    options = dict(options or {})
    if scheduler_address is None:
        if worker_or_none() is not None:
            raise RayServeException("inside a Dask worker, dserve uses the worker's own scheduler")
        location = options.get("proxy_location") or dask.config.get("dserve.proxy-location", None)
        _owned_cluster = start_embedded_cluster(security, proxies=ProxyLocation.parse(location) != ProxyLocation.Disabled)
        scheduler_address = _owned_cluster.scheduler_address
        security = _owned_cluster.security
        options["embedded"] = True  # lives and dies with this process: no state file needed
    security = find_security(scheduler_address, security)
    runtime = Runtime(scheduler_address, home_loop(), connection_args=security.get_connection_args("client"))
    try:
        started = _sync(runtime, _ensure_controller(runtime, options), timeout=60)
    except BaseException:
        _sync(runtime, runtime.close())
        raise
    set_runtime(runtime)
    _log_serve_page(started.get("serve_page"))
    _warn_unhealthy_proxies(started)
    return runtime


def _warn_unhealthy_proxies(started: Dict[str, Any]) -> None:
    """Tell the caller of ``serve.start``/``serve.run`` (a ``RuntimeWarning`` pointing at
    their line) about each proxy that could not start, e.g. because its port is taken; the
    controller keeps retrying it and ``serve.status().proxy_messages`` keeps the reason."""
    for host, proxy in (started.get("proxies") or {}).items():
        if proxy.get("status") == "UNHEALTHY":
            warnings.warn(f"dserve: the proxy on {host} is UNHEALTHY: {proxy.get('message')}",
                          RuntimeWarning, stacklevel=4)  # this, _connect, start/run, the caller


def _log_serve_page(url: Optional[str]) -> None:
    """Say once per process where the Serve page is (never with the token)."""
    global _serve_page_logged
    if url and not _serve_page_logged:
        _serve_page_logged = True
        logger.info("dserve's Serve page: %s (open it once as %s?token=<token>; the token is in "
                    "DSERVE_AUTH_TOKEN or %s)", url, url, default_token_path())


def _connect_existing() -> Runtime:
    """Connect to a running dserve without starting a cluster (for handle getters)."""
    address = find_address(None)
    if address is None:
        raise RayServeException(
            "dserve is not running: call serve.start() or serve.run() first, or set DSERVE_ADDRESS"
        )
    return _connect(address)


set_connector(_connect_existing)


def _options(http_options: Any, grpc_options: Any, proxy_location: Any,
             logging_config: Any = None) -> Dict[str, Any]:
    opts: Dict[str, Any] = {}
    if logging_config is not None:  # the proxies' (their access log) and the controller's
        opts["logging_config"] = _logging_config(logging_config).model_dump()
    if http_options is not None:
        opts["http_options"] = (HTTPOptions(**http_options) if isinstance(http_options, dict) else http_options).model_dump()
    if grpc_options is not None:
        opts["grpc_options"] = (gRPCOptions(**grpc_options) if isinstance(grpc_options, dict) else grpc_options).model_dump()
    if proxy_location is not None:
        opts["proxy_location"] = ProxyLocation.parse(proxy_location).value
    return opts


def start(
    http_options: Union[None, dict, HTTPOptions] = None,
    grpc_options: Union[None, dict, gRPCOptions] = None,
    proxy_location: Union[None, str, ProxyLocation] = None,
    *,
    logging_config: Union[None, dict, LoggingConfig] = None,
    address: Optional[str] = None,
    security: Any = None,
    **deprecated: Any,
) -> None:
    """Start dserve on a Dask cluster (found or embedded); idempotent. ``security``: the
    ``distributed.Security`` of a TLS cluster (default: the default Client's, or Dask's config).
    ``logging_config``: the proxies' logging (e.g. ``enable_access_log``)."""
    for key in deprecated:
        if key not in _DEPRECATED_START_OPTIONS:
            raise TypeError(f"start() got an unexpected keyword argument {key!r}")
        warnings.warn(f"serve.start({key}=...) is deprecated in Ray Serve and has no effect in dserve",
                      DeprecationWarning, stacklevel=2)
    _connect(address, _options(http_options, grpc_options, proxy_location, logging_config), security)


_DEPRECATED_START_OPTIONS = ("detached", "dedicated_cpu", "_checkpoint_path", "_override_controller_namespace")


def deploy_specs(runtime: Runtime, specs: list) -> None:
    """Send application specs to the controller; raise on a rejected deploy."""
    result = runtime.call("dserve_deploy", spec=dumps(specs))
    if result.get("error"):
        raise ValueError(result["error"])


def wait_for_application(runtime: Runtime, name: str, timeout_s: Optional[float] = None) -> None:
    """Block until ``name`` is RUNNING; raise ``DeploymentFailedError`` if it failed."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_message = ""
    while True:
        state = runtime.call("dserve_wait", name=name, timeout=5.0)
        if state["status"] == "RUNNING":
            return
        if state["status"] == "DEPLOY_FAILED":
            raise DeploymentFailedError(f"Application {name!r} failed to deploy:\n{state['message']}")
        if state["status"] == "NOT_STARTED":
            raise DeploymentFailedError(f"Application {name!r} was deleted while deploying.")
        if state["message"] and state["message"] != last_message:
            last_message = state["message"]
            logger.warning("Application %r is still deploying: %s", name, last_message)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Application {name!r} did not become RUNNING in {timeout_s}s: {last_message}")


def run(
    target: Application,
    blocking: bool = False,
    name: str = "default",
    route_prefix: Any = _UNSET,
    logging_config: Union[None, dict, LoggingConfig] = None,
    _local_testing_mode: bool = False,
    external_scaler_enabled: bool = False,
    *,
    address: Optional[str] = None,
) -> DeploymentHandle:
    """Deploy an application (replacing one of the same name) and return its ingress handle
    once it is RUNNING. ``logging_config`` applies to its deployments that set none.

    Called from an ``async def`` of a replica (on its worker's event loop), it returns once
    the controller has taken the application, without waiting for it to run: its replicas
    may need that very loop to start. Calls through the handle wait for them."""
    if external_scaler_enabled:
        raise ValueError("external_scaler_enabled=True is not supported by dserve: its controller scales "
                         "deployments itself (autoscaling_config) and asks Dask for workers (adaptive_target)")
    if _local_testing_mode:
        return run_local(target, name, route_prefix)
    spec = application_spec(target, name, route_prefix, logging_config=_logging_config(logging_config))
    runtime = _connect(address)
    deploy_specs(runtime, [spec])
    if not in_loop_thread(runtime.loop):
        wait_for_application(runtime, name)
    handle = DeploymentHandle(spec.ingress, name)
    if blocking:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            logger.info("Got KeyboardInterrupt, exiting...")
    return handle


def delete(name: str, _blocking: bool = True) -> None:
    """Delete an application and all its deployments (and wait until they are gone, except
    when called from an ``async def`` of a replica: its replicas may need that very event
    loop to stop, so it returns once the controller has taken the deletion)."""
    runtime = get_runtime()
    runtime.call("dserve_delete", names=[name], wait=_blocking and not in_loop_thread(runtime.loop))


def status() -> ServeStatus:
    """Status of every application, deployment and proxy."""
    runtime = get_runtime()
    return ServeStatus.model_validate(runtime.call("dserve_status"))


def shutdown() -> None:
    """Delete every application; stop the embedded cluster if dserve started it."""
    global _owned_cluster
    runtime = current_runtime()
    if runtime is not None and not runtime.closed and runtime.scheduler_address:
        try:
            _sync(runtime, runtime.rpc("dserve_shutdown"), timeout=120)
        except Exception as exc:  # the cluster may already be gone
            logger.info("dserve shutdown: %r", exc)
    if runtime is not None:
        try:
            _sync(runtime, runtime.close(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - its loop may be gone with the cluster
            logger.info("dserve shutdown: closing the runtime: %r", exc)
    set_runtime(None)
    if _owned_cluster is not None:
        cluster, _owned_cluster = _owned_cluster, None
        close_embedded_cluster(cluster)


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to an application's ingress deployment."""
    runtime = get_runtime()
    if not runtime.scheduler_address:  # local testing mode
        return DeploymentHandle(local_ingress(runtime, name), name)
    info = runtime.call("dserve_app_info", name=name)
    if info is None:
        raise RayServeException(f"Application '{name}' does not exist.")
    return DeploymentHandle(info["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: Optional[str] = None) -> DeploymentHandle:
    """A handle to any deployment of an application (the current app inside a replica)."""
    if app_name is None:
        from .context import _current_replica

        replica = _current_replica.get()
        app_name = replica.app_name if replica is not None else "default"
    runtime = get_runtime()
    if runtime.scheduler_address:
        info = runtime.call("dserve_app_info", name=app_name)
        if info is None or deployment_name not in info["deployments"]:
            raise RayServeException(f"Deployment '{deployment_name}' in application '{app_name}' does not exist.")
    return DeploymentHandle(deployment_name, app_name)
