"""The controller's ledger of resources reserved on each worker, and where a replica goes.

Dask releases ``resources=`` once an actor's constructor returns, so the
controller keeps its own account: capacity from each worker (threads as CPUs,
``--resources`` such as GPU, the memory limit) minus what its replicas
reserved, and which deployments' replicas each worker hosts.

Placement (Dask config ``dserve.placement``):

- ``isolated`` (the default; Ray Serve's one replica, one process): a replica
  goes to a worker hosting neither a proxy nor replicas of another deployment
  whenever one fits; otherwise it shares (other deployments' replicas first, then
  a proxy's worker), and the cluster coupling asks for more workers.
- ``colocated``: spread, then least loaded, a proxy counting as one CPU; a
  replica may share the proxy's process (no network hop on the way in).

In both, replicas of one deployment are spread across workers and hosts, and a
dedicated proxy worker (``--resources proxy=1``) takes a replica only when no
other worker fits or the deployment asks for the ``proxy`` resource itself.
Choosing a worker is O(workers).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Collection, Dict, Iterable, Optional

import dask

from ..config import PLACEMENT_MODES, PROXY_RESOURCE

__all__ = ["PlacementLedger", "placement_mode", "is_proxy_worker", "ALONE", "WITH_OTHERS", "WITH_PROXY",
           "ON_PROXY_WORKER"]

# how much a replica would share its worker process, best first
ALONE, WITH_OTHERS, WITH_PROXY, ON_PROXY_WORKER = 0, 1, 2, 3


def placement_mode(value: Optional[str] = None) -> str:
    """``value``, or Dask config ``dserve.placement``, checked: ``isolated`` (default) or ``colocated``."""
    if value is None:
        value = dask.config.get("dserve.placement", None)
    mode = str(value or PLACEMENT_MODES[0]).strip().lower()
    if mode not in PLACEMENT_MODES:
        raise ValueError(f"dserve.placement must be one of {list(PLACEMENT_MODES)}, not {value!r}")
    return mode


def is_proxy_worker(ws: Any) -> bool:
    """A dedicated proxy worker: started with ``--resources proxy=1``."""
    return bool((ws.resources or {}).get(PROXY_RESOURCE))


def capacity(ws: Any) -> Dict[str, float]:
    """What a Dask worker offers to replicas."""
    out: Dict[str, float] = {"CPU": float(ws.nthreads)}
    out["memory"] = float(ws.memory_limit) if ws.memory_limit else math.inf
    for name, amount in (ws.resources or {}).items():
        out[name] = float(amount)
    out.setdefault("GPU", 0.0)
    return out


class PlacementLedger:
    """Reserved resources, and the replicas of each deployment, per worker address."""

    def __init__(self) -> None:
        self.used: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.tenants: Dict[str, Dict[str, int]] = {}  # worker -> deployment key -> replicas reserved there
        self.count: Dict[str, int] = {}  # worker -> replicas reserved there

    def reserve(self, address: str, demand: Dict[str, float], owner: Optional[str] = None) -> None:
        for key, amount in demand.items():
            self.used[address][key] += amount
        if owner is not None:
            tenants = self.tenants.setdefault(address, {})
            tenants[owner] = tenants.get(owner, 0) + 1
            self.count[address] = self.count.get(address, 0) + 1

    def release(self, address: str, demand: Dict[str, float], owner: Optional[str] = None) -> None:
        if address not in self.used:
            return
        for key, amount in demand.items():
            self.used[address][key] = max(0.0, self.used[address][key] - amount)
        tenants = self.tenants.get(address)
        if owner is not None and tenants and owner in tenants:
            tenants[owner] -= 1
            self.count[address] -= 1
            if not tenants[owner]:
                del tenants[owner]
            if not tenants:
                del self.tenants[address], self.count[address]

    def forget(self, address: str) -> None:
        self.used.pop(address, None)
        self.tenants.pop(address, None)
        self.count.pop(address, None)

    def fits(self, ws: Any, demand: Dict[str, float]) -> bool:
        cap = capacity(ws)
        used = self.used.get(ws.address, {})
        return all(cap.get(k, 0.0) - used.get(k, 0.0) + 1e-9 >= amount for k, amount in demand.items())

    def neighbours(self, address: str, owner: Optional[str]) -> int:
        """Replicas of other deployments than ``owner`` reserved on ``address`` (O(1))."""
        tenants = self.tenants.get(address)
        if not tenants:
            return 0
        return self.count[address] - tenants.get(owner, 0)

    def empty(self, address: str) -> bool:
        return address not in self.tenants

    def sharing(self, ws: Any, owner: Optional[str], demand: Dict[str, float], proxies: Collection[str]) -> int:
        """How much a replica of ``owner`` shares ``ws``'s process: ``ALONE`` (or only with its
        own deployment's replicas), ``WITH_OTHERS``, ``WITH_PROXY`` or ``ON_PROXY_WORKER``
        (a dedicated proxy worker, unless the deployment asks for the proxy resource)."""
        wants_proxy = PROXY_RESOURCE in demand
        if not wants_proxy and is_proxy_worker(ws):
            return ON_PROXY_WORKER
        if not wants_proxy and ws.address in proxies:
            return WITH_PROXY
        return WITH_OTHERS if self.neighbours(ws.address, owner) else ALONE

    def choose(
        self,
        workers: Iterable[Any],
        demand: Dict[str, float],
        per_worker: Dict[str, int],
        per_host: Dict[str, int],
        max_per_host: Optional[int],
        busy: Collection[str] = frozenset(),
        owner: Optional[str] = None,
        isolated: bool = False,
    ) -> Optional[Any]:
        """The best worker for one more replica of ``owner``, or None when none fits.

        ``busy``: the workers running (or elected to run) a proxy. Isolated: the least
        sharing first (see ``sharing``), then the fewest other deployments' replicas.
        Both modes then spread (fewest replicas of this deployment per worker, then per
        host) and take the least loaded, counting a proxy on a ``busy`` worker as one
        CPU in use; a dedicated proxy worker comes last."""
        best, best_key = None, None
        wants_proxy = PROXY_RESOURCE in demand
        for ws in workers:
            if max_per_host is not None and per_host.get(ws.host, 0) >= max_per_host:
                continue
            if not self.fits(ws, demand):
                continue
            if isolated:
                tier = self.sharing(ws, owner, demand, busy)
                others = self.neighbours(ws.address, owner)
            else:
                tier = ON_PROXY_WORKER if not wants_proxy and is_proxy_worker(ws) else ALONE
                others = 0
            used_cpu = self.used.get(ws.address, {}).get("CPU", 0.0)
            load = (used_cpu - (1.0 if ws.address in busy else 0.0)) / max(ws.nthreads, 1)
            key = (tier, others, per_worker.get(ws.address, 0), per_host.get(ws.host, 0), load, ws.address)
            if best_key is None or key < best_key:
                best, best_key = ws, key
        return best

    def why_not(self, workers: Iterable[Any], demand: Dict[str, float], max_per_host: Optional[int], per_host: Dict[str, int]) -> str:
        """Explain why no worker can take a replica (for status messages)."""
        workers = list(workers)
        if not workers:
            return "no Dask workers are connected to the scheduler"
        short: Dict[str, float] = {}
        for key, amount in demand.items():
            best_free = max(capacity(ws).get(key, 0.0) - self.used.get(ws.address, {}).get(key, 0.0) for ws in workers)
            if best_free + 1e-9 < amount:
                short[key] = best_free
        if short:
            parts = [f"{k}={demand[k]:g} (most free on one worker: {max(v, 0):g})" for k, v in short.items()]
            return "no worker has enough free resources: needs " + ", ".join(parts)
        if max_per_host is not None:
            return f"max_replicas_per_node={max_per_host} reached on every host ({len(per_host)} hosts)"
        return "no single worker has all the required resources free at once"
