"""The goal state: applications → deployments, and its checkpoint on disk.

``GoalStore`` holds what users asked for (``ApplicationState`` objects, the last
declarative config and its mode, the proxy options set at runtime) and writes it
to the state file after every change, when a state path is set. An application
being rebuilt from a new config is saved as its last good version (the rebuild
resumes after a restart, see ``declarative``). At start it restores what the file
holds; replicas are always recreated (Dask workers do not outlive their
scheduler). A state file that cannot be read is moved aside, never overwritten,
and the controller starts empty with the reason in ``serve.status()``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .checkpoint import CheckpointError, load as load_checkpoint, save as save_checkpoint, set_aside
from .application_state import ApplicationState

if TYPE_CHECKING:
    from ..spec import ApplicationSpec

__all__ = ["GoalStore", "PROXY_OPTION_KEYS"]

logger = logging.getLogger("dserve.controller")

PROXY_OPTION_KEYS = ("http_options", "grpc_options", "proxy_location")


class GoalStore:
    """Applications by name, the declarative config, and checkpointing."""

    def __init__(self, options: Dict[str, Any]) -> None:
        self.options = options  # the controller's options (checkpointed, less secrets)
        self.apps: Dict[str, ApplicationState] = {}
        self.deploy_mode: Optional[str] = None  # MULTI_APP / SINGLE_APP of the last config deploy
        self.deployed_config: Optional[Dict[str, Any]] = None  # the last config deployed
        self.proxy_options: Dict[str, Any] = {}  # set at runtime (serve.start, a config): they outlive restarts
        self.restored_from_checkpoint = False
        self.on_checkpoint: Optional[Callable[[tuple, float], None]] = None  # (labels, ms) per write
        self.checkpoint_message = ""  # why the state file could not be restored, for serve.status()
        self._writable = True  # False while an unreadable state file could not be moved aside

    @property
    def state_path(self) -> Optional[str]:
        return self.options.get("state_path") or os.environ.get("DSERVE_STATE_PATH")

    def live(self, name: str) -> Optional[ApplicationState]:
        """The application called ``name`` unless it is being deleted."""
        app = self.apps.get(name)
        return None if app is None or app.deleting else app

    def set_proxy_options(self, options: Dict[str, Any]) -> None:
        """Proxy options given at runtime: kept in the checkpoint and restored with it."""
        self.proxy_options.update({k: options[k] for k in PROXY_OPTION_KEYS if k in options})

    def checkpoint(self) -> None:
        """Write the goal state (after every change to it) when a state path is set."""
        path = self.state_path
        if not path:
            return
        if not self._writable:
            if os.path.lexists(path):
                return
            self._writable = True  # the operator moved the unreadable file away
        # an app being rebuilt keeps its last good version; one never built yet has none
        apps = [app.spec for app in self.apps.values() if not app.deleting and app.spec.deployments]
        started = time.perf_counter()
        try:
            save_checkpoint(path, {
                "apps": apps,
                "declarative": {"mode": self.deploy_mode, "config": self.deployed_config},
                "options": {k: v for k, v in self.options.items() if k != "rest_token"},
                "proxy_options": self.proxy_options,
            })
        except OSError as exc:
            logger.error("dserve: could not write the state file %s: %s", path, exc)
            return
        if self.on_checkpoint is not None:
            self.on_checkpoint((), (time.perf_counter() - started) * 1000.0)

    def restore(self, make_app: Callable[["ApplicationSpec"], ApplicationState]) -> None:
        """Load the state file, if any, creating each application with ``make_app``; the
        saved proxy options go back into the controller's options."""
        path = self.state_path
        if not path:
            if not self.options.get("embedded"):  # info: most clusters are not meant to outlive a restart
                logger.info("dserve: no state path set (--dserve-state-path, dask config dserve.state-path or "
                               "DSERVE_STATE_PATH); applications live in memory only and a scheduler restart "
                               "loses them")
            return
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            self._set_aside(path, str(exc))
            return
        if not state:
            return
        for spec in state.get("apps", []):
            app = make_app(spec)
            app.recovering = True
            self.apps[spec.name] = app
        declarative = state.get("declarative") or {}
        self.deploy_mode = declarative.get("mode")
        self.deployed_config = declarative.get("config")
        self.proxy_options = dict(state.get("proxy_options") or {})
        self.options.update(self.proxy_options)
        self.restored_from_checkpoint = bool(self.apps)
        logger.info("dserve: restored %d application(s) from %s", len(self.apps), path)

    def _set_aside(self, path: str, reason: str) -> None:
        try:
            target = set_aside(path)
        except OSError as exc:
            self._writable = False  # never overwrite what could not be read
            self.checkpoint_message = (
                f"the state file {path} could not be read ({reason}) nor moved aside ({exc}); the controller "
                f"started with no applications and does not write the state file until it is moved or removed")
        else:
            self.checkpoint_message = (
                f"the state file {path} could not be read ({reason}); it was moved to {target} and the "
                f"controller started with no applications")
        logger.error("dserve: %s", self.checkpoint_message)
