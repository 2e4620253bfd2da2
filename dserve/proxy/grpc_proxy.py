"""The gRPC proxy: grpcio's asyncio server on the worker loop, beside the HTTP proxy.

The user's ``add_XServicer_to_server`` functions are called against a
recorder, which keeps each method's (de)serializers and kind (unary or
server-streaming); every method is then served by forwarding to the ingress
deployment of the application named in the ``application`` metadata (or the
only one), calling the deployment method of the same name. The built-in
``ray.serve.RayServeAPIService`` answers ``ListApplications`` and ``Healthz``
with Ray Serve's message layout. Errors map to status codes: unknown
application NOT_FOUND, user exception INTERNAL, ``request_timeout_s``
DEADLINE_EXCEEDED, overload UNAVAILABLE; a cancelled call cancels the request
in the replica.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import grpc

from ..context import RequestContext, new_request_id
from ..exceptions import BackPressureError, DeploymentUnavailableError
from ..config import STREAM_WINDOW
from ..metrics import enabled
from ..wire import GRPC_METHOD
from .proxy_metrics import ProtocolMetrics

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["GRPCProxy"]

logger = logging.getLogger("dserve.proxy")

BUILTIN_SERVICE = "ray.serve.RayServeAPIService"


class _Recorder:
    """Stands in for a grpc server while ``add_XServicer_to_server`` runs."""

    def __init__(self) -> None:
        self.methods: Dict[str, Dict[str, Any]] = {}  # service -> {method: RpcMethodHandler}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            service = getattr(handler, "service_name", lambda: None)() or getattr(handler, "_name", None)
            methods = getattr(handler, "_method_handlers", None)
            if service and methods:
                self.methods.setdefault(service, {}).update(methods)

    def add_registered_method_handlers(self, service: str, handlers: Dict[str, Any]) -> None:
        self.methods.setdefault(service, {}).update(handlers)


class _AnyServicer:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _encode_string_field(value: str) -> bytes:
    data = value.encode()
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data  # field 1, wire type 2


def _put_last(queue: asyncio.Queue, item: Any) -> None:
    """The end marker goes in even when the queue is full (the stream is over)."""
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        queue.get_nowait()
        queue.put_nowait(item)


class GRPCProxy:
    def __init__(self, runtime: "Runtime", servicer_functions: List[str], request_timeout_s: Optional[float]) -> None:
        self.runtime = runtime
        self.servicer_functions = servicer_functions
        self.request_timeout_s = request_timeout_s
        self.apps: Dict[str, str] = {}  # application -> ingress deployment
        self.server: Optional[grpc.aio.Server] = None
        self.port = 0
        self.draining = False
        host = runtime.local_address or ""
        self.metrics = ProtocolMetrics("grpc", host, host.split("://")[-1].rsplit(":", 1)[0]) if enabled() else None

    def update_routes(self, snapshot: Dict[str, Any]) -> None:
        self.apps = dict(snapshot.get("apps", {}))

    def _handlers(self) -> List[grpc.GenericRpcHandler]:
        recorder = _Recorder()
        for path in self.servicer_functions:
            module, _, attr = path.replace(":", ".").rpartition(".")
            add = getattr(importlib.import_module(module), attr)
            add(_AnyServicer(), recorder)
        handlers = []
        for service, methods in recorder.methods.items():
            ours = {}
            for name, h in methods.items():
                if h.request_streaming:
                    continue  # client streaming is not supported
                wrap = grpc.unary_stream_rpc_method_handler if h.response_streaming else grpc.unary_unary_rpc_method_handler
                behaviour = self._stream(name) if h.response_streaming else self._unary(name)
                if self.metrics is not None:
                    behaviour = self._recorded(f"/{service}/{name}", behaviour, h.response_streaming)
                ours[name] = wrap(behaviour, request_deserializer=h.request_deserializer,
                                  response_serializer=h.response_serializer)
            handlers.append(grpc.method_handlers_generic_handler(service, ours))
        builtin = {
            "ListApplications": grpc.unary_unary_rpc_method_handler(self._list_applications),
            "Healthz": grpc.unary_unary_rpc_method_handler(self._healthz),
        }
        handlers.append(grpc.method_handlers_generic_handler(BUILTIN_SERVICE, builtin))
        return handlers

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Listen on ``host:port``; with ``reuse_port`` other proxies of this host share the
        port (grpcio's ``grpc.so_reuseport``, on by default on Linux, is then set explicitly)."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)] if reuse_port else None)
        server.add_generic_rpc_handlers(self._handlers())
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise OSError(f"gRPC port {port} on {host} is not available: {exc}") from None
        if not bound:
            raise OSError(f"gRPC port {port} on {host} is not available")
        await server.start()
        self.server, self.port = server, bound

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)

    # ---- built-in service (raw bytes, Ray's message layout) ----
    async def _list_applications(self, request: bytes, context: Any) -> bytes:
        return b"".join(_encode_string_field(name) for name in sorted(self.apps))

    async def _healthz(self, request: bytes, context: Any) -> bytes:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "This node is being drained.")
        return _encode_string_field("success")

    # ---- forwarding ----
    def _target(self, metadata: Dict[str, str]) -> Tuple[Optional[str], Optional[str]]:
        app = metadata.get("application")
        if app is None:
            if len(self.apps) == 1:
                app = next(iter(self.apps))
            else:
                return None, (f"Application metadata not set. Please ping {BUILTIN_SERVICE}/ListApplications for "
                              f"available applications: {sorted(self.apps)}")
        if app not in self.apps:
            return None, f"Application '{app}' not found. Available applications: {sorted(self.apps)}"
        return app, None

    def _prepare(self, name: str, context: Any) -> Tuple[Any, RequestContext, list]:
        pairs = [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]
        metadata = dict(pairs)
        app, error = self._target(metadata)
        if error:
            return None, error, pairs
        ctx = RequestContext(metadata.get("request_id") or new_request_id(), "", app,
                             metadata.get("multiplexed_model_id", ""))
        return self.runtime.router(app, self.apps[app]), ctx, pairs

    async def _apply_end(self, context: Any, state: Dict[str, Any], error: Optional[str]) -> None:
        if state.get("trailing_metadata"):
            context.set_trailing_metadata(tuple(state["trailing_metadata"]))
        if error:
            kind, _, message = error.partition(":")
            code = getattr(grpc.StatusCode, state.get("code") or kind, grpc.StatusCode.INTERNAL)
            await context.abort(code, state.get("details") or message)
        if state.get("code"):
            context.set_code(getattr(grpc.StatusCode, state["code"]))
        if state.get("details"):
            context.set_details(state["details"])

    async def _run(self, name: str, request: Any, context: Any, deliver: Any) -> Any:
        router, ctx, pairs = self._prepare(name, context)
        if router is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, ctx)
        context.set_trailing_metadata((("request_id", ctx.request_id),))
        result = None
        stream = router.stream(GRPC_METHOD, (name, request, pairs), {}, ctx, copy=False)
        try:
            async for item in stream:
                if item[0] == "msg":
                    await deliver(item[1])
                else:
                    _, result, state, error = item
                    await self._apply_end(context, state, error)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            await stream.aclose()
        return result

    def _recorded(self, route: str, behaviour: Any, streaming: bool) -> Any:
        """``behaviour`` counted in the gRPC request metrics (status from the call's context)."""
        metrics = self.metrics

        def finish(started: float, context: Any, failed: bool) -> None:
            code = context.code() if hasattr(context, "code") else None
            name = getattr(code, "name", None) or ("INTERNAL" if failed else "OK")
            app = dict((context.invocation_metadata() or ())).get("application", "")
            metrics.finished(started, route, route, app, name, name != "OK")

        if streaming:
            async def stream(request: Any, context: Any) -> Any:
                started, failed = metrics.started(), True
                try:
                    async for item in behaviour(request, context):
                        yield item
                    failed = False
                finally:
                    finish(started, context, failed)
            return stream

        async def unary(request: Any, context: Any) -> Any:
            started, failed = metrics.started(), True
            try:
                result = await behaviour(request, context)
                failed = False
                return result
            finally:
                finish(started, context, failed)
        return unary

    def _unary(self, name: str) -> Any:
        async def behaviour(request: Any, context: Any) -> Any:
            async def nowhere(_: Any) -> None:
                pass

            call = self._run(name, request, context, nowhere)
            if not self.request_timeout_s:
                return await call
            try:
                return await asyncio.wait_for(call, self.request_timeout_s)
            except asyncio.TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"timed out after {self.request_timeout_s}s")

        return behaviour

    def _stream(self, name: str) -> Any:
        async def behaviour(request: Any, context: Any) -> Any:
            queue: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)  # bounded: a slow reader pauses the stream
            end = object()

            async def produce() -> None:
                try:
                    run = self._run(name, request, context, queue.put)
                    if not self.request_timeout_s:
                        await run
                        return
                    try:
                        await asyncio.wait_for(run, self.request_timeout_s)
                    except asyncio.TimeoutError:
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                            f"timed out after {self.request_timeout_s}s")
                finally:
                    _put_last(queue, end)

            task = asyncio.ensure_future(produce())
            try:
                while True:
                    item = await queue.get()
                    if item is end:
                        break
                    yield item
                await task  # re-raise an abort from the producer
            finally:
                if not task.done():
                    task.cancel()

        return behaviour
