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
import functools
from typing import Any, AsyncIterator, Awaitable, Callable, List, Optional

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from ..config import STREAM_BATCH_BYTES, STREAM_WINDOW
from ..serialization import user_traceback
from ..types import ASGIApp, Message, Receive, Scope, WireContext
from ..wire import HTTP_METHOD, LastItem

__all__ = ["serve_http", "answer_http", "relay", "starts_server_error", "serve_websocket", "to_response"]

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


class _RequestIO:
    """One request's ASGI ``receive`` (its body, once) and ``send`` (messages collected; once
    ``relay`` streams them, batched, the app waiting when the reader is a window behind)."""

    __slots__ = ("body", "body_sent", "messages", "pending", "wake", "drained")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.body_sent = False
        self.messages: List[dict] = []
        self.pending = 0  # body bytes in ``messages``
        self.wake: Optional[asyncio.Event] = None  # set up only for streaming responses
        self.drained: Optional[asyncio.Event] = None  # the reader took the pending messages

    async def receive(self) -> dict:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # until the proxy cancels us
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.messages.append(message)
        wake = self.wake
        if wake is not None:
            wake.set()
            self.pending += len(message.get("body", b""))
            # the reader is behind (a batch is an item of the stream's window: bound it in bytes
            # too, or a window of big chunks is a window of many megabytes): the app waits for it
            if len(self.messages) >= STREAM_WINDOW or self.pending >= STREAM_BATCH_BYTES:
                self.drained.clear()  # type: ignore[union-attr]
                await self.drained.wait()  # type: ignore[union-attr]

    def take(self) -> List[dict]:
        batch, self.messages, self.pending = self.messages, [], 0
        self.drained.set()  # type: ignore[union-attr]
        return batch


async def relay(io: _RequestIO, run: Callable[[], Awaitable[None]]) -> AsyncIterator[List[Message]]:
    """Run ``run`` (an ASGI app, or a streaming response) in a task; yield what it sends, in batches."""
    io.wake = event = asyncio.Event()
    io.drained = asyncio.Event()
    io.drained.set()
    task = asyncio.ensure_future(run())
    task.add_done_callback(lambda _t: event.set())
    try:
        while True:
            await event.wait()
            event.clear()
            if io.messages:
                yield io.take()
            if task.done():
                if io.messages:
                    yield io.take()
                exc = task.exception()
                if exc is not None:
                    raise exc
                return
    finally:
        if not task.done():
            task.cancel()


async def serve_http(
    asgi_app: Optional[ASGIApp], call_user: Callable[[Request], Any], scope: Scope, body: bytes
) -> AsyncIterator[List[Message]]:
    """Run one request; yield lists of ASGI messages as they become available."""
    io = _RequestIO(body)
    if asgi_app is None:
        response = await _call_plain(call_user, Request(scope, io.receive))
        if not isinstance(response, StreamingResponse):  # complete: one batch, no extra task
            await response(scope, io.receive, io.send)
            yield LastItem(io.messages)
            return
        run = functools.partial(response, scope, io.receive, io.send)
    else:
        run = functools.partial(asgi_app, scope, io.receive, io.send)
    async for batch in relay(io, run):
        yield batch


def starts_server_error(batch: Any) -> bool:
    """Whether a batch of ASGI messages starts a 5xx response."""
    messages = batch.value if type(batch) is LastItem else batch
    for message in messages:
        if message.get("type") == "http.response.start":
            return message.get("status", 200) >= 500
    return False


async def answer_http(replica: Any, scope: Scope, body: bytes, ctx: Optional[WireContext]) -> Any:
    """One proxied request, without generators in the common case: a plain deployment's
    complete response is returned as its list of ASGI messages; a streamed one (or an ASGI
    app's) as an iterator of batches that holds the request's slot until it is closed."""
    if replica._asgi_app is not None:
        return replica.stream(HTTP_METHOD, (scope, body), {}, ctx)
    entered, failed, acquired = replica._enter(ctx), True, False
    try:
        await replica._sem.acquire()
        acquired = True
        io = _RequestIO(body)
        response = await _call_plain(replica._call_with_request, Request(scope, io.receive))
        if isinstance(response, StreamingResponse):
            rest = _streamed(replica, ctx, entered, relay(io, functools.partial(response, scope, io.receive, io.send)))
            entered = None  # ``rest`` ends the request
            return rest
        await response(scope, io.receive, io.send)
        failed = starts_server_error(io.messages)  # a 5xx answer counts as an error too
        return io.messages
    finally:
        if entered is not None:
            if acquired:
                replica._sem.release()
            replica._exit(ctx, entered, failed)


async def _streamed(replica: Any, ctx: Optional[WireContext], entered: tuple,
                    batches: AsyncIterator[List[Message]]) -> AsyncIterator[List[Message]]:
    failed = error = False
    first = True
    try:
        async for batch in batches:
            if first:
                first, error = False, starts_server_error(batch)
            yield batch
        failed = error
    except GeneratorExit:  # the caller stopped reading: not a failure
        failed = error
        raise
    except BaseException:
        failed = True
        raise
    finally:
        await batches.aclose()
        replica._sem.release()
        replica._exit(ctx, entered, failed)


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
