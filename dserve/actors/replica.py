"""ReplicaActor: one replica of a deployment, living as a Dask actor.

The controller creates it with ``client.submit(ReplicaActor, ..., actor=True)``
and drives its life through Dask actor calls (``initialize``, ``reconfigure``,
``check_health``, ``drain``, ``shutdown``). Requests do not use the actor call
path: the worker's data plane (``routing.worker_end``; or a caller in the same process)
finds the replica in ``worker.state.actors`` and calls ``call``/``stream``/
``websocket`` directly; HTTP and gRPC requests arrive as the special methods
``wire.HTTP_METHOD``/``wire.GRPC_METHOD`` and go to their adapters.

Async user methods run on the worker's event loop; sync ones in this replica's
own thread pool, bounded (like all calls) by ``max_ongoing_requests``.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.concurrency import iterate_in_threadpool
from starlette.responses import StreamingResponse
from typing import Any, AsyncIterator, Callable, Dict, Optional, Tuple

from ..context import ReplicaContext, RequestContext, _current_replica, _request_context, restore_context
from ..event_loop import lend_loop
from ..ingress import prepare_asgi_app
from ..logs import close_sink, open_replica_sink
from ..serialization import loads, user_traceback
from ..types import Message, Receive, Scope, WireContext
from ..wire import GRPC_METHOD, HTTP_METHOD, LastItem
from ..status_schema import ReplicaRank
from .autoscaling_stats import StatsRecorder
from .grpc_adapter import serve_grpc
from .http_adapter import answer_http, serve_http, serve_websocket, starts_server_error
from .replica_metrics import ReplicaMetrics, forget_metrics

__all__ = ["ReplicaActor"]

logger = logging.getLogger("dserve.replica")

_ASYNC, _SYNC, _ASYNC_GEN, _GEN = "async", "sync", "asyncgen", "gen"


async def _construct(cls: type, args: tuple, kwargs: dict, run_sync: Callable) -> Any:
    """Build the user's object: an ``async def __init__`` on the loop, a sync one in the pool
    (the worker's loop must not stall while a model loads) with the replica's loop as its
    running loop, as in Ray (``asyncio.get_running_loop().create_task(...)`` works there)."""
    init = getattr(cls, "__init__", None)
    if inspect.iscoroutinefunction(init):
        obj = cls.__new__(cls)
        await init(obj, *args, **kwargs)
        return obj
    loop = asyncio.get_running_loop()

    def construct() -> Any:
        with lend_loop(loop):
            return cls(*args, **kwargs)

    return await run_sync(construct)


async def _iterate_sync(run_sync: Callable, make_generator: Callable[[], Any]) -> AsyncIterator[Any]:
    gen = await run_sync(make_generator)
    done = object()
    try:
        while True:
            item = await run_sync(next, gen, done)
            if item is done:
                return
            yield item
    finally:
        gen.close()


def _resolve(servable: Any, name: str, deployment: str) -> Callable:
    """The callable a request for method ``name`` runs."""
    if not inspect.isfunction(servable) and hasattr(servable, name):
        return getattr(servable, name)
    if name == "__call__" and callable(servable):
        return servable
    methods = sorted(n for n in dir(servable) if not n.startswith("_") and callable(getattr(servable, n, None)))
    if callable(servable):
        methods.insert(0, "__call__")
    raise UnknownMethodError(f"deployment {deployment!r} has no method {name!r}; its callable methods: {methods}")


def _abandon(replica: "ReplicaActor") -> None:
    """``initialize`` failed: the controller drops the replica without a shutdown call, so
    release here what it holds in the process (its log ring stays readable, `dserve logs`)."""
    close_sink(replica.replica_id)
    forget_metrics(None, replica.replica_id)  # what its constructor recorded
    if replica._pool is not None:
        replica._pool.shutdown(wait=False)


class UnknownMethodError(AttributeError):
    """A handle asked for a method the deployment does not have (the caller's mistake:
    raised at the caller, not logged as a failed request)."""


def _takes_arguments(fn: Callable) -> bool:
    try:
        return bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return True


def _kind(fn: Callable) -> str:
    target = fn
    if not inspect.isfunction(target) and not inspect.ismethod(target) and hasattr(target, "__call__"):
        target = target.__call__
    if inspect.isasyncgenfunction(target):
        return _ASYNC_GEN
    if inspect.isgeneratorfunction(target):
        return _GEN
    if inspect.iscoroutinefunction(target):
        return _ASYNC
    return _SYNC


class ReplicaActor:
    """Wraps the user's class or function; one instance per replica."""

    def __init__(self, app: str, deployment: str, replica_id: str, code: bytes, init: bytes, config: dict) -> None:
        self.app = app
        self.deployment = deployment
        self.replica_id = replica_id
        self._code = code
        self._init = init
        self.max_ongoing = int(config.get("max_ongoing_requests", 5))
        self.user_config = config.get("user_config")
        self.logging_config = config.get("logging_config")
        self.context = ReplicaContext(app_name=app, deployment=deployment, replica_id=replica_id,
                                      rank=ReplicaRank(**config.get("rank", {})), world_size=config.get("world_size", 1))
        self.stats: Optional[StatsRecorder] = None  # record_autoscaling_stats(), when the class has one
        self.servable: Any = None
        self.ongoing = 0
        self.accepting = False
        self.started_at = time.time()
        self._methods: Dict[str, Tuple[Callable, str]] = {}
        self._pool: Optional[ThreadPoolExecutor] = None
        self._sem: Optional[asyncio.Semaphore] = None
        self._idle: Optional[asyncio.Event] = None
        self._asgi_app: Any = None
        self.metrics: Optional[ReplicaMetrics] = None
        self._call_takes_request: Optional[bool] = None

    # ---- lifecycle (controller -> Dask actor calls) ----
    async def initialize(self, code: Optional[bytes] = None, init: Optional[bytes] = None) -> dict:
        """Build the user object (from ``code``/``init`` when given), apply user_config, serve.

        A failure is returned as ``{"error": traceback}`` rather than raised, so
        the controller can show the user's own traceback in the status.
        """
        if code is not None:  # the controller sends the code here, not in Dask's task
            self._code, self._init = code, init or b""
        try:
            await self._initialize()
        except BaseException as exc:  # noqa: BLE001 - reported to the controller
            _abandon(self)
            return {"error": user_traceback(exc)}
        return self.info()

    async def _initialize(self) -> None:
        open_replica_sink(self.context, self.logging_config)  # its logs and prints, from the constructor on
        loop = asyncio.get_running_loop()
        self._sem = asyncio.Semaphore(self.max_ongoing)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool = ThreadPoolExecutor(max_workers=self.max_ongoing, thread_name_prefix=f"dserve-{self.deployment}")
        token = _current_replica.set(self.context)
        try:
            target, (args, kwargs) = await loop.run_in_executor(self._pool, lambda: (loads(self._code), loads(self._init)))
            if inspect.isclass(target):
                self.servable = await _construct(target, args, kwargs, self._run_sync)
            else:
                self.servable = target
            self.context.servable_object = self.servable
            self._asgi_app = prepare_asgi_app(self.servable)
            if self.user_config is not None or _takes_rank(self.servable):
                await self._reconfigure(self.user_config)
        finally:
            _current_replica.reset(token)
        self._code = self._init = b""
        self.accepting = True
        self.metrics = ReplicaMetrics.create(self)
        method = None if inspect.isfunction(self.servable) else getattr(self.servable, "record_autoscaling_stats", None)
        if callable(method):
            self.stats = StatsRecorder(method, self._run_sync, self.context)
        if self.metrics is not None:
            self.metrics.started()

    async def _run_sync(self, fn: Callable, *args: Any) -> Any:
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(ctx.run, fn, *args))

    def iterate_sync(self, make_generator: Callable[[], Any]) -> AsyncIterator[Any]:
        """Step a sync generator in this replica's thread pool, one item at a time."""
        return _iterate_sync(self._run_sync, make_generator)

    async def _reconfigure(self, user_config: Any) -> None:
        method = None if inspect.isfunction(self.servable) else getattr(self.servable, "reconfigure", None)
        if method is None:
            if user_config is not None:
                raise ValueError(
                    f"user_config was given but deployment {self.deployment!r} has no reconfigure() method"
                )
            return
        kwargs = {"rank": self.context.rank} if _takes_rank(self.servable) else {}  # passed by name, as Ray
        call = functools.partial(method, user_config, **kwargs)
        await (call() if inspect.iscoroutinefunction(method) else self._run_sync(call))

    async def reconfigure(self, user_config: Any) -> None:
        """Apply a new user_config in place (no restart)."""
        token = _current_replica.set(self.context)
        try:
            await self._reconfigure(user_config)
            self.user_config = user_config
        finally:
            _current_replica.reset(token)

    async def check_health(self) -> None:
        """Run the user's check_health(); raising means unhealthy."""
        method = getattr(self.servable, "check_health", None)
        if method is None:
            return
        token = _current_replica.set(self.context)
        try:
            await (method() if inspect.iscoroutinefunction(method) else self._run_sync(method))
        finally:
            _current_replica.reset(token)

    def info(self) -> dict:
        return {"pid": os.getpid(), "started_at": self.started_at, "ongoing": self.ongoing}

    async def drain(self, timeout_s: float, poll_s: float) -> int:
        """Stop accepting, then wait (polling every ``poll_s``) for in-flight
        requests to finish, at most ``timeout_s``; returns how many remain."""
        self.accepting = False
        deadline = time.monotonic() + timeout_s
        while self.ongoing and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._idle.wait(), min(max(poll_s, 0.01), max(deadline - time.monotonic(), 0)))
            except asyncio.TimeoutError:
                pass
        return self.ongoing

    async def shutdown(self) -> None:
        """Release the user object (its ``__del__`` runs) and the thread pool."""
        self.accepting = False
        if self.stats is not None:
            self.stats.close()
        forget_metrics(self.metrics, self.replica_id)
        servable, self.servable = self.servable, None
        self.context.servable_object = None
        self._methods.clear()
        del servable
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        close_sink(self.replica_id)

    # ---- requests (worker plugin -> direct calls) ----
    def _method(self, name: str) -> Tuple[Callable, str]:
        found = self._methods.get(name)
        if found is None and name == HTTP_METHOD:
            found = self._methods[name] = (functools.partial(serve_http, self._asgi_app, self._call_with_request), _ASYNC_GEN)
        if found is None and name == GRPC_METHOD:
            found = self._methods[name] = (functools.partial(serve_grpc, self), _ASYNC_GEN)
        if found is None:
            fn = _resolve(self.servable, name, self.deployment)
            found = self._methods[name] = (fn, _kind(fn))
        return found

    http = answer_http  # one request from a proxy: its ASGI messages, or an iterator of batches

    async def websocket(self, scope: Scope, receive: Receive, ctx: Optional[WireContext]) -> AsyncIterator[Message]:
        """One WebSocket session from a proxy (it holds a request slot while open)."""
        started, failed = self._enter(ctx), True
        try:
            async with self._sem:
                async for message in serve_websocket(self._asgi_app, scope, receive):
                    yield message
            failed = False
        finally:
            self._exit(ctx, started, failed)

    def _call_with_request(self, request: Any) -> Any:
        """A plain deployment's ``__call__`` with the Starlette request (none if it takes no
        arguments, as in Ray); sync ones run in the pool."""
        fn, kind = self._method("__call__")
        if self._call_takes_request is None:
            self._call_takes_request = _takes_arguments(fn)
        args = (request,) if self._call_takes_request else ()
        if kind == _ASYNC:
            return fn(*args)
        if kind in (_GEN, _ASYNC_GEN):
            return StreamingResponse(fn(*args) if kind == _ASYNC_GEN else iterate_in_threadpool(fn(*args)))
        return self._run_sync(functools.partial(fn, *args))

    def _enter(self, ctx: Optional[WireContext]) -> tuple:
        """Count the request in and enter its context; the tokens undo it in ``_exit`` (a
        caller in this process, e.g. a proxy, must not stay in this replica's context)."""
        self.ongoing += 1
        self._idle.clear()
        tokens = (_current_replica.set(self.context), _request_context.set(RequestContext.from_wire(ctx)))
        return time.perf_counter(), tokens

    def _exit(self, ctx: Optional[WireContext], entered: tuple, failed: bool) -> None:
        self.ongoing -= 1
        if self.ongoing == 0:
            self._idle.set()
        restore_context(entered[1])
        if self.metrics is not None:
            self.metrics.record(ctx.get("route", "") if ctx else "", entered[0], failed)

    async def call(self, method: str, args: tuple, kwargs: dict, ctx: Optional[WireContext]) -> Any:
        """Run one unary request (in its own task, started by the transport)."""
        fn, kind = self._method(method)
        if kind in (_GEN, _ASYNC_GEN):
            raise TypeError(
                f"method {method!r} of deployment {self.deployment!r} is a generator; "
                "call it with handle.options(stream=True)"
            )
        started, failed = self._enter(ctx), True
        try:
            async with self._sem:
                if kind == _ASYNC:
                    result = await fn(*args, **kwargs)
                else:
                    result = await self._run_sync(functools.partial(fn, *args, **kwargs))
                    if inspect.isawaitable(result):
                        result = await result
                failed = False
                return result
        finally:
            self._exit(ctx, started, failed)

    async def stream(self, method: str, args: tuple, kwargs: dict, ctx: Optional[WireContext]) -> AsyncIterator[Any]:
        """Run one streaming request, yielding the generator's items."""
        fn, kind = self._method(method)
        if kind not in (_GEN, _ASYNC_GEN):
            raise TypeError(
                f"method {method!r} of deployment {self.deployment!r} is not a generator; "
                "stream=True needs a generator or async generator method"
            )
        started, failed, server_error = self._enter(ctx), True, False
        first_batch = method == HTTP_METHOD  # a proxied HTTP request: its first batch has the status
        try:
            async with self._sem:
                if kind == _ASYNC_GEN:
                    agen = fn(*args, **kwargs)
                    try:
                        async for item in agen:
                            if first_batch:
                                first_batch, server_error = False, starts_server_error(item)
                            yield item
                    finally:
                        await agen.aclose()
                else:
                    async for item in self.iterate_sync(functools.partial(fn, *args, **kwargs)):
                        yield item
            failed = server_error  # a 5xx answer counts as an error too
        except GeneratorExit:  # the caller stopped reading (e.g. after the last item): not a failure
            failed = server_error
            raise
        finally:
            self._exit(ctx, started, failed)


def _takes_rank(servable: Any) -> bool:
    """Whether the user's ``reconfigure`` has a ``rank`` parameter (then it is called at start
    even without a user_config, and given the replica's ``ReplicaRank``)."""
    method = None if inspect.isfunction(servable) else getattr(servable, "reconfigure", None)
    try:
        return method is not None and "rank" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
