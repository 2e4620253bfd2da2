"""``dserve.map_partitions``: a deployment applied to every partition of a Dask collection.

Offline (batch) inference through the same replicas, batching and backpressure as online
traffic: each partition of a dask DataFrame/Series, Bag or Array becomes one Dask task, which
sends the partition to the deployment as one call, or as a few calls of ``batch_size`` items
(at most ``max_in_flight`` at a time), through the handle. A handle pickled into a task uses the
worker's own dserve connection (``runtime.get_runtime`` on a worker), so no driver is on the
path. A call refused with ``BackPressureError`` (the caller's queue for the deployment is full,
``max_queued_requests``) is sent again after a short, growing, jittered wait: offline work yields
to the online traffic instead of failing; each retry is counted in
``serve_map_partitions_backpressure_retries`` (at the worker's ``/metrics``).

Each call must return one result per item sent, in order. The result's type and ``meta``:

* DataFrame/Series partitions: the deployment gets a pandas slice; it returns a pandas object,
  a list or a 1-D array (a Series), or a 2-D array (a Series of rows, or a DataFrame when
  ``meta`` is one). Results keep the partition's index and divisions. Without ``meta``, it is
  inferred as Dask does, by one call on Dask's fake non-empty partition.
* Bags: the deployment gets a list and returns a sequence; the result is a Bag.
* Arrays: blocks are split on axis 0 only (other axes are made single-chunk); the deployment
  gets a numpy block and returns an array with as many rows. ``meta`` is a numpy array whose
  dtype and trailing shape the output has; without it, one call on a block of zero rows tells.
"""
from __future__ import annotations

import collections
import functools
import random
import sys
import threading
import time
from typing import Any, Deque, List, Optional, Tuple

from .exceptions import BackPressureError
from .metrics import enabled as metrics_enabled
from .metrics import table

__all__ = ["map_partitions"]

_FIRST_RETRY_S = 0.01
_MAX_RETRY_S = 1.0
RETRIES_METRIC = "serve_map_partitions_backpressure_retries"
_retries_lock = threading.Lock()  # tasks run in the worker's threads


def map_partitions(handle: Any, collection: Any, *, meta: Any = None, batch_size: Optional[int] = None,
                   max_in_flight: int = 4, backpressure_timeout_s: Optional[float] = None) -> Any:
    """Apply the deployment behind ``handle`` to every partition of ``collection`` (lazy).

    ``handle``: a ``DeploymentHandle`` (``handle.method`` or ``.options(method_name=...)`` for
    another method). ``collection``: a dask DataFrame, Series, Bag or Array. ``batch_size``:
    items per call (``None``: the whole partition in one call). ``max_in_flight``: calls a
    task keeps outstanding. ``backpressure_timeout_s``: how long a call may keep being refused
    with ``BackPressureError`` before the task fails with it (``None``: no limit).
    Returns a collection of the same kind; compute it with a ``distributed.Client`` connected
    to dserve's cluster.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
    calls = _Calls(handle, batch_size, max_in_flight, backpressure_timeout_s)
    kind = _kind(collection)
    if kind == "bag":
        return collection.map_partitions(functools.partial(_apply_bag, calls))
    if kind == "array":
        return _map_array(calls, collection, meta)
    return _map_frame(calls, collection, meta)


def _kind(collection: Any) -> str:
    """Which collection this is, without importing Dask modules the caller has not used."""
    for kind, module, names in (("bag", "dask.bag", ("Bag",)), ("array", "dask.array", ("Array",)),
                                ("frame", "dask.dataframe", ("DataFrame", "Series"))):
        mod = sys.modules.get(module)
        types = tuple(getattr(mod, name) for name in names if hasattr(mod, name)) if mod else ()
        if types and isinstance(collection, types):
            return kind
    raise TypeError(f"map_partitions takes a dask DataFrame, Series, Bag or Array, not {type(collection).__name__}")


class _Calls:
    """Sends chunks to the deployment from inside a task (pickled into the graph)."""

    def __init__(self, handle: Any, batch_size: Optional[int], max_in_flight: int,
                 backpressure_timeout_s: Optional[float]) -> None:
        self.handle = handle
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.backpressure_timeout_s = backpressure_timeout_s

    def split(self, n: int) -> List[Tuple[int, int]]:
        size = self.batch_size or max(n, 1)
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def run(self, chunks: List[Any]) -> List[Any]:
        """One result per chunk, in order; at most ``max_in_flight`` calls outstanding."""
        results: List[Any] = [None] * len(chunks)
        window: Deque[Tuple[int, Any]] = collections.deque()
        deadline = None if self.backpressure_timeout_s is None else time.monotonic() + self.backpressure_timeout_s
        for i, chunk in enumerate(chunks):
            if len(window) >= self.max_in_flight:
                j, response = window.popleft()
                results[j] = self._settle(chunks[j], response, deadline)
            window.append((i, self.handle.remote(chunk)))
        while window:
            j, response = window.popleft()
            results[j] = self._settle(chunks[j], response, deadline)
        for chunk, result in zip(chunks, results):
            _check_length(self.handle, chunk, result)
        return results

    def _settle(self, chunk: Any, response: Any, deadline: Optional[float]) -> Any:
        delay = _FIRST_RETRY_S
        while True:
            try:
                return response.result()
            except BackPressureError:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                self._count_retry()
                time.sleep(delay * (0.5 + random.random()))  # jittered: tasks do not retry in lockstep
                delay = min(delay * 2, _MAX_RETRY_S)
                response = self.handle.remote(chunk)


    def _count_retry(self) -> None:
        if not metrics_enabled():
            return
        counter = table("counter", RETRIES_METRIC, "Calls from map_partitions tasks sent again after a "
                        "BackPressureError.", ("application", "deployment"))
        with _retries_lock:
            counter.inc((self.handle.app_name, self.handle.deployment_name))


def _check_length(handle: Any, chunk: Any, result: Any) -> None:
    try:
        length = len(result)
    except TypeError:
        raise TypeError(f"{handle!r} returned a {type(result).__name__} for a chunk of {len(chunk)} items; "
                        "map_partitions needs one result per item") from None
    if length != len(chunk):
        raise ValueError(f"{handle!r} returned {length} results for a chunk of {len(chunk)} items; "
                         "map_partitions needs one result per item, in order")


# ---- Bag ----
def _apply_bag(calls: _Calls, partition: Any) -> list:
    items = list(partition)
    out: list = []
    for result in calls.run([items[a:b] for a, b in calls.split(len(items))]):
        out.extend(result)
    return out


# ---- Array ----
def _map_array(calls: _Calls, array: Any, meta: Any) -> Any:
    import numpy as np

    if array.ndim == 0:
        raise ValueError("map_partitions needs an array with at least one axis")
    if array.ndim > 1:
        array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
    if meta is None:  # one call on zero rows: the deployment says its output's dtype and trailing shape
        probe = np.empty((0,) + tuple(array.shape[1:]), dtype=array.dtype)
        try:
            meta = np.asarray(calls.run([probe])[0])
        except Exception as exc:
            raise ValueError(f"could not infer the output's meta by calling {calls.handle!r} on zero rows "
                             f"({type(exc).__name__}); pass meta=") from exc
    meta = np.asarray(meta)
    if meta.ndim == 0:
        raise ValueError("meta must be an array with at least one axis (its first is the rows)")
    trailing = tuple(meta.shape[1:])
    prototype = np.empty((0,) + trailing, dtype=meta.dtype)
    chunks = (array.chunks[0],) + tuple((d,) for d in trailing)
    extra = {}
    if meta.ndim > array.ndim:
        extra["new_axis"] = list(range(array.ndim, meta.ndim))
    elif meta.ndim < array.ndim:
        extra["drop_axis"] = list(range(meta.ndim, array.ndim))
    return array.map_blocks(functools.partial(_apply_array, calls, prototype), dtype=meta.dtype,
                            chunks=chunks, meta=prototype, **extra)


def _apply_array(calls: _Calls, prototype: Any, block: Any) -> Any:
    import numpy as np

    results = calls.run([block[a:b] for a, b in calls.split(len(block))])
    if not results:
        return prototype.copy()
    return np.concatenate([np.asarray(r, dtype=prototype.dtype).reshape((len(r),) + prototype.shape[1:])
                           for r in results], axis=0)


# ---- DataFrame / Series ----
def _map_frame(calls: _Calls, frame: Any, meta: Any) -> Any:
    if meta is None:  # as Dask does: one call on its fake non-empty partition
        from dask.dataframe.utils import meta_nonempty

        sample = meta_nonempty(frame._meta).ffill()  # Dask's fake rows, without its missing values
        try:
            meta = _as_pandas(calls.run([sample])[0], sample, None).iloc[:0]
        except Exception as exc:
            raise ValueError(f"could not infer the output's meta by calling {calls.handle!r} on Dask's fake "
                             f"partition ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                             "pass meta=") from exc
    return frame.map_partitions(functools.partial(_apply_frame, calls, meta), meta=meta)


def _apply_frame(calls: _Calls, meta: Any, partition: Any) -> Any:
    import pandas as pd

    pieces = [partition.iloc[a:b] for a, b in calls.split(len(partition))]
    results = calls.run(pieces)
    if not results:
        return meta.iloc[:0].copy()
    converted = [_as_pandas(r, piece, meta) for r, piece in zip(results, pieces)]
    return converted[0] if len(converted) == 1 else pd.concat(converted)


def _as_pandas(result: Any, chunk: Any, meta: Any) -> Any:
    """One call's result as a pandas object indexed like the chunk it came from."""
    import numpy as np
    import pandas as pd

    if isinstance(result, (pd.DataFrame, pd.Series)):
        out = result.copy(deep=False)
        out.index = chunk.index
        return out
    if isinstance(meta, pd.DataFrame):
        return pd.DataFrame(result, index=chunk.index, columns=meta.columns)
    name = meta.name if isinstance(meta, pd.Series) else getattr(chunk, "name", None)
    if isinstance(result, np.ndarray) and result.ndim > 1:  # a row per item: a Series of rows
        return pd.Series(list(result), index=chunk.index, name=name, dtype=object)
    dtype = meta.dtype if isinstance(meta, pd.Series) else None
    return pd.Series(list(result) if not isinstance(result, np.ndarray) else result, index=chunk.index,
                     name=name, dtype=dtype)
