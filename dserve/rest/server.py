"""Starting the REST admin API's server on the scheduler's event loop."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from ..uvicorn_server import EmbeddedServer, config
from .app import create_app

__all__ = ["start_rest_server", "DEFAULT_REST_HOST"]

logger = logging.getLogger("dserve.rest")

DEFAULT_REST_HOST = "127.0.0.1"


async def start_rest_server(controller: Any, options: Dict[str, Any], default_port: int) -> Optional[EmbeddedServer]:
    """Serve the REST API for ``controller``; ``None`` when disabled or the port is busy
    (logged: the scheduler keeps running without it)."""
    port = options.get("rest_port", default_port)
    if port is None or int(port) < 0:
        return None
    host = options.get("rest_host", DEFAULT_REST_HOST)
    token = options.get("rest_token") or os.environ.get("DSERVE_REST_TOKEN")
    server = EmbeddedServer(config(create_app(controller, token)))
    try:
        await server.start_serving(host, int(port))
    except OSError as exc:
        logger.warning("dserve REST API not started on %s:%s: %s", host, port, exc)
        return None
    logger.info("dserve REST API on http://%s:%s", host, server.port)
    return server
