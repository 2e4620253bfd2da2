"""The records a deploy sends and the controller stores (and checkpoints).

Older checkpoints pickled these by reference from ``dserve.controller.*``; those
modules keep aliases so they still load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .config import DeploymentConfig

__all__ = ["ApplicationSpec", "DeploymentSpec"]


@dataclass
class DeploymentSpec:
    """What a deploy asks for: code, constructor args, options, code version."""

    name: str
    code: bytes
    init: bytes
    config: DeploymentConfig
    code_version: str
    is_ingress: bool = False


@dataclass
class ApplicationSpec:
    """An application as a deploy sends it to the controller."""

    name: str
    route_prefix: Optional[str]
    ingress: str
    deployments: List[DeploymentSpec] = field(default_factory=list)
    source: Dict[str, Any] = field(default_factory=dict)  # import path / config, when deployed from one
