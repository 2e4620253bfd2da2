"""Dask's cluster managers follow serving demand.

Replicas are actors and add no task occupancy, so Dask's own
``adaptive_target`` never sees serving load. Retirement has a plugin hook
(``SchedulerPlugin.valid_workers_downscaling``: the controller keeps workers
hosting replicas or proxies out of it). The target has none: Dask offers no
extension point for ``Scheduler.adaptive_target``, so ``install`` wraps it —
the method, for the HTTP ``/api/v1/adaptive_target`` route and the
desired-workers gauge, and the RPC handler, for ``distributed.deploy.Adaptive``
used by LocalCluster, dask-jobqueue and dask-kubernetes — and ``uninstall``
puts Dask's back. The target becomes at least the workers hosting replicas or
proxies (and dedicated proxy workers) plus the workers needed for replicas that
cannot be placed (``note_unplaceable``) plus, with isolated placement, one for
each deployment (or proxy) sharing a worker process with another (``crowded``):
once such a worker joins, the shared replica moves there (``replicas.relocate``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from ..config import PROXY_RESOURCE
from ..schema import ReplicaState
from .placement import is_proxy_worker

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["ClusterCoupling"]


class ClusterCoupling:
    """The serving demand Dask's adaptive scaling sees."""

    def __init__(self, controller: "Controller") -> None:
        self.controller = controller
        self.original: Optional[Callable[..., int]] = None
        self.unplaceable: Dict[str, Tuple[Dict[str, float], int]] = {}  # deployment -> (demand, count)

    def note_unplaceable(self, key: str, demand: Optional[Dict[str, float]], count: int = 0) -> None:
        """``count`` replicas of ``key`` needing ``demand`` each cannot be placed (0 / None: all placed)."""
        if demand and count:
            self.unplaceable[key] = (demand, count)
        else:
            self.unplaceable.pop(key, None)

    def install(self) -> None:
        scheduler = self.controller.scheduler
        self.original = scheduler.adaptive_target
        scheduler.adaptive_target = self.adaptive_target
        scheduler.handlers["adaptive_target"] = self.adaptive_target

    def uninstall(self) -> None:
        if self.original is None:
            return
        scheduler = self.controller.scheduler
        scheduler.adaptive_target = self.original
        scheduler.handlers["adaptive_target"] = self.original
        self.original = None

    def hosts(self) -> Set[str]:
        """Workers that must stay: they run replicas or a proxy, or are dedicated proxy workers."""
        busy = {r.worker for app in self.controller.store.apps.values()
                for dep in app.deployments.values() for r in dep.replicas.values()}
        busy.update(self.controller.proxies.proxies)
        busy.update(address for address, ws in self.controller.scheduler.workers.items() if is_proxy_worker(ws))
        return busy

    def crowded(self) -> int:
        """Isolated placement: the workers that would give every deployment (and proxy) a
        process of its own: on each worker, its tenants (deployments with live replicas
        there, a proxy) beyond the first. O(replicas)."""
        controller = self.controller
        if controller.placement != "isolated":
            return 0
        tenants: Dict[str, Set[str]] = {}
        for app in controller.store.apps.values():
            for dep in app.deployments.values():
                for r in dep.replicas.values():
                    if r.state != ReplicaState.STOPPING and not r.moving and PROXY_RESOURCE not in r.demand:
                        tenants.setdefault(r.worker, set()).add(dep.key)
        proxies, workers = controller.proxies.proxies, controller.scheduler.workers
        extra = 0
        for address, deployments in tenants.items():
            ws = workers.get(address)
            with_proxy = address in proxies or (ws is not None and is_proxy_worker(ws))
            extra += max(0, len(deployments) + with_proxy - 1)
        return extra

    def extra_workers(self) -> int:
        """Workers to add for the replicas that cannot be placed now."""
        missing = self.unplaceable
        if not missing:
            return 0
        workers = list(self.controller.scheduler.workers.values())
        per_worker = max((ws.nthreads for ws in workers), default=1) or 1
        cpus = sum(demand.get("CPU", 1.0) * count for demand, count in missing.values())
        return max(1, math.ceil(cpus / per_worker))

    def desired_workers(self) -> int:
        return len(self.hosts() & set(self.controller.scheduler.workers)) + self.extra_workers() + self.crowded()

    def adaptive_target(self, target_duration: Any = None) -> int:
        assert self.original is not None
        return max(self.original(target_duration), self.desired_workers())

    def removable(self, workers: List[Any]) -> List[Any]:
        """Workers hosting nothing: no replica or proxy, and no actor (a drained replica's
        actor is released a moment after its record; Dask would refuse to retire it)."""
        keep = self.hosts()
        return [ws for ws in workers if ws.address not in keep and not ws.actors]
