"""A replica's custom autoscaling metrics: its ``record_autoscaling_stats()``, on a leash.

The worker plugin polls every replica's ``StatsRecorder`` once per load report
(``METRICS_PUSH_PERIOD_S``). A poll never waits: it hands over the result of the
call that finished since the last poll (a ``{name: number}`` dict) and starts the
next call. One call runs at a time (an ``async def`` on the worker's loop, a sync
one in the replica's thread pool); one still running after
``RECORD_AUTOSCALING_STATS_TIMEOUT_S`` is abandoned (an async one cancelled) and,
like an exception or a result that is not a dict of numbers, reported as the
replica's stats error, which the controller shows in the deployment's status.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ..config import RECORD_AUTOSCALING_STATS_TIMEOUT_S
from ..context import ReplicaContext, _current_replica

__all__ = ["StatsRecorder"]

logger = logging.getLogger("dserve.replica")


def _checked(value: Any) -> Dict[str, float]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()):
        raise TypeError(f"record_autoscaling_stats() must return a dict of str to number, not {value!r}")
    return {k: float(v) for k, v in value.items()}


class StatsRecorder:
    """Calls one replica's ``record_autoscaling_stats`` and keeps its latest result."""

    def __init__(self, method: Callable[[], Any], run_sync: Callable[..., Any], context: ReplicaContext,
                 timeout: float = RECORD_AUTOSCALING_STATS_TIMEOUT_S) -> None:
        self.method, self.run_sync, self.context, self.timeout = method, run_sync, context, timeout
        self.call: Optional[asyncio.Future] = None
        self.started = 0.0
        self.error = ""

    async def _record(self) -> Dict[str, float]:
        token = _current_replica.set(self.context)
        try:
            if inspect.iscoroutinefunction(self.method):
                return _checked(await self.method())
            return _checked(await self.run_sync(self.method))
        finally:
            _current_replica.reset(token)

    def poll(self) -> Tuple[Optional[Dict[str, float]], str]:
        """The metrics recorded since the last poll (or ``None``) and the current error
        (``""`` when the last call went well); starts the next call when none runs."""
        metrics = None
        call = self.call
        if call is not None and call.done():
            self.call = None
            try:
                metrics, self.error = call.result(), ""
            except BaseException as exc:  # noqa: BLE001 - user code: reported, never raised here
                self.error = f"record_autoscaling_stats() failed: {type(exc).__name__}: {exc}"
                logger.warning("%s: %s", self.context.replica_id, self.error)
        elif call is not None and time.monotonic() - self.started > self.timeout:
            self.error = f"record_autoscaling_stats() did not return within {self.timeout:g}s"
            if inspect.iscoroutinefunction(self.method):  # an async call is cancelled; a sync one
                call.cancel()  # cannot be: it keeps its pool thread, and no other starts, until it returns
                self.call = None
        if self.call is None:
            self.call, self.started = asyncio.ensure_future(self._record()), time.monotonic()
        return metrics, self.error

    def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None
