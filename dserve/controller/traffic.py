"""Each deployment's request rate, error rate and latency percentiles over the last minutes.

Workers push each replica's cumulative request totals (``ReplicaMetrics.totals``:
requests, errors, latency histogram counts) with their load reports, only when they
changed. ``Traffic`` turns them into per-replica increments and adds those into
time buckets of ``TRAFFIC_BUCKET_S`` per deployment, kept for ``TRAFFIC_HISTORY_S``:
a few list additions per report, on the scheduler's event loop. The Serve page reads
``series``; percentiles are interpolated within the histogram's buckets, as
Prometheus' ``histogram_quantile`` does.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import TRAFFIC_BUCKET_S, TRAFFIC_HISTORY_S
from ..metrics import DEFAULT_LATENCY_BUCKETS_MS

__all__ = ["Traffic", "quantile"]


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float]) -> Optional[float]:
    """The ``q`` quantile of a histogram (``counts[i]`` observations <= ``bounds[i]``, the
    last count over every bound), interpolated linearly inside its bucket; ``None`` if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for i, count in enumerate(counts):
        if count and cumulative + count >= rank:
            if i >= len(bounds):  # over the last bound: the bound is all that is known
                return float(bounds[-1])
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - cumulative) / count
        cumulative += count
    return float(bounds[-1])


class Traffic:
    """Per-deployment time buckets of request, error and latency counts."""

    def __init__(self, bucket_s: float = TRAFFIC_BUCKET_S, history_s: float = TRAFFIC_HISTORY_S,
                 bounds: Sequence[float] = DEFAULT_LATENCY_BUCKETS_MS) -> None:
        self.bucket_s = bucket_s
        self.history_s = history_s
        self.bounds = list(bounds)
        self.last: Dict[str, Tuple[float, List[int]]] = {}  # replica id -> (time reported, totals)
        self.buckets: Dict[str, Dict[int, List[int]]] = {}  # "app#deployment" -> bucket index -> counts
        self._trimmed = 0

    def report(self, totals: Dict[str, List[int]], now: Optional[float] = None) -> None:
        """Replicas' cumulative totals (``[requests, errors, latency counts...]``)."""
        now = time.time() if now is None else now
        index = int(now // self.bucket_s)
        for replica_id, values in totals.items():
            seen = self.last.get(replica_id)
            previous = seen[1] if seen is not None else None
            if previous is None or len(previous) != len(values) or any(v < p for v, p in zip(values, previous)):
                delta = list(values)  # first report (or a restarted count): everything since the start
            else:
                delta = [v - p for v, p in zip(values, previous)]
            self.last[replica_id] = (now, list(values))
            app, deployment = replica_id.split("#", 2)[:2]
            ring = self.buckets.setdefault(f"{app}#{deployment}", {})
            bucket = ring.get(index)
            if bucket is None or len(bucket) != len(delta):
                ring[index] = delta
            else:
                for i, d in enumerate(delta):
                    bucket[i] += d
        if index != self._trimmed:
            self._trim(now)
            self._trimmed = index

    def forget(self, key: str) -> None:
        """A deployment (``app#deployment``) is gone: drop its buckets and its replicas' totals."""
        self.buckets.pop(key, None)
        prefix = key + "#"
        for replica_id in [r for r in self.last if r.startswith(prefix)]:
            del self.last[replica_id]

    def forget_replica(self, replica_id: str) -> None:
        """A replica is gone (its deployment's buckets keep what it served)."""
        self.last.pop(replica_id, None)

    def _trim(self, now: float) -> None:
        oldest = int((now - self.history_s) // self.bucket_s)
        for key in list(self.buckets):
            ring = self.buckets[key]
            for index in [i for i in ring if i < oldest]:
                del ring[index]
            if not ring:
                del self.buckets[key]
        for replica_id in [r for r, (t, _) in self.last.items() if now - t > self.history_s]:
            del self.last[replica_id]

    def series(self, key: str, now: Optional[float] = None) -> Dict[str, Any]:
        """One deployment's window: ``points`` (one per complete bucket, oldest first, none
        before the first report): ``[start time (epoch s), requests/s, errors/s, p50 ms, p99 ms]``
        (percentiles ``None`` without requests); ``requests`` and ``errors``: every one counted
        in the window, the bucket still filling included."""
        now = time.time() if now is None else now
        current = int(now // self.bucket_s)
        ring = self.buckets.get(key, {})
        oldest = max(int((now - self.history_s) // self.bucket_s), min(ring, default=current))
        points = []
        for index in range(oldest, current):
            counts = ring.get(index)
            if counts is None:
                points.append([index * self.bucket_s, 0.0, 0.0, None, None])
                continue
            latency = counts[2:]
            points.append([index * self.bucket_s, counts[0] / self.bucket_s, counts[1] / self.bucket_s,
                           quantile(0.5, latency, self.bounds), quantile(0.99, latency, self.bounds)])
        in_window = [c for i, c in ring.items() if i >= oldest]
        return {"bucket_s": self.bucket_s, "points": points,
                "requests": sum(c[0] for c in in_window), "errors": sum(c[1] for c in in_window)}
