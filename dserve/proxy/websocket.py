"""WebSocket requests through the proxy (to a FastAPI ingress)."""
from __future__ import annotations

from typing import Any, Tuple


async def forward_websocket(proxy: Any, scope: dict, receive: Any, send: Any, route: Tuple[str, str, str]) -> None:
    """Not supported yet: refuse the handshake cleanly."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1011})
