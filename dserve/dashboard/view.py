"""The Serve page's data: the controller's own views plus the live numbers they lack.

No second status builder: ``status`` is what ``serve.status()`` gets (the status RPC,
``ControllerService.status``: applications, deployments with replica counts and
autoscaling decisions, proxies) and ``details`` what the REST API's
``GET /api/serve/applications/`` answers (``rest.details.instance_details``: replicas
with their workers). Added here: each replica's running requests and health checks,
and each deployment's traffic window (``controller.traffic``).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict

from ..config import SERVE_PAGE_REFRESH_S, TRAFFIC_HISTORY_S
from ..rest.details import instance_details

if TYPE_CHECKING:
    from ..controller.plugin import Controller

__all__ = ["page_data"]


def _replicas(controller: "Controller") -> Dict[str, Dict[str, Any]]:
    now = time.monotonic()
    out: Dict[str, Dict[str, Any]] = {}
    for app in controller.store.apps.values():
        for dep in app.deployments.values():
            for r in dep.replicas.values():
                out[r.replica_id] = {
                    "ongoing": controller.metrics.total_running([r.replica_id]),
                    "health_failures": r.health_failures,
                    "last_health_check_s": round(now - r.last_health, 1),
                }
    return out


async def page_data(controller: "Controller") -> Dict[str, Any]:
    """Everything the page shows, as one JSON-able dict."""
    traffic = {dep.key: controller.traffic.series(dep.key)
               for app in controller.store.apps.values() for dep in app.deployments.values()}
    return {
        "time": time.time(),
        "refresh_s": SERVE_PAGE_REFRESH_S,
        "history_s": TRAFFIC_HISTORY_S,
        "status": await controller.service.status(),
        "details": instance_details(controller),
        "replicas": _replicas(controller),
        "traffic": traffic,
    }
