"""dserve: Ray Serve's model-serving API on Dask distributed.

``import dserve as serve`` and write Ray Serve code. Also the preload module
for ``dask scheduler --preload dserve`` (see ``dask_setup``).
"""
from __future__ import annotations

from . import config, context, exceptions, handle, schema
from ._version import __version__ as __version__
from .api import delete, get_app_handle, get_deployment_handle, run, shutdown, start, status
from .config import AutoscalingConfig, DeploymentConfig, HTTPOptions, LoggingConfig, ProxyLocation, gRPCOptions
from .context import ReplicaContext, get_replica_context
from .deployment import Application, Deployment, deployment
from .exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    RequestCancelledError,
)
from .batching import batch
from .dask_map import map_partitions
from .ingress import ingress
from .multiplex import get_multiplexed_model_id, multiplexed
from .preload import dask_setup
from .handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
    RayServeHandle,
    RayServeSyncHandle,
)

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
    "LoggingConfig",
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
    "map_partitions",
    "multiplexed",
    "run",
    "schema",
    "shutdown",
    "start",
    "status",
]


def __dir__() -> list:
    return sorted(__all__ + ["__version__"])
