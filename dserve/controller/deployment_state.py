"""One deployment's goal and actual state, and the steps that close the gap.

``DeploymentState.reconcile()`` is called by the controller's loop: it starts
replicas (spreading them with the placement ledger), stops surplus ones,
rolls new code by starting new replicas before draining old ones, applies a
changed ``user_config`` in place, and runs health checks. Every change to the
set of running replicas is published to routers through the controller.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..autoscale import Autoscaler
from ..config import DeploymentConfig
from ..schema import DeploymentStatus, DeploymentStatusTrigger, ReplicaState

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["DeploymentSpec", "DeploymentState", "ReplicaRecord"]

logger = logging.getLogger("dserve.controller")

HEALTH_CHECK_FAILURE_THRESHOLD = 3
CONTROL_CALL_TIMEOUT_S = 30.0


@dataclass
class DeploymentSpec:
    """What a deploy asks for: code, constructor args, options, code version."""

    name: str
    code: bytes
    init: bytes
    config: DeploymentConfig
    code_version: str
    is_ingress: bool = False


@dataclass(eq=False)
class ReplicaRecord:
    replica_id: str
    key: str
    worker: str
    host: str
    code_version: str
    demand: Dict[str, float]
    state: ReplicaState = ReplicaState.STARTING
    user_config: Any = None
    future: Any = None
    actor: Any = None
    pid: Optional[int] = None
    started_at: float = field(default_factory=time.time)
    health_failures: int = 0
    last_health: float = field(default_factory=time.monotonic)
    busy: bool = False  # a control call (reconfigure / health check) is running
    models: List[str] = field(default_factory=list)  # multiplexed model ids it holds


class DeploymentState:
    """Goal state and replicas of one deployment of one application."""

    def __init__(self, controller: "Controller", app: str, spec: DeploymentSpec) -> None:
        self.controller = controller
        self.app = app
        self.name = spec.name
        self.spec = spec
        self.target = spec.config.initial_target()
        self.replicas: Dict[str, ReplicaRecord] = {}
        self.status = DeploymentStatus.UPDATING
        self.trigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
        self.message = ""
        self.failures = 0
        self.deleting = False
        self.version = controller.next_version()
        self._ever_healthy = False
        self.autoscaler = Autoscaler()

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
            self._ever_healthy = False
        if spec.config.max_ongoing_requests != old.config.max_ongoing_requests or (
            spec.config.max_queued_requests != old.config.max_queued_requests
        ):
            self.publish()
        self.failures = 0
        self.status = DeploymentStatus.UPDATING
        self.trigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
        self.message = ""

    def delete(self) -> None:
        self.deleting = True
        self.trigger = DeploymentStatusTrigger.DELETING
        self.controller.note_unplaceable(self.key, None)
        self.controller.metrics.drop(self.key)

    @property
    def run_version(self) -> str:
        """Replicas built from another version are replaced (rolling update)."""
        c = self.spec.config
        return f"{self.spec.code_version}:{c.max_ongoing_requests}:{c.ray_actor_options.model_dump_json()}"

    # ---- routing table ----
    def running(self) -> List[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.state == ReplicaState.RUNNING]

    def publish(self) -> None:
        self.version = self.controller.next_version()
        self.controller.notify_change()

    def snapshot(self) -> Dict[str, Any]:
        return {
            "version": self.version,
            "exists": True,
            "max_queued": self.spec.config.max_queued_requests,
            "replicas": [
                {"id": r.replica_id, "address": r.worker, "key": r.key,
                 "max_ongoing": self.spec.config.max_ongoing_requests, "models": r.models}
                for r in self.running()
            ],
        }

    # ---- autoscaling ----
    def autoscale(self) -> None:
        """Sample this deployment's load and move its target as the policy says."""
        config = self.spec.config.autoscaling_config
        if config is None or self.deleting or self.status == DeploymentStatus.DEPLOY_FAILED:
            return
        metrics = self.controller.metrics
        running = self.running()
        running_requests = metrics.total_running([r.replica_id for r in running])
        queued = metrics.total_queued(self.key)
        samples = metrics.sample(self.key, running_requests + queued, config.look_back_period_s)
        target, why = self.autoscaler.decide(config, self.target, len(running), list(samples), running_requests,
                                             queued, (self.app, self.name))
        if target != self.target:
            logger.info("autoscaling %s: %s", self.key, why)
            self.status = DeploymentStatus.UPSCALING if target > self.target else DeploymentStatus.DOWNSCALING
            self.trigger = DeploymentStatusTrigger.AUTOSCALING
            self.target = target

    # ---- reconcile ----
    def reconcile(self) -> None:
        self.autoscale()
        if self.deleting:
            for r in list(self.replicas.values()):
                if r.state != ReplicaState.STOPPING:
                    self._stop(r)
            return
        version = self.run_version
        active = [r for r in self.replicas.values()
                  if r.state in (ReplicaState.STARTING, ReplicaState.RECOVERING, ReplicaState.RUNNING)]
        current = [r for r in active if r.code_version == version]
        outdated = [r for r in active if r.code_version != version]
        if self.status != DeploymentStatus.DEPLOY_FAILED:
            missing = self.target - len(current)
            self.controller.note_unplaceable(self.key, None)
            while missing > 0:
                if not self._start_one():
                    self.controller.note_unplaceable(self.key, self.spec.config.ray_actor_options.demand(), missing)
                    if outdated:  # make room: replace an old replica first
                        self._stop(outdated.pop())
                    break
                missing -= 1
            if missing < 0:
                surplus = sorted(current, key=lambda r: (r.state == ReplicaState.RUNNING, r.started_at), )
                for r in surplus[: -missing]:
                    self._stop(r)
        running_current = sum(1 for r in current if r.state == ReplicaState.RUNNING)
        keep_old = max(0, self.target - running_current)
        for r in sorted(outdated, key=lambda r: r.state == ReplicaState.RUNNING)[: max(0, len(outdated) - keep_old)]:
            self._stop(r)
        for r in current:
            if r.state == ReplicaState.RUNNING and not r.busy:
                if r.user_config != self.spec.config.user_config:
                    self._spawn(self._reconfigure(r))
                elif time.monotonic() - r.last_health >= self.spec.config.health_check_period_s:
                    self._spawn(self._health_check(r))
        self._update_status()

    def _update_status(self) -> None:
        if self.status == DeploymentStatus.DEPLOY_FAILED:
            return
        version = self.run_version
        running = [r for r in self.running() if r.code_version == version]
        settled = (
            len(running) == self.target
            and all(r.code_version == version for r in self.replicas.values())
            and all(r.user_config == self.spec.config.user_config for r in running)
            and not any(r.state != ReplicaState.RUNNING for r in self.replicas.values())
        )
        if settled:
            if self.status != DeploymentStatus.HEALTHY:
                if self.trigger == DeploymentStatusTrigger.CONFIG_UPDATE_STARTED:
                    self.trigger = DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED
                elif self.status == DeploymentStatus.DOWNSCALING:
                    self.trigger = DeploymentStatusTrigger.DOWNSCALE_COMPLETED
                else:
                    self.trigger = DeploymentStatusTrigger.UPSCALE_COMPLETED
            self.status = DeploymentStatus.HEALTHY
            self.message = ""
            self._ever_healthy = True
        elif self._ever_healthy and len(running) < self.target and self.trigger == DeploymentStatusTrigger.HEALTH_CHECK_FAILED:
            self.status = DeploymentStatus.UNHEALTHY
        elif self.status in (DeploymentStatus.UPSCALING, DeploymentStatus.DOWNSCALING):
            pass  # autoscaling in progress
        elif self.status == DeploymentStatus.HEALTHY:
            self.status = DeploymentStatus.UPDATING

    def _spawn(self, coro: Any) -> None:
        self.controller.spawn(coro)

    def _counts(self) -> tuple[Dict[str, int], Dict[str, int]]:
        per_worker: Dict[str, int] = {}
        per_host: Dict[str, int] = {}
        for r in self.replicas.values():
            if r.state != ReplicaState.STOPPING:
                per_worker[r.worker] = per_worker.get(r.worker, 0) + 1
                per_host[r.host] = per_host.get(r.host, 0) + 1
        return per_worker, per_host

    def _start_one(self) -> bool:
        demand = self.spec.config.ray_actor_options.demand()
        per_worker, per_host = self._counts()
        workers = self.controller.placeable_workers()
        max_per_host = self.spec.config.max_replicas_per_node
        ws = self.controller.ledger.choose(
            workers, demand, per_worker, per_host, max_per_host, frozenset(self.controller.proxy_state.proxies)
        )
        if ws is None:
            reason = self.controller.ledger.why_not(workers, demand, max_per_host, per_host)
            self.message = f"Deployment '{self.name}' has replicas that cannot be placed yet: {reason}."
            return False
        suffix = uuid.uuid4().hex[:8]
        replica_id = f"{self.app}#{self.name}#{suffix}"
        app = self.controller.apps.get(self.app)
        record = ReplicaRecord(
            replica_id=replica_id,
            key=f"dserve-replica-{replica_id}",
            worker=ws.address,
            host=ws.host,
            code_version=self.run_version,
            demand=demand,
            state=ReplicaState.RECOVERING if app is not None and app.recovering else ReplicaState.STARTING,
        )
        self.controller.ledger.reserve(ws.address, demand)
        self.replicas[replica_id] = record
        self._spawn(self._start(record))
        return True

    async def _start(self, r: ReplicaRecord) -> None:
        from distributed.actor import Actor

        from ..actors.replica import ReplicaActor

        spec = self.spec
        config = {"max_ongoing_requests": spec.config.max_ongoing_requests, "user_config": spec.config.user_config}
        error: Optional[str] = None
        try:
            r.future = self.controller.client.submit(
                ReplicaActor, self.app, self.name, r.replica_id, spec.code, spec.init, config,
                actor=True, key=r.key, workers=[r.worker], allow_other_workers=False, pure=False,
            )
            await r.future  # the actor exists on its worker
            with self.controller.client.as_current():  # bind the Actor to our client
                r.actor = Actor(ReplicaActor, r.worker, r.key)
            info = await r.actor.initialize()
            if info.get("error"):
                error = info["error"]
        except Exception as exc:  # the worker died, or the actor could not be created
            error = f"{type(exc).__name__}: {exc}"
        if r.state not in (ReplicaState.STARTING, ReplicaState.RECOVERING):  # stopped or lost while starting
            return
        if error is not None:
            self._start_failed(r, error)
        else:
            r.state = ReplicaState.RUNNING
            r.pid = info.get("pid")
            r.user_config = spec.config.user_config
            r.last_health = time.monotonic()
            self.failures = 0
            self.publish()
        self.controller.wake()

    def _start_failed(self, r: ReplicaRecord, error: str) -> None:
        self._remove(r)
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

    def _stop(self, r: ReplicaRecord) -> None:
        was_running = r.state == ReplicaState.RUNNING
        r.state = ReplicaState.STOPPING
        if was_running:
            self.publish()
        self._spawn(self._graceful_stop(r))

    async def _graceful_stop(self, r: ReplicaRecord) -> None:
        cfg = self.spec.config
        actor = r.actor
        try:
            if actor is not None and self.controller.worker_alive(r.worker):
                await asyncio.wait_for(
                    actor.drain(cfg.graceful_shutdown_timeout_s, cfg.graceful_shutdown_wait_loop_s),
                    cfg.graceful_shutdown_timeout_s + 5,
                )
                await asyncio.wait_for(actor.shutdown(), 10)
        except Exception as exc:
            logger.info("replica %s did not stop cleanly: %r", r.replica_id, exc)
        finally:
            self._remove(r)
            self.controller.wake()

    def _remove(self, r: ReplicaRecord) -> None:
        if self.replicas.pop(r.replica_id, None) is None:
            return
        self.controller.metrics.forget_replica(r.replica_id)
        self.controller.ledger.release(r.worker, r.demand)
        if r.future is not None:
            r.future.release()
            r.future = None
        r.actor = None
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
            if r.future is not None:
                r.future.release()
                r.future = None
            if state == ReplicaState.RUNNING:
                self.publish()

    async def _reconfigure(self, r: ReplicaRecord) -> None:
        r.busy = True
        target = self.spec.config.user_config
        try:
            await asyncio.wait_for(r.actor.reconfigure(target), CONTROL_CALL_TIMEOUT_S)
            r.user_config = target
        except Exception as exc:
            logger.warning("reconfigure of %s failed: %r", r.replica_id, exc)
            self.message = f"reconfigure() failed on replica {r.replica_id}: {exc!r}; replacing it."
            if r.state == ReplicaState.RUNNING:
                self._stop(r)
        finally:
            r.busy = False
            self.controller.wake()

    async def _health_check(self, r: ReplicaRecord) -> None:
        r.busy = True
        try:
            await asyncio.wait_for(r.actor.check_health(), self.spec.config.health_check_timeout_s)
            r.health_failures = 0
        except Exception as exc:
            r.health_failures += 1
            logger.warning("health check of %s failed (%d): %r", r.replica_id, r.health_failures, exc)
            if r.health_failures >= HEALTH_CHECK_FAILURE_THRESHOLD and r.state == ReplicaState.RUNNING:
                self.trigger = DeploymentStatusTrigger.HEALTH_CHECK_FAILED
                self.message = f"Replica {r.replica_id} failed its health check: {exc!r}; replacing it."
                self._stop(r)
        finally:
            r.last_health = time.monotonic()
            r.busy = False
            self.controller.wake()

    def report_models(self, replica_id: str, model_ids: List[str]) -> bool:
        r = self.replicas.get(replica_id)
        if r is None or r.models == model_ids:
            return False
        r.models = list(model_ids)
        if r.state == ReplicaState.RUNNING:
            self.publish()
        return True

    # ---- status ----
    def replica_states(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for r in self.replicas.values():
            counts[r.state.value] = counts.get(r.state.value, 0) + 1
        return counts

    def status_dict(self) -> Dict[str, Any]:
        out = {
            "status": self.status.value,
            "status_trigger": self.trigger.value,
            "message": self.message,
            "replica_states": self.replica_states(),
            "target_replicas": self.target,
        }
        if self.spec.config.autoscaling_config is not None:
            metrics = self.controller.metrics
            out["autoscaling"] = {
                "target_replicas": self.target,
                "current_replicas": len(self.running()),
                "running_requests": metrics.total_running([r.replica_id for r in self.running()]),
                "queued_requests": metrics.total_queued(self.key),
                "last_decision": self.autoscaler.last_decision,
                "last_decision_time_s": self.autoscaler.last_decision_at,
            }
        return out
