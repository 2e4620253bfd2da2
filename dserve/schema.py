"""Pydantic models of Ray Serve's status, config and REST schemas.

The status enums and ``ServeStatus`` (what ``serve.status()`` returns); the
config-file schemas (``ServeDeploySchema`` and friends, also the REST PUT
bodies), validated with the field and reason on error; and the REST response
schemas (``ServeStatusSchema`` for V1, ``ServeInstanceDetails`` for V2).
"""
from __future__ import annotations

import enum
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ApplicationStatus",
    "DeploymentStatus",
    "DeploymentStatusTrigger",
    "ReplicaState",
    "ProxyStatus",
    "DeploymentStatusOverview",
    "ApplicationStatusOverview",
    "ServeStatus",
    "RayActorOptionsSchema",
    "DeploymentSchema",
    "ServeApplicationSchema",
    "HTTPOptionsSchema",
    "gRPCOptionsSchema",
    "ServeDeploySchema",
    "ServeStatusSchema",
    "ReplicaDetails",
    "DeploymentDetails",
    "ApplicationDetails",
    "ProxyDetails",
    "ServeInstanceDetails",
    "MULTI_APP",
    "SINGLE_APP",
]

# how the current goal state was declared: REST V2 / multi-app config, or REST V1
MULTI_APP, SINGLE_APP = "MULTI_APP", "SINGLE_APP"


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
    """What ``serve.status()`` returns: proxies and applications (Ray Serve's fields), and
    ``checkpoint_message`` (dserve's, empty unless the state file could not be restored)."""

    proxies: Dict[str, ProxyStatus] = Field(default_factory=dict)
    applications: Dict[str, ApplicationStatusOverview] = Field(default_factory=dict)
    target_capacity: Optional[float] = None
    checkpoint_message: str = ""


# ---------------------------------------------------------------------------
# Config schemas: what a Ray Serve config file (and the REST PUT body) holds.
# Fields left out keep the value in the code; only fields set here override it.
# ---------------------------------------------------------------------------


def _repeated(values: List[Any]) -> List[Any]:
    """The values that occur more than once, sorted."""
    return sorted({v for v in values if values.count(v) > 1})


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayActorOptionsSchema(_Schema):
    """Options with which to start a replica actor."""

    runtime_env: Dict[str, Any] = Field(default_factory=dict)
    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)
    memory: Optional[float] = Field(None, ge=0)
    object_store_memory: Optional[float] = Field(None, ge=0)
    resources: Dict[str, float] = Field(default_factory=dict)
    accelerator_type: Optional[str] = None


class DeploymentSchema(_Schema):
    """Options for one deployment of an application (overrides the code's values)."""

    name: str = Field(..., min_length=1)
    num_replicas: Optional[Union[int, Literal["auto"]]] = None
    max_ongoing_requests: Optional[int] = Field(None, gt=0)
    max_concurrent_queries: Optional[int] = Field(None, gt=0)
    max_queued_requests: Optional[int] = None
    user_config: Optional[Any] = None
    autoscaling_config: Optional[Dict[str, Any]] = None
    graceful_shutdown_wait_loop_s: Optional[float] = Field(None, ge=0)
    graceful_shutdown_timeout_s: Optional[float] = Field(None, ge=0)
    health_check_period_s: Optional[float] = Field(None, gt=0)
    health_check_timeout_s: Optional[float] = Field(None, gt=0)
    ray_actor_options: Optional[RayActorOptionsSchema] = None
    max_replicas_per_node: Optional[int] = Field(None, ge=1, le=100)
    route_prefix: Optional[str] = None
    logging_config: Optional[Dict[str, Any]] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from .config import validate_name

        return validate_name(value, "deployment name")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: Optional[str]) -> Optional[str]:
        from .config import validate_route_prefix

        return validate_route_prefix(value)

    @field_validator("num_replicas")
    @classmethod
    def _replicas(cls, value: Any) -> Any:
        from .config import validate_num_replicas

        return validate_num_replicas(value)

    @model_validator(mode="after")
    def _exclusive(self) -> "DeploymentSchema":
        if isinstance(self.num_replicas, int) and self.autoscaling_config is not None:
            raise ValueError("num_replicas and autoscaling_config cannot both be set")
        return self

    def options(self) -> Dict[str, Any]:
        """The deployment options this override sets (for ``Deployment.options``)."""
        out = {k: getattr(self, k) for k in self.model_fields_set if k not in ("name", "logging_config")}
        if "ray_actor_options" in out and self.ray_actor_options is not None:
            out["ray_actor_options"] = self.ray_actor_options.model_dump(exclude_unset=True)
        return out


class ServeApplicationSchema(_Schema):
    """One application: where its code is, its route and per-deployment overrides."""

    name: str = "default"
    route_prefix: Optional[str] = "/"
    import_path: str
    runtime_env: Dict[str, Any] = Field(default_factory=dict)
    host: Optional[str] = None
    port: Optional[int] = None
    deployments: List[DeploymentSchema] = Field(default_factory=list)
    args: Dict[str, Any] = Field(default_factory=dict)
    logging_config: Optional[Dict[str, Any]] = None
    external_scaler_enabled: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from .config import validate_name

        return validate_name(value, "application name")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: Optional[str]) -> Optional[str]:
        from .config import validate_route_prefix

        return validate_route_prefix(value)

    @field_validator("import_path")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if ":" in value:
            module, _, attr = value.partition(":")
            if not module or not attr or ":" in attr:
                raise ValueError(f'import_path must look like "module.submodule:attribute", got {value!r}')
        elif "." not in value:
            raise ValueError(f'import_path must look like "module.submodule:attribute", got {value!r}')
        return value

    @field_validator("runtime_env")
    @classmethod
    def _runtime_env(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        unsupported = set(value) - {"env_vars", "working_dir", "pip", "py_modules"}
        if unsupported:
            raise ValueError(
                f"runtime_env fields {sorted(unsupported)} are not supported on Dask; "
                "supported: env_vars, working_dir, pip, py_modules"
            )
        return value

    @field_validator("deployments")
    @classmethod
    def _unique_deployments(cls, value: List[DeploymentSchema]) -> List[DeploymentSchema]:
        dupes = _repeated([d.name for d in value])
        if dupes:
            raise ValueError(f"deployment names must be unique within an application, repeated: {dupes}")
        return value


class HTTPOptionsSchema(_Schema):
    """Options to start the HTTP proxies with."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    root_path: str = ""
    request_timeout_s: Optional[float] = Field(None, gt=0)
    keep_alive_timeout_s: float = Field(90.0, gt=0)


class gRPCOptionsSchema(_Schema):  # noqa: N801 - Ray Serve's name
    """Options to start the gRPC proxies with."""

    port: int = Field(9000, ge=0, le=65535)
    grpc_servicer_functions: List[str] = Field(default_factory=list)
    request_timeout_s: Optional[float] = Field(None, gt=0)


class ServeDeploySchema(_Schema):
    """Multi-application config: what ``dserve deploy`` and ``PUT /api/serve/applications/`` take."""

    proxy_location: str = "EveryNode"
    http_options: HTTPOptionsSchema = Field(default_factory=HTTPOptionsSchema)
    grpc_options: gRPCOptionsSchema = Field(default_factory=gRPCOptionsSchema)
    logging_config: Optional[Dict[str, Any]] = None
    target_capacity: Optional[float] = Field(None, ge=0, le=100)
    applications: List[ServeApplicationSchema] = Field(default_factory=list)

    @field_validator("proxy_location")
    @classmethod
    def _location(cls, value: str) -> str:
        from .config import ProxyLocation

        return ProxyLocation.parse(value).value

    @field_validator("applications")
    @classmethod
    def _unique(cls, value: List[ServeApplicationSchema]) -> List[ServeApplicationSchema]:
        dupes = _repeated([a.name for a in value])
        if dupes:
            raise ValueError(f"application names must be unique, repeated: {dupes}")
        dupes = _repeated([a.route_prefix for a in value if a.route_prefix is not None])
        if dupes:
            raise ValueError(f"route prefixes must be unique across applications, repeated: {dupes}")
        return value


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


class _ActorInfo(BaseModel):
    node_id: Optional[str] = None
    node_ip: Optional[str] = None
    actor_id: Optional[str] = None
    actor_name: Optional[str] = None
    worker_id: Optional[str] = None
    log_file_path: Optional[str] = None


class ProxyDetails(_ActorInfo):
    status: ProxyStatus


class ServeInstanceDetails(BaseModel):
    """V2: system-level info and details of every application."""

    controller_info: _ActorInfo = Field(default_factory=_ActorInfo)
    proxy_location: Optional[str] = None
    http_options: Optional[HTTPOptionsSchema] = None
    grpc_options: Optional[gRPCOptionsSchema] = None
    proxies: Dict[str, ProxyDetails] = Field(default_factory=dict)
    deploy_mode: str = "MULTI_APP"
    target_capacity: Optional[float] = None
    applications: Dict[str, ApplicationDetails] = Field(default_factory=dict)
