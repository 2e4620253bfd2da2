"""Declarative deploys: a whole config (REST PUT, ``dserve deploy``) at once.

Applications not in the config are deleted; an application whose config is
unchanged is left alone; a new or changed one is built from its import path
in a task on a Dask worker (after its runtime_env is applied) and then
updated in place: new code rolls, a new ``user_config`` reconfigures, counts
scale. A failed build leaves that application DEPLOY_FAILED with the
traceback, while every other application keeps serving. After a restart,
``resume`` builds again what had not finished building.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from pydantic import ValidationError

from ..schema import MULTI_APP, SINGLE_APP, ServeApplicationSchema, ServeDeploySchema
from ..build import build_from_config
from ..serialization import loads
from ..spec import ApplicationSpec
from .application_state import ApplicationState
from .autoscaling import policy_import_error
from .runtime_env import apply_runtime_env

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["DeclarativeDeployer"]

logger = logging.getLogger("dserve.controller")



def _parse(config: Dict[str, Any], mode: str) -> ServeDeploySchema:
    if mode == SINGLE_APP:
        return ServeDeploySchema(applications=[ServeApplicationSchema.model_validate(config)])
    return ServeDeploySchema.model_validate(config)


def validation_errors(exc: ValidationError) -> List[Dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]


class DeclarativeDeployer:
    """Applies whole configs; builds each changed application on a worker."""

    def __init__(self, controller: "Controller") -> None:
        self.controller = controller
        self._builds: Dict[str, Any] = {}  # app name -> build task

    async def deploy(self, config: Dict[str, Any], mode: str = MULTI_APP, force: bool = False) -> Dict[str, Any]:
        """Validate and apply a config; returns at once (builds run in the background).
        ``force`` rebuilds unchanged applications too (``dserve run --reload``)."""
        try:
            schema = _parse(config, mode)
        except ValidationError as exc:
            return {"error": f"invalid config: {exc}", "errors": validation_errors(exc)}
        store = self.controller.store
        if not store.apps:
            store.deploy_mode = None
        if store.deploy_mode is not None and store.deploy_mode != mode:
            return {"error": f"dserve is running {store.deploy_mode.lower().replace('_', '-')} applications; "
                             f"a {mode.lower().replace('_', '-')} config cannot be deployed until they are deleted"}
        store.deploy_mode = mode
        store.deployed_config = config
        proxy_options: Dict[str, Any] = {}  # only what the config sets: serve.start's choices stand otherwise
        if "http_options" in schema.model_fields_set:
            proxy_options["http_options"] = schema.http_options.model_dump(exclude_unset=True)
        if "proxy_location" in schema.model_fields_set:
            proxy_options["proxy_location"] = schema.proxy_location
        if "grpc_options" in schema.model_fields_set:
            proxy_options["grpc_options"] = schema.grpc_options.model_dump(exclude_unset=True)
        if schema.logging_config is not None:
            proxy_options["logging_config"] = schema.logging_config.model_dump()
        if proxy_options:
            await self.controller.service.start(proxy_options, wait=False)
        wanted = {a.name for a in schema.applications}
        for name, app in list(self.controller.store.apps.items()):
            if name not in wanted:
                app.delete()
        deployed_at = time.time()  # every application in the config, changed or not (as Ray)
        for app_schema in schema.applications:
            self._apply(app_schema, force, deployed_at)
        store.checkpoint()  # the new config, and the last good version of each app being rebuilt
        self.controller.publisher.notify_change()
        self.controller.reconciler.wake()
        return {"ok": True}

    def resume(self) -> None:
        """After a restart: build again each application of the last config deploy that
        does not run its config yet (its build had not finished); a restored one keeps
        serving its last good version meanwhile."""
        store = self.controller.store
        if not store.deployed_config or store.deploy_mode is None:
            return
        try:
            schema = _parse(store.deployed_config, store.deploy_mode)
        except ValidationError as exc:
            logger.error("dserve: the restored config is no longer valid; not resuming its builds: %s", exc)
            return
        for app_schema in schema.applications:
            self._apply(app_schema)

    def _apply(self, schema: ServeApplicationSchema, force: bool = False, deployed_at: Optional[float] = None) -> None:
        """Build a new or changed application; ``deployed_at`` (None on ``resume``: kept) becomes
        its ``last_deployed_time_s`` now and after its build."""
        config = schema.model_dump(mode="json")
        app = self.controller.store.apps.get(schema.name)
        if not force and app is not None and not app.deleting and app.spec.source.get("full_config") == config:
            if deployed_at is not None:
                app.last_deployed_time_s = deployed_at
            return  # unchanged: untouched
        if app is None or app.deleting:
            placeholder = ApplicationSpec(schema.name, schema.route_prefix, "", [], {"full_config": None})
            if app is None:
                app = self.controller.store.apps[schema.name] = ApplicationState(self.controller, placeholder)
            else:
                app.apply(placeholder)
        if deployed_at is not None:
            app.last_deployed_time_s = deployed_at
        app.building = True
        app.deploying = True
        app.failed_message = ""
        previous = self._builds.pop(schema.name, None)
        if previous is not None:
            previous.cancel()
        task = self.controller.reconciler.spawn(self._build(schema, config, app.last_deployed_time_s))
        self._builds[schema.name] = task

    async def _build(self, schema: ServeApplicationSchema, config: Dict[str, Any], deployed_at: float) -> None:
        error: Optional[str] = None
        spec: Optional[ApplicationSpec] = None
        try:
            await apply_runtime_env(self.controller, schema.runtime_env)
            future = self.controller.client.submit(
                build_from_config, schema.model_dump(mode="json", exclude_unset=True), pure=False
            )
            result = await future
            if "error" in result:
                error = result["error"]
            else:
                spec = loads(result["spec"])
                error = await policy_import_error(spec.deployments)
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
        app = self.controller.store.apps.get(schema.name)
        self._builds.pop(schema.name, None)
        if app is None or app.deleting:
            return
        app.building = False
        if error is not None:
            logger.warning("building application %r failed:\n%s", schema.name, error)
            app.fail(f"Deploying application {schema.name!r} failed:\n{error}")
        else:
            spec.source["full_config"] = config
            app.apply(spec, deployed_at)
            self.controller.store.checkpoint()
        self.controller.publisher.notify_change()
        self.controller.reconciler.wake()
