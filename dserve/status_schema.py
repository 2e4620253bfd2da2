"""Ray Serve's status models: the enums, ``ServeStatus`` and the REST response schemas.

What ``serve.status()`` returns (``ServeStatus`` and its overviews) and what the
REST API answers (``ServeStatusSchema`` for V1, ``ServeInstanceDetails`` for V2).
``dserve.schema`` re-exports every name here.
"""
from __future__ import annotations

import enum
from typing import Any, Dict, List, Optional

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
    "ServeStatusSchema",
    "ReplicaDetails",
    "DeploymentDetails",
    "ApplicationDetails",
    "ProxyDetails",
    "ActorInfo",
    "ReplicaRank",
]


class ReplicaRank(BaseModel):
    """A replica's rank within its deployment (0..N-1, stable while it lives; a replacement
    takes the lowest free one), its host's rank among the deployment's hosts, and its rank
    among the deployment's replicas on that host."""

    rank: int = Field(0, description="Global rank of the replica across all nodes scoped to the deployment.")
    node_rank: int = Field(0, description="Rank of the node in the deployment.")
    local_rank: int = Field(0, description="Rank of the replica on the node scoped to the deployment.")


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
    checkpoint_message: str = ""  # dserve's: empty unless the state file could not be restored
    # dserve's: why a proxy is unhealthy (e.g. its port is taken), by the same keys as ``proxies``
    proxy_messages: Dict[str, str] = Field(default_factory=dict)

    def _repr_html_(self) -> str:
        from .status_view import status_html

        return status_html(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------
# Config schemas: what a Ray Serve config file (and the REST PUT body) holds.
# Fields left out keep the value in the code; only fields set here override it.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Response schemas (REST V1 and V2).
# ---------------------------------------------------------------------------


class _AppStatusV1(BaseModel):
    status: ApplicationStatus
    message: str = ""
    deployment_timestamp: float = 0.0


class _DeploymentStatusV1(BaseModel):
    name: str
    status: DeploymentStatus
    message: str = ""


class ServeStatusSchema(BaseModel):
    """V1: the status of the application and all its deployments."""

    name: str = "default"
    app_status: _AppStatusV1
    deployment_statuses: List[_DeploymentStatusV1] = Field(default_factory=list)


class ReplicaDetails(BaseModel):
    """Detailed info about a single replica."""

    replica_id: str
    state: ReplicaState
    pid: Optional[int] = None
    start_time_s: float = 0.0
    node_id: Optional[str] = None
    node_ip: Optional[str] = None
    node_instance_id: Optional[str] = None
    actor_id: Optional[str] = None
    actor_name: str = ""
    worker_id: Optional[str] = None
    log_file_path: Optional[str] = None


class DeploymentDetails(BaseModel):
    """Detailed info about a deployment within an application."""

    name: str
    status: DeploymentStatus
    status_trigger: DeploymentStatusTrigger = DeploymentStatusTrigger.UNSPECIFIED
    message: str = ""
    deployment_config: Dict[str, Any] = Field(default_factory=dict)
    target_num_replicas: int = 0
    required_resources: Dict[str, float] = Field(default_factory=dict)
    replicas: List[ReplicaDetails] = Field(default_factory=list)


class ApplicationDetails(BaseModel):
    """Detailed info about an application."""

    name: str
    route_prefix: Optional[str] = None
    docs_path: Optional[str] = None
    status: ApplicationStatus
    message: str = ""
    last_deployed_time_s: float = 0.0
    deployed_app_config: Optional[Dict[str, Any]] = None
    source: str = "imperative"
    deployments: Dict[str, DeploymentDetails] = Field(default_factory=dict)


class ActorInfo(BaseModel):
    node_id: Optional[str] = None
    node_ip: Optional[str] = None
    actor_id: Optional[str] = None
    actor_name: Optional[str] = None
    worker_id: Optional[str] = None
    log_file_path: Optional[str] = None


class ProxyDetails(ActorInfo):
    status: ProxyStatus
