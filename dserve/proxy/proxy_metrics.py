"""The proxies' request metrics (Ray Serve's names), recorded around the proxy app.

``HTTPMetrics`` wraps the HTTP proxy's ASGI app: per request it counts
``serve_num_http_requests`` (route, method, application, status_code), errors
(status >= 400) in ``serve_num_http_error_requests`` (route, error_code, method,
application), observes ``serve_http_request_latency_ms`` and keeps
``serve_num_ongoing_http_requests`` (node_id, node_ip_address). ``GRPCMetrics`` is
the same for the gRPC proxy, fed by it. A request whose client went away before a
response started is counted with status 499.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

from ..metrics import table
from ..types import ASGIApp, Message, Receive, Scope, Send
from .http_proxy import strip_root_path

__all__ = ["ProtocolMetrics", "HTTPMetrics"]

Matcher = Callable[[str], Optional[Tuple[str, str, str]]]


class ProtocolMetrics:
    """The four request metrics of one protocol ("http" or "grpc") in this process."""

    def __init__(self, protocol: str, node_id: str, node_ip: str) -> None:
        self.requests = table("counter", f"serve_num_{protocol}_requests",
                              f"The number of {protocol.upper()} requests processed.",
                              ("route", "method", "application", "status_code"))
        self.errors = table("counter", f"serve_num_{protocol}_error_requests",
                            f"The number of non-OK {protocol.upper()} responses.",
                            ("route", "error_code", "method", "application"))
        self.latency = table("histogram", f"serve_{protocol}_request_latency_ms",
                             f"The end-to-end latency of {protocol.upper()} requests (ms).",
                             ("method", "route", "application", "status_code"))
        self.ongoing = table("gauge", f"serve_num_ongoing_{protocol}_requests",
                             f"The number of ongoing {protocol.upper()} requests in this proxy.",
                             ("node_id", "node_ip_address"))
        self.node = (node_id, node_ip)
        self.ongoing.add(self.node, 0)

    def started(self) -> float:
        self.ongoing.add(self.node, 1)
        return time.perf_counter()

    def finished(self, started: float, route: str, method: str, application: str, status: str, error: bool) -> None:
        self.ongoing.add(self.node, -1)
        self.requests.inc((route, method, application, status))
        self.latency.observe((method, route, application, status), (time.perf_counter() - started) * 1000.0)
        if error:
            self.errors.inc((route, status, method, application))


class HTTPMetrics:
    """ASGI wrapper recording every HTTP request the proxy answers."""

    def __init__(self, app: ASGIApp, match: Matcher, root_path: str, node_id: str, node_ip: str) -> None:
        self.app = app
        self.match = match
        self.root_path = root_path.rstrip("/")
        self.metrics = ProtocolMetrics("http", node_id, node_ip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = self.metrics.started()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            path = scope["path"]
            path = strip_root_path(path, self.root_path)
            route = self.match(path) if not path.startswith("/-/") else None
            prefix, application = (route[0], route[1]) if route is not None else (path if path.startswith("/-/") else "", "")
            code = status or 499
            self.metrics.finished(started, prefix, scope["method"], application, str(code), code >= 400)
