"""One deployment's goal and actual state, and the steps that close the gap.

``DeploymentState.reconcile()`` is called by the controller's loop: it starts
replicas (spreading them with the placement ledger), stops surplus ones,
rolls new code by starting new replicas before draining old ones, applies a
changed ``user_config`` in place, and runs health checks (the calls themselves
are in ``replicas``). Every change to the set of running replicas is published
to routers through the controller's publisher.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..schema import DeploymentStatus, DeploymentStatusTrigger, ReplicaState
from ..spec import DeploymentSpec  # alias: old checkpoints pickled it from here
from ..types import ReplicaSetSnapshot
from .status import deployment_status, settle_status
from .autoscaling import DeploymentScaler
from .replicas import (
    ReplicaRecord, check_health_on_worker, drain_stopping, reconfigure_replica, release_actor, relocate,
    start_missing,
)

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["DeploymentSpec", "DeploymentState", "ReplicaRecord"]

logger = logging.getLogger("dserve.controller")


class DeploymentState:
    """Goal state and replicas of one deployment of one application."""

    def __init__(self, controller: "Controller", app: str, spec: DeploymentSpec) -> None:
        self.controller = controller
        self.app = app
        self.name = spec.name
        self.spec = spec
        self.target = spec.config.initial_target()
        self.replicas: Dict[str, ReplicaRecord] = {}
        self.limits: Dict[str, int] = {}  # replica id -> the max_ongoing_requests it was started with
        self.status = DeploymentStatus.UPDATING
        self.trigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
        self.message = ""
        self.failures = 0
        self.deleting = False
        self.version = controller.publisher.next_version()
        self.ever_healthy = False
        self.autoscaler = DeploymentScaler()
        self._snapshot: Optional[ReplicaSetSnapshot] = None

    # ---- goal state ----
    @property
    def key(self) -> str:
        return f"{self.app}#{self.name}"

    def apply(self, spec: DeploymentSpec) -> None:
        """Take a new spec: new code rolls, new user_config reconfigures, counts scale."""
        old = self.spec
        self.spec = spec
        self.deleting = False
        if spec.config.autoscaling_config is None or old.config.autoscaling_config is None:
            self.target = spec.config.initial_target()  # an autoscaled deployment keeps its current target
        if (
            spec.code_version != old.code_version
            or spec.config.max_ongoing_requests != old.config.max_ongoing_requests
            or spec.config.ray_actor_options != old.config.ray_actor_options
        ):
            self.ever_healthy = False
        if spec.config.max_queued_requests != old.config.max_queued_requests:
            self.publish()  # a new max_ongoing_requests comes with the replicas that have it (rolling)
        self.failures = 0
        self.status = DeploymentStatus.UPDATING
        self.trigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
        self.message = ""

    def delete(self) -> None:
        self.deleting = True
        self.trigger = DeploymentStatusTrigger.DELETING
        self.controller.coupling.note_unplaceable(self.key, None)
        self.controller.metrics.drop(self.key)
        self.autoscaler.close()

    @property
    def run_version(self) -> str:
        """Replicas built from another version are replaced (rolling update)."""
        c = self.spec.config
        version = f"{self.spec.code_version}:{c.max_ongoing_requests}:{c.ray_actor_options.model_dump_json()}"
        return version if c.logging_config is None else f"{version}:{c.logging_config.model_dump_json()}"

    # ---- routing table ----
    def running(self) -> List[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.state == ReplicaState.RUNNING]

    def publish(self) -> None:
        self.version = self.controller.publisher.next_version()
        self.controller.publisher.notify_change()

    def snapshot(self) -> ReplicaSetSnapshot:
        """The replica set routers follow; built once per version (every change publishes)."""
        cached = self._snapshot
        if cached is not None and cached["version"] == self.version:
            return cached
        self._snapshot = {
            "version": self.version,
            "exists": True,
            "max_queued": self.spec.config.max_queued_requests,
            "replicas": [  # each with its own limit: old ones keep theirs until replaced
                {"id": r.replica_id, "address": r.worker, "key": r.key,
                 "max_ongoing": self.limits.get(r.replica_id, self.spec.config.max_ongoing_requests),
                 "models": r.models}
                for r in self.running()
            ],
        }
        return self._snapshot

    # ---- autoscaling ----
    @property
    def policy_error(self) -> str:
        return self.autoscaler.error or self.autoscaler.stats_error

    def autoscale(self) -> None:
        """Sample this deployment's load and move its target as the policy says."""
        config = self.spec.config.autoscaling_config
        if config is None or self.deleting or self.status == DeploymentStatus.DEPLOY_FAILED:
            return
        decision = self.autoscaler.step(self)
        if self.policy_error:
            self.message = self.policy_error
        if decision is None or decision[0] == self.target:
            return
        target, why = decision
        logger.info("autoscaling %s: %s", self.key, why)
        direction = "up" if target > self.target else "down"
        self.controller.telemetry.decisions.inc((self.name, self.app, direction))
        self.status = DeploymentStatus.UPSCALING if target > self.target else DeploymentStatus.DOWNSCALING
        self.trigger = DeploymentStatusTrigger.AUTOSCALING
        self.target = target

    def status_dict(self) -> Dict[str, Any]:
        return deployment_status(self)

    # ---- reconcile ----
    def reconcile(self) -> None:
        self.autoscale()
        if self.deleting:
            for r in list(self.replicas.values()):
                if r.state != ReplicaState.STOPPING:
                    self.stop(r)
            drain_stopping(self)
            return
        version = self.run_version
        if self.status == DeploymentStatus.HEALTHY and self.controller.placement == "isolated":
            relocate(self)  # a replica sharing a process moves to a free worker (rolling)
        active = [r for r in self.replicas.values()
                  if r.state in (ReplicaState.STARTING, ReplicaState.RECOVERING, ReplicaState.RUNNING)]
        current = [r for r in active if r.code_version == version and not r.moving]
        outdated = [r for r in active if r.code_version != version or r.moving]
        if self.status != DeploymentStatus.DEPLOY_FAILED:
            missing = self.target - len(current)
            self.controller.coupling.note_unplaceable(self.key, None)
            if missing > 0:
                start_missing(self, missing, current, outdated)
                for replica_id in self.replicas.keys() - self.limits.keys():  # just placed, from this spec
                    self.limits[replica_id] = self.spec.config.max_ongoing_requests
            if missing < 0:
                # not yet running first, then the highest ranks (ranks stay 0..N-1)
                surplus = sorted(current, key=lambda r: (r.state == ReplicaState.RUNNING, -r.rank["rank"]))
                for r in surplus[: -missing]:
                    self.stop(r)
        running_current = sum(1 for r in current if r.state == ReplicaState.RUNNING)
        keep_old = max(0, self.target - running_current)
        for r in sorted(outdated, key=lambda r: r.state == ReplicaState.RUNNING)[: max(0, len(outdated) - keep_old)]:
            self.stop(r)
        due: Dict[str, List[ReplicaRecord]] = {}  # worker -> replicas due for a health check
        now = time.monotonic()
        for r in current:
            if r.state == ReplicaState.RUNNING and not r.busy:
                if r.user_config != self.spec.config.user_config:
                    self._spawn(reconfigure_replica(self, r))
                elif now - r.last_health >= self.spec.config.health_check_period_s:
                    due.setdefault(r.worker, []).append(r)
        for worker, records in due.items():
            self._spawn(check_health_on_worker(self, worker, records))
        drain_stopping(self)
        settle_status(self)

    def step_failed(self, message: str) -> None:
        """The reconciler caught an error in this deployment's step."""
        self.message = message

    def _spawn(self, coro: Any) -> None:
        self.controller.reconciler.spawn(coro)

    def started(self, r: ReplicaRecord, pid: Optional[int]) -> None:
        """``start_replica`` succeeded: the replica serves from now on."""
        r.state = ReplicaState.RUNNING
        r.pid = pid
        r.user_config = self.spec.config.user_config
        r.last_health = time.monotonic()
        self.failures = 0
        self.publish()

    def start_failed(self, r: ReplicaRecord, error: str) -> None:
        """``start_replica`` failed: count it; DEPLOY_FAILED after too many in a row."""
        self.remove(r)
        self.failures += 1
        limit = min(self.spec.config.max_constructor_retry_count, 3 * max(self.target, 1))
        logger.warning("replica %s failed to start (%d/%d): %s", r.replica_id, self.failures, limit, error)
        self.trigger = DeploymentStatusTrigger.REPLICA_STARTUP_FAILED
        if self.failures >= limit and not self.running():
            self.status = DeploymentStatus.DEPLOY_FAILED
            self.message = (
                f"The deployment failed to start {self.failures} times in a row. "
                f"This may be an issue with its constructor or imports.\n{error}"
            )
        else:
            self.message = f"A replica failed to start; retrying.\n{error}"

    def stop(self, r: ReplicaRecord) -> None:
        """Take the replica out of routing now; the next step drains it in the background."""
        was_running = r.state == ReplicaState.RUNNING
        r.state = ReplicaState.STOPPING
        if was_running:
            self.publish()
        self.controller.reconciler.wake()

    def remove(self, r: ReplicaRecord) -> None:
        """Forget the replica and release its resources."""
        self.limits.pop(r.replica_id, None)
        if self.replicas.pop(r.replica_id, None) is None:
            return
        self.controller.metrics.forget_replica(r.replica_id)
        self.controller.traffic.forget_replica(r.replica_id)
        self.controller.ledger.release(r.worker, r.demand, self.key)
        release_actor(r)
        if r.state == ReplicaState.RUNNING:
            self.publish()

    def worker_lost(self, address: str) -> None:
        """Forget replicas on a worker that left; reconcile will replace them."""
        lost = [r for r in self.replicas.values() if r.worker == address]
        for r in lost:
            if r.state == ReplicaState.RUNNING:
                self.trigger = DeploymentStatusTrigger.HEALTH_CHECK_FAILED
                self.message = f"Replica {r.replica_id} was lost with its worker {address}; replacing it."
            state = r.state
            r.state = ReplicaState.STOPPING
            self.replicas.pop(r.replica_id, None)
            self.limits.pop(r.replica_id, None)
            self.controller.metrics.forget_replica(r.replica_id)
            self.controller.traffic.forget_replica(r.replica_id)
            release_actor(r)
            if state == ReplicaState.RUNNING:
                self.publish()

    def report_models(self, replica_id: str, model_ids: List[str]) -> bool:
        r = self.replicas.get(replica_id)
        if r is None or r.models == model_ids:
            return False
        r.models = list(model_ids)
        if r.state == ReplicaState.RUNNING:
            self.publish()
        return True
