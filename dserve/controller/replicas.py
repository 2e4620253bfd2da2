"""One replica as the controller sees it, and the calls that drive its life.

``ReplicaRecord`` is the controller's record of a replica (where it runs, its
state, its actor); ``place_replica`` picks its worker. The coroutines here are
the control calls to the replica actor — create and initialize, graceful stop, reconfigure, health check — each
reporting its outcome back to the owning ``DeploymentState``, which decides.
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
from ..config import CONTROL_CALL_TIMEOUT_S, HEALTH_CHECK_FAILURE_THRESHOLD
from ..schema import DeploymentStatusTrigger, ReplicaState

if TYPE_CHECKING:
    from .deployment_state import DeploymentState

__all__ = ["ReplicaRecord", "place_replica", "start_replica", "stop_replica", "reconfigure_replica", "check_replica_health"]

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
    models: List[str] = field(default_factory=list)  # multiplexed model ids it holds


def place_replica(dep: "DeploymentState") -> Optional[ReplicaRecord]:
    """Choose a worker for one more replica and reserve its resources there; ``None``
    (with the reason in the deployment's message) when none fits now."""
    controller = dep.controller
    config = dep.spec.config
    demand = config.ray_actor_options.demand()
    per_worker: Dict[str, int] = {}
    per_host: Dict[str, int] = {}
    for r in dep.replicas.values():
        if r.state != ReplicaState.STOPPING:
            per_worker[r.worker] = per_worker.get(r.worker, 0) + 1
            per_host[r.host] = per_host.get(r.host, 0) + 1
    workers = controller.placeable_workers()
    max_per_host = config.max_replicas_per_node
    ws = controller.ledger.choose(
        workers, demand, per_worker, per_host, max_per_host, frozenset(controller.proxies.proxies)
    )
    if ws is None:
        reason = controller.ledger.why_not(workers, demand, max_per_host, per_host)
        dep.message = f"Deployment '{dep.name}' has replicas that cannot be placed yet: {reason}."
        return None
    replica_id = f"{dep.app}#{dep.name}#{uuid.uuid4().hex[:8]}"
    app = controller.store.apps.get(dep.app)
    controller.ledger.reserve(ws.address, demand)
    return ReplicaRecord(
        replica_id=replica_id,
        key=f"dserve-replica-{replica_id}",
        worker=ws.address,
        host=ws.host,
        code_version=dep.run_version,
        demand=demand,
        state=ReplicaState.RECOVERING if app is not None and app.recovering else ReplicaState.STARTING,
    )


async def start_replica(dep: "DeploymentState", r: ReplicaRecord) -> None:
    """Create the replica actor on its worker and run its constructor."""
    controller = dep.controller
    spec = dep.spec
    logging_config = spec.config.logging_config
    config = {"max_ongoing_requests": spec.config.max_ongoing_requests, "user_config": spec.config.user_config,
              "logging_config": logging_config.model_dump() if logging_config is not None else None}
    error: Optional[str] = None
    info: Dict[str, Any] = {}
    try:
        r.future = controller.client.submit(
            ReplicaActor, dep.app, dep.name, r.replica_id, spec.code, spec.init, config,
            actor=True, key=r.key, workers=[r.worker], allow_other_workers=False, pure=False,
        )
        await r.future  # the actor exists on its worker
        with controller.client.as_current():  # bind the Actor to our client
            r.actor = Actor(ReplicaActor, r.worker, r.key)
        info = await r.actor.initialize()
        if info.get("error"):
            error = info["error"]
    except Exception as exc:  # noqa: BLE001 - the worker died, or the actor could not be created
        error = f"{type(exc).__name__}: {exc}"
    if r.state not in (ReplicaState.STARTING, ReplicaState.RECOVERING):  # stopped or lost while starting
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


async def check_replica_health(dep: "DeploymentState", r: ReplicaRecord) -> None:
    """Run the user's check_health; after repeated failures the replica is replaced."""
    r.busy = True
    try:
        await asyncio.wait_for(r.actor.check_health(), dep.spec.config.health_check_timeout_s)
        r.health_failures = 0
    except Exception as exc:  # noqa: BLE001 - counted; shown in the status once it matters
        r.health_failures += 1
        logger.warning("health check of %s failed (%d): %r", r.replica_id, r.health_failures, exc)
        if r.health_failures >= HEALTH_CHECK_FAILURE_THRESHOLD and r.state == ReplicaState.RUNNING:
            dep.trigger = DeploymentStatusTrigger.HEALTH_CHECK_FAILED
            dep.message = f"Replica {r.replica_id} failed its health check: {exc!r}; replacing it."
            dep.stop(r)
    finally:
        r.last_health = time.monotonic()
        r.busy = False
        dep.controller.reconciler.wake()
