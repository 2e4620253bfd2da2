"""The REST API's views: the controller's state as Ray Serve's response shapes (V1 status, V2 details)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict

from ..config import DEFAULT_GRPC_PORT
from ..schema import MULTI_APP, HTTPOptionsSchema, ServeInstanceDetails, ServeStatusSchema

if TYPE_CHECKING:
    from ..controller.application_state import ApplicationState
    from ..controller.deployment_state import DeploymentState
    from ..controller.plugin import Controller

__all__ = ["instance_details", "v1_status"]


def _deployment_config(dep: "DeploymentState") -> Dict[str, Any]:
    config = dep.spec.config
    out = config.model_dump(mode="json", exclude={"autoscaling_config"})
    if config.autoscaling_config is not None:
        ac = config.autoscaling_config
        out["autoscaling_config"] = ac.model_dump(mode="json", exclude={"policy"})
        if isinstance(ac.policy, str):
            out["autoscaling_config"]["policy"] = ac.policy
    out["name"] = dep.name
    out["ray_actor_options"] = config.ray_actor_options.model_dump(mode="json", exclude_none=True)
    return out


def _deployment(dep: "DeploymentState") -> Dict[str, Any]:
    return {
        "name": dep.name,
        "status": dep.status.value,
        "status_trigger": dep.trigger.value,
        "message": dep.message,
        "deployment_config": _deployment_config(dep),
        "target_num_replicas": dep.target,
        "required_resources": dep.spec.config.ray_actor_options.demand(),
        "replicas": [
            {
                "replica_id": r.replica_id,
                "state": r.state.value,
                "pid": r.pid,
                "start_time_s": r.started_at,
                "node_id": r.host,
                "node_ip": r.host,
                "actor_id": r.key,
                "actor_name": f"SERVE_REPLICA::{r.replica_id}",
                "worker_id": r.worker,
                "log_file_path": None,
            }
            for r in dep.replicas.values()
        ],
    }


def _application(app: "ApplicationState") -> Dict[str, Any]:
    config = app.spec.source.get("config")
    return {
        "name": app.name,
        "route_prefix": app.route_prefix,
        "docs_path": app.spec.source.get("docs_path"),
        "status": app.status.value,
        "message": app.message,
        "last_deployed_time_s": app.last_deployed_time_s,
        "deployed_app_config": config,
        "source": "declarative" if config is not None or app.building else "imperative",
        "deployments": {name: _deployment(d) for name, d in app.deployments.items()},
    }


def instance_details(controller: "Controller") -> Dict[str, Any]:
    host = controller.scheduler_host()
    proxies = {
        node: {"node_id": node, "node_ip": p["host"], "actor_id": None,
               "actor_name": f"SERVE_PROXY::{p['worker']}", "worker_id": p["worker"],
               "log_file_path": None, "status": p["status"]}
        for node, p in controller.proxies.status().items()
    }
    details = {
        "controller_info": {"node_id": host, "node_ip": host, "actor_id": controller.scheduler.address,
                            "actor_name": "dserve-controller", "worker_id": str(os.getpid()),
                            "log_file_path": None},
        "proxy_location": controller.proxies.location.value,
        "http_options": controller.proxies.http_options.model_dump(
            include=set(HTTPOptionsSchema.model_fields) - {"ssl_keyfile_password"}),  # never shown
        "grpc_options": controller.options.get("grpc_options", {"port": DEFAULT_GRPC_PORT, "grpc_servicer_functions": []}),
        "proxies": proxies,
        "deploy_mode": controller.store.deploy_mode or MULTI_APP,
        "applications": {name: _application(app) for name, app in controller.store.apps.items()},
        "checkpoint_message": controller.store.checkpoint_message,
    }
    return ServeInstanceDetails.model_validate(details).model_dump(mode="json")


def v1_status(controller: "Controller") -> Dict[str, Any]:
    app = controller.store.apps.get("default")
    if app is None:
        body = {"name": "default", "app_status": {"status": "NOT_STARTED", "message": "", "deployment_timestamp": 0},
                "deployment_statuses": []}
    else:
        body = {
            "name": app.name,
            "app_status": {"status": app.status.value, "message": app.message,
                           "deployment_timestamp": app.last_deployed_time_s},
            "deployment_statuses": [
                {"name": d.name, "status": d.status.value, "message": d.message} for d in app.deployments.values()
            ],
        }
    return ServeStatusSchema.model_validate(body).model_dump(mode="json")
