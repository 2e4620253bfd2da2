"""``serve.run(app, _local_testing_mode=True)``: the application in-process.

Each deployment gets one replica built in this process, with no cluster and
no controller; handles reach it through the same router and replica code as
on a cluster, over an in-process connection instead of a Dask comm.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Dict, Optional, Tuple, Union

import cloudpickle

from .actors.replica import ReplicaActor
from .actors.worker_plugin import _serve_stream, _serve_unary
from .routing.mux import Channel
from .deployment import Application, build_application
from .exceptions import DeploymentFailedError
from .serialization import dumps_code

__all__ = ["run_local"]

_replicas: Dict[Tuple[str, str], ReplicaActor] = {}
_ingress: Dict[str, str] = {}
_PREFIX = "local://"


def local_snapshot(app: str, deployment: str) -> Optional[dict]:
    replica = _replicas.get((app, deployment))
    if replica is None:
        return None
    return {
        "version": 1,
        "exists": True,
        "max_queued": -1,
        "replicas": [{"id": replica.replica_id, "address": _PREFIX + replica.replica_id,
                      "key": replica.replica_id, "max_ongoing": replica.max_ongoing}],
    }


class LocalConnection:
    """Same interface as ``MuxConnection``, calling an in-process replica."""

    def __init__(self, replica: ReplicaActor) -> None:
        self.replica = replica
        self.closed = False
        self._ids = itertools.count()
        self._pending: Dict[int, Union[asyncio.Future, Channel]] = {}
        self._tasks: Dict[int, asyncio.Task] = {}

    def send(self, msg: dict) -> None:  # replies from the serve functions
        target = self._pending.get(msg["i"])
        if target is None:
            return
        if isinstance(target, Channel):
            if "c" not in msg or "d" in msg:  # the stream's last message
                self._pending.pop(msg["i"], None)
            target.put_nowait(msg)
        else:
            self._pending.pop(msg["i"], None)
            if not target.done():
                target.set_result(msg)

    def _start(self, msg: dict, target: Any, serve: Any) -> int:
        self._pending[msg["i"]] = target
        task = asyncio.ensure_future(serve(self.replica, msg, self))
        self._tasks[msg["i"]] = task
        task.add_done_callback(lambda _t, i=msg["i"]: self._tasks.pop(i, None))
        return msg["i"]

    async def request(self, key: str, method: str, payload: bytes, ctx: dict) -> tuple:
        fut = asyncio.get_running_loop().create_future()
        i = self._start({"i": next(self._ids), "m": method, "p": payload, "c": ctx}, fut, _serve_unary)
        return i, fut

    async def stream(self, key: str, method: str, payload: bytes, ctx: dict) -> tuple:
        queue = Channel()
        i = self._start({"i": next(self._ids), "m": method, "p": payload, "c": ctx}, queue, _serve_stream)
        return i, queue

    def cancel(self, i: int) -> None:
        self._pending.pop(i, None)
        task = self._tasks.pop(i, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        self.closed = True


def local_connection(address: str) -> LocalConnection:
    replica_id = address[len(_PREFIX):]
    for replica in _replicas.values():
        if replica.replica_id == replica_id:
            return LocalConnection(replica)
    raise KeyError(f"no local replica {replica_id}")


def run_local(app: Application, name: str, route_prefix: Any) -> Any:
    """Build every deployment of ``app`` in this process; return the ingress handle."""
    from .event_loop import home_loop
    from .handle import DeploymentHandle
    from .runtime import Runtime, current_runtime, set_runtime

    built = build_application(app, name, route_prefix)
    loop = home_loop()
    if current_runtime() is None:
        set_runtime(Runtime("", loop))
    for bd in built.deployments:
        cfg = bd.deployment.config
        replica = ReplicaActor(
            name, bd.name, f"{name}#{bd.name}#local",
            dumps_code(bd.deployment.func_or_class), cloudpickle.dumps((bd.args, bd.kwargs)),
            {"max_ongoing_requests": cfg.max_ongoing_requests, "user_config": cfg.user_config},
        )
        info = asyncio.run_coroutine_threadsafe(replica.initialize(), loop).result()
        if info.get("error"):
            raise DeploymentFailedError(f"deployment {bd.name!r} failed to start:\n{info['error']}")
        _replicas[(name, bd.name)] = replica
    _ingress[name] = built.ingress
    return DeploymentHandle(built.ingress, name)


def ingress_of(app: str) -> str:
    from .exceptions import RayServeException

    if app not in _ingress:
        raise RayServeException(f"Application '{app}' does not exist.")
    return _ingress[app]


def clear() -> None:
    _replicas.clear()
    _ingress.clear()
