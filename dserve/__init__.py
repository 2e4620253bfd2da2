"""dserve: Ray Serve's model-serving API on Dask distributed.

``import dserve as serve`` and write Ray Serve code. Also the preload module
for ``dask scheduler --preload dserve`` (see ``dask_setup``).
"""
from __future__ import annotations

from typing import Any

import click

from . import config, context, exceptions, handle, schema
from .api import delete, get_app_handle, get_deployment_handle, run, shutdown, start, status
from .config import AutoscalingConfig, DeploymentConfig, HTTPOptions, ProxyLocation, gRPCOptions
from .context import ReplicaContext, get_replica_context
from .deployment import Application, Deployment, deployment
from .exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    RequestCancelledError,
)
from .batching import batch
from .ingress import ingress
from .multiplex import get_multiplexed_model_id, multiplexed
from .handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
    RayServeHandle,
    RayServeSyncHandle,
)

__version__ = "0.1.0"

__all__ = [
    "Application",
    "AutoscalingConfig",
    "BackPressureError",
    "Deployment",
    "DeploymentConfig",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentUnavailableError",
    "HTTPOptions",
    "ProxyLocation",
    "RayServeException",
    "RayServeHandle",
    "RayServeSyncHandle",
    "ReplicaContext",
    "RequestCancelledError",
    "batch",
    "config",
    "context",
    "dask_setup",
    "delete",
    "deployment",
    "exceptions",
    "gRPCOptions",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "handle",
    "ingress",
    "multiplexed",
    "run",
    "schema",
    "shutdown",
    "start",
    "status",
]


@click.command(name="dserve", context_settings={"ignore_unknown_options": True})
@click.option("--dserve-http-host", default=None, help="Host the HTTP proxies bind (default 127.0.0.1).")
@click.option("--dserve-http-port", default=None, type=int, help="Port of the HTTP proxies (default 8000).")
@click.option("--dserve-proxy-location", default=None, help="EveryNode (default), HeadOnly or Disabled.")
@click.option("--dserve-rest-port", default=None, type=int, help="Port of the REST admin API (default 52365).")
@click.option("--dserve-rest-host", default=None, help="Host the REST admin API binds (default 127.0.0.1).")
@click.option("--dserve-rest-token", default=None, help="Bearer token the REST admin API requires.")
@click.option("--dserve-state-path", default=None, help="File the controller checkpoints its goal state to.")
def dask_setup(
    scheduler: Any,
    dserve_http_host: Any,
    dserve_http_port: Any,
    dserve_proxy_location: Any,
    dserve_rest_port: Any,
    dserve_rest_host: Any,
    dserve_rest_token: Any,
    dserve_state_path: Any,
) -> None:
    """Preload entry point: ``dask scheduler --preload dserve [--dserve-* options]``."""
    from .controller import Controller

    options: dict = {}
    http = {k: v for k, v in (("host", dserve_http_host), ("port", dserve_http_port)) if v is not None}
    if http:
        options["http_options"] = HTTPOptions(**http).model_dump()
    if dserve_proxy_location:
        options["proxy_location"] = ProxyLocation.parse(dserve_proxy_location).value
    if dserve_rest_port is not None:
        options["rest_port"] = dserve_rest_port
    if dserve_rest_host:
        options["rest_host"] = dserve_rest_host
    if dserve_rest_token:
        options["rest_token"] = dserve_rest_token
    if dserve_state_path:
        options["state_path"] = dserve_state_path
    scheduler.add_plugin(Controller(options))
