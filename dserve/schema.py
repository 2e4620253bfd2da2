"""Pydantic models of Ray Serve's status and config schemas.

The status enums and ``ServeStatus`` (what ``serve.status()`` returns) live
here; the config-file schemas (``ServeDeploySchema`` and friends) and the REST
response schemas extend this module.
"""
from __future__ import annotations

import enum
from typing import Dict, Optional

from pydantic import BaseModel, Field

__all__ = [
    "ApplicationStatus",
    "DeploymentStatus",
    "DeploymentStatusTrigger",
    "ReplicaState",
    "ProxyStatus",
    "DeploymentStatusOverview",
    "ApplicationStatusOverview",
    "ServeStatus",
]


class ApplicationStatus(str, enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


class DeploymentStatus(str, enum.Enum):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"


class DeploymentStatusTrigger(str, enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    CONFIG_UPDATE_STARTED = "CONFIG_UPDATE_STARTED"
    CONFIG_UPDATE_COMPLETED = "CONFIG_UPDATE_COMPLETED"
    UPSCALE_COMPLETED = "UPSCALE_COMPLETED"
    DOWNSCALE_COMPLETED = "DOWNSCALE_COMPLETED"
    AUTOSCALING = "AUTOSCALING"
    REPLICA_STARTUP_FAILED = "REPLICA_STARTUP_FAILED"
    HEALTH_CHECK_FAILED = "HEALTH_CHECK_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    DELETING = "DELETING"


class ReplicaState(str, enum.Enum):
    STARTING = "STARTING"
    UPDATING = "UPDATING"
    RECOVERING = "RECOVERING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    PENDING_MIGRATION = "PENDING_MIGRATION"


class ProxyStatus(str, enum.Enum):
    STARTING = "STARTING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"


class DeploymentStatusOverview(BaseModel):
    """Status of one deployment in ``serve.status()``."""

    status: DeploymentStatus
    status_trigger: DeploymentStatusTrigger = DeploymentStatusTrigger.UNSPECIFIED
    replica_states: Dict[ReplicaState, int] = Field(default_factory=dict)
    message: str = ""


class ApplicationStatusOverview(BaseModel):
    """Status of one application in ``serve.status()``."""

    status: ApplicationStatus
    message: str = ""
    last_deployed_time_s: float = 0.0
    deployments: Dict[str, DeploymentStatusOverview] = Field(default_factory=dict)


class ServeStatus(BaseModel):
    """What ``serve.status()`` returns: proxies and applications."""

    proxies: Dict[str, ProxyStatus] = Field(default_factory=dict)
    applications: Dict[str, ApplicationStatusOverview] = Field(default_factory=dict)
    target_capacity: Optional[float] = None
