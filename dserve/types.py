"""Names for the shapes that cross dserve's boundaries.

ASGI (as Starlette names them) for the proxies and adapters, and the records the
data plane and the long poll carry (see ``wire`` for the keys).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, TypedDict

__all__ = [
    "Scope", "Message", "Receive", "Send", "ASGIApp",
    "WireMessage", "WireContext", "ReplicaEntry", "ReplicaSetSnapshot", "RouteTable",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WireMessage = Dict[str, Any]
"""One data-plane message (keys in ``wire``)."""


class WireContext(TypedDict, total=False):
    """``RequestContext`` on the wire."""

    rid: str
    route: str
    app: str
    mm: str


class ReplicaEntry(TypedDict):
    """One replica in a replica-set snapshot."""

    id: str
    address: str
    key: str
    max_ongoing: int
    models: List[str]


class ReplicaSetSnapshot(TypedDict, total=False):
    """What routers receive by long poll for one deployment."""

    version: int
    exists: bool
    max_queued: int
    replicas: List[ReplicaEntry]


class RouteTable(TypedDict, total=False):
    """What proxies receive by long poll under ``wire.ROUTES_KEY``."""

    version: int
    routes: Dict[str, Dict[str, str]]  # route prefix -> {"app": name, "ingress": deployment}
    apps: Dict[str, str]  # application -> ingress deployment
    logging: Dict[str, Any]  # the proxies' LoggingConfig (serve.start / the config's top level)
    access_log_off: List[str]  # applications whose ingress turned the access log off
