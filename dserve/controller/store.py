"""The goal state: applications → deployments, and its checkpoint on disk.

``GoalStore`` holds what users asked for (``ApplicationState`` objects, the last
declarative config and its mode) and writes it to the state file after every
change, when a state path is set. At start it restores what the file holds;
replicas are always recreated (Dask workers do not outlive their scheduler).
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from . import checkpoint
from .application_state import ApplicationState

if TYPE_CHECKING:
    from ..spec import ApplicationSpec

__all__ = ["GoalStore"]

logger = logging.getLogger("dserve.controller")


class GoalStore:
    """Applications by name, the declarative config, and checkpointing."""

    def __init__(self, options: Dict[str, Any]) -> None:
        self.options = options  # the controller's options (checkpointed, less secrets)
        self.apps: Dict[str, ApplicationState] = {}
        self.deploy_mode: Optional[str] = None  # MULTI_APP / SINGLE_APP of the last config deploy
        self.deployed_config: Optional[Dict[str, Any]] = None  # the last config deployed
        self.restored_from_checkpoint = False
        self.on_checkpoint: Optional[Callable[[tuple, float], None]] = None  # (labels, ms) per write

    @property
    def state_path(self) -> Optional[str]:
        return self.options.get("state_path") or os.environ.get("DSERVE_STATE_PATH")

    def live(self, name: str) -> Optional[ApplicationState]:
        """The application called ``name`` unless it is being deleted."""
        app = self.apps.get(name)
        return None if app is None or app.deleting else app

    def checkpoint(self) -> None:
        """Write the goal state (after every change to it) when a state path is set."""
        path = self.state_path
        if not path:
            return
        apps = [app.spec for app in self.apps.values() if not app.deleting and not app.building]
        started = time.perf_counter()
        try:
            checkpoint.save(path, {
                "apps": apps,
                "declarative": {"mode": self.deploy_mode, "config": self.deployed_config},
                "options": {k: v for k, v in self.options.items() if k != "rest_token"},
            })
        except OSError as exc:
            logger.error("dserve: could not write the state file %s: %s", path, exc)
            return
        if self.on_checkpoint is not None:
            self.on_checkpoint((), (time.perf_counter() - started) * 1000.0)

    def restore(self, make_app: Callable[["ApplicationSpec"], ApplicationState]) -> None:
        """Load the state file, if any, creating each application with ``make_app``."""
        path = self.state_path
        if not path:
            if not self.options.get("embedded"):  # info: most clusters are not meant to outlive a restart
                logger.info("dserve: no state path set (--dserve-state-path, dask config dserve.state-path or "
                               "DSERVE_STATE_PATH); applications live in memory only and a scheduler restart "
                               "loses them")
            return
        state = checkpoint.load(path)
        if not state:
            return
        for spec in state.get("apps", []):
            app = make_app(spec)
            app.recovering = True
            self.apps[spec.name] = app
        declarative = state.get("declarative") or {}
        self.deploy_mode = declarative.get("mode")
        self.deployed_config = declarative.get("config")
        self.restored_from_checkpoint = bool(self.apps)
        logger.info("dserve: restored %d application(s) from %s", len(self.apps), path)
