"""The Serve page's tornado handlers, its access rule, and adding them to a running scheduler.

Read-only. Where the REST API needs the auth token, so does the page: an
``Authorization: Bearer <token>`` header, or — for a browser — ``/serve?token=<token>``
once, which sets an HttpOnly, SameSite=Strict cookie (a keyed hash of the token, never
the token itself) and redirects to ``/serve``, so the token leaves the address bar. The
token never appears in the page, and requests are logged without their query string.

``routes`` follows Dask's convention for ``distributed.scheduler.http.routes`` modules;
``install_serve_page`` adds the same routes to a scheduler that is already serving
(tornado's ``Application.add_handlers``), under the dashboard's prefix.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import weakref
from typing import Any, List, Optional

from tornado import web

from ..auth import HOW_TO_SUPPLY, AuthError, auth_enabled, token_matches
from ..config import CONTROLLER_NAME, SERVE_PAGE_PATH, SERVE_PAGE_REFRESH_S
from .view import page_data

__all__ = ["routes", "install_serve_page", "serve_page_url", "COOKIE_NAME", "cookie_value"]

logger = logging.getLogger("dserve.dashboard")

COOKIE_NAME = "dserve_serve_page"
_TEMPLATE = os.path.join(os.path.dirname(__file__), "serve.html")
_page_source: List[str] = []  # the template, read once


def cookie_value(token: str) -> str:
    """What the page's cookie holds: a keyed hash of the token (useless as a bearer token)."""
    return hmac.new(token.encode(), b"dserve serve page", hashlib.sha256).hexdigest()


class _Base(web.RequestHandler):
    """Finds the controller, checks access, never logs a query string (it may carry a token)."""

    def initialize(self, dask_server: Any = None) -> None:
        self.server = dask_server

    def _request_summary(self) -> str:  # tornado's access log line: path only
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:  # tornado's would log the full URI
        if isinstance(value, web.HTTPError):
            return
        logger.error("dserve Serve page: %s failed", self._request_summary(), exc_info=(typ, value, tb))

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    async def controller(self) -> Any:
        """The booted controller, or ``None`` after answering 503 why not."""
        controller = self.server.plugins.get(CONTROLLER_NAME) if self.server is not None else None
        if controller is None:
            self.refuse(503, "dserve is not running on this scheduler")
            return None
        try:
            await asyncio.wait_for(controller.ready(), 10)
        except Exception as exc:  # noqa: BLE001 - booting, or the boot failed: say so
            self.refuse(503, f"the dserve controller is not ready: {exc!r}")
            return None
        return controller

    def token(self, controller: Any) -> Optional[str]:
        """The token required, ``None`` when auth is disabled; raises ``AuthError`` when auth
        is on but the controller has no token (never falls open)."""
        token = controller.auth_token
        if token is None and auth_enabled():
            raise AuthError("the auth token is not available (see the scheduler's log)")
        return token

    def authorized(self, token: Optional[str]) -> bool:
        if token is None:
            return True
        header = self.request.headers.get("Authorization", "")
        if header and token_matches(header.encode(), token):
            return True
        cookie = self.get_cookie(COOKIE_NAME, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())

    def refuse(self, code: int, reason: str) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": reason}))

    async def checked(self) -> Any:
        """The controller when this request may see the page, else ``None`` (answered)."""
        controller = await self.controller()
        if controller is None:
            return None
        try:
            token = self.token(controller)
        except AuthError as exc:
            self.refuse(503, str(exc))
            return None
        if not self.authorized(token):
            self.on_unauthorized()
            return None
        return controller

    def on_unauthorized(self) -> None:
        self.refuse(401, f"missing or wrong token: {HOW_TO_SUPPLY}")


class ServePage(_Base):
    """``/serve``: the page (its script fetches ``/serve/api/status``)."""

    async def get(self) -> None:
        given = self.get_query_argument("token", None)
        if given is not None:
            await self._log_in(given)
            return
        if await self.checked() is None:
            return
        if not _page_source:
            with open(_TEMPLATE, encoding="utf-8") as f:
                _page_source.append(f.read())
        nonce = secrets.token_urlsafe(16)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy",
                        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                        "connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'")
        api = self.request.path.rstrip("/") + "/api/status"
        page = (_page_source[0].replace("{{nonce}}", nonce).replace("{{api}}", api)
                .replace("{{refresh_ms}}", str(int(SERVE_PAGE_REFRESH_S * 1000))))
        self.finish(page)

    async def _log_in(self, given: str) -> None:
        """``?token=``: set the cookie and come back without the token in the URL."""
        controller = await self.controller()
        if controller is None:
            return
        try:
            token = self.token(controller)
        except AuthError as exc:
            self.refuse(503, str(exc))
            return
        if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
            self.on_unauthorized()
            return
        if token is not None:
            self.set_cookie(COOKIE_NAME, cookie_value(token), path=self.request.path, httponly=True,
                            samesite="Strict", secure=self.request.protocol == "https")
        self.redirect(self.request.path)

    def on_unauthorized(self) -> None:
        self.set_status(401)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish("<!doctype html><title>dserve: token needed</title><h1>dserve's Serve page needs the auth "
                    "token</h1><p>Open <code>/serve?token=&lt;token&gt;</code> once (a cookie keeps you signed "
                    "in), or send <code>Authorization: Bearer &lt;token&gt;</code>. The token is in "
                    "<code>DSERVE_AUTH_TOKEN</code>, the file <code>DSERVE_AUTH_TOKEN_PATH</code> names, or "
                    "<code>~/.dserve/auth_token</code> where the cluster was started.</p>")


class ServeStatusAPI(_Base):
    """``/serve/api/status``: the page's data as JSON (see ``view.page_data``)."""

    async def get(self) -> None:
        controller = await self.checked()
        if controller is None:
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(await page_data(controller)))


routes: List[tuple] = [
    (SERVE_PAGE_PATH, ServePage, {}),
    (SERVE_PAGE_PATH + "/api/status", ServeStatusAPI, {}),
]

_installed: "weakref.WeakSet[Any]" = weakref.WeakSet()  # dashboard applications given the routes


def _prefix(application: Any) -> str:
    """The dashboard's URL prefix (``dask scheduler --dashboard-prefix``), read off the route of
    Dask's own ``/health`` page (the scheduler does not keep the prefix)."""
    from distributed.http.health import HealthHandler

    for rule in getattr(application.wildcard_router, "rules", []):
        if rule.target is HealthHandler:
            pattern = rule.matcher.regex.pattern.rstrip("$")
            return pattern[: -len("health")] or "/"
    return "/"


def install_serve_page(scheduler: Any) -> bool:
    """Serve the page on ``scheduler``'s dashboard server (once; no-op when Dask's route config
    already lists ``dserve.dashboard``); ``False`` when the scheduler has no HTTP server."""
    from distributed.http.utils import get_handlers

    application = getattr(scheduler, "http_application", None)
    if application is None:
        return False
    listed = any(rule.target is ServePage for rule in getattr(application.wildcard_router, "rules", []))
    if application not in _installed and not listed:
        application.add_handlers(r".*$", get_handlers(scheduler, [__name__], prefix=_prefix(application)))
        _installed.add(application)
    _link_from_dask_navigation(scheduler)
    return True


def _link_from_dask_navigation(scheduler: Any) -> None:
    """Add "Serve" to the navigation bar of Dask's Bokeh pages (status, workers, ...). Dask has
    no hook for it: its pages render a per-scheduler ``template_variables`` dict (memoized)
    whose ``pages`` list becomes the links, so the page is appended there. Without Bokeh
    there are no such pages and nothing to link from."""
    try:
        from distributed.dashboard.scheduler import template_variables
    except ImportError:  # no bokeh: no Bokeh pages
        return
    try:
        pages = template_variables(scheduler)["pages"]
    except Exception as exc:  # noqa: BLE001 - a different Dask layout: the page still works, unlinked
        logger.debug("no link to the Serve page from Dask's navigation: %r", exc)
        return
    if SERVE_PAGE_PATH not in pages:
        pages.append(SERVE_PAGE_PATH)


def serve_page_url(scheduler: Any) -> Optional[str]:
    """Where the page is (the scheduler's host when its dashboard listens on every address)."""
    from distributed.comm import get_address_host

    server, application = getattr(scheduler, "http_server", None), getattr(scheduler, "http_application", None)
    if server is None or application is None or not getattr(server, "port", None):
        return None
    host = server.address if server.address not in ("", "0.0.0.0", "::") else get_address_host(scheduler.address)
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if getattr(server, "ssl_options", None) else "http"  # dashboard TLS (Dask config)
    return f"{scheme}://{host}:{server.port}{_prefix(application)}{SERVE_PAGE_PATH}"
