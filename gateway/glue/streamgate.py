"""Streams this gateway opens on one hop session, kept within the peer's stream limit.

The answering gateway refuses an OPEN beyond ``--max-streams`` (a REFUSED
reset, 503 to the legacy client). A burst beyond that many requests in
flight (a legacy app sending without waiting while the hop recovers, every
request held until the session moves) used to be refused by the hundred.
The opening side therefore counts its own streams against the same limit
and lets a request over it wait for a stream to end, first come first
served, bounded twice: at most ``queue_cap`` requests wait (the one after
gets a 503 with ``Retry-After``), and each waits at most ``timeout`` (then it
has still not left this gateway, and goes plain).

The peer's limit is its own ``--max-streams``, which this side cannot know:
the gate starts at this gateway's own ``--max-streams`` (the same on both
ends, as a deployment sets them) and is lowered when the peer refuses a
stream for its limit (``lower_limit``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

__all__ = ["QUEUE_FACTOR", "RETRY_AFTER", "GateFull", "StreamGate"]

#: Seconds a client refused at a full queue is asked to wait (``Retry-After``).
RETRY_AFTER: Final = 1
#: Requests that may wait, per stream of the (configured) limit.
QUEUE_FACTOR: Final = 4


class GateFull(Exception):
    """Too many requests already wait for a stream: refuse this one (503 + Retry-After)."""


class StreamGate:
    """A FIFO counting semaphore with a bounded queue; one per opening link, made on first use."""

    __slots__ = ("_limit", "_open", "_queue_cap", "_waiters", "_waiting")

    def __init__(self, limit: int, queue_cap: int) -> None:
        self._limit = limit
        self._queue_cap = queue_cap
        self._open = 0
        self._waiting = 0  # waiters not yet handed a slot (nor gone)
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def open(self) -> int:
        """Streams holding a slot now."""
        return self._open

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def full(self) -> bool:
        """Whether ``acquire`` would wait: every slot taken, or others already waiting."""
        return self._open >= self._limit or self._waiting > 0

    def take(self) -> bool:
        """Take a slot if one is free and nobody waits for one (``acquire`` without a wait)."""
        if self.full:
            return False
        self._open += 1
        return True

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting up to ``timeout``; GateFull or TimeoutError if none."""
        if not self.full:
            self._open += 1
            return
        cap = self._queue_cap
        if self._waiting >= cap:
            raise GateFull(f"{self._open} streams open and {cap} requests waiting for one")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await waiter  # release() hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            else:
                waiter.cancel()
                self._waiting -= 1
                if waiter in self._waiters:  # release() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def lower_limit(self, held: int) -> int:
        """The peer refused a stream while it held ``held`` of ours: no more from now on.

        Only ever lowered (a peer's ``--max-streams`` is its own, and the
        session ends with that peer), never below 1; returns the new limit.
        """
        self._limit = max(1, min(self._limit, held))
        return self._limit

    def release(self) -> None:
        """A stream ended: its slot goes to the first waiter, else back to the pool."""
        while self._waiters and self._open <= self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._waiting -= 1
                waiter.set_result(None)  # the slot moves to it: the count stays
                return
        self._open -= 1
