"""The data plane's wire format, in one place: message keys, method names, framing, flow control.

Callers keep one connection per replica worker and multiplex every request over
it (``routing.transport``, ``routing.worker_end``): a raw TCP/TLS stream
(``routing.link``), found through the worker's Dask comm (``DATA_ADDRESS_OP``).
Each write is one msgpack-encoded list of small dicts (a batch); user payloads
inside are pickled bytes (``serialization``). A link's first message is
``{HELLO: secret}``, the secret handed out with the address.

caller -> worker                                       worker -> caller
  {ID, KEY, METHOD, PAYLOAD, CONTEXT}    unary call       {ID, RESULT: payload}        unary result
  {..., KIND: STREAM}                    streaming call   {ID, ITEM: payload}          one stream item
  {..., KIND: WEBSOCKET}                 WebSocket open   {ID, DONE: 1}                end (may ride on the last ITEM)
  {ID, EVENT: asgi message}              client event     {ID, ERROR: packed exc}      user or replica error
  {ID, CANCEL: 1}                        cancel call ID   {ID, GONE: reason}           replica not here: retry elsewhere
  {ID, CREDIT: n}                        n more items

Streams are flow controlled: the worker sends at most ``STREAM_WINDOW`` items of
a stream (or WebSocket session) beyond what the caller has consumed; the caller
returns credit (``CREDIT``) as it consumes, so a slow reader slows the producer
in the replica instead of growing queues anywhere in between.

Each key has exactly one meaning. The special method names ``HTTP_METHOD`` and
``GRPC_METHOD`` carry a proxied HTTP request (scope, body) or gRPC call (method,
message, metadata) to a replica; ``ROUTES_KEY`` is the long-poll key of the
route table the proxies follow.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Optional


__all__ = [
    "DATA_ADDRESS_OP", "HELLO", "HEALTH_OP", "HTTP_METHOD", "GRPC_METHOD", "ROUTES_KEY", "LOGS_OP",
    "ID", "KEY", "METHOD", "PAYLOAD", "CONTEXT", "KIND", "STREAM", "WEBSOCKET", "EVENT", "CANCEL",
    "RESULT", "ITEM", "DONE", "ERROR", "GONE", "CREDIT",
    "LastItem", "Inbox", "Credit",
]

DATA_ADDRESS_OP = "dserve_data_address"  # the worker handler that tells callers its data-plane port
HEALTH_OP = "dserve_health_check"  # the worker handler that runs health checks of replicas there
HTTP_METHOD = "__dserve_http__"
GRPC_METHOD = "__dserve_grpc__"
ROUTES_KEY = "__routes__"
LOGS_OP = "dserve_worker_logs"  # the worker handler that answers with its replicas' and proxy's log lines

# caller -> worker
HELLO = "h"  # the first message on a link: the worker's data-plane secret
ID = "i"
KEY = "k"  # the replica's actor key on that worker
METHOD = "m"
PAYLOAD = "p"
CONTEXT = "t"  # the request context (RequestContext.to_wire())
KIND = "s"  # absent: unary
STREAM = 1
WEBSOCKET = 2
EVENT = "w"
CANCEL = "x"
CREDIT = "n"
# worker -> caller
RESULT = "r"
ITEM = "c"
DONE = "d"
ERROR = "e"
GONE = "g"

class LastItem:
    """Yielded by a replica-side generator for its final item, so the item and
    the end of the stream travel as one message."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Inbox:
    """A minimal single-consumer queue of one call's replies (cheaper than ``asyncio.Queue``)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque = collections.deque()
        self.waiter: Optional[asyncio.Future] = None

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class Credit:
    """How many more items a stream may send (worker end of the flow control)."""

    __slots__ = ("available", "waiter")

    def __init__(self, available: int) -> None:
        self.available = available
        self.waiter: Optional[asyncio.Future] = None

    def grant(self, n: int) -> None:
        self.available += n
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> None:
        while self.available <= 0:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.available -= 1
