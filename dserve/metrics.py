"""Metrics with Ray Serve's names, served at Dask's own ``/metrics`` endpoints.

Two halves:

- **User metrics**: ``Counter``, ``Gauge`` and ``Histogram`` with the signatures of
  ``ray.serve.metrics`` (``tag_keys``, ``set_default_tags``, ``inc``/``set``/``observe``
  with ``tags``). Inside a replica they are tagged with ``application``,
  ``deployment`` and ``replica`` automatically.
- **Built-in metrics**: plain tables (label tuple → number) that dserve's request
  path updates with a dict operation and no lock (it runs on the event loop), turned
  into Prometheus families only when ``/metrics`` is scraped (``Collector``).

Both register with ``prometheus_client``'s default registry, which the Dask
scheduler's and workers' ``/metrics`` handlers serve, so one scrape config covers
Dask and dserve. Names carry Ray's ``ray_`` prefix (Dask config
``dserve.metrics.namespace``) so a Ray Serve Grafana dashboard works by changing the
scrape target only; Dask config ``dserve.metrics.enabled: false`` turns them off.
"""
from __future__ import annotations

import bisect
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import dask
from prometheus_client import REGISTRY
from prometheus_client import Counter as _PromCounter
from prometheus_client import Gauge as _PromGauge
from prometheus_client import Histogram as _PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .context import _current_replica

__all__ = ["Counter", "Gauge", "Histogram", "enabled", "namespace", "CounterTable", "GaugeTable",
           "HistogramTable", "DEFAULT_LATENCY_BUCKETS_MS", "forget_replica", "existing_table"]

# Ray Serve's default latency buckets (milliseconds)
DEFAULT_LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 60000, 120000,
                              300000, 600000]


def enabled() -> bool:
    return bool(dask.config.get("dserve.metrics.enabled", True))


def namespace() -> str:
    return str(dask.config.get("dserve.metrics.namespace", "ray"))


def _full_name(name: str) -> str:
    prefix = namespace()
    return f"{prefix}_{name}" if prefix else name


# ---------------------------------------------------------------- built-in tables
class _Table:
    kind = ""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: Dict[tuple, float] = {}

    def _positions(self, match: Dict[str, str]) -> Optional[List[Tuple[int, str]]]:
        """Label positions and values of ``match``; ``None`` when the table lacks one of its labels
        (then no series matches: forgetting never drops more than asked)."""
        if not match or any(k not in self.labels for k in match):
            return None
        return [(self.labels.index(k), v) for k, v in match.items()]

    def forget(self, match: Dict[str, str]) -> None:
        """Drop every series whose labels include ``match`` (e.g. a deleted deployment)."""
        positions = self._positions(match)
        if positions is None:
            return
        for key in [k for k in list(self.values) if all(k[i] == v for i, v in positions)]:
            self.values.pop(key, None)


class CounterTable(_Table):
    kind = "counter"

    def inc(self, labels: tuple, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(_full_name(self.name), self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family


class GaugeTable(_Table):
    kind = "gauge"

    def set(self, labels: tuple, value: float) -> None:
        self.values[labels] = value

    def add(self, labels: tuple, amount: float) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(_full_name(self.name), self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family


class HistogramTable(_Table):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_MS) -> None:
        super().__init__(name, documentation, labels)
        self.buckets = list(buckets)
        self.series: Dict[tuple, list] = {}  # labels -> [count per bucket..., +Inf count, sum]

    def observe(self, labels: tuple, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def forget(self, match: Dict[str, str]) -> None:
        positions = self._positions(match)
        if positions is None:
            return
        for key in [k for k in list(self.series) if all(k[i] == v for i, v in positions)]:
            self.series.pop(key, None)

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(_full_name(self.name), self.documentation, labels=self.labels)
        for labels, series in list(self.series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(self.buckets + [float("inf")], series[:-1]):
                cumulative += count
                buckets.append((str(float(bound)) if bound != float("inf") else "+Inf", cumulative))
            family.add_metric(labels, buckets, series[-1])
        return family


class Collector:
    """Turns this process's tables into Prometheus families at scrape time."""

    def __init__(self) -> None:
        self.tables: List[_Table] = []

    def add(self, table: _Table) -> _Table:
        self.tables.append(table)
        return table

    def collect(self) -> Iterator:
        for table in self.tables:
            yield table.family()

    def describe(self) -> Iterable:
        return []  # families are created at scrape time


_collector: Optional[Collector] = None
_lock = threading.Lock()


def table(kind: str, name: str, documentation: str, labels: Sequence[str], **kwargs: object) -> _Table:
    """The process's table called ``name`` (made and registered on first use)."""
    global _collector
    with _lock:
        if _collector is None:
            _collector = Collector()
            REGISTRY.register(_collector)
        for existing in _collector.tables:
            if existing.name == name:
                return existing
        cls = {"counter": CounterTable, "gauge": GaugeTable, "histogram": HistogramTable}[kind]
        return _collector.add(cls(name, documentation, labels, **kwargs))  # type: ignore[arg-type]


def existing_table(name: str) -> Optional[_Table]:
    """The process's table called ``name`` if one was made (never makes one)."""
    with _lock:
        tables = _collector.tables if _collector is not None else []
        return next((t for t in tables if t.name == name), None)


# ---------------------------------------------------------------- user metrics
_REPLICA_TAGS = ("application", "deployment", "replica")
_user_metrics: Dict[str, object] = {}


class _Metric:
    """Ray's ``ray.serve.metrics`` metric: named tags, default tags, replica tags added."""

    _prom_class: type = object

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None,
                 **prom_kwargs: object) -> None:
        if not name:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        tag_keys = tuple(tag_keys or ())
        if not all(isinstance(k, str) for k in tag_keys):
            raise TypeError(f"tag_keys should be a tuple of strings, got {tag_keys!r}")
        for reserved in _REPLICA_TAGS:
            if reserved in tag_keys:
                raise ValueError(f"'{reserved}' tag is reserved for dserve's (Ray Serve's) metrics")
        self._name = name
        self._description = description
        self._tag_keys = tag_keys
        self._default_tags: Dict[str, str] = {}
        full = _full_name(name)
        with _lock:
            metric = _user_metrics.get(full)
            if metric is None:
                metric = self._prom_class(full, description or name, labelnames=tag_keys + _REPLICA_TAGS,
                                          **prom_kwargs)
                _user_metrics[full] = metric
        self._metric = metric

    @property
    def info(self) -> Dict[str, object]:
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": dict(self._default_tags)}

    def set_default_tags(self, default_tags: Dict[str, str]) -> None:
        for key in default_tags:
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key!r}; this metric's tag_keys are {self._tag_keys}")
        self._default_tags = dict(default_tags)

    def _child(self, tags: Optional[Dict[str, str]]) -> object:
        values = {**self._default_tags, **(tags or {})}
        unknown = set(values) - set(self._tag_keys)
        if unknown:
            raise ValueError(f"Unrecognized tag keys {sorted(unknown)}; this metric's tag_keys are {self._tag_keys}")
        missing = [k for k in self._tag_keys if k not in values]
        if missing:
            raise ValueError(f"Missing value for tag keys {missing}")
        replica = _current_replica.get()
        context = (replica.app_name, replica.deployment, replica.replica_id) if replica is not None else ("", "", "")
        return self._metric.labels(*(str(values[k]) for k in self._tag_keys), *context)  # type: ignore[attr-defined]


def forget_replica(replica_id: str) -> int:
    """Drop the user metrics' series of a replica that stopped (its ``replica`` label),
    so a worker hosting many replicas over time keeps only the live ones'; returns how many."""
    removed = 0
    with _lock:
        metrics = list(_user_metrics.values())
    for metric in metrics:
        position = len(metric._labelnames) - 1  # type: ignore[attr-defined]  # the replica tag is last
        with metric._lock:  # type: ignore[attr-defined]
            stale = [k for k in metric._metrics if k[position] == replica_id]  # type: ignore[attr-defined]
        for labels in stale:
            try:
                metric.remove(*labels)  # type: ignore[attr-defined]
                removed += 1
            except KeyError:  # removed meanwhile
                pass
    return removed


class Counter(_Metric):
    """A cumulative metric that only increases (``ray.serve.metrics.Counter``)."""

    _prom_class = _PromCounter

    def inc(self, value: float = 1.0, tags: Optional[Dict[str, str]] = None) -> None:
        if value <= 0:
            raise ValueError(f"value must be > 0, got {value}")
        self._child(tags).inc(value)  # type: ignore[attr-defined]


class Gauge(_Metric):
    """The last value set (``ray.serve.metrics.Gauge``)."""

    _prom_class = _PromGauge

    def set(self, value: float, tags: Optional[Dict[str, str]] = None) -> None:
        self._child(tags).set(value)  # type: ignore[attr-defined]


class Histogram(_Metric):
    """Observations counted into buckets (``ray.serve.metrics.Histogram``)."""

    _prom_class = _PromHistogram

    def __init__(self, name: str, description: str = "", boundaries: Optional[List[float]] = None,
                 tag_keys: Optional[Tuple[str, ...]] = None) -> None:
        if boundaries is not None and (not boundaries or any(b <= 0 for b in boundaries)):
            raise ValueError("boundaries must be a non-empty list of positive numbers")
        super().__init__(name, description, tag_keys, buckets=tuple(boundaries or DEFAULT_LATENCY_BUCKETS_MS))

    def observe(self, value: float, tags: Optional[Dict[str, str]] = None) -> None:
        self._child(tags).observe(value)  # type: ignore[attr-defined]
