"""One replica as the controller sees it, and the calls that drive its life.

``ReplicaRecord`` is the controller's record of a replica (where it runs, its
state, its actor); ``Placement`` picks workers for new ones, ``start_missing`` and
``drain_stopping`` start and drain replicas in bounded batches. The coroutines here are
the control calls to replicas — create and initialize, graceful stop, reconfigure (actor
calls), health checks (one call per worker for all of a deployment's replicas due there) —
each reporting its outcome back to the owning ``DeploymentState``, which decides.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from distributed.actor import Actor

from ..actors.replica import ReplicaActor
from ..config import (
    CONTROL_CALL_TIMEOUT_S, HEALTH_CHECK_FAILURE_THRESHOLD, MAX_STARTING_REPLICAS, MAX_STOPPING_REPLICAS,
)
from ..schema import DeploymentStatusTrigger, ReplicaState
from .placement import ALONE
from .ranks import RankAllocator

if TYPE_CHECKING:
    from .deployment_state import DeploymentState

__all__ = ["ReplicaRecord", "Placement", "start_missing", "relocate", "drain_stopping", "start_replica", "stop_replica",
           "reconfigure_replica", "check_health_on_worker", "release_actor"]

logger = logging.getLogger("dserve.controller")


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
    draining: bool = False  # stopping, and its drain has begun
    moving: bool = False  # isolated placement: replaced by a replica on a worker of its own, then drained
    models: List[str] = field(default_factory=list)  # multiplexed model ids it holds
    rank: Dict[str, int] = field(default_factory=lambda: {"rank": 0, "node_rank": 0, "local_rank": 0})


class Placement:
    """One reconcile step's placement of a deployment's new replicas: the per-worker and
    per-host counts of its replicas, counted once (O(replicas)) and kept current as each
    new replica is placed, and the workers considered, listed once (O(workers) per
    replica, see ``placement``)."""

    def __init__(self, dep: "DeploymentState") -> None:
        self.dep = dep
        self.per_worker: Dict[str, int] = {}
        self.per_host: Dict[str, int] = {}
        for r in dep.replicas.values():
            if r.state != ReplicaState.STOPPING:
                self._count(r.worker, r.host)
        controller = dep.controller
        self.workers = controller.placeable_workers()
        self.busy = controller.proxy_workers()
        self.ranks = RankAllocator(dep)
        self.isolated = controller.placement == "isolated"
        self.demand = dep.spec.config.ray_actor_options.demand()

    def free_worker(self) -> bool:
        """Is there a worker hosting nothing (no replica, no proxy) this deployment's
        replicas fit on? O(workers)."""
        ledger, max_per_host = self.dep.controller.ledger, self.dep.spec.config.max_replicas_per_node
        return any(
            ledger.empty(ws.address) and ledger.fits(ws, self.demand)
            and ledger.sharing(ws, self.dep.key, self.demand, self.busy) == ALONE
            and (max_per_host is None or self.per_host.get(ws.host, 0) < max_per_host)
            for ws in self.workers
        )

    def _count(self, worker: str, host: str) -> None:
        self.per_worker[worker] = self.per_worker.get(worker, 0) + 1
        self.per_host[host] = self.per_host.get(host, 0) + 1

    def place(self) -> Optional[ReplicaRecord]:
        """Choose a worker for one more replica and reserve its resources there; ``None``
        (with the reason in the deployment's message) when none fits now."""
        dep, controller = self.dep, self.dep.controller
        max_per_host = dep.spec.config.max_replicas_per_node
        ledger = controller.ledger
        ws = ledger.choose(self.workers, self.demand, self.per_worker, self.per_host, max_per_host, self.busy,
                           dep.key, self.isolated)
        if ws is None:
            reason = ledger.why_not(self.workers, self.demand, max_per_host, self.per_host)
            dep.message = f"Deployment '{dep.name}' has replicas that cannot be placed yet: {reason}."
            return None
        replica_id = f"{dep.app}#{dep.name}#{uuid.uuid4().hex[:8]}"
        app = controller.store.apps.get(dep.app)
        ledger.reserve(ws.address, self.demand, dep.key)
        self._count(ws.address, ws.host)
        return ReplicaRecord(
            replica_id=replica_id,
            key=f"dserve-replica-{replica_id}",
            worker=ws.address,
            host=ws.host,
            code_version=dep.run_version,
            demand=dict(self.demand),
            state=ReplicaState.RECOVERING if app is not None and app.recovering else ReplicaState.STARTING,
            rank=self.ranks.take(ws.host),
        )


def release_actor(r: ReplicaRecord) -> None:
    """Let Dask forget the replica's actor now: its future, and the one Dask's ``Actor`` handle
    holds for the same key. Dask's actor method calls leave reference cycles around the
    handle, so without this the key (and the actor on its worker) lived until the
    scheduler's next full garbage collection."""
    for future in (r.future, getattr(r.actor, "_future", None)):
        if future is not None:
            future.release()  # idempotent: a Future releases its key once
    r.future = r.actor = None


def start_missing(dep: "DeploymentState", missing: int, current: List[ReplicaRecord],
                  outdated: List[ReplicaRecord]) -> None:
    """Start up to ``missing`` replicas, at most ``MAX_STARTING_REPLICAS`` starting at
    once (the rest on later steps, as these come up): placement is O(replicas) per
    step and the scheduler's loop never takes thousands of actor creations at once."""
    budget = MAX_STARTING_REPLICAS - sum(1 for r in current if r.state != ReplicaState.RUNNING)
    if budget <= 0:
        return
    placement = Placement(dep)
    while missing > 0 and budget > 0:
        record = placement.place()
        if record is None:
            dep.controller.coupling.note_unplaceable(
                dep.key, dep.spec.config.ray_actor_options.demand(), missing)
            if outdated:  # make room: replace an old replica first
                dep.stop(outdated.pop())
            return
        dep.replicas[record.replica_id] = record
        dep.controller.reconciler.spawn(start_replica(dep, record))
        missing -= 1
        budget -= 1


def relocate(dep: "DeploymentState") -> None:
    """Isolated placement converges: a replica placed sharing its worker process (no worker
    of its own fitted then; the cluster coupling asked for more) moves once a worker hosting
    nothing fits. It is marked ``moving``: ``start_missing`` places its replacement there, and
    it drains once that runs, as in a rolling update; the deployment stays HEALTHY. One at a
    time, only while the deployment is settled; O(replicas), plus O(workers) when one shares."""
    controller = dep.controller
    replicas = list(dep.replicas.values())
    if len(replicas) != dep.target or any(r.state != ReplicaState.RUNNING or r.moving for r in replicas):
        return
    ledger, proxies, workers = controller.ledger, controller.proxies.proxies, controller.scheduler.workers
    for r in replicas:
        ws = workers.get(r.worker)
        if ws is not None and ledger.sharing(ws, dep.key, r.demand, proxies) != ALONE:
            if Placement(dep).free_worker():
                logger.info("moving replica %s off the shared worker %s to a worker of its own", r.replica_id, r.worker)
                r.moving = True
            return


def drain_stopping(dep: "DeploymentState") -> None:
    """Drain stopping replicas, at most ``MAX_STOPPING_REPLICAS`` at once (deleting
    thousands must not start thousands of control calls on the scheduler's loop at once)."""
    stopping = [r for r in dep.replicas.values() if r.state == ReplicaState.STOPPING]
    budget = MAX_STOPPING_REPLICAS - sum(1 for r in stopping if r.draining)
    for r in stopping:
        if budget <= 0:
            return
        if not r.draining:
            r.draining = True
            dep.controller.reconciler.spawn(stop_replica(dep, r))
            budget -= 1


async def start_replica(dep: "DeploymentState", r: ReplicaRecord) -> None:
    """Create the replica actor on its worker and run its constructor."""
    controller = dep.controller
    spec = dep.spec
    logging_config = spec.config.logging_config
    config = {"max_ongoing_requests": spec.config.max_ongoing_requests, "user_config": spec.config.user_config,
              "logging_config": logging_config.model_dump() if logging_config is not None else None,
              "rank": r.rank, "world_size": dep.target}
    error: Optional[str] = None
    info: Dict[str, Any] = {}
    try:
        # the code goes with ``initialize`` (a direct call to the worker), not in the task: Dask
        # keeps each stream's last 1000 batches (``distributed.admin.low-level-log-length``),
        # and the graph and compute-task messages would hold a copy of it per replica started
        r.future = controller.client.submit(
            ReplicaActor, dep.app, dep.name, r.replica_id, b"", b"", config,
            actor=True, key=r.key, workers=[r.worker], allow_other_workers=False, pure=False,
        )
        await r.future  # the actor exists on its worker
        with controller.client.as_current():  # bind the Actor to our client
            r.actor = Actor(ReplicaActor, r.worker, r.key)
        info = await r.actor.initialize(spec.code, spec.init)
        if info.get("error"):
            error = info["error"]
    except Exception as exc:  # noqa: BLE001 - the worker died, or the actor could not be created
        error = f"{type(exc).__name__}: {exc}"
    if r.state not in (ReplicaState.STARTING, ReplicaState.RECOVERING):  # stopped or lost while starting
        if dep.replicas.get(r.replica_id) is not r:  # lost (forgotten already): nothing will drain it
            release_actor(r)
        return
    if error is not None:
        dep.start_failed(r, error)
    else:
        dep.started(r, info.get("pid"))
    controller.reconciler.wake()


async def stop_replica(dep: "DeploymentState", r: ReplicaRecord) -> None:
    """Drain the replica (bounded by graceful_shutdown_timeout_s), then release it."""
    cfg = dep.spec.config
    actor = r.actor
    try:
        if actor is not None and dep.controller.worker_alive(r.worker):
            await asyncio.wait_for(
                actor.drain(cfg.graceful_shutdown_timeout_s, cfg.graceful_shutdown_wait_loop_s),
                cfg.graceful_shutdown_timeout_s + 5,
            )
            await asyncio.wait_for(actor.shutdown(), 10)
    except Exception as exc:  # noqa: BLE001 - it is removed either way
        logger.info("replica %s did not stop cleanly: %r", r.replica_id, exc)
    finally:
        dep.remove(r)
        dep.controller.reconciler.wake()


async def reconfigure_replica(dep: "DeploymentState", r: ReplicaRecord) -> None:
    """Apply the deployment's user_config in place; a failure replaces the replica."""
    r.busy = True
    target = dep.spec.config.user_config
    try:
        await asyncio.wait_for(r.actor.reconfigure(target), CONTROL_CALL_TIMEOUT_S)
        r.user_config = target
    except Exception as exc:  # noqa: BLE001 - shown in the deployment's status
        logger.warning("reconfigure of %s failed: %r", r.replica_id, exc)
        dep.message = f"reconfigure() failed on replica {r.replica_id}: {exc!r}; replacing it."
        if r.state == ReplicaState.RUNNING:
            dep.stop(r)
    finally:
        r.busy = False
        dep.controller.reconciler.wake()


async def check_health_on_worker(dep: "DeploymentState", worker: str, records: List[ReplicaRecord]) -> None:
    """Run the user's check_health of these replicas (all on ``worker``) in one call to
    the worker; a replica failing ``HEALTH_CHECK_FAILURE_THRESHOLD`` times in a row is replaced."""
    timeout = dep.spec.config.health_check_timeout_s
    for r in records:
        r.busy = True
    try:
        try:
            results = await asyncio.wait_for(
                dep.controller.scheduler.rpc(worker).dserve_health_check(keys=[r.key for r in records], timeout=timeout),
                timeout + CONTROL_CALL_TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 - the worker did not answer: every check failed
            results = {r.key: f"the worker {worker} did not answer: {exc!r}" for r in records}
        for r in records:
            _health_outcome(dep, r, results.get(r.key, "no answer from the worker"))
    finally:
        now = time.monotonic()
        for r in records:
            r.last_health = now
            r.busy = False
        dep.controller.reconciler.wake()


def _health_outcome(dep: "DeploymentState", r: ReplicaRecord, error: Optional[str]) -> None:
    if error is None:
        r.health_failures = 0
        return
    r.health_failures += 1  # counted; shown in the status once it matters
    logger.warning("health check of %s failed (%d): %s", r.replica_id, r.health_failures, error)
    if r.health_failures >= HEALTH_CHECK_FAILURE_THRESHOLD and r.state == ReplicaState.RUNNING:
        dep.trigger = DeploymentStatusTrigger.HEALTH_CHECK_FAILED
        dep.message = f"Replica {r.replica_id} failed its health check: {error}; replacing it."
        dep.stop(r)
