"""Proxy management: where HTTP/gRPC proxies run, starting, checking and stopping them.

One per host (EveryNode), the scheduler's host (HeadOnly) or none (Disabled);
up to ``HTTPOptions.proxies_per_host`` per host when that is above 1 (they share
the port with ``SO_REUSEPORT``; without it on this platform, one per host). A
"host" is a worker's ``ws.host``: workers on loopback aliases (127.0.0.2, ...)
are different hosts, and their proxies bind those aliases (``proxy.server.bind_host``).
The manager elects workers per host (those already elected first, then a
dedicated proxy worker, started with ``--resources proxy=1``, then one hosting
no replicas, then by address), keeps that choice while the worker lives, elects
again when it leaves, and starts each elected proxy through the worker's
``dserve_proxy_start`` handler (``proxy.server.ProxyWorkerPlugin``).
A healthy proxy is checked every ``PROXY_HEALTH_CHECK_PERIOD_S``
(``dserve_proxy_check``); one whose HTTP server died is restarted at once, one
that does not answer ``HEALTH_CHECK_FAILURE_THRESHOLD`` checks in a row too.

A proxy's ``status`` is its HTTP server's (what ``serve.status().proxies``
shows per host, as Ray Serve per node; a host's further proxies as
``host#1``, ``host#2``, ... in worker-address order); its gRPC server has its own ``grpc_status`` and
``grpc_message`` (None when no servicer functions are configured), so a gRPC
proxy that cannot start leaves HTTP serving. Reconfigurations hold ``lock``:
they wait for the starts and checks in flight, stop every proxy and only then
take the new options, and no proxy starts meanwhile, so none is left running
unknown.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Dict, List, Optional, Set

from ..config import (HEALTH_CHECK_FAILURE_THRESHOLD, PROXY_HEALTH_CHECK_PERIOD_S, PROXY_HEALTH_CHECK_TIMEOUT_S,
                      PROXY_RETRY_AFTER_S, HTTPOptions, ProxyLocation, gRPCOptions)
from ..schema import ProxyStatus
from ..uvicorn_server import reuse_port_supported
from .placement import is_proxy_worker

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["ProxyManager"]

logger = logging.getLogger("dserve.controller")


class ProxyManager:
    """The proxies' options, their election and their records (by worker address)."""

    def __init__(self, controller: "Controller", http_options: HTTPOptions, location: ProxyLocation,
                 grpc_options: Optional[gRPCOptions] = None) -> None:
        self.controller = controller
        self.http_options = http_options
        self.location = location
        self.grpc_options = grpc_options or gRPCOptions()
        self.proxies: Dict[str, Dict[str, Any]] = {}  # worker address -> record
        self.lock = asyncio.Lock()  # one reconfiguration at a time; no starts during one
        self._inflight: Set[asyncio.Task] = set()
        self._warned_reuse_port = False

    @property
    def settings(self) -> tuple:
        return self.http_options, self.location, self.grpc_options

    async def reconfigure(self, http_options: HTTPOptions, location: ProxyLocation,
                          grpc_options: gRPCOptions) -> None:
        """New options: stop every proxy; the next reconcile starts them anew."""
        async with self.lock:
            await self.apply(http_options, location, grpc_options)

    async def apply(self, http_options: HTTPOptions, location: ProxyLocation, grpc_options: gRPCOptions) -> None:
        """``reconfigure`` for a caller that holds ``lock``."""
        while self._inflight:  # a start in flight would leave a proxy nobody knows about
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        for address in list(self.proxies):
            await self._stop(address)
        self.proxies.clear()
        self.http_options, self.location, self.grpc_options = http_options, location, grpc_options

    @property
    def starting(self) -> bool:
        return any(p["status"] == ProxyStatus.STARTING for p in self.proxies.values())

    def elect(self) -> List[Any]:
        if self.location == ProxyLocation.Disabled:
            return []
        workers = self.controller.placeable_workers()
        if self.location == ProxyLocation.HeadOnly:
            head = self.controller.scheduler_host()
            workers = [ws for ws in workers if ws.host == head]
        by_host: Dict[str, List[Any]] = {}
        for ws in workers:
            by_host.setdefault(ws.host, []).append(ws)
        per_host = self.per_host()
        chosen = []
        for members in by_host.values():  # the elected stay elected; then by preference
            members.sort(key=self._preference)
            chosen.extend(members[:per_host])
        return chosen

    def _preference(self, ws: Any) -> tuple:
        """Election order on a host: already elected, a dedicated proxy worker (``--resources
        proxy=1``), a worker hosting no replicas, then by address."""
        return (ws.address not in self.proxies, not is_proxy_worker(ws), not self.controller.ledger.empty(ws.address),
                ws.address)

    def per_host(self) -> int:
        """Proxies per host: ``proxies_per_host``, or 1 where ``SO_REUSEPORT`` is missing."""
        wanted = self.http_options.proxies_per_host
        if wanted > 1 and not reuse_port_supported():
            if not self._warned_reuse_port:
                self._warned_reuse_port = True
                logger.warning("dserve: proxies_per_host=%d needs SO_REUSEPORT, which this platform lacks; "
                               "running one proxy per host", wanted)
            return 1
        return wanted

    def _spawn(self, record: Dict[str, Any], coro: Awaitable[Any]) -> None:
        record["pending"] = True
        task = self.controller.reconciler.spawn(coro)
        record["task"] = task
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def reconcile(self) -> None:
        if self.lock.locked():
            return  # a reconfiguration is stopping the proxies: start them after it
        elected = {ws.address: ws for ws in self.elect()}
        for address in list(self.proxies):
            if address not in elected:
                record = self.proxies.pop(address)
                if self.controller.worker_alive(address):  # e.g. closing gracefully: stop its proxy
                    self.controller.reconciler.spawn(self._stop(address, record.get("task")))
        now = time.monotonic()
        for address, ws in elected.items():
            record = self.proxies.get(address)
            if record is None:
                record = self.proxies[address] = {"host": ws.host, "status": ProxyStatus.STARTING, "message": "",
                                                  "retry_at": 0.0, "check_at": 0.0, "failures": 0,
                                                  "grpc_status": None, "grpc_message": ""}
            if record.get("pending"):
                continue
            if record["status"] == ProxyStatus.UNHEALTHY and now >= record["retry_at"]:
                record["status"] = ProxyStatus.STARTING
            if record["status"] == ProxyStatus.STARTING:
                self._spawn(record, self._start(address, record))
            elif record["status"] == ProxyStatus.HEALTHY and now >= record["check_at"]:
                self._spawn(record, self._check(address, record))

    async def _start(self, address: str, record: Dict[str, Any]) -> None:
        try:
            result = await self.controller.scheduler.rpc(address).dserve_proxy_start(
                options=self.http_options.model_dump(), grpc_options=self.grpc_options.model_dump()
            )
        except Exception as exc:  # noqa: BLE001
            result = {"error": f"could not reach worker {address}: {exc!r}"}
        record["pending"] = False
        if result and result.get("ok"):
            record.update(status=ProxyStatus.HEALTHY, message="", port=result.get("port"),
                          http_host=result.get("host"), failures=0,
                          check_at=time.monotonic() + PROXY_HEALTH_CHECK_PERIOD_S)
            self._grpc_state(address, record, result)
        else:
            record["status"] = ProxyStatus.UNHEALTHY
            record["message"] = (result or {}).get("error", "unknown error")
            record["retry_at"] = time.monotonic() + PROXY_RETRY_AFTER_S
            logger.warning("dserve proxy on %s: %s", address, record["message"])

    def _grpc_state(self, address: str, record: Dict[str, Any], result: Dict[str, Any]) -> None:
        error = result.get("grpc_error")
        if not self.grpc_options.grpc_servicer_functions:
            status = None
        else:
            status = ProxyStatus.UNHEALTHY if error else ProxyStatus.HEALTHY
        if error and record.get("grpc_message") != error:
            logger.warning("dserve gRPC proxy on %s: %s", address, error)
        record.update(grpc_status=status, grpc_message=error or "", grpc_port=result.get("grpc_port"))

    async def _check(self, address: str, record: Dict[str, Any]) -> None:
        """Is the proxy's HTTP server still running? Restart it at once if not."""
        try:
            result = await asyncio.wait_for(self.controller.scheduler.rpc(address).dserve_proxy_check(),
                                            PROXY_HEALTH_CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - counted; the worker may be busy or leaving
            result = {"ok": False, "unanswered": True,
                      "error": f"the proxy on {address} did not answer its health check: {exc!r}"}
        record["pending"] = False
        record["check_at"] = time.monotonic() + PROXY_HEALTH_CHECK_PERIOD_S
        if self.proxies.get(address) is not record or record["status"] != ProxyStatus.HEALTHY:
            return
        if result.get("ok"):
            record["failures"] = 0
            self._grpc_state(address, record, result)
            return
        if result.get("unanswered"):
            record["failures"] += 1
            if record["failures"] < HEALTH_CHECK_FAILURE_THRESHOLD:
                return
        record.update(status=ProxyStatus.UNHEALTHY, message=result.get("error") or "unknown error", retry_at=0.0)
        logger.warning("dserve proxy on %s is unhealthy (%s); restarting it", address, record["message"])
        self.controller.reconciler.wake()

    async def _stop(self, address: str, pending: Optional[asyncio.Task] = None) -> None:
        if pending is not None and not pending.done():
            await asyncio.wait([pending])  # its start first, or that start would leave a proxy running
        try:
            await self.controller.scheduler.rpc(address).dserve_proxy_stop()
        except Exception as exc:  # noqa: BLE001 - the worker may be gone
            logger.info("dserve: stopping the proxy on %s failed: %r", address, exc)

    def status(self) -> Dict[str, Dict[str, Any]]:
        """Each proxy by host (a host's further proxies as ``host#1``, ...); ``http_host`` is
        the address it listens on."""
        out: Dict[str, Dict[str, Any]] = {}
        seen: Dict[str, int] = {}
        for address, rec in sorted(self.proxies.items(), key=lambda item: (item[1]["host"], item[0])):
            host = rec["host"]
            n = seen[host] = seen.get(host, -1) + 1
            out[f"{host}#{n}" if n else host] = {
                "status": rec["status"].value, "message": rec["message"], "worker": address, "host": host,
                "http_host": rec.get("http_host"), "port": rec.get("port"), "grpc_port": rec.get("grpc_port"),
                "grpc_status": rec["grpc_status"].value if rec["grpc_status"] else None,
                "grpc_message": rec["grpc_message"]}
        return out
