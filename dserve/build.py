"""From user code to the specs the controller deploys.

``application_spec`` serializes a bound ``Application`` (the Python API path).
``build_from_config`` imports an application from ``module:attribute`` (an
``Application``, or a builder function taking the config's ``args``), applies
the config's per-deployment overrides, and returns its spec; the controller
runs it as a task on a Dask worker, so the scheduler never imports user code.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from typing import Any, Dict, Optional

import cloudpickle

from .deployment import _UNSET, Application, Deployment, build_application
from .ingress import ASGI_APP_ATTR
from .serialization import dumps_code, user_traceback
from .spec import ApplicationSpec, DeploymentSpec

__all__ = ["application_spec", "import_application", "build_from_config"]


def application_spec(app: Application, name: str, route_prefix: Any = _UNSET,
                     overrides: Optional[Dict[str, Dict[str, Any]]] = None,
                     version_from_source: bool = False, logging_config: Any = None) -> ApplicationSpec:
    """Serialize every deployment of ``app`` (code, constructor args, options).

    User modules that are not installed packages ship by value, so every
    worker runs the code as it was when this spec was built.
    ``version_from_source`` derives code versions from the module's source
    file instead of the pickled bytes: stable across processes and rebuilds
    (a config change then reconfigures in place) and new when the file changes.
    ``logging_config`` (the application's) applies to each deployment that sets none.
    """
    built = build_application(app, name, route_prefix)
    overrides = dict(overrides or {})
    deployments = []
    for bd in built.deployments:
        deployment = bd.deployment
        if bd.name in overrides:
            deployment = deployment.options(**overrides.pop(bd.name))
        if logging_config is not None and deployment.config.logging_config is None:
            deployment = deployment.options(logging_config=logging_config)
        target = deployment.func_or_class
        code = dumps_code(target)
        init = cloudpickle.dumps((bd.args, bd.kwargs))
        identity = _source_identity(target) if version_from_source else code
        version = hashlib.sha1(identity + b"\0" + init).hexdigest()[:16]
        deployments.append(DeploymentSpec(bd.name, code, init, deployment.config, version, bd.is_ingress))
    if overrides:
        raise ValueError(
            f"the config names deployment(s) {sorted(overrides)} that application {name!r} does not "
            f"have (it has {[d.name for d in built.deployments]})"
        )
    spec = ApplicationSpec(built.name, built.route_prefix, built.ingress, deployments)
    ingress_cls = next(bd.deployment.func_or_class for bd in built.deployments if bd.is_ingress)
    asgi = getattr(ingress_cls, ASGI_APP_ATTR, None)
    spec.source["docs_path"] = getattr(asgi, "docs_url", None)
    return spec


def _source_identity(target: Any) -> bytes:
    """Where the code lives and what its module's source is: stable across
    processes (a pickle of a decorated class is not), new when the file changes."""
    module = inspect.getmodule(target)
    try:
        source = inspect.getsource(module).encode() if module is not None else b""
    except (OSError, TypeError):
        source = b""
    name = f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', '')}".encode()
    return name + b"\0" + hashlib.sha1(source).digest()


def import_application(import_path: str, args: Optional[Dict[str, Any]] = None, fresh: bool = False) -> Application:
    """Import ``module:attribute`` (or ``module.attribute``) as an Application.
    ``fresh`` re-executes an already imported module (its file may have changed)."""
    if ":" in import_path:
        module_name, _, attr = import_path.partition(":")
    else:
        module_name, _, attr = import_path.rpartition(".")
    if fresh and module_name in sys.modules:
        module = importlib.reload(sys.modules[module_name])
    else:
        module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part)
    if isinstance(target, Application):
        if args:
            raise ValueError(f"{import_path} is an Application, not a builder function: it takes no args")
        return target
    if isinstance(target, Deployment):
        raise TypeError(f"{import_path} is a Deployment; bind it first (`app = {attr}.bind()`)")
    if callable(target):
        params = inspect.signature(target).parameters
        app = target(args or {}) if params else target()
        if not isinstance(app, Application):
            raise TypeError(f"the builder {import_path} must return an Application, got {type(app).__name__}")
        return app
    raise TypeError(f"{import_path} is a {type(target).__name__}, not an Application or builder function")


def build_from_config(app_config: Dict[str, Any]) -> Dict[str, Any]:
    """Build one application from its config (runs on a Dask worker).

    Returns ``{"spec": pickled ApplicationSpec}`` or ``{"error": traceback}``.
    """
    from .schema import ServeApplicationSchema

    try:
        schema = ServeApplicationSchema.model_validate(app_config)
        app = import_application(schema.import_path, schema.args, fresh=True)
        overrides = {d.name: d.options() for d in schema.deployments}
        spec = application_spec(app, schema.name, schema.route_prefix, overrides, version_from_source=True,
                                logging_config=schema.logging_config)
        spec.source = {**spec.source, "config": schema.model_dump(mode="json", exclude_unset=True)}  # docs_path stays
        return {"spec": cloudpickle.dumps(spec)}
    except BaseException as exc:  # noqa: BLE001 - reported as DEPLOY_FAILED with the traceback
        error = user_traceback(exc)
        if isinstance(exc, ModuleNotFoundError):
            error += (f"\nThe module {exc.name!r} cannot be imported on the Dask worker (working directory "
                      f"{os.getcwd()!r}; a plain `dask worker` does not see the driver's files): ship your code with "
                      "runtime_env={'working_dir': '.'} (or py_modules), or put it on the workers' PYTHONPATH.")
        return {"error": error}
