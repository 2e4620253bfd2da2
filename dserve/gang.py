"""Ray Serve's gang scheduling options, accepted as values and refused as a deployment option.

``GangSchedulingConfig`` validates as Ray's does (``gang_size`` >= 1, the placement
strategy and the runtime failure policy enums). dserve starts each replica on its own
Dask worker, one at a time, with no all-or-nothing reservation of a group, so
``@serve.deployment(gang_scheduling_config=...)`` is rejected with ``GANG_INSTEAD``
(what to do instead); see ``deployment._REJECTED``.
"""
from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GangPlacementStrategy", "GangRuntimeFailurePolicy", "GangSchedulingConfig", "GANG_INSTEAD"]

GANG_INSTEAD = (
    "dserve starts each replica on a Dask worker of its own, independently, and cannot reserve a group of "
    "replicas all-or-nothing; set num_replicas (and ray_actor_options resources matching Dask worker "
    "resources), and let replicas find each other by serve.get_replica_context().rank and .world_size"
)


class GangPlacementStrategy(str, enum.Enum):
    """Placement strategy for the replicas of one gang."""

    PACK = "PACK"
    SPREAD = "SPREAD"


class GangRuntimeFailurePolicy(str, enum.Enum):
    """What happens when a replica of a running gang fails."""

    RESTART_GANG = "RESTART_GANG"
    RESTART_REPLICA = "RESTART_REPLICA"


class GangSchedulingConfig(BaseModel):
    """Gang scheduling of a deployment's replicas (Ray Serve's fields and defaults)."""

    model_config = ConfigDict(extra="forbid")

    gang_size: int = Field(..., ge=1)
    gang_placement_strategy: GangPlacementStrategy = GangPlacementStrategy.PACK
    runtime_failure_policy: GangRuntimeFailurePolicy = GangRuntimeFailurePolicy.RESTART_GANG
