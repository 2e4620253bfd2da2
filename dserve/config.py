"""Configuration classes with Ray Serve's names, fields and defaults.

``DeploymentConfig`` holds what ``@serve.deployment`` / ``.options()`` accept;
``AutoscalingConfig``, ``HTTPOptions``, ``gRPCOptions`` and ``ProxyLocation``
configure autoscaling and the proxies. All are pydantic v2 models, so invalid
values are rejected with the field name and the reason.
"""
from __future__ import annotations

import enum
import unicodedata
from typing import Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, field_validator, model_validator

__all__ = [
    "AutoscalingConfig",
    "DeploymentConfig",
    "HTTPOptions",
    "gRPCOptions",
    "ProxyLocation",
    "RayActorOptions",
    "DEFAULT_MAX_ONGOING_REQUESTS",
    "DEFAULT_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_REST_PORT",
    "validate_name",
    "validate_num_replicas",
    "validate_route_prefix",
    "MAX_NAME_LENGTH",
    "MAX_REPLICAS_PER_DEPLOYMENT",
]

DEFAULT_MAX_ONGOING_REQUESTS = 5

# ---- every default dserve's processes use, in one place ----
DEFAULT_HOST = "127.0.0.1"  # nothing listens beyond loopback unless asked
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 9000
DEFAULT_REST_PORT = 52365  # the REST admin API on the scheduler (Ray's dashboard port)
REST_MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger REST request body is a 413
LONG_POLL_TIMEOUT_S = 20.0  # a router's long poll returns at least this often
METRICS_PUSH_PERIOD_S = 0.5  # replicas and routers report load this often
RECONCILE_TICK_S = 0.5  # the controller reconciles at least this often
RECONCILE_MIN_GAP_S = 0.02  # wake-ups within this long after a reconcile step coalesce into the next one
RECONCILE_GAP_FACTOR = 3.0  # ... or within this many times the step's duration (the loop's share stays <= 1/4)
RECONCILE_BACKOFF_MAX_S = 30.0  # a deployment whose step keeps failing is retried at least this often
CONTROL_CALL_TIMEOUT_S = 30.0  # controller -> replica calls (reconfigure)
MAX_REPLICAS_PER_DEPLOYMENT = 2000  # a larger num_replicas / max_replicas is rejected (measured: README "Scale")
MAX_STARTING_REPLICAS = 100  # a deployment has at most this many replicas starting at once (the rest follow)
MAX_STOPPING_REPLICAS = 100  # ... and at most this many draining at once
HEALTH_CHECK_FAILURE_THRESHOLD = 3  # failed checks in a row before a replica is replaced
POLICY_TIMEOUT_S = 1.0  # a custom autoscaling policy call (or its import) may take this long
PROXY_RETRY_AFTER_S = 10.0  # a proxy that failed to start is tried again after this
PROXY_START_WAIT_S = 15.0  # serve.start waits this long for proxies to come up
MAX_NAME_LENGTH = 256  # application and deployment names, and route prefixes, are at most this long
DISCONNECT_WATCH_AFTER_S = 0.05  # requests running longer than this watch for client disconnects


def validate_num_replicas(value: Any, field: str = "num_replicas") -> Any:
    """``num_replicas`` is an int >= 0 and at most ``MAX_REPLICAS_PER_DEPLOYMENT``,
    "auto" or None."""
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{field} must be >= 0")
    if isinstance(value, int) and value > MAX_REPLICAS_PER_DEPLOYMENT:
        raise ValueError(f"{field} must be at most {MAX_REPLICAS_PER_DEPLOYMENT} (dserve's limit per deployment, "
                         f"see README \"Scale\"), got {value}")
    return value


def _control_character(text: str) -> Optional[str]:
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def validate_name(value: Any, field: str) -> str:
    """Ray Serve's rules for an application or deployment name, plus what dserve's keys
    need: a non-empty string, not only whitespace, without ``#`` (the controller's keys are
    ``app#deployment``), without control characters, at most ``MAX_NAME_LENGTH`` long.
    ``field`` ("application name", "deployment name") starts the error message."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError(f"{field} must not be empty or only whitespace, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{field} must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    if "#" in value:
        raise ValueError(f"{field} must not contain '#', got {value!r}")
    bad = _control_character(value)
    if bad is not None:
        raise ValueError(f"{field} must not contain control characters (found {bad!r}), got {value!r}")
    return value


def validate_route_prefix(prefix: Optional[str]) -> Optional[str]:
    """Ray Serve's rules for a route prefix (None means: no HTTP route), plus: no control
    characters, no ``#`` or ``?`` (a request path never holds them), at most
    ``MAX_NAME_LENGTH`` long."""
    if prefix is None:
        return prefix
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError(f'route_prefix must start with "/", got {prefix!r}')
    if len(prefix) > MAX_NAME_LENGTH:
        raise ValueError(f"route_prefix must be at most {MAX_NAME_LENGTH} characters, got {len(prefix)}")
    bad = _control_character(prefix)
    if bad is not None:
        raise ValueError(f"route_prefix must not contain control characters (found {bad!r}), got {prefix!r}")
    if "#" in prefix or "?" in prefix:
        raise ValueError(f"route_prefix must not contain '#' or '?', got {prefix!r}")
    if prefix != "/" and prefix.endswith("/"):
        raise ValueError(f'route_prefix must not end with "/" unless it is "/", got {prefix!r}')
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"route_prefix may not contain wildcards, got {prefix!r}")
    return prefix


class ProxyLocation(str, enum.Enum):
    """Where proxies run: on no host, on the scheduler's host, or one per host."""

    Disabled = "Disabled"
    HeadOnly = "HeadOnly"
    EveryNode = "EveryNode"

    @classmethod
    def parse(cls, value: "ProxyLocation | str | None") -> "ProxyLocation":
        if value is None:
            return cls.EveryNode
        if isinstance(value, cls):
            return value
        for member in cls:
            if member.value.lower() == str(value).lower():
                return member
        raise ValueError(f"proxy_location must be one of {[m.value for m in cls]}, got {value!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)


class AutoscalingConfig(_Strict):
    """Request-based autoscaling (Ray Serve's fields and defaults)."""

    min_replicas: int = Field(1, ge=0)
    initial_replicas: Optional[int] = Field(None, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: PositiveFloat = 2.0
    metrics_interval_s: PositiveFloat = 10.0
    look_back_period_s: PositiveFloat = 30.0
    smoothing_factor: PositiveFloat = 1.0
    upscale_smoothing_factor: Optional[PositiveFloat] = None
    downscale_smoothing_factor: Optional[PositiveFloat] = None
    upscaling_factor: Optional[PositiveFloat] = None
    downscaling_factor: Optional[PositiveFloat] = None
    downscale_delay_s: NonNegativeFloat = 600.0
    downscale_to_zero_delay_s: Optional[NonNegativeFloat] = None
    upscale_delay_s: NonNegativeFloat = 30.0
    aggregation_function: Literal["mean", "max", "min"] = "mean"
    policy: Optional[Union[str, Callable[..., Any]]] = None

    @field_validator("max_replicas")
    @classmethod
    def _max_replicas(cls, value: int) -> int:
        return validate_num_replicas(value, "max_replicas")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be less than or equal to "
                f"max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must be between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self

    @classmethod
    def default_auto(cls) -> "AutoscalingConfig":
        """The configuration ``num_replicas="auto"`` stands for."""
        return cls(min_replicas=1, max_replicas=100, target_ongoing_requests=2.0)


_ACTOR_OPTION_KEYS = {
    "num_cpus", "num_gpus", "memory", "resources", "runtime_env", "accelerator_type",
    "object_store_memory",
}


class RayActorOptions(_Strict):
    """Per-replica resources (mapped onto Dask worker threads, resources and memory)."""

    num_cpus: Optional[NonNegativeFloat] = None
    num_gpus: Optional[NonNegativeFloat] = None
    memory: Optional[NonNegativeFloat] = None
    object_store_memory: Optional[NonNegativeFloat] = None
    resources: Dict[str, NonNegativeFloat] = Field(default_factory=dict)
    runtime_env: Dict[str, Any] = Field(default_factory=dict)
    accelerator_type: Optional[str] = None

    def demand(self) -> Dict[str, float]:
        """Resources one replica reserves; one CPU unless told otherwise (as Ray Serve)."""
        out = {"CPU": 1.0 if self.num_cpus is None else float(self.num_cpus)}
        if self.num_gpus:
            out["GPU"] = float(self.num_gpus)
        if self.memory:
            out["memory"] = float(self.memory)
        for key, value in self.resources.items():
            if value:
                out[key] = float(value)
        return out


class DeploymentConfig(_Strict):
    """Options of one deployment, as ``@serve.deployment`` takes them."""

    num_replicas: Optional[Union[int, Literal["auto"]]] = 1
    max_ongoing_requests: int = Field(DEFAULT_MAX_ONGOING_REQUESTS, gt=0)
    max_queued_requests: int = -1
    user_config: Any = None
    autoscaling_config: Optional[AutoscalingConfig] = None
    graceful_shutdown_wait_loop_s: NonNegativeFloat = 2.0
    graceful_shutdown_timeout_s: NonNegativeFloat = 20.0
    health_check_period_s: PositiveFloat = 10.0
    health_check_timeout_s: PositiveFloat = 30.0
    max_replicas_per_node: Optional[int] = Field(None, ge=1, le=100)
    max_constructor_retry_count: int = Field(20, ge=1)
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions)

    @field_validator("num_replicas")
    @classmethod
    def _num_replicas(cls, value: Any) -> Any:
        return validate_num_replicas(value)

    @field_validator("max_queued_requests")
    @classmethod
    def _max_queued(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("max_queued_requests must be -1 (no limit) or a positive integer")
        return value

    @field_validator("ray_actor_options", mode="before")
    @classmethod
    def _actor_options(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = set(value) - _ACTOR_OPTION_KEYS
            if unknown:
                raise ValueError(
                    f"unknown ray_actor_options {sorted(unknown)}; "
                    f"supported: {sorted(_ACTOR_OPTION_KEYS)}"
                )
        return value

    @field_validator("user_config")
    @classmethod
    def _user_config(cls, value: Any) -> Any:
        if value is None:
            return value
        import json

        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"user_config must be JSON-serializable: {exc}") from None
        return value

    @model_validator(mode="after")
    def _replicas_vs_autoscaling(self) -> "DeploymentConfig":
        if self.num_replicas == "auto":
            if self.autoscaling_config is None:
                object.__setattr__(self, "autoscaling_config", AutoscalingConfig.default_auto())
        elif self.num_replicas is not None and self.autoscaling_config is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                "num_replicas and autoscaling_config cannot both be set; "
                'use num_replicas="auto" or None with an autoscaling_config'
            )
        return self

    def initial_target(self) -> int:
        """Replica count a fresh deployment starts with."""
        if self.autoscaling_config is not None:
            ac = self.autoscaling_config
            return ac.initial_replicas if ac.initial_replicas is not None else ac.min_replicas
        return int(self.num_replicas or 0)


class HTTPOptions(_Strict):
    """HTTP proxy options (Ray Serve's defaults)."""

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535)
    root_path: str = ""
    request_timeout_s: Optional[PositiveFloat] = None
    keep_alive_timeout_s: PositiveFloat = 90.0
    ssl_keyfile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile_password: Optional[str] = None
    ssl_ca_certs: Optional[str] = None


class gRPCOptions(_Strict):  # noqa: N801 - Ray Serve's name
    """gRPC proxy options; the gRPC proxy starts only when servicer functions are given."""

    port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535)
    grpc_servicer_functions: List[str] = Field(default_factory=list)
    request_timeout_s: Optional[PositiveFloat] = None
