"""The Serve page: dserve's applications, deployments, replicas, proxies and live traffic,
on the Dask scheduler's dashboard HTTP server.

``/serve`` (HTML) and ``/serve/api/status`` (JSON). The controller adds these routes
when it starts (``install_serve_page``); listing this module in Dask's
``distributed.scheduler.http.routes`` config adds them when the scheduler starts
(Dask reads the module's ``routes``). See ``handlers`` (routes and auth) and ``view``
(the data).
"""
from __future__ import annotations

from .handlers import install_serve_page, routes, serve_page_url

__all__ = ["install_serve_page", "routes", "serve_page_url"]
