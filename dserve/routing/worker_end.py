"""The worker end of the data plane: a port where callers' links arrive, and the calls they carry.

Each worker that hosts replicas opens one ``DataPlane`` (lazily, on the first
caller's ``DATA_ADDRESS_OP``): a TCP (or TLS, on a TLS cluster) port on the
worker's own host. Every caller process keeps one ``Link`` to it
(``routing.transport.MuxConnection``); each call on a link runs in its own task
against the replica object found in ``worker.state.actors``. When a link drops,
its calls still running here are cancelled.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, AsyncIterator, Callable, Dict, Optional

from ..config import STREAM_WINDOW
from ..serialization import dumps, loads, pack_exception
from ..types import WireMessage
from ..wire import (
    CANCEL, CONTEXT, CREDIT, DONE, ERROR, EVENT, GONE, HELLO, ID, ITEM, KEY, KIND, METHOD, PAYLOAD, RESULT,
    STREAM, WEBSOCKET, HTTP_METHOD, Credit, LastItem,
)
from .link import Link, listen

__all__ = ["DataPlane"]

logger = logging.getLogger("dserve.transport")


class DataPlane:
    """One worker's data-plane port and the secret a link must present first."""

    def __init__(self, actors: Dict[str, Any], host: str, ssl_context: Any = None) -> None:
        self.actors = actors
        self.host = host
        self.ssl_context = ssl_context
        self.secret = secrets.token_hex(16)
        self.port: Optional[int] = None
        self._server: Any = None
        self._starting: Optional[asyncio.Future] = None
        self._links: set = set()

    async def address(self) -> Dict[str, Any]:
        """Where callers connect (starting the port on first use), for ``DATA_ADDRESS_OP``."""
        if self._server is None:
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            await asyncio.shield(self._starting)
        return {"host": self.host, "port": self.port, "secret": self.secret, "tls": self.ssl_context is not None}

    async def _start(self) -> None:
        server = await listen(self.host, lambda: _CallerLink(self).link, self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for caller in list(self._links):
            caller.link.abort()


class _CallerLink:
    """One caller's link: its calls in flight, WebSocket inboxes and stream credits."""

    __slots__ = ("plane", "link", "greeted", "tasks", "inboxes", "credits")

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.link = Link(self.on_batch, self.on_lost)
        self.greeted = False
        self.tasks: Dict[int, asyncio.Task] = {}
        self.inboxes: Dict[int, asyncio.Queue] = {}  # WebSocket sessions: client events
        self.credits: Dict[int, Credit] = {}  # streams and sessions: what they may still send
        plane._links.add(self)

    def on_lost(self, exc: Optional[BaseException]) -> None:
        self.plane._links.discard(self)
        if exc is not None:
            logger.debug("data-plane link from %s ended: %r", self.link.peer, exc)
        for task in list(self.tasks.values()):
            task.cancel()

    def on_batch(self, batch: list) -> None:
        link, tasks, actors = self.link, self.tasks, self.plane.actors
        for msg in batch:
            i = msg.get(ID)
            if i is None:  # the introduction: the worker's secret, before anything else
                if msg.get(HELLO) != self.plane.secret:
                    logger.warning("data-plane link from %s refused: wrong secret", link.peer)
                    link.abort()
                    return
                self.greeted = True
                continue
            if not self.greeted:
                logger.warning("data-plane link from %s refused: no introduction", link.peer)
                link.abort()
                return
            if CREDIT in msg:
                credit = self.credits.get(i)
                if credit is not None:
                    credit.grant(msg[CREDIT])
                continue
            if EVENT in msg:
                inbox = self.inboxes.get(i)
                if inbox is not None:
                    inbox.put_nowait(msg[EVENT])
                continue
            if CANCEL in msg:
                task = tasks.pop(i, None)
                if task is not None:
                    task.cancel()
                continue
            replica = actors.get(msg[KEY])
            if replica is None or not getattr(replica, "accepting", False):
                link.send({ID: i, GONE: "replica not on this worker or not accepting"})
                continue
            kind = msg.get(KIND)
            if kind is None:
                tasks[i] = asyncio.ensure_future(_serve_unary(replica, msg, link, tasks))
            elif kind == STREAM:
                self.credits[i] = credit = Credit(STREAM_WINDOW)
                serve = _serve_http if msg[METHOD] == HTTP_METHOD else _serve_stream
                tasks[i] = asyncio.ensure_future(serve(replica, msg, link, credit, self))
            elif kind == WEBSOCKET:
                self.inboxes[i] = inbox = asyncio.Queue()
                self.credits[i] = credit = Credit(STREAM_WINDOW)
                tasks[i] = asyncio.ensure_future(_serve_websocket(replica, msg, inbox, link, credit, self))

    def forget(self, i: int) -> None:
        self.tasks.pop(i, None)
        self.credits.pop(i, None)
        self.inboxes.pop(i, None)


async def _serve_unary(replica: Any, msg: WireMessage, link: Link, tasks: Dict[int, asyncio.Task]) -> None:
    i = msg[ID]
    try:
        args, kwargs = loads(msg[PAYLOAD])
        result = await replica.call(msg[METHOD], args, kwargs, msg.get(CONTEXT))
        link.send({ID: i, RESULT: dumps(result)})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
        _log_failure("request to", replica, exc)
        link.send({ID: i, ERROR: pack_exception(exc)})
    finally:
        tasks.pop(i, None)


async def _serve_stream(replica: Any, msg: WireMessage, link: Link, credit: Credit, caller: _CallerLink) -> None:
    def open_items() -> AsyncIterator[Any]:
        args, kwargs = loads(msg[PAYLOAD])
        return replica.stream(msg[METHOD], args, kwargs, msg.get(CONTEXT))
    try:
        await _send_items(msg[ID], open_items, replica, "stream from", link, credit)
    finally:
        caller.forget(msg[ID])


async def _serve_http(replica: Any, msg: WireMessage, link: Link, credit: Credit, caller: _CallerLink) -> None:
    """A proxied HTTP request: a complete response is one message, with no generator on the way
    (``ReplicaActor.http``); a streamed one is sent as a stream."""
    i = msg[ID]
    try:
        try:
            (scope, body), _ = loads(msg[PAYLOAD])
            answer = await replica.http(scope, body, msg.get(CONTEXT))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
            _log_failure("stream from", replica, exc)
            link.send({ID: i, ERROR: pack_exception(exc)})
            return
        if type(answer) is list:
            link.send({ID: i, ITEM: dumps(answer), DONE: 1})
        else:
            await _send_items(i, lambda: answer, replica, "stream from", link, credit)
    finally:
        caller.forget(i)


async def _serve_websocket(replica: Any, msg: WireMessage, inbox: asyncio.Queue, link: Link, credit: Credit,
                           caller: _CallerLink) -> None:
    def open_items() -> AsyncIterator[Any]:
        return replica.websocket(loads(msg[PAYLOAD]), inbox.get, msg.get(CONTEXT))
    try:
        await _send_items(msg[ID], open_items, replica, "WebSocket session on", link, credit)
    finally:
        caller.forget(msg[ID])


async def _send_items(i: int, open_items: Callable[[], AsyncIterator[Any]], replica: Any, what: str,
                      link: Link, credit: Credit) -> None:
    """Send a stream's items as the caller's credit allows, then its end (or its error)."""
    items = None
    try:
        items = open_items()
        async for item in items:
            if type(item) is LastItem:  # the generator knows it is done: one message
                link.send({ID: i, ITEM: dumps(item.value), DONE: 1})
                return
            await credit.take()  # a slow reader pauses the generator here
            link.send({ID: i, ITEM: dumps(item)})
        link.send({ID: i, DONE: 1})
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
        _log_failure(what, replica, exc)
        link.send({ID: i, ERROR: pack_exception(exc)})
    finally:
        if items is not None:
            await items.aclose()


def _log_failure(what: str, replica: Any, exc: BaseException) -> None:
    if type(exc).__name__ == "UnknownMethodError":  # raised at the caller, who made the mistake: not logged
        return
    # a wrong signature is the caller's mistake: no user traceback
    user_error = not isinstance(exc, (TypeError, AttributeError))
    logger.warning("%s %s failed: %r", what, replica.replica_id, exc, exc_info=user_error)
