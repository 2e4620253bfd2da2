"""Starting the REST admin API's server on the scheduler's event loop, with its token.

The token is the controller's ``rest_token`` option (``--dserve-rest-token``, Dask
config ``dserve.rest-token``, kept for compatibility), else ``DSERVE_REST_TOKEN``,
else the auth token (``auth.ensure_token``: generated on first start). With
``DSERVE_AUTH_MODE=disabled`` and no token the API is open; bound beyond loopback
that is logged as a warning.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from ..auth import ensure_token
from ..uvicorn_server import EmbeddedServer, config
from .app import create_app

__all__ = ["start_rest_server", "rest_token", "DEFAULT_REST_HOST"]

logger = logging.getLogger("dserve.rest")

DEFAULT_REST_HOST = "127.0.0.1"


def rest_token(options: Dict[str, Any]) -> Optional[str]:
    """The bearer token the REST API requires (``None``: auth disabled)."""
    return options.get("rest_token") or os.environ.get("DSERVE_REST_TOKEN") or ensure_token()


async def start_rest_server(controller: Any, options: Dict[str, Any], default_port: int,
                            token: Optional[str]) -> Optional[EmbeddedServer]:
    """Serve the REST API for ``controller``, requiring ``token`` (``rest_token``); ``None``
    when disabled or the port is busy (logged: the scheduler keeps running without it)."""
    port = options.get("rest_port", default_port)
    if port is None or int(port) < 0:
        return None
    host = options.get("rest_host", DEFAULT_REST_HOST)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("dserve: the REST admin API on %s:%s has authentication disabled (DSERVE_AUTH_MODE=disabled): "
                       "anyone who can reach it can deploy code on the cluster", host, port)
    server = EmbeddedServer(config(create_app(controller, token)))
    try:
        await server.start_serving(host, int(port))
    except OSError as exc:
        logger.warning("dserve REST API not started on %s:%s: %s", host, port, exc)
        return None
    logger.info("dserve REST API on http://%s:%s", host, server.port)
    return server
