"""``serve.run(app, _local_testing_mode=True)``: the application in-process.

Each deployment gets one replica built in this process, with no cluster and no
controller; handles reach it through the same router and replica code as on a
cluster, over the transport's in-process channel (registered with the runtime)
instead of a Dask comm.
"""
from __future__ import annotations

import asyncio
from typing import Any

import cloudpickle

from .actors.replica import ReplicaActor
from .deployment import Application, build_application
from .event_loop import home_loop
from .exceptions import DeploymentFailedError, RayServeException
from .handle import DeploymentHandle
from .runtime import Runtime, current_runtime, set_runtime
from .serialization import dumps_code

__all__ = ["run_local", "local_ingress"]


def run_local(app: Application, name: str, route_prefix: Any) -> DeploymentHandle:
    """Build every deployment of ``app`` in this process; return the ingress handle."""
    built = build_application(app, name, route_prefix)
    loop = home_loop()
    runtime = current_runtime()
    if runtime is None or runtime.closed:
        runtime = Runtime("", loop)
        set_runtime(runtime)
    for bd in built.deployments:
        cfg = bd.deployment.config
        replica = ReplicaActor(
            name, bd.name, f"{name}#{bd.name}#local",
            dumps_code(bd.deployment.func_or_class), cloudpickle.dumps((bd.args, bd.kwargs)),
            {"max_ongoing_requests": cfg.max_ongoing_requests, "user_config": cfg.user_config},
        )
        info = asyncio.run_coroutine_threadsafe(replica.initialize(), loop).result()
        if info.get("error"):
            raise DeploymentFailedError(f"deployment {bd.name!r} failed to start:\n{info['error']}")
        loop.call_soon_threadsafe(runtime.add_local_replica, name, bd.name, replica)
    runtime.local_apps[name] = built.ingress
    return DeploymentHandle(built.ingress, name)


def local_ingress(runtime: Runtime, app: str) -> str:
    """The ingress deployment of a locally run application."""
    if app not in runtime.local_apps:
        raise RayServeException(f"Application '{app}' does not exist.")
    return runtime.local_apps[app]
