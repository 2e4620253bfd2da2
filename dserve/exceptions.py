"""Typed errors raised by dserve, with Ray Serve's names.

Callers of a deployment see these (or the user's own exception type, re-raised
with the remote traceback) instead of hangs or generic failures.
"""
from __future__ import annotations

__all__ = [
    "RayServeException",
    "DServeException",
    "BackPressureError",
    "RequestCancelledError",
    "DeploymentUnavailableError",
    "ActorDiedError",
    "ReplicaDiedError",
    "DeploymentFailedError",
    "RayServeTimeout",
]


class RayServeException(Exception):
    """Base class of every dserve error (Ray Serve's name)."""


DServeException = RayServeException


class BackPressureError(RayServeException):
    """A caller's queue for a deployment is full (``max_queued_requests``).

    Over HTTP this is answered with 503.
    """

    def __init__(self, *, num_queued_requests: int, max_queued_requests: int) -> None:
        self.num_queued_requests = num_queued_requests
        self.max_queued_requests = max_queued_requests
        super().__init__(
            "Request dropped due to backpressure "
            f"(num_queued_requests={num_queued_requests}, "
            f"max_queued_requests={max_queued_requests})."
        )

    def __reduce__(self):
        return _rebuild_backpressure, (self.num_queued_requests, self.max_queued_requests)


def _rebuild_backpressure(num_queued: int, max_queued: int) -> BackPressureError:
    return BackPressureError(num_queued_requests=num_queued, max_queued_requests=max_queued)


class RequestCancelledError(RayServeException):
    """The request was cancelled (``response.cancel()`` or a client disconnect)."""

    def __init__(self, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(f"Request {request_id} was cancelled." if request_id else "Request was cancelled.")

    def __reduce__(self):
        return RequestCancelledError, (self.request_id,)


class DeploymentUnavailableError(RayServeException):
    """The deployment does not exist (deleted, or never deployed)."""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        super().__init__(
            f"The deployment {deployment_id} is unavailable because it has been deleted "
            "or was never deployed."
        )

    def __reduce__(self):
        return DeploymentUnavailableError, (self.deployment_id,)


class ActorDiedError(RayServeException):
    """The replica executing a request died (its process or worker was lost)."""


ReplicaDiedError = ActorDiedError


class DeploymentFailedError(RayServeException):
    """An application could not be deployed; the message carries the traceback."""


class RayServeTimeout(RayServeException):
    """A control-plane operation did not finish in time."""
