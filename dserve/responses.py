"""What a handle call returns: ``DeploymentResponse`` (unary) and ``DeploymentResponseGenerator`` (streams).

A response wraps the future of a call running on some event loop: an
``asyncio.Future`` when the call runs on the caller's own loop (``await`` it
there), a ``concurrent.futures.Future`` when it runs on dserve's loop in another
thread (``.result()`` blocks for it; ``await`` waits without blocking). A
generator reads a bounded queue that the call's task fills, so a slow reader
pauses the stream at the replica.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, AsyncIterator, Iterator, Optional, Tuple, Union

from .event_loop import in_loop_thread, submit, wait
from .exceptions import RequestCancelledError

__all__ = ["DeploymentResponse", "DeploymentResponseGenerator", "pump"]

_Future = Union[asyncio.Future, concurrent.futures.Future]


def _loop_misuse() -> RuntimeError:
    return RuntimeError(
        "`.result()` would block the event loop this handle's calls run on (a deadlock). "
        "Use `await response` in async code instead."
    )


def _state(future: _Future) -> str:
    if future.cancelled():
        return "cancelled"
    if not future.done():
        return "pending"
    return "failed" if future.exception() is not None else "done"


class DeploymentResponse:
    """A future-like object wrapping the result of a unary handle call."""

    __slots__ = ("_future", "_request_id", "_call")

    def __init__(self, future: _Future, request_id: str, call: Tuple[str, str, str] = ("", "", "")) -> None:
        self._future = future
        self._request_id = request_id
        self._call = call  # (deployment, application, method)

    def __repr__(self) -> str:
        deployment, app, method = self._call
        return (f"{type(self).__name__}(deployment={deployment!r}, app={app!r}, method={method!r}, "
                f"state={_state(self._future)!r}, request_id={self._request_id!r})")

    @property
    def request_id(self) -> str:
        return self._request_id

    def result(self, *, timeout_s: Optional[float] = None, _skip_asyncio_check: bool = False) -> Any:
        """Block until the result is ready; ``TimeoutError`` after ``timeout_s``."""
        fut = self._future
        if isinstance(fut, asyncio.Future):
            if not fut.done():
                raise _loop_misuse()
            return self._unwrap(fut)
        try:
            return fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"Timed out waiting for the result after {timeout_s}s.") from None
        except concurrent.futures.CancelledError:
            raise RequestCancelledError(self._request_id) from None

    def _unwrap(self, fut: asyncio.Future) -> Any:
        if fut.cancelled():
            raise RequestCancelledError(self._request_id)
        return fut.result()

    def __await__(self):
        return self._await().__await__()

    async def _await(self) -> Any:
        fut = self._future
        try:
            if isinstance(fut, asyncio.Future):
                return await fut  # cancelling the caller cancels the call (Ray's semantics)
            return await wait(fut)
        except asyncio.CancelledError:
            if fut.cancelled():
                raise RequestCancelledError(self._request_id) from None
            raise

    def cancel(self) -> None:
        """Cancel the request; the replica sees ``asyncio.CancelledError``."""
        fut = self._future
        if isinstance(fut, asyncio.Future):
            fut.get_loop().call_soon_threadsafe(fut.cancel)
        else:
            fut.cancel()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def done(self) -> bool:
        return self._future.done()


class DeploymentResponseGenerator:
    """Iterates the items of a streaming call (``for`` and ``async for``)."""

    def __init__(self, queue: "asyncio.Queue", task: _Future, loop: asyncio.AbstractEventLoop, request_id: str,
                 call: Tuple[str, str, str] = ("", "", "")) -> None:
        self._queue = queue
        self._task = task
        self._loop = loop
        self._request_id = request_id
        self._finished = False
        self._call = call  # (deployment, application, method)

    def __repr__(self) -> str:
        deployment, app, method = self._call
        state = "finished" if self._finished else "streaming" if not self._task.done() else _state(self._task)
        return (f"{type(self).__name__}(deployment={deployment!r}, app={app!r}, method={method!r}, "
                f"state={state!r}, request_id={self._request_id!r})")

    @property
    def request_id(self) -> str:
        return self._request_id

    def _take(self, item: Any) -> Any:
        kind, value = item
        if kind == "item":
            return value
        self._finished = True
        if kind == "error":
            if isinstance(value, asyncio.CancelledError):
                raise RequestCancelledError(self._request_id)
            raise value
        raise _Done

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        if in_loop_thread(self._loop):
            raise _loop_misuse()
        item = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop).result()
        try:
            return self._take(item)
        except _Done:
            raise StopIteration from None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        if in_loop_thread(self._loop):
            item = await self._queue.get()
        else:
            item = await wait(submit(self._queue.get(), self._loop))
        try:
            return self._take(item)
        except _Done:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        """Stop the stream; the generator in the replica is cancelled."""
        task = self._task
        if isinstance(task, asyncio.Future):
            self._loop.call_soon_threadsafe(task.cancel)
        else:
            task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()


class _Done(Exception):
    pass


async def pump(stream: AsyncIterator[Any], queue: "asyncio.Queue") -> None:
    """Move a stream's items into the consumer's bounded queue. The stream is closed here,
    however the pump ends: cancelled while the queue was full, the stream (an async
    generator) would otherwise stay suspended, its call running at the replica, for as long
    as the error in the queue keeps its frame alive."""
    try:
        async for item in stream:
            await queue.put(("item", item))
    except BaseException as exc:  # noqa: BLE001 - delivered to the consumer
        _put_last(queue, ("error", exc))
        if isinstance(exc, asyncio.CancelledError):
            raise
    else:
        await queue.put(("done", None))
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _put_last(queue: "asyncio.Queue", item: Any) -> None:
    """Put a stream's final marker now, even into a full queue (it ends the stream: an item
    the reader has not taken yet is dropped for it)."""
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        queue.get_nowait()
        queue.put_nowait(item)
