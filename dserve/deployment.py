"""``@serve.deployment``, ``Deployment``, ``Application``: what users write.

A ``Deployment`` is a class or function plus its options; ``.bind()`` makes an
``Application`` (a deployment with its constructor arguments, which may hold
other bound deployments). ``build_application`` flattens that graph into the
list of deployments the controller runs, turning nested bound deployments into
``DeploymentHandle`` objects.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from pydantic import ValidationError

from .config import AutoscalingConfig, DeploymentConfig, LoggingConfig, validate_name, validate_route_prefix
from .gang import GANG_INSTEAD, GangSchedulingConfig

__all__ = ["deployment", "Deployment", "Application", "BuiltApplication", "BuiltDeployment", "build_application"]

_UNSET: Any = object()

# option name -> DeploymentConfig field (``max_concurrent_queries`` is the old name)
_CONFIG_OPTIONS = {
    "num_replicas": "num_replicas",
    "max_ongoing_requests": "max_ongoing_requests",
    "max_concurrent_queries": "max_ongoing_requests",
    "max_queued_requests": "max_queued_requests",
    "user_config": "user_config",
    "autoscaling_config": "autoscaling_config",
    "ray_actor_options": "ray_actor_options",
    "max_replicas_per_node": "max_replicas_per_node",
    "health_check_period_s": "health_check_period_s",
    "health_check_timeout_s": "health_check_timeout_s",
    "graceful_shutdown_wait_loop_s": "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s": "graceful_shutdown_timeout_s",
    "max_constructor_retry_count": "max_constructor_retry_count",
    "logging_config": "logging_config",
}
_ACCEPTED_AND_IGNORED = {"is_driver_deployment", "gang_scheduling_config"}  # the latter: gangs of 1 only
# Ray options dserve cannot honour, and what it does instead
_REJECTED = {
    "placement_group_bundles": "dserve places each replica on one Dask worker; give the deployment "
                               "ray_actor_options={'num_cpus': ..., 'num_gpus': ..., 'resources': {...}} matching "
                               "Dask worker resources instead of placement group bundles",
    "placement_group_strategy": "dserve spreads replicas across workers and hosts itself (and honours "
                                "max_replicas_per_node); placement group strategies do not apply",
}


def _make_config(base: Optional[DeploymentConfig], options: Dict[str, Any], who: str) -> DeploymentConfig:
    values = base.model_dump(exclude_unset=True) if base is not None else {}
    if base is not None and base.autoscaling_config is not None and "autoscaling_config" not in values:
        values["autoscaling_config"] = base.autoscaling_config.model_dump(exclude_unset=True)
    for key, value in options.items():
        target = _CONFIG_OPTIONS[key]
        if isinstance(value, AutoscalingConfig):
            value = value.model_dump(exclude_unset=True)
        values[target] = value
        if target == "num_replicas" and value not in (None, "auto"):
            values.pop("autoscaling_config", None)
        if target == "autoscaling_config" and value is not None and values.get("num_replicas") not in (None, "auto"):
            values["num_replicas"] = None
    try:
        return DeploymentConfig(**values)
    except ValidationError as exc:
        raise ValueError(f"invalid options for deployment {who!r}: {exc}") from None


def _check_options(options: Dict[str, Any], who: str) -> Dict[str, Any]:
    if "version" in options:
        raise ValueError(
            f"deployment {who!r}: the `version` option has been removed; dserve (like Ray Serve) "
            "computes code versions internally. Remove `version=`."
        )
    for key, instead in _REJECTED.items():
        if options.get(key) is not None:
            raise ValueError(f"deployment {who!r}: {key} is not supported: {instead}")
    gang = options.get("gang_scheduling_config")
    if gang is not None:  # a gang of one replica is what dserve does anyway
        gang = gang if isinstance(gang, GangSchedulingConfig) else GangSchedulingConfig(**gang)
        if gang.gang_size > 1:
            raise ValueError(f"deployment {who!r}: gang_scheduling_config with gang_size={gang.gang_size} is "
                             f"not supported: {GANG_INSTEAD}")
    unknown = set(options) - set(_CONFIG_OPTIONS) - _ACCEPTED_AND_IGNORED - set(_REJECTED) - {"name", "route_prefix"}
    if unknown:
        raise TypeError(f"deployment {who!r}: unknown option(s) {sorted(unknown)}")
    if options.get("is_driver_deployment"):
        warnings.warn("is_driver_deployment is deprecated in Ray Serve and has no effect in dserve",
                      DeprecationWarning, stacklevel=3)
    if "num_replicas" in options and "autoscaling_config" in options:
        if options["num_replicas"] not in (None, "auto") and options["autoscaling_config"] is not None:
            raise ValueError(
                f"deployment {who!r}: num_replicas and autoscaling_config cannot both be set; "
                'use num_replicas="auto" or None with an autoscaling_config'
            )
    if "name" in options:
        validate_name(options["name"], "deployment name")
    prefix = options.get("route_prefix", _UNSET)
    if prefix is not _UNSET and prefix is not None:
        validate_route_prefix(prefix)
    return {k: v for k, v in options.items() if k not in _ACCEPTED_AND_IGNORED and k not in _REJECTED}


class Deployment:
    """A class or function with its deployment options; ``.bind()`` makes an Application."""

    def __init__(
        self,
        func_or_class: Union[type, Callable],
        name: str,
        config: DeploymentConfig,
        route_prefix: Optional[str] = None,
    ) -> None:
        self._func_or_class = func_or_class
        self._name = name
        self._config = config
        self._route_prefix = route_prefix

    @property
    def name(self) -> str:
        return self._name

    @property
    def func_or_class(self) -> Union[type, Callable]:
        return self._func_or_class

    @property
    def config(self) -> DeploymentConfig:
        return self._config

    @property
    def num_replicas(self) -> Any:
        return self._config.num_replicas

    @property
    def max_ongoing_requests(self) -> int:
        return self._config.max_ongoing_requests

    max_concurrent_queries = max_ongoing_requests

    @property
    def max_queued_requests(self) -> int:
        return self._config.max_queued_requests

    @property
    def user_config(self) -> Any:
        return self._config.user_config

    @property
    def autoscaling_config(self) -> Optional[AutoscalingConfig]:
        return self._config.autoscaling_config

    @property
    def ray_actor_options(self) -> dict:
        return self._config.ray_actor_options.model_dump(exclude_unset=True)

    @property
    def route_prefix(self) -> Optional[str]:
        return self._route_prefix

    @property
    def logging_config(self) -> Optional[LoggingConfig]:
        return self._config.logging_config

    def options(self, **options: Any) -> "Deployment":
        """Return a copy with some options changed (same names as the decorator)."""
        options = _check_options(options, options.get("name", self._name))
        name = options.pop("name", self._name)
        route_prefix = options.pop("route_prefix", self._route_prefix)
        config = _make_config(self._config, options, name)
        return Deployment(self._func_or_class, name, config, route_prefix)

    def bind(self, *args: Any, **kwargs: Any) -> "Application":
        """Bind constructor arguments; the result can be run or passed to another bind()."""
        return Application(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "Deployments cannot be constructed directly. Use `deployment.bind()` and run the "
            "application with `serve.run()`."
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self._name!r})"


class Application:
    """One or more deployments bound with arguments, deployable together."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict) -> None:
        self._bound_deployment = deployment
        self._args = args
        self._kwargs = kwargs

    @property
    def deployment(self) -> Deployment:
        return self._bound_deployment

    def __repr__(self) -> str:
        return f"Application(ingress={self._bound_deployment.name!r})"


def deployment(
    _func_or_class: Optional[Union[type, Callable]] = None,
    **options: Any,
) -> Any:
    """Turn a class or function into a ``Deployment`` (usable bare or with options)."""

    def decorate(target: Union[type, Callable]) -> Deployment:
        if not (inspect.isclass(target) or callable(target)):
            raise TypeError("@serve.deployment must decorate a class or a function")
        if inspect.isclass(target) and inspect.isasyncgenfunction(getattr(target, "__init__", None)):
            raise TypeError("__init__ cannot be a generator")
        name = options["name"] if "name" in options else getattr(target, "__name__", "Deployment")
        validate_name(name, "deployment name")
        checked = _check_options(dict(options), name)
        checked.pop("name", None)
        route_prefix = checked.pop("route_prefix", None)
        config = _make_config(None, checked, name)
        return Deployment(target, name, config, route_prefix)

    if _func_or_class is not None:
        return decorate(_func_or_class)
    return decorate


@dataclass
class BuiltDeployment:
    """One deployment of a built application, with its resolved constructor args."""

    name: str
    deployment: Deployment
    args: tuple
    kwargs: dict
    is_ingress: bool = False


@dataclass
class BuiltApplication:
    name: str
    route_prefix: Optional[str]
    ingress: str
    deployments: List[BuiltDeployment] = field(default_factory=list)


def build_application(app: Application, name: str, route_prefix: Any = _UNSET) -> BuiltApplication:
    """Flatten an application graph; nested bound deployments become handles."""
    from .handle import DeploymentHandle

    if isinstance(app, Deployment):
        raise TypeError(
            f"expected an Application, got the Deployment {app.name!r}: call `.bind()` on it first"
        )
    if not isinstance(app, Application):
        raise TypeError(f"expected an Application (a bound deployment), got {type(app).__name__}")
    validate_name(name, "application name")
    built: Dict[int, BuiltDeployment] = {}
    names: Dict[str, int] = {}

    def visit(node: Application) -> DeploymentHandle:
        key = id(node)
        if key not in built:
            dep = node._bound_deployment
            dep_name = dep.name
            if dep_name in names:  # a second, different binding of the same deployment
                n = 1
                while f"{dep.name}_{n}" in names:
                    n += 1
                dep_name = f"{dep.name}_{n}"
            names[dep_name] = key
            placeholder = BuiltDeployment(dep_name, dep, (), {})
            built[key] = placeholder
            placeholder.args = tuple(resolve(a) for a in node._args)
            placeholder.kwargs = {k: resolve(v) for k, v in node._kwargs.items()}
        return DeploymentHandle(built[key].name, name)

    def resolve(value: Any) -> Any:
        if isinstance(value, Application):
            return visit(value)
        if isinstance(value, Deployment):
            raise TypeError(
                f"the Deployment {value.name!r} was passed unbound; pass `{value.name}.bind()` instead"
            )
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    visit(app)
    ingress = built[id(app)]
    ingress.is_ingress = True
    if route_prefix is _UNSET:
        route_prefix = app._bound_deployment.route_prefix or "/"
    if route_prefix is not None:
        validate_route_prefix(route_prefix)
    # ingress first, then its dependencies in discovery order
    order = [ingress] + [b for b in built.values() if b is not ingress]
    return BuiltApplication(name=name, route_prefix=route_prefix, ingress=ingress.name, deployments=order)
