"""The event loop a process's handles and routers live on.

In a Dask worker (replicas, proxies, tasks) that is the worker's own loop. In a
driver, script or notebook it is a daemon thread owned by dserve, so handles
work from sync code (``.result()``) and from any other event loop (``await``).
"""
from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["home_loop", "in_loop_thread", "worker_or_none", "set_process_worker"]

_lock = threading.Lock()
_thread_loop: Optional[asyncio.AbstractEventLoop] = None
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


def _start_thread_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="dserve-event-loop", daemon=True)
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


def in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """True when the calling thread is the one running ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
