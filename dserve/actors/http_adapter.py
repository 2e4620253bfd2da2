"""Serve one HTTP request inside a replica, producing ASGI messages.

The proxy forwards the ASGI scope and the request body; this module either
runs the deployment's ASGI app (``@serve.ingress``) or builds a Starlette
``Request`` for a plain ``__call__(request)`` and turns the return value into
a response the way Ray Serve does (str/bytes as text, dicts, lists and
pydantic models as JSON, Starlette responses as they are). Messages are sent
back in batches: everything the app produced since the last batch, so a
simple response is one batch and a streaming one arrives as it is produced.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import uuid
from collections.abc import Iterable, Mapping
import logging
from typing import Any, AsyncIterator, Callable, List, Optional

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from ..config import STREAM_BATCH_BYTES, STREAM_WINDOW
from ..serialization import user_traceback
from ..types import ASGIApp, Message, Receive, Scope
from ..wire import LastItem

__all__ = ["serve_http", "serve_websocket", "to_response"]

logger = logging.getLogger("dserve.replica")


def _json_default(obj: Any) -> Any:
    """FastAPI's ``jsonable_encoder`` rules, as Ray Serve applies them to return values:
    pydantic models, mappings (e.g. ``request.query_params``), dataclasses, sequences
    and sets, numpy arrays and scalars, enums, dates, UUIDs, paths, decimals."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, decimal.Decimal):
        return float(obj)
    if isinstance(obj, (uuid.UUID, pathlib.PurePath)):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if hasattr(obj, "dict"):
        return obj.dict()
    if isinstance(obj, Iterable):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def to_response(value: Any) -> Response:
    """Ray Serve's conversion of a handler's return value into an HTTP response."""
    if isinstance(value, Response):
        return value
    if isinstance(value, (str, bytes)):
        return PlainTextResponse(value)
    body = json.dumps(value, default=_json_default, separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


async def _call_plain(call_user: Callable[[Request], Any], request: Request) -> Response:
    try:
        result = call_user(request)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return to_response(result)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - user error becomes a 500
        logger.warning("HTTP request failed in user code", exc_info=True)
        return error_response(exc)


def error_response(exc: BaseException) -> Response:
    tb = user_traceback(exc)
    return PlainTextResponse(f"Unexpected error, traceback: {tb}", status_code=500)


async def serve_http(
    asgi_app: Optional[ASGIApp], call_user: Callable[[Request], Any], scope: Scope, body: bytes
) -> AsyncIterator[List[Message]]:
    """Run one request; yield lists of ASGI messages as they become available."""
    messages: List[dict] = []
    pending = [0]  # body bytes in ``messages``
    wake: List[asyncio.Event] = []  # set up only for streaming responses
    drained = asyncio.Event()  # the reader took the pending messages (flow control)
    drained.set()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # until the proxy cancels us
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)
        if wake:
            wake[0].set()
            pending[0] += len(message.get("body", b""))
            # the reader is behind (a batch is an item of the stream's window: bound it in bytes
            # too, or a window of big chunks is a window of many megabytes): the app waits for it
            if len(messages) >= STREAM_WINDOW or pending[0] >= STREAM_BATCH_BYTES:
                drained.clear()
                await drained.wait()

    response = None
    if asgi_app is None:
        response = await _call_plain(call_user, Request(scope, receive))
        if not isinstance(response, StreamingResponse):  # complete: one batch, no extra task
            await response(scope, receive, send)
            yield LastItem(messages)
            return

    async def run() -> None:
        if response is not None:
            await response(scope, receive, send)
        else:
            await asgi_app(scope, receive, send)

    event = asyncio.Event()
    wake.append(event)
    task = asyncio.ensure_future(run())
    task.add_done_callback(lambda _t: event.set())
    try:
        while True:
            await event.wait()
            event.clear()
            if messages:
                batch, messages = messages, []
                pending[0] = 0
                drained.set()
                yield batch
            if task.done():
                if messages:
                    yield messages
                exc = task.exception()
                if exc is not None:
                    raise exc
                return
    finally:
        if not task.done():
            task.cancel()


async def serve_websocket(asgi_app: Optional[ASGIApp], scope: Scope, receive: Receive) -> AsyncIterator[Message]:
    """Run a WebSocket session through the deployment's ASGI app; yield what it sends."""
    if asgi_app is None:  # only ASGI ingress deployments speak WebSocket
        yield {"type": "websocket.close", "code": 1003, "reason": "this deployment does not accept WebSockets"}
        return
    outbound: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)  # bounded: a slow client pauses the app
    end = object()

    async def run() -> None:
        try:
            await asgi_app(scope, receive, outbound.put)
        finally:
            try:
                outbound.put_nowait(end)
            except asyncio.QueueFull:  # the session is over: make room for the end marker
                outbound.get_nowait()
                outbound.put_nowait(end)

    task = asyncio.ensure_future(run())
    try:
        while True:
            message = await outbound.get()
            if message is end:
                break
            yield message
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    finally:
        if not task.done():
            task.cancel()
