"""``RayServegRPCContext``: the gRPC context a deployment method can take.

A method with a ``grpc_context`` parameter receives one: it carries the
client's metadata in, and the status code, details and trailing metadata the
method sets back out to the proxy, which applies them to the real call.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import grpc

__all__ = ["RayServegRPCContext", "gRPCContext"]


class RayServegRPCContext:
    """A serializable stand-in for ``grpc.ServicerContext`` inside replicas."""

    def __init__(self, invocation_metadata: Optional[List[Tuple[str, str]]] = None, peer: str = "") -> None:
        self._invocation_metadata = list(invocation_metadata or [])
        self._peer = peer
        self._code: Optional[grpc.StatusCode] = None
        self._details: Optional[str] = None
        self._trailing_metadata: List[Tuple[str, str]] = []

    def invocation_metadata(self) -> List[Tuple[str, str]]:
        return self._invocation_metadata

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> Optional[grpc.StatusCode]:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> Optional[str]:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: List[Tuple[str, str]]) -> None:
        self._trailing_metadata = list(trailing_metadata)

    def trailing_metadata(self) -> List[Tuple[str, str]]:
        return self._trailing_metadata

    def state(self) -> Dict[str, Any]:
        """What travels back to the proxy."""
        return {"code": self._code.name if self._code is not None else None, "details": self._details,
                "trailing_metadata": self._trailing_metadata}


gRPCContext = RayServegRPCContext
