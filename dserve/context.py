"""Runtime context: which replica this code runs in, and which request it serves.

``get_replica_context()`` works inside a replica; the request context (request
id, route, application, multiplexed model id) travels with every call and is
held in a ``contextvars.ContextVar`` so concurrent requests do not mix.
"""
from __future__ import annotations

import contextvars
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from .exceptions import RayServeException
from .status_schema import ReplicaRank

__all__ = [
    "ReplicaContext",
    "RequestContext",
    "get_replica_context",
    "get_request_context",
    "new_request_id",
]


@dataclass
class ReplicaContext:
    """Stores runtime context info for replicas (Ray Serve's fields).

    ``rank`` is a ``ReplicaRank`` (``.rank`` 0..N-1 within the deployment, ``.node_rank``,
    ``.local_rank``); ``world_size`` is the deployment's target replica count when the
    replica started."""

    app_name: str
    deployment: str
    replica_id: str
    servable_object: Any = None
    rank: ReplicaRank = field(default_factory=ReplicaRank)
    world_size: int = 1

    @property
    def replica_tag(self) -> str:
        return self.replica_id


@dataclass
class RequestContext:
    """Per-request values visible to user code."""

    request_id: str = ""
    route: str = ""
    app_name: str = ""
    multiplexed_model_id: str = ""
    extra: dict = field(default_factory=dict)

    def to_wire(self) -> dict:
        return {"rid": self.request_id, "route": self.route, "app": self.app_name, "mm": self.multiplexed_model_id}

    @classmethod
    def from_wire(cls, data: Optional[dict]) -> "RequestContext":
        if not data:
            return cls()
        return cls(data.get("rid", ""), data.get("route", ""), data.get("app", ""), data.get("mm", ""))


_request_context: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "dserve_request_context", default=RequestContext()
)


# a worker process may host several replicas, so the replica is per context too
_current_replica: contextvars.ContextVar[Optional[ReplicaContext]] = contextvars.ContextVar(
    "dserve_replica_context", default=None
)


def restore_context(tokens: tuple) -> None:
    """Undo ``(_current_replica.set(...), _request_context.set(...))``; in another context
    (a generator closed from elsewhere) there is nothing to undo."""
    replica_token, request_token = tokens
    try:
        _request_context.reset(request_token)
        _current_replica.reset(replica_token)
    except ValueError:
        pass


def get_replica_context() -> ReplicaContext:
    """Return the context of the replica this code runs in.

    Raises ``RayServeException`` outside a replica, as Ray Serve does.
    """
    ctx = _current_replica.get()
    if ctx is None:
        raise RayServeException(
            "`serve.get_replica_context()` may only be called from within a dserve deployment."
        )
    return ctx


def get_request_context() -> RequestContext:
    """The context of the request being served (empty outside a request)."""
    return _request_context.get()


_random_bits = random.getrandbits


def new_request_id() -> str:
    """A random 128-bit request id (no syscall: ids need not be secret)."""
    return "%032x" % _random_bits(128)
