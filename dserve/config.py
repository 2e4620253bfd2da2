"""Configuration classes with Ray Serve's names, fields and defaults.

``DeploymentConfig`` holds what ``@serve.deployment`` / ``.options()`` accept;
``AutoscalingConfig``, ``HTTPOptions``, ``gRPCOptions`` and ``ProxyLocation``
configure autoscaling and the proxies; ``LoggingConfig`` the logs of replicas and
proxies. All are pydantic v2 models, so invalid
values are rejected with the field name and the reason.
"""
from __future__ import annotations

import enum
import logging
import os
import warnings
from typing import Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, field_validator, model_validator

from .autoscaling_policy import AutoscalingContext, AutoscalingPolicy, DeploymentID, TimeStampedValue  # noqa: F401 - Ray's home
from .gang import GangPlacementStrategy, GangRuntimeFailurePolicy, GangSchedulingConfig  # noqa: F401 - ditto
from .validation import (  # noqa: F401 - re-exported: the rules live in validation
    MAX_NAME_LENGTH, MAX_REPLICAS_PER_DEPLOYMENT, validate_name, validate_num_replicas, validate_route_prefix,
)

__all__ = [
    "AutoscalingConfig", "DeploymentConfig", "EncodingType", "HTTPOptions", "LoggingConfig", "gRPCOptions",
    "ProxyLocation", "RayActorOptions", "DEFAULT_MAX_ONGOING_REQUESTS", "DEFAULT_HOST", "DEFAULT_HTTP_PORT",
    "DEFAULT_GRPC_PORT", "DEFAULT_REST_PORT",
    "validate_name", "validate_num_replicas", "validate_route_prefix", "MAX_NAME_LENGTH", "MAX_REPLICAS_PER_DEPLOYMENT",
    "AutoscalingContext", "AutoscalingPolicy", "TimeStampedValue", "GangPlacementStrategy", "GangRuntimeFailurePolicy", "GangSchedulingConfig",
]

DEFAULT_MAX_ONGOING_REQUESTS = 5
# autoscaling_config keys Ray Serve once had (target_ongoing_requests replaced this one): Ray 2.60 ignores them
REMOVED_AUTOSCALING_KEYS = frozenset({"target_num_ongoing_requests_per_replica"})

# ---- every default dserve's processes use, in one place ----
DEFAULT_HOST = "127.0.0.1"  # nothing listens beyond loopback unless asked
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 9000
DEFAULT_REST_PORT = 52365  # the REST admin API on the scheduler (Ray's dashboard port)
REST_MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger REST request body is a 413
CONNECT_TIMEOUT_S = 5.0  # a caller's first connection to a replica worker (Dask retries within it)
RECONNECT_TIMEOUT_S = 0.5  # ... and after a connection to it dropped (the worker is most likely gone)
STREAM_WINDOW = 16  # stream items a replica may send beyond what its caller consumed
STREAM_BATCH_BYTES = 256 * 1024  # an HTTP stream item (a batch of ASGI messages) stops growing at this much body
LONG_POLL_TIMEOUT_S = 20.0  # a router's long poll returns at least this often
LONG_POLL_WARN_AFTER = 10  # failed long polls in a row (~5s) before a warning (a closing cluster fails a few)
METRICS_PUSH_PERIOD_S = 0.5  # replicas and routers report load this often
RECONCILE_TICK_S = 0.5  # the controller reconciles at least this often
RECONCILE_MIN_GAP_S = 0.02  # wake-ups within this long after a reconcile step coalesce into the next one
RECONCILE_GAP_FACTOR = 3.0  # ... or within this many times the step's duration (the loop's share stays <= 1/4)
RECONCILE_BACKOFF_MAX_S = 30.0  # a deployment whose step keeps failing is retried at least this often
CONTROL_CALL_TIMEOUT_S = 30.0  # controller -> replica calls (reconfigure)
MAX_STARTING_REPLICAS = 100  # a deployment has at most this many replicas starting at once (the rest follow)
MAX_STOPPING_REPLICAS = 100  # ... and at most this many draining at once
HEALTH_CHECK_FAILURE_THRESHOLD = 3  # failed checks in a row before a replica is replaced
POLICY_TIMEOUT_S = 1.0  # a custom autoscaling policy call (or its import) may take this long
RECORD_AUTOSCALING_STATS_TIMEOUT_S = float(os.environ.get("DSERVE_RECORD_AUTOSCALING_STATS_TIMEOUT_S", 10.0))  # a replica's record_autoscaling_stats() call (Ray's default)
PROXY_RETRY_AFTER_S = 10.0  # a proxy that failed to start is tried again after this
PROXY_START_WAIT_S = 15.0  # serve.start waits this long for proxies to come up
DISCONNECT_WATCH_AFTER_S = 0.05  # requests running longer than this watch for client disconnects
PROXY_HEALTH_CHECK_PERIOD_S = 2.0  # the controller asks each healthy proxy whether it still serves this often
PROXY_HEALTH_CHECK_TIMEOUT_S = 5.0  # a proxy health check unanswered this long counts as failed
# HTTP proxy limits (HTTPOptions); None in an option turns its limit off
DEFAULT_MAX_REQUEST_HEADER_BYTES = 64 * 1024  # request line + headers; larger: 431
DEFAULT_MAX_REQUEST_BODY_BYTES = 100 * 1024 * 1024  # larger (declared or counted as it arrives): 413
DEFAULT_REQUEST_HEADER_TIMEOUT_S = 30.0  # from a request's first byte (or the accept) to its last header: else 408
DEFAULT_REQUEST_BODY_TIMEOUT_S = 300.0  # from the last header to the body's last byte: else 408
DEFAULT_MAX_CONNECTIONS = 10_000  # open connections per proxy; more are answered 503 and closed
PROXY_FD_RESERVE = 256  # file descriptors a proxy's worker keeps beyond max_connections (RLIMIT_NOFILE bounds it)
REJECT_LINGER_S = 2.0  # after a 4xx/503 a proxy reads and drops what the client still sends this long, then closes
MAX_PROXIES_PER_HOST = 64  # HTTPOptions.proxies_per_host: proxy processes sharing one host's port
# process layout (README "Process layout and isolation")
PROXY_RESOURCE = "proxy"  # workers started with `--resources proxy=1` are dedicated proxy workers
PLACEMENT_MODES = ("isolated", "colocated")  # Dask config `dserve.placement`; the first is the default
EMBEDDED_THREADS_PER_WORKER = 4  # `dserve.embedded.threads-per-worker`: CPU slots of each replica worker
EMBEDDED_PROXY_THREADS = 1  # the embedded cluster's proxy worker (it runs the proxy, not replicas)
EMBEDDED_MAX_WORKERS_PER_CPU = 2  # the adaptive embedded cluster grows to 1 + this many replica workers per CPU
# the Serve page on the Dask scheduler's dashboard server (see ``dashboard``)
SERVE_PAGE_PATH = "serve"  # the page; its data at SERVE_PAGE_PATH + "/api/status"
SERVE_PAGE_REFRESH_S = 2.0  # the page fetches new data this often
TRAFFIC_BUCKET_S = 2.0  # request rate, error rate and latency percentiles are per bucket this long
TRAFFIC_HISTORY_S = 300.0  # ... kept (and charted) this far back
REPR_STATUS_TIMEOUT_S = 5.0  # a handle's notebook repr waits this long for the application's status
CONTROLLER_NAME = "dserve-controller"  # the controller's name among the scheduler's plugins
# logs (LoggingConfig)
LOG_RING_LINES = 2000  # log lines each replica (and each proxy) keeps in memory for `dserve logs`
LOG_RINGS_KEPT_STOPPED = 16  # a worker still answers `dserve logs` for this many of its stopped replicas
# a replica's (proxy's) log file rotates at this size, keeping this many old files (Ray's defaults and variables)
LOG_FILE_MAX_BYTES = int(os.environ.get("DSERVE_ROTATION_MAX_BYTES", 512 * 1024 * 1024))
LOG_FILE_BACKUP_COUNT = int(os.environ.get("DSERVE_ROTATION_BACKUP_COUNT", 5))
LOG_TO_STDERR = os.environ.get("DSERVE_LOG_TO_STDERR", "1") != "0"  # replica/proxy logs also reach the terminal
LOGS_DEFAULT_TAIL = 100  # lines `dserve logs` shows first
LOGS_FOLLOW_PERIOD_S = 0.25  # `dserve logs --follow` asks for new lines this often
CLI_PROGRESS_PERIOD_S = 0.5  # `dserve deploy --wait` / `dserve run` read the status this often while deploying
CLI_RELOAD_PERIOD_S = 1.0  # `dserve run --reload` looks at the files' modification times this often
LOGS_READ_TIMEOUT_S = 5.0  # the controller waits this long for the workers' log lines


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


class EncodingType(str, enum.Enum):
    """How log lines are written: plain text, or one JSON object per line."""

    TEXT = "TEXT"
    JSON = "JSON"


_LEVELS = dict(logging._nameToLevel)  # noqa: SLF001 - "INFO" -> 20 (getLevelNamesMapping is 3.11+)
# what a LogRecord carries by itself (``additional_log_standard_attrs`` picks from these)
LOGRECORD_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)


class LoggingConfig(_Strict):
    """Logging of a deployment's replicas (``@serve.deployment``/``serve.run``) or of the
    proxies (``serve.start``, the config's top level); Ray Serve's fields and defaults."""

    encoding: Union[str, EncodingType] = "TEXT"
    log_level: Union[int, str] = "INFO"
    logs_dir: Optional[str] = None
    enable_access_log: bool = True
    additional_log_standard_attrs: List[str] = Field(default_factory=list)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: Any) -> str:
        value = value.value if isinstance(value, EncodingType) else value
        if value not in {e.value for e in EncodingType}:
            raise ValueError(f'Got "{value}" for encoding. '
                             f"Encoding must be one of {sorted(e.value for e in EncodingType)}.")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        if isinstance(value, int):
            value = logging.getLevelName(value)
        if value not in _LEVELS:
            raise ValueError(f'Got "{value}" for log_level. log_level must be one of '
                             f"{list(_LEVELS)}.")
        return value

    @field_validator("additional_log_standard_attrs")
    @classmethod
    def _attrs(cls, value: List[str]) -> List[str]:
        unknown = sorted(set(value) - LOGRECORD_STANDARD_ATTRS)
        if unknown:
            raise ValueError(f"Unknown attributes {unknown}. Additional log standard attributes must be one of "
                             f"{sorted(LOGRECORD_STANDARD_ATTRS)}.")
        return value

    @property
    def level_number(self) -> int:
        return _LEVELS[str(self.log_level)]


def logging_config(value: Any) -> Optional["LoggingConfig"]:
    """A ``LoggingConfig`` from one, a dict or None."""
    if value is None or isinstance(value, LoggingConfig):
        return value
    return LoggingConfig(**value)


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
    policy: Optional[Union[AutoscalingPolicy, str, Callable[..., Any]]] = None

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:  # accepted and ignored, as Ray 2.60 does (target stays 2)
        if isinstance(data, dict) and REMOVED_AUTOSCALING_KEYS & data.keys():
            warnings.warn(f"autoscaling_config: {sorted(REMOVED_AUTOSCALING_KEYS & data.keys())} was removed from Ray "
                          "Serve (use target_ongoing_requests) and is ignored, as in Ray", FutureWarning)
            data = {k: v for k, v in data.items() if k not in REMOVED_AUTOSCALING_KEYS}
        return data

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:  # Ray's dict form; Ray's default policy is the built-in one
        policy = AutoscalingPolicy(**value) if isinstance(value, dict) else value
        return None if isinstance(policy, AutoscalingPolicy) and policy.is_default() else policy

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
    logging_config: Optional[LoggingConfig] = None

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
        return 1 if self.num_replicas is None else int(self.num_replicas)  # None means Ray's default, 1


class HTTPOptions(_Strict):
    """HTTP proxy options (Ray Serve's fields and defaults), plus the proxy's limits:
    request line and headers over ``max_request_header_bytes`` get 431 before any
    body is read; a body over ``max_request_body_bytes`` 413 (declared or counted as
    it arrives); headers not complete ``request_header_timeout_s`` after the
    request's first byte (or the accept), or a body not complete
    ``request_body_timeout_s`` after them, 408; connections beyond
    ``max_connections`` 503. None turns a limit off.

    ``proxies_per_host`` (a dserve extension, default 1): up to this many workers
    of each host run a proxy, all serving ``port`` through ``SO_REUSEPORT`` (the
    kernel spreads connections among them). Where the platform lacks
    ``SO_REUSEPORT`` one proxy per host runs (logged).

    On loopback aliases (several hosts simulated on one machine): when ``host``
    is a loopback address (127.x, localhost) and a proxy's worker runs on another
    loopback address (``dask worker --host 127.0.0.2``), that proxy binds its
    worker's address instead, so proxies on different "hosts" do not collide.
    On real hosts nothing changes."""

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535)
    root_path: str = ""
    request_timeout_s: Optional[PositiveFloat] = None
    keep_alive_timeout_s: PositiveFloat = 90.0
    ssl_keyfile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile_password: Optional[str] = None
    ssl_ca_certs: Optional[str] = None
    # limits (not in Ray Serve, which has none): 431, 413, 408, 503
    max_request_header_bytes: Optional[int] = Field(DEFAULT_MAX_REQUEST_HEADER_BYTES, gt=0)
    max_request_body_bytes: Optional[int] = Field(DEFAULT_MAX_REQUEST_BODY_BYTES, ge=0)
    request_header_timeout_s: Optional[PositiveFloat] = DEFAULT_REQUEST_HEADER_TIMEOUT_S
    request_body_timeout_s: Optional[PositiveFloat] = DEFAULT_REQUEST_BODY_TIMEOUT_S
    max_connections: Optional[int] = Field(DEFAULT_MAX_CONNECTIONS, gt=0)
    # scale-out (a dserve extension): this many proxy processes per host share the port (SO_REUSEPORT)
    proxies_per_host: int = Field(1, ge=1, le=MAX_PROXIES_PER_HOST)


class gRPCOptions(_Strict):  # noqa: N801 - Ray Serve's name
    """gRPC proxy options; the gRPC proxy starts only when servicer functions are given."""

    port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535)
    grpc_servicer_functions: List[str] = Field(default_factory=list)
    request_timeout_s: Optional[PositiveFloat] = None
