"""Replica ranks (Ray Serve's ``ReplicaRank``): each replica of a deployment holds a rank 0..N-1.

A new replica takes the lowest rank no live peer holds — a peer being a replica of the
same deployment, of the version being rolled out, not stopping and not being moved —
so ranks stay stable while replicas live and a replacement reuses the rank of the one
it replaces. ``node_rank`` numbers the deployment's hosts the same way (a host that
already has a peer keeps its number); ``local_rank`` numbers the peers on one host.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from ..schema import ReplicaState

if TYPE_CHECKING:
    from .deployment_state import DeploymentState

__all__ = ["RankAllocator"]


class RankAllocator:
    """The ranks taken by a deployment's live peers, and the lowest free ones for new
    replicas: built once per placement step (O(replicas)), then O(1) amortized per replica
    (each counter only moves up, as ranks are only taken here), so starting N replicas is
    O(N), not O(N²)."""

    def __init__(self, dep: "DeploymentState") -> None:
        version = dep.run_version
        peers = [r for r in dep.replicas.values()
                 if r.state != ReplicaState.STOPPING and r.code_version == version and not r.moving]
        self.ranks = {r.rank["rank"] for r in peers}
        self.node_of_host: Dict[str, int] = {}
        for r in peers:
            self.node_of_host.setdefault(r.host, r.rank["node_rank"])
        self.node_ranks = set(self.node_of_host.values())
        self.local: Dict[str, set] = {}
        for r in peers:
            self.local.setdefault(r.host, set()).add(r.rank["local_rank"])
        self.cursors: Dict[str, int] = {}

    def _lowest(self, key: str, taken: set) -> int:
        value = self.cursors.get(key, 0)
        while value in taken:
            value += 1
        self.cursors[key] = value
        taken.add(value)
        return value

    def take(self, host: str) -> Dict[str, int]:
        """The rank of one more replica placed on ``host``."""
        node_rank = self.node_of_host.get(host)
        if node_rank is None:
            node_rank = self.node_of_host[host] = self._lowest("node", self.node_ranks)
        return {"rank": self._lowest("rank", self.ranks), "node_rank": node_rank,
                "local_rank": self._lowest("local:" + host, self.local.setdefault(host, set()))}
