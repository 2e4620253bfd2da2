"""Proxy management: where HTTP/gRPC proxies run, and starting and stopping them.

One per host (EveryNode), the scheduler's host (HeadOnly) or none (Disabled).
The manager elects one worker per host, keeps that choice while the worker
lives, elects again when it leaves, and starts each elected proxy through the
worker's ``dserve_proxy_start`` handler (``proxy.server.ProxyWorkerPlugin``).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..config import PROXY_RETRY_AFTER_S, HTTPOptions, ProxyLocation, gRPCOptions
from ..schema import ProxyStatus

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

    @property
    def settings(self) -> tuple:
        return self.http_options, self.location, self.grpc_options

    async def reconfigure(self, http_options: HTTPOptions, location: ProxyLocation,
                          grpc_options: gRPCOptions) -> None:
        """New options: stop every proxy; the next reconcile starts them anew."""
        await self.stop_all()
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
        chosen = []
        for host, members in by_host.items():
            sticky = [ws for ws in members if ws.address in self.proxies]
            chosen.append(sticky[0] if sticky else min(members, key=lambda ws: ws.address))
        return chosen

    def reconcile(self) -> None:
        elected = {ws.address: ws for ws in self.elect()}
        for address in list(self.proxies):
            if address not in elected:
                del self.proxies[address]
        now = time.monotonic()
        for address, ws in elected.items():
            record = self.proxies.get(address)
            if record is None:
                record = self.proxies[address] = {"host": ws.host, "status": ProxyStatus.STARTING, "message": "", "retry_at": 0.0}
            if record["status"] == ProxyStatus.STARTING and not record.get("pending"):
                record["pending"] = True
                self.controller.reconciler.spawn(self._start(address, record))
            elif record["status"] == ProxyStatus.UNHEALTHY and now >= record["retry_at"] and not record.get("pending"):
                record["status"] = ProxyStatus.STARTING
                record["pending"] = True
                self.controller.reconciler.spawn(self._start(address, record))

    async def _start(self, address: str, record: Dict[str, Any]) -> None:
        try:
            result = await self.controller.scheduler.rpc(address).dserve_proxy_start(
                options=self.http_options.model_dump(), grpc_options=self.grpc_options.model_dump()
            )
        except Exception as exc:  # noqa: BLE001
            result = {"error": f"could not reach worker {address}: {exc!r}"}
        record["pending"] = False
        if result and result.get("ok"):
            record["status"] = ProxyStatus.HEALTHY
            record["message"] = ""
            record["port"] = result.get("port")
            record["grpc_port"] = result.get("grpc_port")
        else:
            record["status"] = ProxyStatus.UNHEALTHY
            record["message"] = (result or {}).get("error", "unknown error")
            record["retry_at"] = time.monotonic() + PROXY_RETRY_AFTER_S
            logger.warning("dserve proxy on %s: %s", address, record["message"])

    async def stop_all(self) -> None:
        for address in list(self.proxies):
            try:
                await self.controller.scheduler.rpc(address).dserve_proxy_stop()
            except Exception as exc:  # noqa: BLE001 - the worker may be gone
                logger.info("dserve: stopping the proxy on %s failed: %r", address, exc)
        self.proxies.clear()

    def status(self) -> Dict[str, Dict[str, Any]]:
        return {
            rec["host"]: {"status": rec["status"].value, "message": rec["message"], "worker": address,
                          "port": rec.get("port"), "grpc_port": rec.get("grpc_port")}
            for address, rec in self.proxies.items()
        }
