"""One deployment's scaling step in the controller, with user policies kept on a leash.

The decision itself is ``autoscale.policy`` (Ray's default policy, or a custom
one). A custom policy is user code running in the scheduler, so it runs on the
deployment's own thread, one call at a time: any exception (even ``SystemExit``)
or a call still running after ``POLICY_TIMEOUT_S`` leaves the target where it is
and puts the reason in the deployment's status; the scheduler and every other
deployment carry on (a class-based policy is instantiated there too, on its first
call). ``policy_import_error`` checks at deploy time that a policy's import path
loads on the scheduler. The replicas' custom metrics (``record_autoscaling_stats``)
inside the look-back window go to a custom policy; a replica's stats error shows in
the deployment's status (``stats_error``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from ..autoscale import Autoscaler
from ..autoscaling_policy import import_path, import_policy
from ..config import POLICY_TIMEOUT_S

if TYPE_CHECKING:
    from ..spec import DeploymentSpec
    from .deployment_state import DeploymentState

__all__ = ["DeploymentScaler", "policy_import_error"]

logger = logging.getLogger("dserve.controller")


class DeploymentScaler:
    """Decides one deployment's target replica count from its load."""

    def __init__(self) -> None:
        self.policy = Autoscaler()
        self.error = ""  # why the last decision failed, shown in the deployment's status
        self.stats_error = ""  # why a replica's record_autoscaling_stats() failed, ditto
        self._call: Optional[concurrent.futures.Future] = None
        self._call_started = 0.0

    @property
    def last_decision(self) -> str:
        return self.policy.last_decision

    @property
    def last_decision_at(self) -> Optional[float]:
        return self.policy.last_decision_at

    def step(self, dep: "DeploymentState") -> Optional[Tuple[int, str]]:
        """The new (target, why), or ``None`` when there is no decision this tick."""
        config = dep.spec.config.autoscaling_config
        metrics = dep.controller.metrics
        running = dep.running()
        running_requests = metrics.total_running([r.replica_id for r in running])
        queued = metrics.total_queued(dep.key)
        samples = list(metrics.sample(dep.key, running_requests + queued, config.look_back_period_s))
        ids = [r.replica_id for r in running]
        failing = sorted((rid, metrics.custom_errors[rid]) for rid in ids if rid in metrics.custom_errors)
        self.stats_error = f"Replica {failing[0][0]}: {failing[0][1]}." if failing else ""
        args = (config, dep.target, ids, samples, running_requests, queued, (dep.app, dep.name))
        if config.policy is None or (dep.target == 0 and queued > 0):  # built-in: cheap, on the loop
            return self.policy.decide(*args)
        return self._custom(dep.target, args + (metrics.custom_samples(ids, config.look_back_period_s),))

    def _custom(self, target: int, args: tuple) -> Optional[Tuple[int, str]]:
        call = self._call
        if call is None:
            self._call, self._call_started = _in_daemon_thread(self.policy.decide, args), time.monotonic()
            return None
        if not call.done():
            if time.monotonic() - self._call_started > POLICY_TIMEOUT_S:
                self.error = (f"The autoscaling policy did not return within {POLICY_TIMEOUT_S:g}s; "
                              f"keeping {target} replica(s).")
            return None
        self._call = None
        try:
            decision = call.result()
        except BaseException as exc:  # noqa: BLE001 - user code: even SystemExit must not stop the scheduler
            logger.warning("autoscaling policy failed: %r", exc, exc_info=exc)
            self.error = f"The autoscaling policy failed ({type(exc).__name__}: {exc}); keeping {target} replica(s)."
            return None
        self.error = ""
        return decision

    def close(self) -> None:
        self._call = None  # a call still running finishes (or not) on its own thread


def _in_daemon_thread(fn: Callable[..., Any], args: tuple) -> concurrent.futures.Future:
    """Run ``fn(*args)`` on a daemon thread (a policy that never returns must not block
    the scheduler's exit, as a pool thread would)."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            future.set_exception(exc)

    threading.Thread(target=run, name="dserve-policy", daemon=True).start()
    return future


async def policy_import_error(specs: "list[DeploymentSpec]") -> Optional[str]:
    """Why a deployment's policy import path does not load on the scheduler, if one does not
    (imported off the event loop, bounded by ``POLICY_TIMEOUT_S``)."""
    loop = asyncio.get_running_loop()
    for spec in specs:
        config = spec.config.autoscaling_config
        path = None if config is None else import_path(config.policy)
        if path is None:
            continue
        try:
            await asyncio.wait_for(loop.run_in_executor(None, import_policy, path), POLICY_TIMEOUT_S)
        except asyncio.TimeoutError:
            return f"Deployment '{spec.name}': importing its autoscaling policy {path!r} took longer than {POLICY_TIMEOUT_S:g}s."
        except BaseException as exc:  # noqa: BLE001 - user code
            return (f"Deployment '{spec.name}': its autoscaling policy {path!r} cannot be imported on the "
                    f"scheduler: {type(exc).__name__}: {exc}")
    return None


