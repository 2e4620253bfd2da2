"""The routers' metrics (Ray Serve's names), read from the live routers at scrape time.

``serve_num_router_requests`` (requests routed), ``serve_deployment_queued_queries``
(callers waiting for a replica) and ``serve_num_ongoing_requests_at_replicas``
(requests this process has in flight at replicas), labelled deployment,
application, handle and actor_id (the process). Recording costs one integer
increment per request; a router's series go away with the router.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Iterable, Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..metrics import enabled, namespace

__all__ = ["track_router"]

_routers: "weakref.WeakSet[Any]" = weakref.WeakSet()
_registered = False
_lock = threading.Lock()


def track_router(router: Any) -> None:
    """Export ``router``'s counts while it lives (no-op when metrics are off)."""
    global _registered
    if not enabled():
        return
    with _lock:
        _routers.add(router)
        if not _registered:
            REGISTRY.register(_RouterCollector())
            _registered = True


class _RouterCollector:
    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterator[Any]:
        prefix = namespace() + "_" if namespace() else ""
        labels = ["deployment", "application", "handle", "actor_id"]
        requests = CounterMetricFamily(prefix + "serve_num_router_requests",
                                       "The number of requests processed by the router.", labels=labels)
        queued = GaugeMetricFamily(prefix + "serve_deployment_queued_queries",
                                   "The current number of queries to this deployment waiting to be assigned to a "
                                   "replica.", labels=labels)
        ongoing = GaugeMetricFamily(prefix + "serve_num_ongoing_requests_at_replicas",
                                    "The current number of requests to this deployment assigned and sent to "
                                    "replicas.", labels=labels)
        for router in list(_routers):
            ids = [router.deployment, router.app, f"{router.app}#{router.deployment}",
                   router.runtime.local_address or f"driver-{os.getpid()}"]
            routers = [router, *list(router.followers)]  # lanes' routers count as the home router's
            requests.add_metric(ids, float(sum(r.num_requests for r in routers)))
            queued.add_metric(ids, float(sum(r.num_queued for r in routers)))
            ongoing.add_metric(ids, float(sum(slot.in_flight for r in routers for slot in r.slots)))
        yield from (requests, queued, ongoing)
