"""``timers.FixedDelayTimers`` on both event loops dserve runs (asyncio, and uvloop on the
clusters it starts): each timer fires once, in order, a cancelled one never, and a loop
clock that counts whole milliseconds (uvloop's) does not make it spin."""
import asyncio

import pytest
import uvloop

from dserve.config import DISCONNECT_WATCH_AFTER_S
from dserve.timers import FixedDelayTimers


class CountingTimers(FixedDelayTimers):
    __slots__ = ("wakeups",)

    def _fire(self) -> None:
        self.wakeups += 1
        super()._fire()


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_each_timer_fires_once_in_order_without_spinning(new_loop):
    async def scenario():
        timers = CountingTimers(DISCONNECT_WATCH_AFTER_S)  # the proxy's disconnect watch
        timers.wakeups = 0
        fired, cancelled = [], []
        for i in range(40):  # one timer every 13 ms: each expires on its own
            entry = timers.call_later(lambda i=i: fired.append(i))
            if i % 10 == 9:
                cancelled.append(i)
                FixedDelayTimers.cancel(entry)
            await asyncio.sleep(0.013)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(fired) < 36 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return fired, cancelled, timers.wakeups

    loop = new_loop()
    try:
        fired, cancelled, wakeups = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert fired == [i for i in range(40) if i not in cancelled]
    assert wakeups <= 40  # one per timer at most (without the slack, ~1,000 on uvloop)
