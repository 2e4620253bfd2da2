"""``@serve.batch``: gather concurrent calls into one call on a list.

Callers each pass one item and get their own element back; the handler gets
a list and returns a list of the same length (or, as an async generator,
yields such lists, and each caller receives a stream of its elements). A batch
closes when ``max_batch_size`` is reached (by count, or by ``batch_size_fn``)
or ``batch_wait_timeout_s`` after its first item. A failing batch fails only
its own callers; a cancelled caller is dropped before its batch runs. As in Ray,
the handler may return any sequence of the right length (a list, a tuple, a numpy
array), a wrong length is a ``RayServeException``, and a batched generator ends
one caller's stream by yielding ``StopIteration`` in that caller's position.
Each batch is recorded in ``serve_batch_size``, ``serve_batch_wait_time_ms`` and
``serve_batch_execution_time_ms`` (labelled with the replica and the function).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import time
from typing import Any, Callable, Deque, List, Optional

from .context import _current_replica
from .exceptions import RayServeException
from .metrics import enabled as metrics_enabled
from .metrics import table

__all__ = ["batch"]


class _Config:
    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float, max_concurrent_batches: int,
                 batch_size_fn: Optional[Callable[[List[Any]], int]]) -> None:
        _check(max_batch_size, batch_wait_timeout_s, max_concurrent_batches)
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_concurrent_batches = max_concurrent_batches
        self.batch_size_fn = batch_size_fn


def _check(max_batch_size: Any, timeout: Any, concurrent: Any) -> None:
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    if not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got {timeout!r}")
    if not isinstance(concurrent, int) or concurrent < 1:
        raise ValueError(f"max_concurrent_batches must be an integer >= 1, got {concurrent!r}")


class _Request:
    __slots__ = ("args", "kwargs", "future", "channel", "arrived")

    def __init__(self, args: tuple, kwargs: dict, future: asyncio.Future, channel: Optional[asyncio.Queue]) -> None:
        self.args, self.kwargs, self.future, self.channel = args, kwargs, future, channel
        self.arrived = time.perf_counter()


_BATCH_LABELS = ("deployment", "replica", "application", "function_name")
_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class _BatchMetrics:
    def __init__(self, function_name: str) -> None:
        replica = _current_replica.get()
        ids = (replica.deployment, replica.replica_id, replica.app_name) if replica is not None else ("", "", "")
        self.labels = ids + (function_name,)
        self.size = table("histogram", "serve_batch_size", "The number of requests in each batch.",
                          _BATCH_LABELS, buckets=_SIZE_BUCKETS)
        self.wait = table("histogram", "serve_batch_wait_time_ms",
                          "How long the first request of each batch waited for the batch to close (ms).", _BATCH_LABELS)
        self.execution = table("histogram", "serve_batch_execution_time_ms",
                               "How long each batch took to run (ms).", _BATCH_LABELS)


class _END:
    """Ends one caller's stream. A class, not an ``object()``: a wrapper whose deployment is
    pickled by value (defined in ``__main__``) carries copies of the plain objects it
    names, which would no longer be this sentinel; a class travels by reference."""


class _BatchQueue:
    """Collects calls for one handler (one per instance for methods)."""

    def __init__(self, handler: Callable, config: _Config, is_generator: bool) -> None:
        self.handler = handler
        self.config = config
        self.is_generator = is_generator
        self.queue: Deque[_Request] = collections.deque()
        self.arrived = asyncio.Event()
        self.running = 0
        self.slot_free = asyncio.Event()
        self.metrics = _BatchMetrics(getattr(handler, "__name__", "")) if metrics_enabled() else None
        self.loop_task = asyncio.ensure_future(self._loop())

    def put(self, request: _Request) -> None:
        self.queue.append(request)
        self.arrived.set()

    def _size(self, items: List[_Request]) -> int:
        fn = self.config.batch_size_fn
        if fn is None:
            return len(items)
        return fn([r.args[0] if r.args else next(iter(r.kwargs.values()), None) for r in items])

    def _full(self) -> bool:
        live = [r for r in self.queue if not r.future.done()]
        return self._size(live) >= self.config.max_batch_size if live else False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = loop.time() + self.config.batch_wait_timeout_s
            while not self._full():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            while self.running >= self.config.max_concurrent_batches:
                self.slot_free.clear()
                await self.slot_free.wait()
            batch = self._take()
            if batch:
                self.running += 1
                task = asyncio.ensure_future(self._run(batch))
                task.add_done_callback(self._batch_done)

    def _batch_done(self, _task: asyncio.Task) -> None:
        self.running -= 1
        self.slot_free.set()

    def _take(self) -> List[_Request]:
        batch: List[_Request] = []
        while self.queue:
            request = self.queue[0]
            if request.future.done():  # its caller was cancelled: drop it
                self.queue.popleft()
                continue
            if batch and self._size(batch + [request]) > self.config.max_batch_size:
                break
            batch.append(self.queue.popleft())
        return batch

    def _call_args(self, batch: List[_Request]) -> tuple:
        first = batch[0]
        args = [[r.args[i] for r in batch] for i in range(len(first.args))]
        kwargs = {k: [r.kwargs[k] for r in batch] for k in first.kwargs}
        return args, kwargs

    async def _run(self, batch: List[_Request]) -> None:
        started = time.perf_counter()
        try:
            await self._run_batch(batch)
        finally:
            if self.metrics is not None:
                labels = self.metrics.labels
                self.metrics.size.observe(labels, len(batch))
                self.metrics.wait.observe(labels, (started - batch[0].arrived) * 1000.0)
                self.metrics.execution.observe(labels, (time.perf_counter() - started) * 1000.0)

    async def _run_batch(self, batch: List[_Request]) -> None:
        try:
            args, kwargs = self._call_args(batch)
        except (IndexError, KeyError):
            _fail(batch, TypeError("all calls to a @serve.batch handler must pass the same arguments"))
            return
        try:
            if self.is_generator:
                await self._run_generator(batch, args, kwargs)
                return
            results = await self.handler(*args, **kwargs)
            _check_length(results, batch)
            for request, result in zip(batch, results):
                if not request.future.done():
                    request.future.set_result(result)
        except Exception as exc:  # noqa: BLE001 - fails exactly this batch
            _fail(batch, exc)

    async def _run_generator(self, batch: List[_Request], args: list, kwargs: dict) -> None:
        ended = [False] * len(batch)
        async for results in self.handler(*args, **kwargs):
            _check_length(results, batch)
            for i, (request, result) in enumerate(zip(batch, results)):
                if ended[i] or request.future.done():
                    continue
                if result is StopIteration or isinstance(result, StopIteration):  # this caller's stream ends
                    ended[i] = True
                    request.channel.put_nowait(_END)
                else:
                    request.channel.put_nowait(result)
        for i, request in enumerate(batch):
            if not ended[i]:
                request.channel.put_nowait(_END)


def _check_length(results: Any, batch: List[_Request]) -> None:
    try:
        length = len(results)
    except TypeError:
        raise RayServeException(
            f"Batched function doesn't preserve batch size: it returned a {type(results).__name__}, "
            f"not a sequence of {len(batch)} results."
        ) from None
    if length != len(batch):
        raise RayServeException(
            f"Batched function doesn't preserve batch size. The input list has length {len(batch)} "
            f"but the returned list has length {length}."
        )


def _fail(batch: List[_Request], exc: BaseException) -> None:
    for request in batch:
        if request.channel is not None:
            request.channel.put_nowait(exc)
        elif not request.future.done():
            request.future.set_exception(exc)


def batch(
    _func: Optional[Callable] = None,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    batch_size_fn: Optional[Callable[[List[Any]], int]] = None,
) -> Any:
    """Turn an ``async def f(self, items: List)`` into one callers call per item."""
    config = _Config(max_batch_size, batch_wait_timeout_s, max_concurrent_batches, batch_size_fn)

    def decorate(func: Callable) -> Callable:
        is_generator = inspect.isasyncgenfunction(func)
        if not (inspect.iscoroutinefunction(func) or is_generator):
            raise TypeError(
                f"@serve.batch can only decorate async functions or async generators; "
                f"{getattr(func, '__qualname__', func)!r} is not"
            )
        params = list(inspect.signature(func).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"_dserve_batch_queue_{func.__name__}"
        function_queue: List[_BatchQueue] = []  # plain list: the wrapper must stay picklable

        def queue_for(owner: Any) -> _BatchQueue:
            if owner is None:
                if not function_queue:
                    function_queue.append(_BatchQueue(func, config, is_generator))
                return function_queue[0]
            q = owner.__dict__.get(attr)
            if q is None:  # one queue per instance, created on first use in the replica
                q = _BatchQueue(functools.partial(func, owner), config, is_generator)
                owner.__dict__[attr] = q
            return q

        def enqueue(args: tuple, kwargs: dict) -> _Request:
            owner = args[0] if is_method else None
            call_args = args[1:] if is_method else args
            future = asyncio.get_running_loop().create_future()
            request = _Request(call_args, kwargs, future, asyncio.Queue() if is_generator else None)
            queue_for(owner).put(request)
            return request

        if is_generator:
            @functools.wraps(func)
            async def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = enqueue(args, kwargs)
                try:
                    while True:
                        item = await request.channel.get()
                        if item is _END:
                            return
                        if isinstance(item, BaseException):
                            raise item
                        yield item
                finally:
                    request.future.cancel()

            wrapper = stream_wrapper
        else:
            @functools.wraps(func)
            async def call_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = enqueue(args, kwargs)
                return await request.future  # cancelling the caller cancels its slot

            wrapper = call_wrapper

        def set_max_batch_size(value: int) -> None:
            _check(value, config.batch_wait_timeout_s, config.max_concurrent_batches)
            config.max_batch_size = value

        def set_batch_wait_timeout_s(value: float) -> None:
            _check(config.max_batch_size, value, config.max_concurrent_batches)
            config.batch_wait_timeout_s = value

        wrapper.set_max_batch_size = set_max_batch_size  # type: ignore[attr-defined]
        wrapper.set_batch_wait_timeout_s = set_batch_wait_timeout_s  # type: ignore[attr-defined]
        wrapper._get_max_batch_size = lambda: config.max_batch_size  # type: ignore[attr-defined]
        wrapper._get_batch_wait_timeout_s = lambda: config.batch_wait_timeout_s  # type: ignore[attr-defined]
        return wrapper

    if _func is not None:
        return decorate(_func)
    return decorate
