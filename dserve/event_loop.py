"""The event loop a process's handles and routers live on.

In a Dask worker (replicas, proxies, tasks) that is the worker's own loop. In a
driver, script or notebook it is a daemon thread owned by dserve, so handles
work from sync code (``.result()``) and from any other event loop (``await``).
A blocking control call made on that loop's own thread runs on ``side_loop``.

Crossing between threads costs a wake-up of the other loop (a write to its
self-pipe, a context switch). ``submit`` (a coroutine into dserve's loop) and
``wait`` (its result back into the caller's loop) batch them: whatever crosses to
one loop during one turn of the sending loop (or before the receiver woke) rides
on the same wake-up, so a hundred concurrent calls from a notebook's loop cost a
few crossings, not two hundred.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Iterator, Optional

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["home_loop", "side_loop", "in_loop_thread", "worker_or_none", "set_process_worker", "submit", "wait",
           "post", "copy_outcome", "lend_loop"]

logger = logging.getLogger("dserve")

_lock = threading.Lock()
_thread_loop: Optional[asyncio.AbstractEventLoop] = None
_side_loop: Optional[asyncio.AbstractEventLoop] = None
_process_worker: Optional["Worker"] = None  # set by dserve's worker plugin in worker processes


def set_process_worker(worker: Optional["Worker"]) -> None:
    global _process_worker
    _process_worker = worker


def worker_or_none() -> Optional["Worker"]:
    """The Dask worker this process serves as, if any (a closed one no longer counts)."""
    global _process_worker
    if _process_worker is not None:
        from distributed.core import Status

        if _process_worker.status not in (Status.closing, Status.closed, Status.failed):
            return _process_worker
        _process_worker = None
    try:
        from distributed import get_worker

        return get_worker()
    except (ValueError, ImportError):
        return None


def _start_thread_loop(name: str = "dserve-event-loop") -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait()
    return loop


def home_loop() -> asyncio.AbstractEventLoop:
    """The loop dserve's routers run on in this process."""
    worker = worker_or_none()
    if worker is not None:
        return worker.loop.asyncio_loop
    global _thread_loop
    if _thread_loop is None or _thread_loop.is_closed():
        with _lock:
            if _thread_loop is None or _thread_loop.is_closed():
                _thread_loop = _start_thread_loop()
    return _thread_loop


def side_loop() -> asyncio.AbstractEventLoop:
    """A second loop, on a daemon thread of its own, for the control calls that sync code makes
    on the home loop's own thread (``serve.status()`` in a replica's ``async def``): the home
    loop cannot run them while its thread waits for them."""
    global _side_loop
    if _side_loop is None or _side_loop.is_closed():
        with _lock:
            if _side_loop is None or _side_loop.is_closed():
                _side_loop = _start_thread_loop("dserve-control-calls")
    return _side_loop


def in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """True when the calling thread is the one running ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _Crossing:
    """Callbacks handed to one loop from other threads, run in batches: one wake-up
    of the loop per batch instead of one per callback."""

    __slots__ = ("loop", "lock", "items", "scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list = []
        self.scheduled = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` for the loop. Posted from another running loop, the wake-up
        waits for the end of that loop's current turn, so everything it posts meanwhile
        (a burst of calls, the replies of one read) crosses in one wake-up."""
        with self.lock:
            self.items.append((fn, args))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is not None and here is not self.loop:
            if self.loop.is_closed():
                self._wake()  # raises: the caller learns now
            here.call_soon(self._wake_later)
        else:
            self._wake()

    def _wake_later(self) -> None:
        try:
            self._wake()
        except RuntimeError:  # the loop closed meanwhile: what was posted has no one to run it
            pass

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed
            with self.lock:
                self.scheduled = False
                self.items.clear()
            raise

    def _run(self) -> None:
        with self.lock:
            items, self.items = self.items, []
            self.scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one bad callback must not lose the others
                logger.exception("dserve: a cross-thread callback failed")


_crossings: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Crossing]" = weakref.WeakKeyDictionary()


def _crossing(loop: asyncio.AbstractEventLoop) -> _Crossing:
    crossing = _crossings.get(loop)
    if crossing is None:
        with _lock:
            crossing = _crossings.get(loop)
            if crossing is None:
                crossing = _crossings[loop] = _Crossing(loop)
    return crossing


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` soon, from any thread (batched with other crossings);
    ``RuntimeError`` when ``loop`` is closed."""
    _crossing(loop).post(fn, *args)


def submit(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future:
    """Run ``coro`` on ``loop`` (from another thread), like ``asyncio.run_coroutine_threadsafe``:
    cancelling the returned future cancels the task."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def start() -> None:
        if future.cancelled():
            coro.close()
            return
        task = loop.create_task(coro)
        task.add_done_callback(lambda t: _settle(future, t))
        future.add_done_callback(lambda f: f.cancelled() and not task.done() and task.cancel())

    _crossing(loop).post(start)
    return future


def _settle(future: concurrent.futures.Future, task: "asyncio.Future[Any]") -> None:
    try:
        if task.cancelled():
            future.cancel()
        elif task.exception() is not None:
            future.set_exception(task.exception())
        else:
            future.set_result(task.result())
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by its caller meanwhile


async def wait(future: concurrent.futures.Future) -> Any:
    """Await a future settled in another thread (like ``asyncio.wrap_future``); cancelling
    the waiter cancels the future."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    crossing = _crossing(loop)
    future.add_done_callback(lambda f: _deliver(crossing, f, waiter))
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise


def _deliver(crossing: _Crossing, future: concurrent.futures.Future, waiter: "asyncio.Future[Any]") -> None:
    try:
        crossing.post(copy_outcome, future, waiter)
    except RuntimeError:
        pass  # the waiting loop is closed: no one is left to tell


def copy_outcome(source: Any, target: "asyncio.Future[Any]") -> None:
    """Settle ``target`` (an asyncio future) as ``source`` (a done future of either kind) ended,
    unless it is settled already."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class _LentLoop:
    """``loop`` as sync code on another thread sees it through ``asyncio.get_running_loop()``:
    the loop's own methods, except that scheduling (``create_task``, ``call_soon``,
    ``call_later``, ``call_at``) is handed to the loop's thread, so a task made here is a
    real task of ``loop`` that runs there. Off its thread, ``create_task`` waits for that
    thread to make the task (the loop must be free meanwhile, as it is while it awaits the
    thread's work)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def __repr__(self) -> str:
        return f"<dserve lent {self._loop!r}>"

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        if in_loop_thread(self._loop):
            return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result()

    def create_task(self, coro: Any, *, name: Optional[str] = None, context: Any = None) -> "asyncio.Task[Any]":
        context = contextvars.copy_context() if context is None else context  # the caller's, as on a loop
        return self._on_loop(functools.partial(self._loop.create_task, coro, name=name, context=context))

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> asyncio.Handle:
        if in_loop_thread(self._loop):
            return self._loop.call_soon(callback, *args, context=context)
        return self._loop.call_soon_threadsafe(callback, *args, context=context)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        return self._on_loop(functools.partial(self._loop.call_later, delay, callback, *args, context=context))

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        return self._on_loop(functools.partial(self._loop.call_at, when, callback, *args, context=context))


@contextlib.contextmanager
def lend_loop(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Within this block, sync code on this (non-loop) thread finds ``loop`` as its running loop
    (``asyncio.get_running_loop()``, ``asyncio.create_task``), as a Ray replica's sync
    constructor finds the replica's loop; tasks it creates run on ``loop``."""
    previous = asyncio._get_running_loop()
    asyncio._set_running_loop(_LentLoop(loop))  # type: ignore[arg-type]
    try:
        yield
    finally:
        asyncio._set_running_loop(previous)
