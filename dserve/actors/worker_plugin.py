"""dserve's Dask WorkerPlugin: what every worker needs to host replicas.

The controller installs it on all workers (present and future). It registers
the ``dserve_data_address`` handler (callers ask it once where this worker's
data-plane port is, ``routing.worker_end.DataPlane``, and reach any replica here
through it) and the ``dserve_worker_logs`` handler (the log lines of its
replicas and proxy, for ``dserve logs``), marks the process as a dserve worker,
pushes the running-request count of its replicas to the controller for
autoscaling (and the custom metrics of those with ``record_autoscaling_stats``,
``autoscaling_stats``), with their request totals when they changed (the Serve page's rates
and latencies), and runs the health checks the controller asks for, all of one
worker's in one call (``dserve_health_check``), so the controller's check traffic
is per worker, not per replica.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Optional

from distributed.comm import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin

from ..config import METRICS_PUSH_PERIOD_S as PUSH_PERIOD_S
from ..event_loop import set_process_worker
from ..logs import read as read_logs
from ..routing.worker_end import DataPlane
from ..wire import DATA_ADDRESS_OP, HEALTH_OP, LOGS_OP
from .replica import ReplicaActor

__all__ = ["DServeWorkerPlugin", "PLUGIN_NAME"]

logger = logging.getLogger("dserve.worker")

PLUGIN_NAME = "dserve-worker"


class DServeWorkerPlugin(WorkerPlugin):
    """Opens the worker's data plane, registers its handlers and reports replica load."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker
        set_process_worker(worker)
        self.plane = DataPlane(worker.state.actors, _data_host(worker.address),
                               worker.security.get_listen_args("worker").get("ssl_context"))
        worker.handlers[DATA_ADDRESS_OP] = self.data_address
        worker.handlers[LOGS_OP] = read_logs
        worker.handlers[HEALTH_OP] = self.health_check
        self.reporter = asyncio.ensure_future(self._report_load())

    async def teardown(self, worker: Any) -> None:
        worker.handlers.pop(DATA_ADDRESS_OP, None)
        self.plane.close()
        worker.handlers.pop(LOGS_OP, None)
        worker.handlers.pop(HEALTH_OP, None)
        self.reporter.cancel()

    async def data_address(self) -> Dict[str, Any]:
        """The ``dserve_data_address`` handler: this worker's data-plane host, port, secret, TLS."""
        return await self.plane.address()

    async def health_check(self, keys: List[str], timeout: float) -> Dict[str, Optional[str]]:
        """Run ``check_health`` of the replicas with these actor keys, each bounded by
        ``timeout``; ``None`` for a healthy one, else why not."""
        async def one(key: str) -> Optional[str]:
            replica = self.worker.state.actors.get(key)
            if not isinstance(replica, ReplicaActor):
                return f"the replica {key} is not on worker {self.worker.address}"
            try:
                await asyncio.wait_for(replica.check_health(), timeout)
            except Exception as exc:  # noqa: BLE001 - reported to the controller, which decides
                return repr(exc)
            return None

        results = await asyncio.gather(*(one(key) for key in keys))
        return dict(zip(keys, results))

    async def _report_load(self) -> None:
        """Push the running-request count of every replica here to the controller, and
        the request totals of those whose totals changed since the last push."""
        sent: Dict[str, List[int]] = {}
        while True:
            await asyncio.sleep(PUSH_PERIOD_S)
            report = self._load_report(sent)
            if report is None:
                sent.clear()
                continue
            try:
                await self.worker.scheduler.dserve_report_running(**report)
            except Exception as exc:  # noqa: BLE001 - metrics are best effort
                logger.debug("load report failed: %r", exc)
                continue
            sent = {rid: t for rid, t in {**sent, **report["totals"]}.items() if rid in report["counts"]}

    def _load_report(self, sent: Dict[str, List[int]]) -> Optional[Dict[str, Any]]:
        """This worker's load report (``None``: no replica accepts requests here). Made in a
        function of its own: no replica stays referenced by the loop while it sleeps (a
        deleted replica's object must go with it)."""
        replicas = [a for a in list(self.worker.state.actors.values())
                    if isinstance(a, ReplicaActor) and a.accepting]
        if not replicas:
            return None
        counts = {a.replica_id: a.ongoing for a in replicas}
        totals = {a.replica_id: list(a.metrics.totals) for a in replicas
                  if a.metrics is not None and a.metrics.totals != sent.get(a.replica_id)}
        custom: Dict[str, Dict[str, float]] = {}
        errors: Dict[str, str] = {}
        for a in replicas:  # never waits: a slow record_autoscaling_stats() stalls nothing
            if a.stats is not None:
                metrics, errors[a.replica_id] = a.stats.poll()
                if metrics is not None:
                    custom[a.replica_id] = metrics
        extra = {"custom": custom, "stats_errors": errors} if errors else {}
        return {"counts": counts, "totals": totals, **extra}


def _data_host(worker_address: str) -> str:
    """The data plane listens on the host the worker's Dask comms listen on (loopback for
    an in-process ``inproc://`` worker)."""
    try:
        host = get_address_host(worker_address)
    except ValueError:
        host = ""
    return host if host and "/" not in host else "127.0.0.1"
