"""What a custom autoscaling policy is given and how it is named (Ray Serve's names).

``AutoscalingPolicy`` is the ``autoscaling_config["policy"]`` model:
``policy_function`` (a callable, or a ``"module:attr"`` import path resolved on
the scheduler) and ``policy_kwargs`` (JSON-serializable; a class named by
``policy_function`` is instantiated once with them and called on every tick).
``AutoscalingContext`` is what the policy reads; ``TimeStampedValue`` is one
sample of a custom metric (``record_autoscaling_stats``) in ``raw_metrics``.
``DeploymentID`` names a deployment with its application (``AutoscalingContext.deployment_id``).
``dserve.config`` re-exports them, where Ray users import them from.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["AutoscalingContext", "AutoscalingPolicy", "DeploymentID", "TimeStampedValue", "BUILT_IN", "DEFAULT_POLICY", "import_path", "import_policy", "resolve_policy"]

# Ray's default ``policy_function``; it and Ray's other name for it mean dserve's built-in policy
DEFAULT_POLICY = "ray.serve.autoscaling_policy:default_autoscaling_policy"
BUILT_IN = {DEFAULT_POLICY, "ray.serve.autoscaling_policy:replica_queue_length_autoscaling_policy"}


@dataclass(frozen=True)
class DeploymentID:
    """A deployment and the application it belongs to (Ray Serve's ``DeploymentID``):
    hashable, so policies can key their decisions by it."""

    name: str
    app_name: str = "default"


class TimeStampedValue(NamedTuple):
    """One sample of a custom metric: when it was recorded (``time.time()``) and its value."""

    timestamp: float
    value: float


class AutoscalingPolicy(BaseModel):
    """A custom policy: ``policy_function`` (callable, class, or ``"module:attr"``) and
    ``policy_kwargs`` (a class's constructor arguments)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    policy_function: Union[str, Callable[..., Any]] = DEFAULT_POLICY
    policy_kwargs: Dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _older_key(cls, data: Any) -> Any:
        """Ray's earlier docs name the policy ``name``: read it as ``policy_function``
        (Ray 2.60 ignores it and runs its default policy, which is not what such code means)."""
        if isinstance(data, dict) and "name" in data and "policy_function" not in data:
            data = {("policy_function" if k == "name" else k): v for k, v in data.items()}
        return data

    @field_validator("policy_function")
    @classmethod
    def _import_path(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.replace(":", ".").strip(".").count("."):
            raise ValueError(f"policy_function {value!r} must be an import path 'module:attribute' or a callable")
        return value

    @field_validator("policy_kwargs")
    @classmethod
    def _json(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"policy_kwargs must be JSON-serializable: {exc}") from None
        return value

    def is_default(self) -> bool:
        """Names Ray's default policy: dserve runs its built-in one (``policy=None``)."""
        return isinstance(self.policy_function, str) and self.policy_function in BUILT_IN


def _load(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), attr)


def import_path(policy: Any) -> Optional[str]:
    """The import path a ``policy`` setting names, if it names one."""
    if isinstance(policy, AutoscalingPolicy):
        policy = policy.policy_function
    return policy if isinstance(policy, str) else None


def import_policy(policy: Any) -> Any:
    """What the setting's import path names, imported (a class is not instantiated)."""
    return _load(import_path(policy) or policy)


def resolve_policy(policy: Any) -> Callable[..., Any]:
    """The callable a ``policy`` setting stands for: a function as is, a class instantiated
    with ``policy_kwargs`` (once: callers keep the result), an import path imported first."""
    kwargs: Dict[str, Any] = {}
    if isinstance(policy, AutoscalingPolicy):
        policy, kwargs = policy.policy_function, dict(policy.policy_kwargs)
    target = _load(policy)
    if inspect.isclass(target):
        return target(**kwargs)
    if not callable(target):
        raise TypeError(f"the autoscaling policy {policy!r} is not callable")
    return functools.partial(target, **kwargs) if kwargs else target


@dataclass
class AutoscalingContext:
    """What a custom policy decides from (Ray Serve's field names).

    ``running_replicas`` lists the ids of the RUNNING replicas; ``raw_metrics`` maps a
    custom metric name to ``{replica id: [TimeStampedValue, ...]}`` inside the
    look-back window and ``aggregated_metrics`` to ``{replica id: time-weighted mean}``.
    """

    config: Any
    deployment_name: str
    app_name: str
    current_num_replicas: int
    target_num_replicas: int
    running_replicas: List[str]
    total_running_requests: float
    total_queued_requests: float
    total_num_requests: float
    capacity_adjusted_min_replicas: int
    capacity_adjusted_max_replicas: int
    policy_state: Dict[str, Any] = field(default_factory=dict)
    last_scale_up_time: Optional[float] = None
    last_scale_down_time: Optional[float] = None
    current_time: Optional[float] = None
    raw_metrics: Dict[str, Dict[str, List[TimeStampedValue]]] = field(default_factory=dict)
    aggregated_metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def deployment_id(self) -> DeploymentID:
        """This deployment's ``DeploymentID`` (``name``, ``app_name``)."""
        return DeploymentID(self.deployment_name, self.app_name)
