"""dserve's Dask WorkerPlugin: the data-plane handler on every worker.

The controller installs it on all workers (present and future). It adds the
``dserve_mux`` comm handler: a caller opens one comm per worker and sends
requests for any replica on that worker over it; each request runs in its own
task and replies through a write coalescer. A caller that goes away cancels
its requests still running here.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional

from distributed.diagnostics.plugin import WorkerPlugin

from ..event_loop import set_process_worker
from ..serialization import dumps, pack_exception
from ..wire import MUX_OP, Coalescer, LastItem, decode

__all__ = ["DServeWorkerPlugin", "PLUGIN_NAME"]

logger = logging.getLogger("dserve.worker")

PLUGIN_NAME = "dserve-worker"


class DServeWorkerPlugin(WorkerPlugin):
    """Registers the ``dserve_mux`` handler on a worker."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.proxy: Any = None
        self.proxy_lock = asyncio.Lock()  # starts and stops never overlap
        set_process_worker(worker)
        worker.handlers[MUX_OP] = self.mux
        worker.handlers["dserve_proxy_start"] = self.proxy_start
        worker.handlers["dserve_proxy_stop"] = self.proxy_stop
        self.reporter = asyncio.ensure_future(self._report_load())

    async def teardown(self, worker: Any) -> None:
        for name in (MUX_OP, "dserve_proxy_start", "dserve_proxy_stop"):
            worker.handlers.pop(name, None)
        self.reporter.cancel()
        await self.proxy_stop()

    async def _report_load(self) -> None:
        """Push the running-request count of every replica here to the controller."""
        from ..actors.replica import ReplicaActor
        from ..autoscale.metrics import PUSH_PERIOD_S

        while True:
            await asyncio.sleep(PUSH_PERIOD_S)
            counts = {a.replica_id: a.ongoing for a in list(self.worker.state.actors.values())
                      if isinstance(a, ReplicaActor) and a.accepting}
            if not counts:
                continue
            try:
                await self.worker.scheduler.dserve_report_running(counts=counts)
            except Exception as exc:  # noqa: BLE001 - metrics are best effort
                logger.debug("load report failed: %r", exc)

    async def proxy_start(self, options: dict, grpc_options: Optional[dict] = None) -> dict:
        """Start (or keep) this worker's HTTP (and gRPC) proxy; the controller elected us."""
        async with self.proxy_lock:
            return await self._proxy_start(options, grpc_options or {})

    async def _proxy_start(self, options: dict, grpc_options: dict) -> dict:
        from ..config import HTTPOptions, gRPCOptions
        from ..proxy.server import ProxyServer

        http, grpc = HTTPOptions(**options), gRPCOptions(**grpc_options)
        if self.proxy is not None:
            same = self.proxy.options == http and self.proxy.grpc_options == grpc
            if same and not self.proxy.task.done():
                return {"ok": True, "port": self.proxy.port, "grpc_port": self.proxy.grpc_port}
            await self._proxy_stop()
        proxy = ProxyServer(http, grpc)
        try:
            await proxy.start()
        except OSError as exc:
            return {"error": f"HTTP proxy could not start on {self.worker.address}: {exc.strerror or exc}"}
        except Exception as exc:  # noqa: BLE001
            return {"error": f"HTTP proxy could not start on {self.worker.address}: {exc!r}"}
        self.proxy = proxy
        return {"ok": True, "port": proxy.port, "grpc_port": proxy.grpc_port}

    async def proxy_stop(self) -> dict:
        async with self.proxy_lock:
            return await self._proxy_stop()

    async def _proxy_stop(self) -> dict:
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            await proxy.stop()
        return {"ok": True}

    async def mux(self, comm: Any) -> None:
        """Serve multiplexed requests from one caller until its comm closes."""
        out = Coalescer(comm)
        tasks: Dict[int, asyncio.Task] = {}
        inboxes: Dict[int, asyncio.Queue] = {}  # WebSocket sessions: client events
        actors = self.worker.state.actors
        try:
            while True:
                batch = decode(await comm.read())
                for msg in batch:
                    i = msg["i"]
                    if "w" in msg:
                        inbox = inboxes.get(i)
                        if inbox is not None:
                            inbox.put_nowait(msg["w"])
                        continue
                    if "x" in msg:
                        task = tasks.pop(i, None)
                        if task is not None:
                            task.cancel()
                        continue
                    replica = actors.get(msg["k"])
                    if replica is None or not getattr(replica, "accepting", False):
                        out.send({"i": i, "g": "replica not on this worker or not accepting"})
                        continue
                    if msg.get("ws"):
                        inboxes[i] = inbox = asyncio.Queue()
                        task = asyncio.ensure_future(_serve_websocket(replica, msg, inbox, out))
                        task.add_done_callback(lambda _t, i=i: inboxes.pop(i, None))
                    else:
                        serve = _serve_stream if msg.get("s") else _serve_unary
                        task = asyncio.ensure_future(serve(replica, msg, out))
                    tasks[i] = task
                    task.add_done_callback(lambda _t, i=i: tasks.pop(i, None))
        except Exception:  # the caller went away (or sent garbage)
            pass
        finally:
            out.abort()
            for task in list(tasks.values()):
                task.cancel()


async def _serve_unary(replica: Any, msg: dict, out: Coalescer) -> None:
    i = msg["i"]
    try:
        result = await replica.call(msg["m"], msg["p"], msg.get("c"))
        out.send({"i": i, "r": dumps(result)})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
        logger.warning("request to %s failed: %r", replica.replica_id, exc, exc_info=_is_user_error(exc))
        out.send({"i": i, "e": pack_exception(exc)})


async def _serve_stream(replica: Any, msg: dict, out: Coalescer) -> None:
    i = msg["i"]
    items = None
    try:
        items = replica.stream(msg["m"], msg["p"], msg.get("c"))
        async for item in items:
            if isinstance(item, LastItem):  # the generator knows it is done: one message
                out.send({"i": i, "c": dumps(item.value), "d": 1})
                return
            out.send({"i": i, "c": dumps(item)})
        out.send({"i": i, "d": 1})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001
        logger.warning("stream from %s failed: %r", replica.replica_id, exc, exc_info=_is_user_error(exc))
        out.send({"i": i, "e": pack_exception(exc)})
    finally:
        if items is not None:
            await items.aclose()


async def _serve_websocket(replica: Any, msg: dict, inbox: asyncio.Queue, out: Coalescer) -> None:
    i = msg["i"]
    items = None
    try:
        items = replica.websocket(msg["p"], inbox.get, msg.get("c"))
        async for message in items:
            out.send({"i": i, "c": dumps(message)})
        out.send({"i": i, "d": 1})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001
        logger.warning("WebSocket session on %s failed: %r", replica.replica_id, exc, exc_info=True)
        out.send({"i": i, "e": pack_exception(exc)})
    finally:
        if items is not None:
            await items.aclose()


def _is_user_error(exc: BaseException) -> bool:
    return not isinstance(exc, (TypeError, AttributeError))
