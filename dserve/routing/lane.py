"""Lanes: calls made on a caller's own event loop, routed on that loop.

A process's runtime lives on its home loop (a daemon thread in a driver). Async
code on another loop — ``asyncio.run(main())`` in a script, a notebook cell, a
web app calling handles — would otherwise hand every call across threads twice
(the call in, the result back), which costs more CPU than the call itself. Once
a loop has made ``LANE_AFTER_CALLS`` calls it gets a ``Lane``: routers and
data-plane connections of its own, on that loop, so its calls never leave it.

A lane's routers are ordinary ``Router`` objects (the same replica choice,
limits, queue and retries); each follows the home router of its deployment,
which copies every replica-set update to it and counts its queue in the
process's queue reports. A loop that closes takes its lane with it (lanes are
weakly keyed by loop); a runtime that closes closes its lanes' connections.
"""
from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from ..event_loop import post
from .router import Router
from .transport import MuxConnection

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["Lane", "LANE_AFTER_CALLS"]

LANE_AFTER_CALLS = 32  # a loop making fewer calls is not worth its own connections


class Lane:
    """Routers and connections bound to one caller loop, following the home runtime's routers."""

    def __init__(self, home: "Runtime", loop: asyncio.AbstractEventLoop) -> None:
        self.home = home
        self.loop = loop
        self.local_host = home.local_host
        self.local_address = home.local_address
        self.routers: Dict[Tuple[str, str], Router] = {}
        self.connections: Dict[str, MuxConnection] = {}
        self.closed = False

    def router(self, app: str, deployment: str) -> Router:
        """This loop's router for a deployment (caller loop only); replica sets come from home."""
        key = (app, deployment)
        router = self.routers.get(key)
        if router is None or not router.exists:
            router = self.routers[key] = Router(self, app, deployment, track=False)
            post(self.home.loop, self.home.follow, app, deployment, router)
        return router

    def channel(self, slot: Any) -> MuxConnection:
        """Always a connection: a replica in this process belongs to another loop's thread."""
        conn = self.connections.get(slot.address)
        if conn is None or conn.closed:
            conn = self.connections[slot.address] = MuxConnection(slot.address, self.home.connection_args)
        return conn

    def report_queued(self, router: Router) -> None:
        """The home runtime reports this lane's queues with its own (``Router.followers``): tell it
        when its periodic report is not running yet, or when there is no replica at all (the
        controller hears at once: scale from zero)."""
        if self.home._reporter is None or not router.slots:
            post(self.home.loop, self.home.report_queued, router)

    def close(self) -> None:
        """Fail waiting callers and drop connections (on the lane's loop)."""
        self.closed = True
        for router in self.routers.values():
            router._fail_waiters(RuntimeError("dserve was shut down"))
        for conn in self.connections.values():
            conn.close()
        self.routers.clear()
        self.connections.clear()


class Lanes:
    """One runtime's lanes, by caller loop."""

    def __init__(self) -> None:
        self._calls: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int]" = weakref.WeakKeyDictionary()
        self._lanes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Lane]" = weakref.WeakKeyDictionary()

    def get(self, home: "Runtime", loop: asyncio.AbstractEventLoop) -> Optional[Lane]:
        """``loop``'s lane, made once the loop has called often enough; None until then."""
        lane = self._lanes.get(loop)
        if lane is not None:
            return lane
        calls = self._calls.get(loop, 0) + 1
        self._calls[loop] = calls
        if calls < LANE_AFTER_CALLS:
            return None
        lane = self._lanes[loop] = Lane(home, loop)
        self._calls.pop(loop, None)
        return lane

    def close(self) -> None:
        lanes = list(self._lanes.values())
        self._lanes.clear()
        for lane in lanes:
            try:
                post(lane.loop, lane.close)
            except RuntimeError:  # its loop is closed: its sockets went with it
                pass
