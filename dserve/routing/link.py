"""One data-plane connection between two processes: a raw asyncio stream of msgpack batches.

Requests do not travel over Dask comms: every Dask message costs a task wake-up
per read, a header frame and a per-write ``sizeof``/serializer walk, which made
the proxy process the bottleneck of cross-process calls. A ``Link`` is an
``asyncio.Protocol`` on a plain TCP (or, on a TLS cluster, TLS) connection:

- writes are coalesced: messages sent during one turn of the event loop leave as
  one msgpack list in one ``transport.write`` (scheduled with ``call_soon``) —
  unless the link has not written for ``LONE_WRITE_AFTER_S``: then the loop is
  slow (a replica busy with CPU-bound requests, or little traffic) and the
  message leaves at once, so a reply is not held back by the work that follows
  it in the same turn;
- reads land in one reusable buffer (``asyncio.BufferedProtocol``: ``recv_into``;
  a plain ``Protocol`` costs a fresh 256 KiB allocation per read — an
  mmap/munmap pair — whatever arrived), are parsed where they arrive by a
  streaming ``msgpack.Unpacker`` (no framing header is needed), and each batch is
  handed to the owner's ``on_batch`` callback synchronously: no task per read.

Each worker listens on one port (``listen``), found by callers through the
worker's Dask comm (``DATA_ADDRESS_OP``), which also hands out the worker's
secret: the first message on a link must carry it (``HELLO``), so the port
accepts no one that could not already talk to the worker through Dask.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Callable, List, Optional

import msgpack

__all__ = ["Link", "listen", "open_link", "MAX_MESSAGE_BYTES"]

logger = logging.getLogger("dserve.transport")

MAX_MESSAGE_BYTES = 2**31 - 1  # msgpack's own limit for one bin object
READ_BUFFER_BYTES = 256 * 1024  # one link's reusable receive buffer
# a message sent this long after the last write leaves at once (on uvloop, whose clock counts
# whole milliseconds: once the millisecond of the last write has passed)
LONE_WRITE_AFTER_S = 0.0002

_packb = msgpack.Packer(use_bin_type=True).pack

OnBatch = Callable[[List[dict]], None]
OnLost = Callable[[Optional[BaseException]], None]


class Link(asyncio.BufferedProtocol):
    """Coalesced msgpack batches out, parsed batches in; see the module docstring."""

    def __init__(self, on_batch: Optional[OnBatch] = None, on_lost: Optional[OnLost] = None) -> None:
        self.on_batch = on_batch
        self.on_lost = on_lost
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.peer = "?"
        self._buffer: list = []
        self._scheduled = False
        self._paused = False
        self._last_write = 0.0
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE_BYTES)
        self._read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self._loop = asyncio.get_running_loop()

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._unpacker.feed(self._read_buffer[:nbytes])  # copied into the unpacker's own buffer
        try:
            for batch in self._unpacker:
                self.on_batch(batch)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - garbage from the peer (or a bug): drop the link
            logger.warning("data-plane link %s dropped: %r", self.peer, exc)
            self.abort()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self._buffer = []
        if self.on_lost is not None:
            self.on_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._last_write = 0.0
        if self._buffer and not self._scheduled:
            self._flush()

    # ---- sending ----
    def send(self, msg: dict) -> None:
        """Queue one message; everything queued in this loop turn leaves in one write."""
        if self.closed:
            return
        self._buffer.append(msg)
        if self._scheduled:
            return
        if self._loop.time() - self._last_write > LONE_WRITE_AFTER_S:
            self._flush()  # a slow or quiet loop: no one to coalesce with, latency matters
        else:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.closed or self._paused or not self._buffer:
            return  # paused: resume_writing flushes what accumulated
        batch, self._buffer = self._buffer, []
        self.transport.write(_packb(batch))  # type: ignore[union-attr]
        self._last_write = self._loop.time()

    def abort(self) -> None:
        self.closed = True
        self._buffer = []
        if self.transport is not None:
            self.transport.abort()


async def listen(host: str, make_link: Callable[[], Link], ssl_context: Optional[ssl.SSLContext] = None) -> Any:
    """Listen for data-plane links on ``host`` (an ephemeral port); returns the ``asyncio.Server``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(make_link, host, 0, ssl=ssl_context, backlog=1024)


async def open_link(host: str, port: int, link: Link, hello: dict, timeout: float,
                    ssl_context: Optional[ssl.SSLContext] = None) -> Link:
    """Connect ``link`` to a worker's data-plane port and introduce it with ``hello``."""
    loop = asyncio.get_running_loop()
    server_hostname = host if ssl_context is not None else None
    await asyncio.wait_for(
        loop.create_connection(lambda: link, host, port, ssl=ssl_context, server_hostname=server_hostname),
        timeout)
    link.send(hello)
    return link
