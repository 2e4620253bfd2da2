"""A replica's metrics (Ray Serve's names), recorded by the replica, read at scrape time.

Per request: ``serve_deployment_request_counter``, ``serve_deployment_error_counter``
(user exceptions, and 5xx answers of HTTP handlers) and
``serve_deployment_processing_latency_ms``, labelled deployment, replica,
application and route. Per replica: ``serve_deployment_replica_starts`` (counter),
and at scrape time ``serve_replica_processing_queries`` (requests running now) and
``serve_deployment_replica_healthy`` (1 while it accepts requests). A replica's
series, and its user metrics' (``dserve.metrics``), are dropped when it shuts down.

``totals`` sums the same requests over routes — ``[requests, errors, latency bucket
counts..., over the last bucket]`` — for the load reports its worker sends the
controller (the Serve page's request rate, error rate and latency percentiles).
"""
from __future__ import annotations

import bisect
import time
import weakref
from typing import Any, Iterable, Iterator, List, Optional

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from ..metrics import enabled, forget_replica, namespace, table

__all__ = ["ReplicaMetrics", "forget_metrics"]

_LABELS = ("deployment", "replica", "application", "route")


class ReplicaMetrics:
    """Recording for one replica (``None``-safe: a no-op when metrics are off)."""

    def __init__(self, app: str, deployment: str, replica_id: str) -> None:
        self.ids = (deployment, replica_id, app)
        self.requests = table("counter", "serve_deployment_request_counter",
                              "The number of queries that have been processed in this replica.", _LABELS)
        self.errors = table("counter", "serve_deployment_error_counter",
                            "The number of exceptions that have occurred in this replica.", _LABELS)
        self.latency = table("histogram", "serve_deployment_processing_latency_ms",
                             "The latency for queries to be processed (ms).", _LABELS)
        self.starts = table("counter", "serve_deployment_replica_starts",
                            "The number of times this replica has been restarted due to failure.",
                            ("deployment", "replica", "application"))
        self.buckets = self.latency.buckets
        self.totals: List[int] = [0] * (len(self.buckets) + 3)

    @classmethod
    def create(cls, replica: Any) -> Optional["ReplicaMetrics"]:
        if not enabled():
            return None
        _LiveReplicas.track(replica)
        return cls(replica.app, replica.deployment, replica.replica_id)

    def started(self) -> None:
        self.starts.inc(self.ids)

    def record(self, route: str, started: float, failed: bool) -> None:
        labels = self.ids + (route,)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.requests.inc(labels)
        self.latency.observe(labels, latency_ms)
        totals = self.totals
        totals[0] += 1
        totals[2 + bisect.bisect_left(self.buckets, latency_ms)] += 1
        if failed:
            self.errors.inc(labels)
            totals[1] += 1

    def forget(self) -> None:
        match = {"replica": self.ids[1]}
        for t in (self.requests, self.errors, self.latency, self.starts):
            t.forget(match)


def forget_metrics(metrics: Optional[ReplicaMetrics], replica_id: str) -> None:
    """A replica stopped: drop its series, the built-in ones (``metrics``, if any) and those of
    the user's ``dserve.metrics`` tagged with it, so a long-lived worker keeps only live replicas'."""
    if metrics is not None:
        metrics.forget()
    forget_replica(replica_id)


class _LiveReplicas:
    """Scrape-time gauges over the replicas alive in this process."""

    replicas: "weakref.WeakSet[Any]" = weakref.WeakSet()
    registered = False

    @classmethod
    def track(cls, replica: Any) -> None:
        cls.replicas.add(replica)
        if not cls.registered:
            REGISTRY.register(cls())
            cls.registered = True

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterator[Any]:
        prefix = namespace() + "_" if namespace() else ""
        labels = ["deployment", "replica", "application"]
        ongoing = GaugeMetricFamily(prefix + "serve_replica_processing_queries",
                                    "The current number of queries being processed.", labels=labels)
        healthy = GaugeMetricFamily(prefix + "serve_deployment_replica_healthy",
                                    "Whether this deployment replica is healthy (1) or not (0).", labels=labels)
        for replica in list(self.replicas):
            ids = [replica.deployment, replica.replica_id, replica.app]
            ongoing.add_metric(ids, float(replica.ongoing))
            healthy.add_metric(ids, 1.0 if replica.accepting else 0.0)
        yield ongoing
        yield healthy
