"""The HTTP proxy: routes each request to an application's ingress deployment.

Longest ``route_prefix`` match across applications; ``/-/routes`` and
``/-/healthz`` built in. The request goes to the ingress replica as its ASGI
scope and body over the data plane's streaming path, and the replica's ASGI
messages come back as they are produced (so streamed responses are not
buffered). Overload answers 503, ``request_timeout_s`` 408, a replica lost
mid-request 500; a client disconnect cancels the request in the replica. The
size and time limits on receiving a request are the protocol's
(``uvicorn_server.GuardedHttpToolsProtocol``), applied before the request gets
here. ``/-/healthz`` answers 503 until the first route table has arrived, while
draining, and when the proxy has lost its connection to dserve.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator, List, Optional, Tuple

from ..config import DISCONNECT_WATCH_AFTER_S
from ..timers import FixedDelayTimers
from ..context import RequestContext, new_request_id
from ..exceptions import BackPressureError, DeploymentUnavailableError
from ..types import Receive, RouteTable, Scope, Send
from ..routing.started_call import open_stream
from ..routing.transport import Undelivered
from ..wire import HTTP_METHOD
from .websocket import forward_websocket

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["HTTPProxy", "MATCHED_ROUTE", "OPENED", "strip_root_path"]

logger = logging.getLogger("dserve.proxy")

_SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
               "headers", "client", "server", "subprotocols")


async def _send_plain(send: Send, status: int, text: str, headers: Optional[List[Tuple[bytes, bytes]]] = None) -> None:
    body = text.encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        + (headers or []),
    })
    await send({"type": "http.response.body", "body": body})


def strip_root_path(path: str, root_path: str) -> str:
    """``path`` below ``root_path`` (``/base`` strips ``/base/x``, never ``/basement``)."""
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path):] or "/"
    return path


MATCHED_ROUTE = "dserve.route"  # scope key: the (prefix, application, ingress) a request was routed to
OPENED = "dserve.opened"  # scope key: (reply stream, context) of a request begun by ``proxy.direct``


class HTTPProxy:
    """ASGI app of one proxy; its route table follows the controller's."""

    def __init__(self, runtime: "Runtime", root_path: str = "", request_timeout_s: Optional[float] = None) -> None:
        self.runtime = runtime
        self.root_path = root_path.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.routes: List[Tuple[str, str, str]] = []  # (prefix, app, ingress), longest prefix first
        self.routes_populated = False
        self.draining = False
        self.access_log = True  # the proxies' LoggingConfig.enable_access_log ...
        self.access_log_off: frozenset = frozenset()  # ... and the applications whose ingress turned it off
        self.disconnect_watches = FixedDelayTimers(DISCONNECT_WATCH_AFTER_S)

    def readiness(self) -> Optional[str]:
        """Why this proxy should not get traffic now (None: ready)."""
        if self.draining:
            return "This node is being drained."
        if self.runtime.closed:
            return "This proxy has lost its connection to dserve."
        if not self.routes_populated:
            return "Route table is not populated yet."
        return None

    def access_log_enabled(self, application: str) -> bool:
        return self.access_log and application not in self.access_log_off

    def update_routes(self, snapshot: RouteTable) -> None:
        self.routes_populated = True
        self.access_log = (snapshot.get("logging") or {}).get("enable_access_log", True)
        self.access_log_off = frozenset(snapshot.get("access_log_off", ()))
        table = snapshot.get("routes", {})
        self.routes = sorted(
            ((prefix, v["app"], v["ingress"]) for prefix, v in table.items()),
            key=lambda r: len(r[0]), reverse=True,
        )

    def match(self, path: str) -> Optional[Tuple[str, str, str]]:
        for route in self.routes:
            prefix = route[0]
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return
        path = scope["path"]
        path = strip_root_path(path, self.root_path)
        if kind == "http":
            if path == "/-/routes":
                body = json.dumps({p: app for p, app, _ in self.routes}).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            if path == "/-/healthz":
                reason = self.readiness()
                await _send_plain(send, 503 if reason else 200, reason or "success")
                return
        route = scope.get(MATCHED_ROUTE) or self.match(path)  # (matched already if ``proxy.direct`` handed it on)
        scope[MATCHED_ROUTE] = route  # for the metrics and access log around this app (never forwarded)
        if route is None:
            if kind == "http" and not self.routes_populated:  # just started: the route table is on its way
                await _send_plain(send, 503, "This proxy is starting; its route table has not arrived yet.")
            elif kind == "http":
                await _send_plain(send, 404, f"Path '{path}' not found. Ping http://.../-/routes for available routes.")
            else:
                await send({"type": "websocket.close", "code": 1000})
            return
        if kind == "http":
            await self._forward_http(scope, receive, send, route)
        else:
            await forward_websocket(self, scope, receive, send, route)

    def request_context(self, scope: Scope, route: Tuple[str, str, str]) -> RequestContext:
        request_id = model_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"serve_multiplexed_model_id":
                model_id = value.decode("latin-1")
        return RequestContext(request_id or new_request_id(), route[0], route[1], model_id)

    def forwarded_scope(self, scope: Scope, route: Tuple[str, str, str]) -> Scope:
        out = {k: scope[k] for k in _SCOPE_KEYS if k in scope}
        prefix = route[0]
        out["root_path"] = self.root_path + (prefix if prefix != "/" else "")  # Starlette strips it
        return out

    async def _forward_http(self, scope: Scope, receive: Receive, send: Send, route: Tuple[str, str, str]) -> None:
        opened, ctx = scope.pop(OPENED, (None, None))  # a reply stream ``proxy.direct`` began reading
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if opened is not None:
                    opened.close()
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        if ctx is None:
            ctx = self.request_context(scope, route)
        rid_header = (b"x-request-id", ctx.request_id.encode())
        state = {"started": False, "disconnected": False}
        task = asyncio.current_task()

        def on_receive(watch: asyncio.Future) -> None:
            if not watch.cancelled() and watch.exception() is None and watch.result()["type"] == "http.disconnect":
                state["disconnected"] = True
                task.cancel()

        watchers: List[asyncio.Future] = []

        def watch_disconnect() -> None:  # only requests still running after a moment pay for this
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(on_receive)
            watchers.append(watcher)

        timer = self.disconnect_watches.call_later(watch_disconnect)
        try:
            forward = self._relay(scope, body, send, route, ctx, rid_header, state, opened)
            if self.request_timeout_s:
                await asyncio.wait_for(forward, self.request_timeout_s)
            else:
                await forward
        except asyncio.TimeoutError:
            if not state["started"]:
                await _send_plain(send, 408, f"Request {ctx.request_id} timed out after {self.request_timeout_s}s.", [rid_header])
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            logger.info("client disconnected; request %s cancelled", ctx.request_id)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            if not state["started"]:
                await _send_plain(send, 503, str(exc), [rid_header])
        except Exception as exc:  # noqa: BLE001 - never leave the client hanging
            if not state["started"]:
                await _send_plain(send, 500, f"{type(exc).__name__}: {exc}", [rid_header])
            else:
                logger.warning("request %s failed after its response started: %r", ctx.request_id, exc)
        finally:
            FixedDelayTimers.cancel(timer)
            for watcher in watchers:
                watcher.cancel()

    async def _relay(self, scope: Scope, body: bytes, send: Send, route: Tuple[str, str, str],
                     ctx: RequestContext, rid_header: tuple, state: dict, opened: Any = None) -> None:
        router = self.runtime.router(route[1], route[2])
        request = (self.forwarded_scope(scope, route), body)
        stream = opened or open_stream(router, HTTP_METHOD, request, ctx)  # no task when a replica is free
        if stream is None:
            stream = router.stream(HTTP_METHOD, request, {}, ctx, copy=False)
        try:
            try:
                await _send_batches(stream, send, rid_header, state)
            except Undelivered:  # a started stream whose replica was gone: the router picks another
                await stream.aclose()
                stream = router.stream(HTTP_METHOD, request, {}, ctx, copy=False)
                await _send_batches(stream, send, rid_header, state)
        finally:
            await stream.aclose()


async def _send_batches(stream: AsyncIterator[list], send: Send, rid_header: tuple, state: dict) -> None:
    """Send the replica's ASGI messages on, adding the request id to the response's headers."""
    async for batch in stream:
        for message in batch:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), rid_header]
                state["started"] = True
            await send(message)
