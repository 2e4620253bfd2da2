"""The per-process connection to a dserve instance.

A ``Runtime`` knows the scheduler (where the controller lives), owns this
process's routers and data-plane connections, and keeps the routers' replica
sets current with one long poll to the controller; the router of a deployment
that no longer exists is dropped (a later call makes a fresh one). Worker processes (replicas,
proxies, Dask tasks) create theirs lazily on the worker's own event loop; a
driver's is made by whoever knows how to connect (``api`` registers that with
``set_connector``), so this layer never imports the public API.

Process-wide state lives here and only here: the current runtime
(``current_runtime``/``set_runtime``) and the connector. In local testing mode
the runtime also holds the in-process replicas (``add_local_replica``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, Optional, Tuple

from distributed.comm import get_address_host, parse_address
from distributed.core import ConnectionPool, Status
from distributed.utils import get_ip

from .config import LONG_POLL_TIMEOUT_S, LONG_POLL_WARN_AFTER, METRICS_PUSH_PERIOD_S as PUSH_PERIOD_S
from .context import new_request_id
from .event_loop import in_loop_thread, side_loop, worker_or_none
from .routing.lane import Lane, Lanes
from .routing.router import ReplicaSlot, Router
from .routing.transport import InProcessChannel, MuxConnection
from .types import ReplicaSetSnapshot

__all__ = ["Runtime", "local_host", "get_runtime", "set_runtime", "current_runtime", "set_connector"]

LOCAL_PREFIX = "local://"  # address of an in-process replica (local testing mode)

logger = logging.getLogger("dserve")



def local_host(worker_address: Optional[str], scheduler_address: str) -> Optional[str]:
    """This process's host as workers' addresses name it: a worker's own host; a driver's, the
    address it reaches the scheduler from (no packet is sent); None when neither tells."""
    try:
        if worker_address:
            return get_address_host(worker_address)
        scheme, _ = parse_address(scheduler_address) if scheduler_address else ("", "")
        if scheme in ("tcp", "tls"):
            return get_ip(get_address_host(scheduler_address))
    except (OSError, ValueError) as exc:
        logger.debug("dserve: this process's host is unknown (%r); routing prefers no host", exc)
    return None


class Runtime:
    """Routers, connections and the controller link for one process."""

    def __init__(self, scheduler_address: str, loop: asyncio.AbstractEventLoop, pool: Any = None,
                 connection_args: Optional[dict] = None) -> None:
        self.scheduler_address = scheduler_address
        self.loop = loop
        self.connection_args = dict(connection_args or {})  # the process's Dask Security (TLS)
        self._pool = pool
        self._owns_pool = pool is None
        self._side_pool: Any = None  # control calls made on this loop's own thread (see ``call``)
        self.routers: Dict[Tuple[str, str], Router] = {}
        self.watchers: Dict[str, Tuple[int, Callable[[dict], None]]] = {}
        self.connections: Dict[str, Any] = {}
        self.local_replicas: Dict[Tuple[str, str], Any] = {}  # local testing mode
        self.local_apps: Dict[str, str] = {}  # local testing mode: application -> ingress
        self._listener: Optional[asyncio.Task] = None
        self._lanes = Lanes()
        self.closed = False
        self._reporter: Optional[asyncio.Task] = None
        self.source = new_request_id()  # identifies this process's queue reports
        self._worker = worker_or_none()
        self.local_address = self._worker.address if self._worker is not None else None
        self.local_host = local_host(self.local_address, scheduler_address)  # routers prefer replicas here

    # ---- control plane ----
    async def _get_pool(self) -> Any:
        if self._pool is None:
            self._pool = await ConnectionPool(limit=64, timeout=10, connection_args=self.connection_args)
        return self._pool

    async def rpc(self, op: str, **kwargs: Any) -> Any:
        """Call a controller handler on the scheduler."""
        pool = await self._get_pool()
        return await getattr(pool(self.scheduler_address), op)(**kwargs)

    def call(self, op: str, result_timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """``rpc`` for sync code, blocking: through this runtime's loop, or, called on that
        loop's own thread (sync code inside an async replica method), over a connection of
        ``event_loop.side_loop`` (that loop waits meanwhile, as a Ray replica's does)."""
        if not in_loop_thread(self.loop):
            return asyncio.run_coroutine_threadsafe(self.rpc(op, **kwargs), self.loop).result(result_timeout)
        if self._scheduler_on_this_loop():
            raise RuntimeError(f"dserve cannot wait for the controller here: the scheduler runs on this very "
                               f"event loop (an in-process cluster); call {op} from a sync method or a thread")
        return asyncio.run_coroutine_threadsafe(self._side_rpc(op, **kwargs), side_loop()).result(result_timeout)

    async def _side_rpc(self, op: str, **kwargs: Any) -> Any:
        if self._side_pool is None:
            self._side_pool = await ConnectionPool(limit=4, timeout=10, connection_args=self.connection_args)
        return await getattr(self._side_pool(self.scheduler_address), op)(**kwargs)

    def _scheduler_on_this_loop(self) -> bool:
        from distributed.scheduler import Scheduler

        return any(s.address == self.scheduler_address and s.loop.asyncio_loop is self.loop
                   for s in list(Scheduler._instances))

    # ---- data plane ----
    def channel(self, slot: ReplicaSlot) -> Any:
        """How to reach the replica behind ``slot``: in this process when it lives
        here (no socket), else the shared connection to its worker."""
        if slot.address == self.local_address:
            replica = self._worker.state.actors.get(slot.key)
            if replica is not None and getattr(replica, "accepting", False):
                return InProcessChannel(replica)
        return self.connection(slot.address)

    def connection(self, address: str) -> Any:
        conn = self.connections.get(address)
        if conn is None or conn.closed:
            if address.startswith(LOCAL_PREFIX):
                app, _, deployment = address[len(LOCAL_PREFIX):].partition("/")
                conn = InProcessChannel(self.local_replicas[(app, deployment)])
            else:
                conn = MuxConnection(address, self.connection_args)
            self.connections[address] = conn
        return conn

    def add_local_replica(self, app: str, deployment: str, replica: Any) -> None:
        """Local testing mode: route ``app``/``deployment`` to an in-process replica."""
        self.local_replicas[(app, deployment)] = replica
        router = self.routers.pop((app, deployment), None)
        if router is not None:
            router._fail_waiters(RuntimeError("the local replica was replaced"))

    def _local_snapshot(self, app: str, deployment: str) -> Optional[ReplicaSetSnapshot]:
        replica = self.local_replicas.get((app, deployment))
        if replica is None:
            return None
        entry = {"id": replica.replica_id, "address": f"{LOCAL_PREFIX}{app}/{deployment}",
                 "key": replica.replica_id, "max_ongoing": replica.max_ongoing, "models": []}
        return {"version": 1, "exists": True, "max_queued": -1, "replicas": [entry]}

    def router(self, app: str, deployment: str) -> Router:
        """The router for a deployment (created on first use; loop thread only)."""
        key = (app, deployment)
        router = self.routers.get(key)
        if router is None:
            router = Router(self, app, deployment)
            self.routers[key] = router
            snapshot = self._local_snapshot(app, deployment)
            if snapshot is not None:
                router.local = True
                router.update(snapshot)
            else:
                self._restart_listener()
        return router

    def follow(self, app: str, deployment: str, follower: Router) -> None:
        """A lane's router follows this runtime's router of the same deployment (loop thread)."""
        if not self.closed:
            self.router(app, deployment).follow(follower)

    def lane(self, loop: asyncio.AbstractEventLoop) -> Optional[Lane]:
        """Where calls made on ``loop`` (not the home loop) are routed, once it calls often
        enough to be worth its own connections (``routing.lane``); None: through the home loop."""
        if self.closed or self.local_replicas:
            return None
        return self._lanes.get(self, loop)

    def watch(self, key: str, callback: Callable[[dict], None]) -> None:
        """Call ``callback(snapshot)`` whenever the controller's ``key`` changes (loop thread)."""
        self.watchers[key] = (-1, callback)
        self._restart_listener()

    def unwatch(self, key: str) -> None:
        self.watchers.pop(key, None)

    def report_queued(self, router: Router) -> None:
        """A request started waiting: with no replica at all, tell the controller
        now (scale from zero); otherwise the periodic report covers it."""
        if router.local or not self.scheduler_address:
            return
        if self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report_queues())
        if not router.slots:
            home = self.routers.get((router.app, router.deployment), router)  # lanes' queues included
            asyncio.ensure_future(self._send_queued(
                {f"{router.app}#{router.deployment}": home.num_queued_with_followers}))

    async def _send_queued(self, counts: Dict[str, int]) -> None:
        try:
            await self.rpc("dserve_report_queued", source=self.source, counts=counts)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort
            logger.debug("queue report failed: %r", exc)

    async def _report_queues(self) -> None:
        reported: Dict[str, int] = {}
        while not self.closed:
            await asyncio.sleep(PUSH_PERIOD_S)
            counts = {f"{a}#{d}": r.num_queued_with_followers for (a, d), r in self.routers.items() if not r.local}
            changed = {k: v for k, v in counts.items() if v or reported.get(k)}
            if changed:
                await self._send_queued(changed)
            reported = counts

    # ---- long poll of replica sets ----
    def _restart_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        failures = 0
        while not self.closed:
            versions = {f"{a}#{d}": r.version for (a, d), r in self.routers.items() if not r.local}
            versions.update({key: version for key, (version, _) in self.watchers.items()})
            try:
                updates = await self.rpc("dserve_listen", versions=versions, timeout=LONG_POLL_TIMEOUT_S)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                # a scheduler going away with its cluster is no news: only a lasting failure is
                level = logging.WARNING if failures == LONG_POLL_WARN_AFTER and not self._closing() else logging.DEBUG
                logger.log(level, "dserve: replica-set long poll failed %d time(s) in a row (%r); retrying",
                           failures, exc)
                await asyncio.sleep(min(0.1 * failures, 2.0))
                continue
            self._apply(updates)  # no router in a local here: a deleted one must not live on while we poll

    def _apply(self, updates: Dict[str, Any]) -> None:
        for key, snapshot in updates.items():
            if key in self.watchers:
                callback = self.watchers[key][1]
                self.watchers[key] = (snapshot["version"], callback)
                callback(snapshot)
                continue
            app, _, dep = key.partition("#")
            router = self.routers.get((app, dep))
            if router is not None:
                router.update(snapshot)
                if not router.exists:  # deleted: forget it (a later call makes a new one)
                    del self.routers[(app, dep)]

    def _closing(self) -> bool:
        """This runtime, or the worker it lives in, is shutting down."""
        return self.closed or (self._worker is not None and self._worker.status != Status.running)

    async def close(self) -> None:
        self.closed = True
        self._lanes.close()
        for task in (self._listener, self._reporter):
            if task is not None:
                task.cancel()
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()
        self.local_replicas.clear()
        self.local_apps.clear()
        for router in self.routers.values():
            router._fail_waiters(RuntimeError("dserve was shut down"))
        self.routers.clear()
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
        if self._side_pool is not None:
            pool, self._side_pool = self._side_pool, None
            try:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(pool.close(), side_loop()))
            except Exception as exc:  # noqa: BLE001 - its connections go with the process anyway
                logger.info("dserve: closing the control-call connections: %r", exc)


_runtime: Optional[Runtime] = None
_connector: Optional[Callable[[], Runtime]] = None


def set_connector(connect: Callable[[], Runtime]) -> None:
    """How a driver process connects when it has no runtime yet (``api`` sets this)."""
    global _connector
    _connector = connect


def current_runtime() -> Optional[Runtime]:
    return _runtime


def set_runtime(runtime: Optional[Runtime]) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    """This process's runtime: the worker's in a Dask worker, else the driver's."""
    global _runtime
    if _runtime is not None and not _runtime.closed:
        return _runtime
    worker = worker_or_none()
    if worker is not None:
        _runtime = Runtime(worker.scheduler.address, worker.loop.asyncio_loop, pool=worker.rpc,
                           connection_args=worker.security.get_connection_args("worker"))
        return _runtime
    if _connector is None:
        raise RuntimeError("dserve is not connected: call serve.start() or serve.run() first")
    _runtime = _connector()
    return _runtime
