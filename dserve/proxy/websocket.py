"""WebSocket requests through the proxy, to an ASGI (e.g. FastAPI) ingress.

The session is a bidirectional stream on the data plane: client events go to
the replica as they arrive, the app's messages come back as it sends them.
Either side closing ends both.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Tuple

from ..exceptions import BackPressureError, DeploymentUnavailableError
from ..types import Receive, Scope, Send

if TYPE_CHECKING:
    from .http_proxy import HTTPProxy

__all__ = ["forward_websocket"]

logger = logging.getLogger("dserve.proxy")


async def forward_websocket(proxy: "HTTPProxy", scope: Scope, receive: Receive, send: Send,
                            route: Tuple[str, str, str]) -> None:
    """Relay one WebSocket session between the client and a replica of ``route``'s ingress."""
    try:
        ctx = proxy.request_context(scope, route)
    except Exception:  # noqa: BLE001 - headers over the limit
        await receive()
        await send({"type": "websocket.close", "code": 1009})
        return
    router = proxy.runtime.router(route[1], route[2])
    try:
        session = await router.websocket(proxy.forwarded_scope(scope, route), ctx)
    except (BackPressureError, DeploymentUnavailableError):
        await receive()  # the websocket.connect event
        await send({"type": "websocket.close", "code": 1013})  # try again later
        return

    async def inbound() -> None:
        while True:
            event = await receive()
            session.push(event)
            if event["type"] == "websocket.disconnect":
                return

    pump = asyncio.ensure_future(inbound())
    try:
        async for message in session:
            await send(message)
            if message["type"] == "websocket.close":
                break
    except Exception as exc:  # noqa: BLE001 - close the socket, keep serving
        logger.warning("WebSocket session %s failed: %r", ctx.request_id, exc)
        try:
            await send({"type": "websocket.close", "code": 1011})
        except Exception as close_exc:  # noqa: BLE001 - the client may be gone already
            logger.debug("WebSocket session %s: close failed: %r", ctx.request_id, close_exc)
    finally:
        pump.cancel()
        await session.close()
