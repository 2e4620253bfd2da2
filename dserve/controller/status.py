"""Deployment and application status: the transition after each reconcile step,
and the views ``serve.status()`` reports.

One source for the status RPC (and, through it, the CLI); the REST API's
details view (``rest.details``) reads the same state objects.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

from ..schema import DeploymentStatus, DeploymentStatusTrigger, ReplicaState

if TYPE_CHECKING:
    from .application_state import ApplicationState
    from .deployment_state import DeploymentState

__all__ = ["settle_status", "replica_state_counts", "deployment_status", "application_status"]


def replica_state_counts(dep: "DeploymentState") -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for r in dep.replicas.values():
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    return counts


def deployment_status(dep: "DeploymentState") -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "status": dep.status.value,
        "status_trigger": dep.trigger.value,
        "message": dep.message,
        "replica_states": replica_state_counts(dep),
        "target_replicas": dep.target,
    }
    if dep.spec.config.autoscaling_config is not None:
        metrics = dep.controller.metrics
        running = dep.running()
        out["autoscaling"] = {
            "target_replicas": dep.target,
            "current_replicas": len(running),
            "running_requests": metrics.total_running([r.replica_id for r in running]),
            "queued_requests": metrics.total_queued(dep.key),
            "last_decision": dep.autoscaler.last_decision,
            "last_decision_time_s": dep.autoscaler.last_decision_at,
        }
    return out


def application_status(app: "ApplicationState") -> Dict[str, Any]:
    return {
        "status": app.status.value,
        "message": app.message,
        "last_deployed_time_s": app.last_deployed_time_s,
        "route_prefix": app.route_prefix,
        "ingress": app.ingress,
        "deployments": {name: deployment_status(d) for name, d in app.deployments.items()},
    }


def settle_status(dep: "DeploymentState") -> None:
    """After a step: HEALTHY once every replica runs the current version and config,
    UNHEALTHY when replicas were lost after it had been healthy."""
    if dep.status == DeploymentStatus.DEPLOY_FAILED:
        return
    version = dep.run_version
    running = [r for r in dep.running() if r.code_version == version]
    # a replica moving to a worker of its own (isolated placement) stands in for its replacement
    # while that starts, then drains unseen: a settled deployment stays settled meanwhile
    stand_ins = sum(1 for r in dep.replicas.values() if r.moving and r.state == ReplicaState.RUNNING)
    waiting = [r for r in dep.replicas.values() if not r.moving and r.state != ReplicaState.RUNNING]
    settled = (
        len(running) == dep.target
        and all(r.code_version == version for r in dep.replicas.values())
        and all(r.user_config == dep.spec.config.user_config for r in running)
        and len(waiting) <= stand_ins
        and not any(r.state == ReplicaState.STOPPING for r in waiting)
    )
    if settled:
        if dep.status != DeploymentStatus.HEALTHY:
            if dep.trigger == DeploymentStatusTrigger.CONFIG_UPDATE_STARTED:
                dep.trigger = DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED
            elif dep.status == DeploymentStatus.DOWNSCALING:
                dep.trigger = DeploymentStatusTrigger.DOWNSCALE_COMPLETED
            else:
                dep.trigger = DeploymentStatusTrigger.UPSCALE_COMPLETED
        dep.status = DeploymentStatus.HEALTHY
        dep.message = dep.policy_error
        dep.ever_healthy = True
    elif dep.ever_healthy and len(running) < dep.target and dep.trigger == DeploymentStatusTrigger.HEALTH_CHECK_FAILED:
        dep.status = DeploymentStatus.UNHEALTHY
    elif dep.status in (DeploymentStatus.UPSCALING, DeploymentStatus.DOWNSCALING):
        pass  # autoscaling in progress
    elif dep.status == DeploymentStatus.HEALTHY:
        dep.status = DeploymentStatus.UPDATING
