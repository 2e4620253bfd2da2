"""Serve one gRPC call inside a replica.

The proxy sends the method name, the deserialized request message and the
client's metadata; the deployment method of that name runs (given a
``RayServegRPCContext`` if it has a ``grpc_context`` parameter), and what
comes back is ``("msg", response)`` items for a streaming method, then a last
``("end", context state, error)``; a unary call travels as one last item.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, AsyncIterator, Callable, List, Tuple

from ..grpc_util import RayServegRPCContext
from ..wire import LastItem

__all__ = ["serve_grpc"]

logger = logging.getLogger("dserve.replica")


def _takes_context(fn: Callable) -> bool:
    try:
        return "grpc_context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


async def serve_grpc(replica: Any, method: str, request: Any, metadata: List[Tuple[str, str]]) -> AsyncIterator[Any]:
    context = RayServegRPCContext(metadata)
    try:
        fn, kind = replica._method(method)
    except AttributeError as exc:
        yield LastItem(("end", None, context.state(), f"UNIMPLEMENTED:{exc}"))
        return
    call = functools.partial(fn, request, grpc_context=context) if _takes_context(fn) else functools.partial(fn, request)
    try:
        if kind == "asyncgen":
            async for item in call():
                yield ("msg", item)
            yield LastItem(("end", None, context.state(), None))
        elif kind == "gen":
            async for item in replica.iterate_sync(call):
                yield ("msg", item)
            yield LastItem(("end", None, context.state(), None))
        else:
            result = await call() if kind == "async" else await replica._run_sync(call)
            yield LastItem(("end", result, context.state(), None))
    except Exception as exc:  # noqa: BLE001 - the proxy turns it into a status
        logger.warning("gRPC method %s failed", method, exc_info=True)
        yield LastItem(("end", None, context.state(), f"INTERNAL:{type(exc).__name__}: {exc}"))
