"""Long-poll publishing: routers and proxies wait here for what changed.

Every replica set and the route table carry a version; a listener sends the
versions it has and gets back, as soon as one differs (or after a timeout), the
snapshots that changed. Any change to goal or actual state calls
``notify_change``, which wakes every waiting listener to compare again.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any, Dict

from ..types import ReplicaSetSnapshot, RouteTable
from ..wire import ROUTES_KEY

if TYPE_CHECKING:
    from .store import GoalStore

__all__ = ["Publisher"]


def _access_log(app: Any) -> bool:
    """Whether the application's ingress deployment keeps the proxy's access log on."""
    ingress = next((d for d in app.spec.deployments if d.name == app.ingress), None)
    config = ingress.config.logging_config if ingress is not None else None
    return config is None or config.enable_access_log


class Publisher:
    """Versions, the change event and the long poll over the goal store."""

    def __init__(self, store: "GoalStore") -> None:
        self.store = store
        self._versions = itertools.count(1)
        self._changed = asyncio.Event()
        self._routes: RouteTable = {"version": 0, "routes": {}, "apps": {}, "logging": {}, "access_log_off": []}

    def next_version(self) -> int:
        return next(self._versions)

    def notify_change(self) -> None:
        """Wake every listener to compare its versions again."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def route_table(self) -> RouteTable:
        """Route prefix → (application, ingress) for the proxies, with their logging config and
        the applications whose ingress turned the access log off; a new version when it changes."""
        live = [(name, app) for name, app in self.store.apps.items() if app.ingress and not app.deleting]
        table = {app.route_prefix: {"app": name, "ingress": app.ingress} for name, app in live if app.route_prefix}
        apps = {name: app.ingress for name, app in live}
        logging_config = dict(self.store.options.get("logging_config") or {})
        quiet = sorted(name for name, app in live if not _access_log(app))
        current = self._routes
        if (table, apps, logging_config, quiet) != (current["routes"], current["apps"], current["logging"],
                                                    current["access_log_off"]):
            self._routes = {"version": self.next_version(), "routes": table, "apps": apps, "logging": logging_config,
                            "access_log_off": quiet}
        return self._routes

    def snapshot(self, key: str) -> ReplicaSetSnapshot:
        """The current snapshot under a long-poll key (``app#deployment`` or ``ROUTES_KEY``)."""
        if key == ROUTES_KEY:
            return self.route_table()  # type: ignore[return-value]
        app_name, _, dep_name = key.partition("#")
        app = self.store.apps.get(app_name)
        dep = app.deployments.get(dep_name) if app is not None else None
        if dep is None:
            return {"version": 0, "exists": False, "replicas": []}
        return dep.snapshot()

    async def listen(self, versions: Dict[str, int], timeout: float) -> Dict[str, ReplicaSetSnapshot]:
        """The snapshots whose version differs from the caller's, once there are any."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._changed
            updates = {}
            for key, version in versions.items():
                snap = self.snapshot(key)
                if snap["version"] != version:
                    updates[key] = snap
            remaining = deadline - time.monotonic()
            if updates or remaining <= 0:
                return updates
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return {}
