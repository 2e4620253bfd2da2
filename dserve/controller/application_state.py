"""One application: its deployments, route prefix and overall status."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..schema import ApplicationStatus, DeploymentStatus
from .deployment_state import DeploymentSpec, DeploymentState

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["ApplicationSpec", "ApplicationState"]


@dataclass
class ApplicationSpec:
    """An application as a deploy sends it to the controller."""

    name: str
    route_prefix: Optional[str]
    ingress: str
    deployments: List[DeploymentSpec] = field(default_factory=list)
    source: Dict[str, Any] = field(default_factory=dict)  # import path / config, when deployed from one


class ApplicationState:
    def __init__(self, controller: "Controller", spec: ApplicationSpec) -> None:
        self.controller = controller
        self.name = spec.name
        self.spec = spec
        self.deployments: Dict[str, DeploymentState] = {}
        self.deploying = True
        self.deleting = False
        self.building = False  # being built from an import path
        self.recovering = False  # restored from a checkpoint, replicas not all back yet
        self.failed_message = ""
        self.last_deployed_time_s = time.time()
        self.apply(spec)

    @property
    def route_prefix(self) -> Optional[str]:
        return self.spec.route_prefix

    @property
    def ingress(self) -> str:
        return self.spec.ingress

    def apply(self, spec: ApplicationSpec) -> None:
        self.spec = spec
        self.deploying = True
        self.deleting = False
        self.failed_message = ""
        self.last_deployed_time_s = time.time()
        wanted = {d.name: d for d in spec.deployments}
        for name, dep in self.deployments.items():
            if name not in wanted:
                dep.delete()
        for name, dspec in wanted.items():
            dep = self.deployments.get(name)
            if dep is None:
                self.deployments[name] = DeploymentState(self.controller, self.name, dspec)
            else:
                dep.apply(dspec)

    def fail(self, message: str) -> None:
        """Mark the app DEPLOY_FAILED without touching running deployments (e.g. import error)."""
        self.failed_message = message
        self.deploying = False

    def delete(self) -> None:
        self.deleting = True
        for dep in self.deployments.values():
            dep.delete()

    def reconcile(self) -> bool:
        """Drive every deployment; True once a deleted app has no replicas left."""
        for name, dep in list(self.deployments.items()):
            dep.reconcile()
            if dep.deleting and not dep.replicas:
                del self.deployments[name]
                self.controller.notify_change()
        if self.deploying and not self.building and self.deployments and all(
            d.status == DeploymentStatus.HEALTHY for d in self.deployments.values() if not d.deleting
        ) and not any(d.deleting for d in self.deployments.values()):
            self.deploying = False
            self.recovering = False
        return self.deleting and not self.deployments

    @property
    def status(self) -> ApplicationStatus:
        if self.deleting:
            return ApplicationStatus.DELETING
        if self.failed_message:
            return ApplicationStatus.DEPLOY_FAILED
        statuses = [d.status for d in self.deployments.values() if not d.deleting]
        if any(s == DeploymentStatus.DEPLOY_FAILED for s in statuses):
            return ApplicationStatus.DEPLOY_FAILED
        if self.deploying or self.building:
            return ApplicationStatus.DEPLOYING
        if any(s == DeploymentStatus.UNHEALTHY for s in statuses):
            return ApplicationStatus.UNHEALTHY
        return ApplicationStatus.RUNNING

    @property
    def message(self) -> str:
        if self.failed_message:
            return self.failed_message
        for dep in self.deployments.values():
            if dep.status == DeploymentStatus.DEPLOY_FAILED:
                return f"Deploying deployment '{dep.name}' failed:\n{dep.message}"
        if self.building:
            return "Building the application from its import path."
        if self.deploying:
            waiting = [d.message for d in self.deployments.values() if d.message]
            return "\n".join(waiting)
        return ""

    def status_dict(self) -> Dict[str, Any]:
        return {
            "status": self.status.value,
            "message": self.message,
            "last_deployed_time_s": self.last_deployed_time_s,
            "route_prefix": self.route_prefix,
            "ingress": self.ingress,
            "deployments": {name: d.status_dict() for name, d in self.deployments.items()},
        }
