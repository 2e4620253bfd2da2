"""Deployment handles: call a deployment from anywhere Python runs.

``handle.remote(...)`` returns a ``DeploymentResponse`` (``await`` it or call
``.result()``); with ``.options(stream=True)`` it returns a
``DeploymentResponseGenerator`` (both in ``responses``). The work happens on
the process's home event loop (see ``event_loop``), so handles work from sync
code, from async code on any loop, inside replicas and inside Dask tasks. A loop
that makes many calls gets a lane of its own (``routing.lane``), and a unary
call made on its router's loop is sent at once, with no task
(``routing.started_call``). ``RayServeHandle`` and ``RayServeSyncHandle`` keep
the pre-2.7 API for old code.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Dict, Optional, Tuple, Union

from .chained import has_responses, resolve_responses
from .config import REPR_STATUS_TIMEOUT_S, STREAM_WINDOW
from .context import RequestContext, get_request_context, new_request_id
from .event_loop import in_loop_thread, submit
from .exceptions import RayServeException
from .responses import DeploymentResponse, DeploymentResponseGenerator, pump
from .runtime import current_runtime, get_runtime
from .status_view import handle_html

__all__ = [
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "RayServeHandle",
    "RayServeSyncHandle",
]

_UNSET: Any = object()
_Future = Union[asyncio.Future, concurrent.futures.Future]


class DeploymentHandle:
    """A handle used to make requests to a deployment at runtime."""

    def __init__(
        self,
        deployment_name: str,
        app_name: str = "default",
        *,
        method_name: str = "__call__",
        multiplexed_model_id: str = "",
        stream: bool = False,
    ) -> None:
        self._deployment_name = deployment_name
        self._app_name = app_name
        self._method_name = method_name
        self._multiplexed_model_id = multiplexed_model_id
        self._stream = stream

    @property
    def deployment_name(self) -> str:
        return self._deployment_name

    @property
    def app_name(self) -> str:
        return self._app_name

    @property
    def handle_id(self) -> str:
        return f"{self._app_name}#{self._deployment_name}"

    def _copy(self, **changes: Any) -> "DeploymentHandle":
        fields = {
            "method_name": self._method_name,
            "multiplexed_model_id": self._multiplexed_model_id,
            "stream": self._stream,
        }
        fields.update({k: v for k, v in changes.items() if v is not _UNSET})
        return type(self)(self._deployment_name, self._app_name, **fields)

    def options(
        self,
        *,
        method_name: str = _UNSET,
        multiplexed_model_id: str = _UNSET,
        stream: bool = _UNSET,
        use_new_handle_api: bool = _UNSET,
        **_ignored: Any,
    ) -> "DeploymentHandle":
        """A copy of this handle with some call options changed."""
        return self._copy(method_name=method_name, multiplexed_model_id=multiplexed_model_id, stream=stream)

    def __getattr__(self, name: str) -> "DeploymentHandle":
        if name.startswith("_"):
            raise AttributeError(name)
        return self._copy(method_name=name)

    def __reduce__(self):
        return _rebuild_handle, (
            type(self), self._deployment_name, self._app_name,
            self._method_name, self._multiplexed_model_id, self._stream,
        )

    def __repr__(self) -> str:
        extra = (f", multiplexed_model_id={self._multiplexed_model_id!r}" if self._multiplexed_model_id else "") + (
            ", stream=True" if self._stream else "")
        return (f"{type(self).__name__}(deployment={self._deployment_name!r}, app={self._app_name!r}, "
                f"method={self._method_name!r}{extra})")

    def _repr_html_(self) -> str:
        """In a notebook: what the handle calls, and its application's live status."""
        tree, error = _status_tree()
        return handle_html(type(self).__name__, self._deployment_name, self._app_name, self._method_name, tree, error)

    def _context(self) -> RequestContext:
        parent = get_request_context()
        return RequestContext(
            request_id=parent.request_id or new_request_id(),
            route=parent.route,
            app_name=self._app_name,
            multiplexed_model_id=self._multiplexed_model_id,
        )

    def remote(self, *args: Any, **kwargs: Any) -> Union[DeploymentResponse, DeploymentResponseGenerator]:
        """Send a request; returns at once with a response (or a generator when streaming)."""
        runtime = get_runtime()
        loop = runtime.loop
        ctx = self._context()
        app, dep, method = self._app_name, self._deployment_name, self._method_name
        routers: Any = runtime
        if dep:
            caller = _running_loop()
            if caller is not None and caller is not loop:
                lane = runtime.lane(caller)
                if lane is not None:  # this loop routes its own calls (``routing.lane``)
                    routers, loop = lane, caller
            if caller is loop and not self._stream and not _has_responses(args, kwargs):
                started = routers.router(app, dep).start_call(method, args, kwargs, ctx)
                if started is not None:  # sent already: no task (``routing.started_call``)
                    return DeploymentResponse(started, ctx.request_id, (dep, app, method))
        if self._stream:
            queue: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)  # bounded: a slow reader pauses the stream

            async def stream_call() -> None:
                a, k = await _resolve_responses(args, kwargs) if _has_responses(args, kwargs) else (args, kwargs)
                target = dep or await self._ingress(runtime)
                await pump(routers.router(app, target).stream(method, a, k, ctx), queue)

            task = _submit(stream_call(), loop)
            return DeploymentResponseGenerator(queue, task, loop, ctx.request_id, (dep, app, method))

        async def call() -> Any:
            a, k = await _resolve_responses(args, kwargs) if _has_responses(args, kwargs) else (args, kwargs)
            return await routers.router(app, dep or await self._ingress(runtime)).call(method, a, k, ctx)

        return DeploymentResponse(_submit(call(), loop), ctx.request_id, (dep, app, method))


    async def _ingress(self, runtime: Any) -> str:
        """An application handle made on an event loop (``get_app_handle`` inside a replica)
        learns its ingress deployment on its first call."""
        info = await runtime.rpc("dserve_app_info", name=self._app_name)
        if info is None:
            raise RayServeException(f"Application '{self._app_name}' does not exist.")
        self._deployment_name = info["ingress"]
        return self._deployment_name


def _has_responses(args: tuple, kwargs: dict) -> bool:
    return has_responses(args, kwargs, DeploymentResponse)


async def _resolve_responses(args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Replace DeploymentResponse arguments by their results (chained calls)."""
    return await resolve_responses(args, kwargs, DeploymentResponse)


def _status_tree() -> Tuple[Optional[Dict[str, Any]], str]:
    """The status RPC's answer for a repr, or ``None`` and why not (never connects or blocks long)."""
    runtime = current_runtime()
    if runtime is None or runtime.closed or not runtime.scheduler_address:
        return None, "not connected to a dserve cluster"
    if in_loop_thread(runtime.loop):
        return None, "status is not fetched on dserve's event loop"
    future = asyncio.run_coroutine_threadsafe(runtime.rpc("dserve_status"), runtime.loop)
    try:
        return future.result(REPR_STATUS_TIMEOUT_S), ""
    except Exception as exc:  # noqa: BLE001 - a repr shows why, never raises
        future.cancel()
        return None, f"status unavailable: {exc!r}"


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _submit(coro: Any, loop: asyncio.AbstractEventLoop) -> _Future:
    if in_loop_thread(loop):
        return loop.create_task(coro)
    return submit(coro, loop)


def _rebuild_handle(cls: type, deployment: str, app: str, method: str, model_id: str, stream: bool) -> "DeploymentHandle":
    return cls(deployment, app, method_name=method, multiplexed_model_id=model_id, stream=stream)


class RayServeSyncHandle(DeploymentHandle):
    """Pre-2.7 handle for sync code: ``remote()`` returns a response to ``.result()``."""

    def options(self, *, use_new_handle_api: bool = _UNSET, **kwargs: Any) -> DeploymentHandle:
        handle = super().options(**kwargs)
        if use_new_handle_api is True:
            return _rebuild_handle(
                DeploymentHandle, handle._deployment_name, handle._app_name, handle._method_name,
                handle._multiplexed_model_id, handle._stream,
            )
        return handle


class RayServeHandle(RayServeSyncHandle):
    """Pre-2.7 async handle: ``await handle.remote()`` gives a response to await again."""

    async def remote(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return DeploymentHandle.remote(self, *args, **kwargs)
