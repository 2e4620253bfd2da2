"""The controller's ledger of resources reserved on each worker.

Dask releases ``resources=`` once an actor's constructor returns, so the
controller keeps its own account: capacity from each worker (threads as CPUs,
``--resources`` such as GPU, the memory limit) minus what its replicas
reserved. Replicas of one deployment are spread across workers and hosts.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, Iterable, Optional

__all__ = ["PlacementLedger"]


def capacity(ws: Any) -> Dict[str, float]:
    """What a Dask worker offers to replicas."""
    out: Dict[str, float] = {"CPU": float(ws.nthreads)}
    out["memory"] = float(ws.memory_limit) if ws.memory_limit else math.inf
    for name, amount in (ws.resources or {}).items():
        out[name] = float(amount)
    out.setdefault("GPU", 0.0)
    return out


class PlacementLedger:
    """Reserved resources per worker address."""

    def __init__(self) -> None:
        self.used: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def reserve(self, address: str, demand: Dict[str, float]) -> None:
        for key, amount in demand.items():
            self.used[address][key] += amount

    def release(self, address: str, demand: Dict[str, float]) -> None:
        if address not in self.used:
            return
        for key, amount in demand.items():
            self.used[address][key] = max(0.0, self.used[address][key] - amount)

    def forget(self, address: str) -> None:
        self.used.pop(address, None)

    def fits(self, ws: Any, demand: Dict[str, float]) -> bool:
        cap = capacity(ws)
        used = self.used.get(ws.address, {})
        return all(cap.get(k, 0.0) - used.get(k, 0.0) + 1e-9 >= amount for k, amount in demand.items())

    def choose(
        self,
        workers: Iterable[Any],
        demand: Dict[str, float],
        per_worker: Dict[str, int],
        per_host: Dict[str, int],
        max_per_host: Optional[int],
        busy: frozenset = frozenset(),
    ) -> Optional[Any]:
        """The best worker for one more replica, or None when none fits.

        Spread first (fewest replicas of this deployment per worker, then per
        host), then the least loaded, counting a proxy on a ``busy`` worker as
        one CPU in use."""
        best, best_key = None, None
        for ws in workers:
            if max_per_host is not None and per_host.get(ws.host, 0) >= max_per_host:
                continue
            if not self.fits(ws, demand):
                continue
            used_cpu = self.used.get(ws.address, {}).get("CPU", 0.0)
            load = (used_cpu - (1.0 if ws.address in busy else 0.0)) / max(ws.nthreads, 1)
            key = (per_worker.get(ws.address, 0), per_host.get(ws.host, 0), load, ws.address)
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
