"""Replica ranks (Ray Serve's ``ReplicaRank``): each replica of a deployment holds a rank 0..N-1.

A new replica takes the lowest rank no live peer holds — a peer being a replica of the
same deployment, of the version being rolled out, not stopping and not being moved —
so ranks stay stable while replicas live and a replacement reuses the rank of the one
it replaces. ``node_rank`` numbers the deployment's hosts the same way (a host that
already has a peer keeps its number); ``local_rank`` numbers the peers on one host.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable

from ..schema import ReplicaState

if TYPE_CHECKING:
    from .deployment_state import DeploymentState

__all__ = ["next_rank"]


def _lowest_free(taken: Iterable[int]) -> int:
    used = set(taken)
    rank = 0
    while rank in used:
        rank += 1
    return rank


def next_rank(dep: "DeploymentState", host: str) -> Dict[str, int]:
    """The rank of a new replica of ``dep`` placed on ``host``. O(replicas)."""
    version = dep.run_version
    peers = [r for r in dep.replicas.values()
             if r.state != ReplicaState.STOPPING and r.code_version == version and not r.moving]
    on_host = [r for r in peers if r.host == host]
    node_rank = on_host[0].rank["node_rank"] if on_host else _lowest_free(
        r.rank["node_rank"] for r in peers)
    return {"rank": _lowest_free(r.rank["rank"] for r in peers), "node_rank": node_rank,
            "local_rank": _lowest_free(r.rank["local_rank"] for r in on_host)}
