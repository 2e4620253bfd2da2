"""The reconcile loop: close the gap between goal and actual state, one contained step at a time.

Event-driven (``wake``) with a short tick; wake-ups that arrive during a step or
the short gap after it (at least ``RECONCILE_GAP_FACTOR`` times the step's own
duration) coalesce into one step, so the loop spends a bounded share of the
scheduler's event loop however many replicas change. Each step drives every deployment of
every application through its own error boundary: a deployment whose step
raises is logged, shows the error in its status, and is retried with backoff,
while every other deployment and the proxies keep being reconciled. Background
work the steps start (replica start/stop, health checks) runs as tracked tasks
(``spawn``) whose failures are logged.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Optional, Set

from ..config import RECONCILE_BACKOFF_MAX_S, RECONCILE_GAP_FACTOR, RECONCILE_MIN_GAP_S, RECONCILE_TICK_S

if TYPE_CHECKING:
    from .deployment_state import DeploymentState
    from .store import GoalStore

__all__ = ["Reconciler"]

logger = logging.getLogger("dserve.controller")


class Reconciler:
    """Runs ``step`` on every wake-up and tick; tracks the tasks steps spawn."""

    def __init__(self, store: "GoalStore", on_app_removed: Callable[[], None],
                 extra_steps: Callable[[], None]) -> None:
        self.store = store
        self.on_app_removed = on_app_removed
        self.extra_steps = extra_steps  # e.g. the proxies: one more contained step
        self.closing = False
        self._wake = asyncio.Event()
        self._ticked = asyncio.Event()
        self._tasks: Set[asyncio.Task] = set()
        self._loop_task: Optional[asyncio.Task] = None
        self._backoff: Dict[str, tuple] = {}  # deployment key -> (failures, retry at)
        self.on_step: Optional[Callable[[float], None]] = None  # called with the step's perf_counter start

    # ---- the loop ----
    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self.closing = True
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()

    def wake(self) -> None:
        self._wake.set()

    async def next_tick(self, timeout: float) -> None:
        """Wait for the end of the next step (at most ``timeout``)."""
        try:
            await asyncio.wait_for(self._ticked.wait(), max(timeout, 0))
        except asyncio.TimeoutError:
            pass

    async def _run(self) -> None:
        while not self.closing:
            try:
                await asyncio.wait_for(self._wake.wait(), RECONCILE_TICK_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            started = time.monotonic()
            started_perf = time.perf_counter()
            self.step()
            if self.on_step is not None:
                self.on_step(started_perf)
            event, self._ticked = self._ticked, asyncio.Event()
            event.set()
            # wakes meanwhile coalesce into the next step: with thousands of replicas starting,
            # each one's wake would otherwise cost a whole step (O(replicas) each)
            busy = time.monotonic() - started
            await asyncio.sleep(max(RECONCILE_MIN_GAP_S, RECONCILE_GAP_FACTOR * busy))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("dserve controller task failed", exc_info=task.exception())

    # ---- one step ----
    def step(self) -> None:
        """Reconcile every deployment (each in its own error boundary), then the rest."""
        now = time.monotonic()
        for name, app in list(self.store.apps.items()):
            for dep in list(app.deployments.values()):
                self._step_deployment(dep, now)
            if app.settle():
                del self.store.apps[name]
                self.on_app_removed()
        if self._backoff:  # forget deployments that are gone
            live = {dep.key for app in self.store.apps.values() for dep in app.deployments.values()}
            self._backoff = {k: v for k, v in self._backoff.items() if k in live}
        try:
            self.extra_steps()
        except Exception:  # noqa: BLE001 - logged; retried next tick
            logger.exception("dserve: reconciling the proxies failed")

    def _step_deployment(self, dep: "DeploymentState", now: float) -> None:
        failures, retry_at = self._backoff.get(dep.key, (0, 0.0))
        if now < retry_at:
            return
        try:
            dep.reconcile()
        except Exception as exc:  # noqa: BLE001 - contained to this deployment
            failures += 1
            delay = min(RECONCILE_TICK_S * 2 ** failures, RECONCILE_BACKOFF_MAX_S)
            self._backoff[dep.key] = (failures, now + delay)
            logger.exception("dserve: reconciling deployment %s failed (%d in a row; retrying in %.1fs)",
                             dep.key, failures, delay)
            dep.step_failed(f"The controller could not reconcile this deployment: {type(exc).__name__}: {exc} "
                            f"(retrying in {delay:.1f}s)")
        else:
            if failures:
                del self._backoff[dep.key]
