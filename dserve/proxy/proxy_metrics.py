"""The proxies' request metrics (Ray Serve's names) and access log, recorded around the proxy app.

``HTTPMetrics`` wraps the HTTP proxy's ASGI app: per request it counts
``serve_num_http_requests`` (route, method, application, status_code), errors
(status >= 400) in ``serve_num_http_error_requests`` (route, error_code, method,
application), observes ``serve_http_request_latency_ms`` and keeps
``serve_num_ongoing_http_requests`` (node_id, node_ip_address). ``GRPCMetrics`` is
the same for the gRPC proxy, fed by it. A request whose client went away before a
response started is counted with status 499.

The access log is one ``dserve.access`` record per HTTP request (``GET / 200
1.2ms``, with its request id, application and route), as Ray Serve's; kept in the
proxy's log (``dserve logs``, ``logs_dir``) but not sent to the terminal. Whether it
is on is asked per request (``access_log(application)``), so it follows the
route table.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from ..logs.sinks import AccessLine, fast_access_sink
from ..metrics import existing_table, table
from ..types import ASGIApp, Message, Receive, Scope, Send
from .http_proxy import MATCHED_ROUTE, strip_root_path

__all__ = ["ProtocolMetrics", "HTTPMetrics", "access_logger", "forget_application", "STARTED"]

STARTED = "dserve.started"  # scope key: when a request handed on by ``proxy.direct`` began

access_logger = logging.getLogger("dserve.access")
access_logger.setLevel(logging.INFO)  # on unless the proxy's log_level is above INFO


def log_access(method: str, route: str, status: int, latency_ms: float, request_id: str, application: str,
               prefix: str) -> None:
    """One access line: straight into the proxy's ring when it can (a tuple, formatted when
    read), else a log record (a JSON or file-backed proxy log)."""
    sink = fast_access_sink()
    if sink is not None:
        now = time.time()
        sink.ring.append(now, application, "", AccessLine(now, method, route, status, latency_ms, request_id))
        return
    record = access_logger.makeRecord(access_logger.name, logging.INFO, __file__, 0, "%s %s %s %.1fms",
                                      (method, route, status, latency_ms), None, extra={
                                          "request_id": request_id, "application": application, "route": prefix,
                                          "log_to_stderr": False})
    access_logger.handle(record)


def _request_id(headers: list) -> str:
    for name, value in reversed(headers):  # the proxy appends it last
        if name == b"x-request-id":
            return value.decode("latin-1")
    return ""


def forget_application(application: str) -> None:
    """An application left the route table (deleted): drop its request series in this
    process's proxy metrics, so they hold only the applications that exist."""
    for protocol in ("http", "grpc"):
        for name in (f"serve_num_{protocol}_requests", f"serve_num_{protocol}_error_requests",
                     f"serve_{protocol}_request_latency_ms"):
            found = existing_table(name)
            if found is not None:
                found.forget({"application": application})


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

    def finished(self, started: float, route: str, method: str, application: str, status: str, error: bool,
                 latency_ms: Optional[float] = None) -> None:
        self.ongoing.add(self.node, -1)
        self.requests.inc((route, method, application, status))
        if latency_ms is None:
            latency_ms = (time.perf_counter() - started) * 1000.0
        self.latency.observe((method, route, application, status), latency_ms)
        if error:
            self.errors.inc((route, status, method, application))


class HTTPMetrics:
    """ASGI wrapper recording every HTTP request the proxy answers: metrics (unless off)
    and the access log (when ``access_log(application)`` says so)."""

    def __init__(self, app: ASGIApp, root_path: str, node_id: str, node_ip: str,
                 record_metrics: bool = True, access_log: Callable[[str], bool] = lambda app: False) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")
        self.metrics = ProtocolMetrics("http", node_id, node_ip) if record_metrics else None
        self.access_log = access_log

    def begin(self) -> float:
        """A request starts: counted as ongoing; its start time."""
        return self.metrics.started() if self.metrics is not None else time.perf_counter()

    def end(self, scope: Scope, started: float, status: int, headers: list) -> None:
        """A request is answered (``status`` 0: its client left first) with ``headers``."""
        route = scope.get(MATCHED_ROUTE)  # set by the proxy: no second route match here
        if route is not None:
            prefix, application, path = route[0], route[1], route[0]
        else:  # a built-in path (/-/routes, /-/healthz) or no route
            path = strip_root_path(scope["path"], self.root_path)
            prefix, application = (path if path.startswith("/-/") else ""), ""
        code = status or 499
        latency_ms = (time.perf_counter() - started) * 1000.0
        if self.metrics is not None:
            self.metrics.finished(started, prefix, scope["method"], application, str(code), code >= 400, latency_ms)
        if self.access_log(application) and access_logger.isEnabledFor(logging.INFO):
            log_access(scope["method"], prefix or path, code, latency_ms, _request_id(headers), application, prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        headers: list = []

        async def recording_send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", headers)
            await send(message)

        started = scope.pop(STARTED, None)  # begun already by ``proxy.direct``, which handed it on
        if started is None:
            started = self.begin()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.end(scope, started, status, headers)
