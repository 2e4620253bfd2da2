"""Load of each deployment as the controller sees it.

Replicas report how many requests they are running (their worker pushes
every ``PUSH_PERIOD_S``); routers report how many requests wait in their
queues (periodically, and at once when a request waits for a deployment with
no replicas). A deployment's load sample is running + queued; samples are
kept over the look-back window. Reports older than ``STALE_AFTER_S`` do not count
and are pruned, so callers and replicas that went away leave nothing behind.
Custom metrics (a replica's ``record_autoscaling_stats()``) are kept per replica as
``(time.time(), {name: value})`` samples, at most ``CUSTOM_SAMPLES`` each, with the
replica's latest stats error.
"""
from __future__ import annotations

import collections
import time
from typing import Deque, Dict, Iterable, List, Tuple

from ..config import METRICS_PUSH_PERIOD_S as PUSH_PERIOD_S

__all__ = ["LoadMetrics", "PUSH_PERIOD_S"]

STALE_AFTER_S = 3 * PUSH_PERIOD_S
CUSTOM_SAMPLES = 7200  # an hour of custom metric samples per replica, at most


class LoadMetrics:
    """Running and queued request counts, and load samples per deployment."""

    def __init__(self) -> None:
        self.running: Dict[str, Tuple[float, int]] = {}  # replica id -> (time, ongoing)
        self.queued: Dict[Tuple[str, str], Tuple[float, int]] = {}  # (deployment key, source) -> (time, queued)
        self.samples: Dict[str, Deque[Tuple[float, float]]] = collections.defaultdict(collections.deque)
        self.custom: Dict[str, Deque[Tuple[float, Dict[str, float]]]] = {}  # replica id -> samples
        self.custom_errors: Dict[str, str] = {}  # replica id -> why its last stats call failed

    def report_custom(self, metrics: Dict[str, Dict[str, float]], errors: Dict[str, str]) -> None:
        """Replicas' new custom metrics, and the stats errors of every replica that has them."""
        now = time.time()
        for replica_id, values in metrics.items():
            self.custom.setdefault(replica_id, collections.deque(maxlen=CUSTOM_SAMPLES)).append((now, values))
        for replica_id, error in errors.items():
            if error:
                self.custom_errors[replica_id] = error
            else:
                self.custom_errors.pop(replica_id, None)

    def custom_samples(self, replica_ids: Iterable[str], window_s: float) -> Dict[str, List[Tuple[float, Dict[str, float]]]]:
        """Each replica's custom metric samples inside the window (older ones are dropped)."""
        cutoff = time.time() - window_s
        out = {}
        for rid in replica_ids:
            series = self.custom.get(rid)
            while series and series[0][0] < cutoff:
                series.popleft()
            if series:
                out[rid] = list(series)
        return out

    def report_running(self, counts: Dict[str, int]) -> None:
        now = time.monotonic()
        for replica_id, ongoing in counts.items():
            self.running[replica_id] = (now, ongoing)

    def report_queued(self, source: str, counts: Dict[str, int]) -> None:
        now = time.monotonic()
        for key, queued in counts.items():
            if queued:
                self.queued[(key, source)] = (now, queued)
            else:  # an empty queue is the same as no report: keep no entry for it
                self.queued.pop((key, source), None)

    def forget_replica(self, replica_id: str) -> None:
        self.running.pop(replica_id, None)
        self.custom.pop(replica_id, None)
        self.custom_errors.pop(replica_id, None)

    def prune(self) -> None:
        """Forget reports too old to count: queues of callers that stopped reporting (a
        process that exited) and replicas that did (their worker left)."""
        now = time.monotonic()
        for table in (self.queued, self.running):
            for k in [k for k, (t, _) in table.items() if now - t >= STALE_AFTER_S]:
                del table[k]

    def total_running(self, replica_ids: Iterable[str]) -> int:
        now = time.monotonic()
        total = 0
        for rid in replica_ids:
            entry = self.running.get(rid)
            if entry is not None and now - entry[0] < STALE_AFTER_S:
                total += entry[1]
        return total

    def total_queued(self, key: str) -> int:
        now = time.monotonic()
        return sum(q for (k, _), (t, q) in list(self.queued.items()) if k == key and now - t < STALE_AFTER_S)

    def sample(self, key: str, load: float, window_s: float) -> Deque[Tuple[float, float]]:
        """Record one load sample for ``key``; return the samples inside the window."""
        now = time.monotonic()
        series = self.samples[key]
        series.append((now, load))
        while series and now - series[0][0] > window_s:
            series.popleft()
        return series

    def drop(self, key: str) -> None:
        self.samples.pop(key, None)
        for k in [k for k in self.queued if k[0] == key]:
            del self.queued[k]
