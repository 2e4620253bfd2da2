"""Pydantic models of Ray Serve's config and status schemas, under their Ray names.

The config-file schemas (``ServeDeploySchema`` and friends, also the REST PUT
bodies) live here, validated with the field and reason on error; the status
enums, ``ServeStatus`` (what ``serve.status()`` returns) and the REST response
schemas (``ServeStatusSchema`` for V1, ``ServeInstanceDetails`` for V2) live in
``status_schema`` and are re-exported here, so ``dserve.schema.X`` is Ray's
``ray.serve.schema.X`` for all of them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .status_schema import (  # noqa: F401 - re-exported: one public home for every schema
    ApplicationDetails, ApplicationStatus, ApplicationStatusOverview, DeploymentDetails, DeploymentStatus,
    DeploymentStatusOverview, DeploymentStatusTrigger, ProxyDetails, ProxyStatus, ReplicaDetails, ReplicaState,
    ReplicaRank, ServeStatus, ServeStatusSchema,
)
from .status_schema import ActorInfo

from .config import (DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BODY_BYTES, DEFAULT_MAX_REQUEST_HEADER_BYTES,
                     DEFAULT_REQUEST_BODY_TIMEOUT_S, DEFAULT_REQUEST_HEADER_TIMEOUT_S, MAX_PROXIES_PER_HOST,
                     EncodingType, LoggingConfig)

__all__ = [
    "ApplicationStatus",
    "DeploymentStatus",
    "DeploymentStatusTrigger",
    "EncodingType",
    "LoggingConfig",
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
    "ReplicaRank",
    "MULTI_APP",
    "SINGLE_APP",
]

# how the current goal state was declared: REST V2 / multi-app config, or REST V1
MULTI_APP, SINGLE_APP = "MULTI_APP", "SINGLE_APP"


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
    logging_config: Optional[LoggingConfig] = None

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
        out = {k: getattr(self, k) for k in self.model_fields_set if k != "name"}
        if "ray_actor_options" in out and self.ray_actor_options is not None:
            out["ray_actor_options"] = self.ray_actor_options.model_dump(exclude_unset=True)
        return out


class ServeApplicationSchema(_Schema):
    """One application: where its code is, its route and per-deployment overrides."""

    name: str = "default"
    route_prefix: Optional[str] = "/"
    import_path: str
    runtime_env: Dict[str, Any] = Field(default_factory=dict)
    host: Optional[str] = None  # deprecated in Ray and unused by dserve (Ray's default 0.0.0.0 would
    port: Optional[int] = None  # suggest a bind that never happens): http_options says where proxies listen
    deployments: List[DeploymentSchema] = Field(default_factory=list)
    args: Dict[str, Any] = Field(default_factory=dict)
    logging_config: Optional[LoggingConfig] = None
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
    """Options to start the HTTP proxies with. ``host`` defaults to 127.0.0.1 (Ray's config
    schema: 0.0.0.0): nothing listens beyond this machine unless the config says so."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    root_path: str = ""
    request_timeout_s: Optional[float] = Field(None, gt=0)
    keep_alive_timeout_s: float = Field(90.0, gt=0)
    ssl_keyfile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile_password: Optional[str] = None
    ssl_ca_certs: Optional[str] = None
    max_request_header_bytes: Optional[int] = Field(DEFAULT_MAX_REQUEST_HEADER_BYTES, gt=0)
    max_request_body_bytes: Optional[int] = Field(DEFAULT_MAX_REQUEST_BODY_BYTES, ge=0)
    request_header_timeout_s: Optional[float] = Field(DEFAULT_REQUEST_HEADER_TIMEOUT_S, gt=0)
    request_body_timeout_s: Optional[float] = Field(DEFAULT_REQUEST_BODY_TIMEOUT_S, gt=0)
    max_connections: Optional[int] = Field(DEFAULT_MAX_CONNECTIONS, gt=0)
    proxies_per_host: int = Field(1, ge=1, le=MAX_PROXIES_PER_HOST)  # dserve: proxies sharing a host's port


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
    logging_config: Optional[LoggingConfig] = None
    target_capacity: Optional[float] = Field(None, ge=0, le=100)
    applications: List[ServeApplicationSchema]  # required, as in Ray ([] deletes every application)

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


class ServeInstanceDetails(BaseModel):
    """V2: system-level info and details of every application."""

    controller_info: ActorInfo = Field(default_factory=ActorInfo)
    proxy_location: Optional[str] = None
    http_options: Optional[HTTPOptionsSchema] = None
    grpc_options: Optional[gRPCOptionsSchema] = None
    proxies: Dict[str, ProxyDetails] = Field(default_factory=dict)
    deploy_mode: str = "MULTI_APP"
    target_capacity: Optional[float] = None
    applications: Dict[str, ApplicationDetails] = Field(default_factory=dict)
    checkpoint_message: str = ""  # dserve's: why the controller's state file could not be restored
