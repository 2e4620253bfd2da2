"""One application: its deployments, route prefix and overall status (derived from theirs)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..schema import ApplicationStatus, DeploymentStatus
from ..spec import ApplicationSpec, DeploymentSpec  # noqa: F401 - alias: old checkpoints pickled it from here
from .deployment_state import DeploymentState
from .status import application_status

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["ApplicationSpec", "ApplicationState"]


class ApplicationState:
    """An application's goal (its spec) and its deployments' states."""

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

    def apply(self, spec: ApplicationSpec, deployed_at: Optional[float] = None) -> None:
        """Take a new spec; ``deployed_at``: when it was asked for (a config deploy's time,
        not its build's end), else now."""
        self.spec = spec
        self.deploying = True
        self.deleting = False
        self.failed_message = ""
        self.last_deployed_time_s = time.time() if deployed_at is None else deployed_at
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

    def settle(self) -> bool:
        """After its deployments' steps: drop deleted deployments that have no
        replicas left, mark the app deployed once all are healthy. True once a
        deleted app has no deployments left."""
        for name, dep in list(self.deployments.items()):
            if dep.deleting and not dep.replicas:
                del self.deployments[name]
                self.controller.deployment_removed(dep)
                self.controller.publisher.notify_change()
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
        return application_status(self)
