"""Many timers of one fixed delay, for the request path: a FIFO instead of the loop's heap.

Every request a proxy forwards sets a timer (after ``DISCONNECT_WATCH_AFTER_S`` it
starts watching for the client's disconnect) and nearly always cancels it a
moment later. ``loop.call_later`` costs a handle and a heap push each time, and
cancelled handles linger in the heap. Timers that share one delay expire in the
order they were set, so a deque and a single loop timer serve them all: setting
and cancelling are O(1), and a cancelled timer is dropped when its time comes.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable, Deque, List, Optional

__all__ = ["FixedDelayTimers", "TIMER_SLACK_S"]

logger = logging.getLogger("dserve")

Entry = List  # [deadline, callback or None once cancelled]

# How early a loop timer may fire: uvloop's clock and timers count whole milliseconds, so a
# timer set for a deadline can run a fraction of a millisecond before it. A deadline within
# this much of now is due (else the timer would be re-armed for 0 ms until the clock ticks).
TIMER_SLACK_S = 0.001


class FixedDelayTimers:
    """``call_later(fn)`` runs ``fn`` ``delay`` seconds later on the running loop unless
    ``cancel``-ed first."""

    __slots__ = ("delay", "queue", "timer", "loop")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queue: Deque[Entry] = collections.deque()
        self.timer: Optional[asyncio.TimerHandle] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def call_later(self, fn: Callable[[], None]) -> Entry:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        entry = [loop.time() + self.delay, fn]
        self.queue.append(entry)
        if self.timer is None:
            self.timer = loop.call_at(entry[0], self._fire)
        return entry

    @staticmethod
    def cancel(entry: Entry) -> None:
        entry[1] = None

    def _fire(self) -> None:
        self.timer = None
        queue, now = self.queue, self.loop.time() + TIMER_SLACK_S  # type: ignore[union-attr]
        while queue and queue[0][0] <= now:
            fn = queue.popleft()[1]
            if fn is not None:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - one failing callback must not stop the others
                    logger.exception("dserve: a timer callback failed")
        while queue and queue[0][1] is None:  # cancelled: no need to wake for them
            queue.popleft()
        if queue:
            self.timer = self.loop.call_at(queue[0][0], self._fire)  # type: ignore[union-attr]
