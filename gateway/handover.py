"""Moving a hop to a new session: after its peer said GOAWAY, or lost the session in a crash.

The client gateway's :class:`~gateway.link.UpstreamLink` keeps one live
session per next hop. Two things end it without the path being broken, and
then waiting out the ladder's back-off would only send requests plain for
nothing:

* **GOAWAY** (the instance behind the load balancer is draining,
  ``docs/protocol.md`` section 6a): new streams must go to a new session,
  which the load balancer puts on another instance; the streams in flight
  finish on the old one. :class:`Retiring` keeps the old session until its
  streams are done (or it closes under them at the end of the peer's grace),
  then closes it normally.
* **Session lost** (kill -9 of the instance): a resume through the load
  balancer reaches a surviving instance, which does not know the session
  ("no such hop session", or a cluster's "owner is gone": 404). That is no
  reason to back off; :func:`peer_forgot` tells it from an unreachable peer.

Nothing here runs per message: the retiring check is one 0.1 s poll per
retiring session, which exists only while a peer drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from gateway.core.ladder import GOAWAY, close_reason
from gateway.core.session.errors import CloseCode
from gateway.glue.link import TunnelLink
from gateway.status import GatewayStats
from gateway.transports.connector import SessionConnector
from gateway.transports.errors import PEER_FORGOT
from gateway.transports.hopsession import HopSession
from gateway.transports.tasks import TaskSet

__all__ = [
    "RETIRE_LIMIT",
    "Retiring",
    "next_tunnel",
    "peer_forgot",
    "session_ended",
    "until_closed_or_moved",
    "wait_drained",
]

#: Longest a session told GOAWAY is kept for its streams; the peer ends it at
#: the end of its own --shutdown-grace anyway.
RETIRE_LIMIT: Final = 600.0
_RETIRE_POLL: Final = 0.1
#: Draining: how long an idle hop session told GOAWAY is left for its peer to close.
DRAIN_SETTLE: Final = 1.0

log = logging.getLogger("hopgate")


def peer_forgot(code: int, reason: str) -> bool:
    """The session ended because the peer side answered 404 for it: its instance is gone."""
    return code == CloseCode.SESSION_EXPIRED and reason == PEER_FORGOT


async def wait_drained(
    accepted: set[TunnelLink], in_flight: Callable[[], int], grace: float
) -> None:
    """A draining instance: serve until nothing is in flight, at most ``grace`` s.

    ``in_flight()``: legacy exchanges still running (plain or over a hop).
    A peer that honours GOAWAY closes its session once its streams are done;
    one that does not (an older gateway or shim) keeps an idle one open: a
    session idle for ``DRAIN_SETTLE`` s is left to the caller to close. After
    that time from the start (a round trip on any sane path) the final
    GOAWAY names the last stream served. Checked every 0.1 s while stopping
    only: nothing per message.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    settled = loop.time() + min(DRAIN_SETTLE, grace)
    final = False
    idle_since: dict[TunnelLink, float] = {}
    while (now := loop.time()) < deadline:
        if not final and now >= settled:
            final = True
            for tunnel in list(accepted):
                tunnel.go_away("instance draining", final=True)
        for tunnel in list(accepted):
            if tunnel.idle:
                idle_since.setdefault(tunnel, now)
            else:
                idle_since.pop(tunnel, None)
        quiet = all(now - idle_since.get(t, now) >= DRAIN_SETTLE for t in accepted)
        if quiet and not in_flight():
            return
        await asyncio.sleep(0.1)
    busy = sum(not tunnel.idle for tunnel in accepted)
    if busy:
        log.info("= %d hop session(s) still carry streams after %gs: closing them", busy, grace)


async def next_tunnel(
    current: Callable[[], TunnelLink | None], old: TunnelLink, wait: float
) -> TunnelLink | None:
    """The link's live tunnel once it is another than ``old``, within ``wait`` s; else None.

    Asked only by a request being sent again after a failover or GOAWAY (a
    0.05 s check while it waits), never per message.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while (tunnel := current()) is None or tunnel is old:
                await asyncio.sleep(0.05)
    tunnel = current()
    return tunnel if tunnel is not old else None


def session_ended(closed: tuple[int, str] | None, stats: GatewayStats) -> tuple[str, str, bool]:
    """(ladder reason, detail, open the next session at once?) for how a session ended.

    ``closed`` is what :func:`until_closed_or_moved` returned (None: GOAWAY).
    """
    if closed is None:
        stats.goaways_received += 1
        return GOAWAY, "the peer said GOAWAY (draining): a new session for new streams", True
    code, why = closed
    detail = f"session closed ({code} {why})".strip()
    if peer_forgot(code, why):
        stats.failovers += 1  # its instance is gone; another one answered
        return close_reason(code), detail, True
    return close_reason(code), detail, False


async def until_closed_or_moved(hop: HopSession, moved: asyncio.Event) -> tuple[int, str] | None:
    """(code, reason) when the session closed; None when the peer said GOAWAY first."""
    closed = asyncio.ensure_future(hop.wait_closed())
    told = asyncio.ensure_future(moved.wait())
    try:
        await asyncio.wait((closed, told), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (closed, told):
            if not waiter.done():
                waiter.cancel()
        await asyncio.gather(closed, told, return_exceptions=True)
    if closed.done() and not closed.cancelled() and closed.exception() is None:
        return closed.result()
    return None


class Retiring:
    """Sessions told GOAWAY: each closes once its streams are done."""

    def __init__(self, limit: float = RETIRE_LIMIT) -> None:
        self._limit = limit
        self._tasks = TaskSet()
        self._links: set[TunnelLink] = set()

    def __len__(self) -> int:
        return len(self._links)

    def retire(self, tunnel: TunnelLink, connector: SessionConnector) -> None:
        self._links.add(tunnel)
        name = f"retire-{tunnel.hop.session_id[:6]}"
        self._tasks.spawn(self._finish(tunnel, connector), name=name)

    async def _finish(self, tunnel: TunnelLink, connector: SessionConnector) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._limit):
                    while tunnel.alive and not tunnel.idle:
                        await asyncio.sleep(_RETIRE_POLL)
        finally:
            self._links.discard(tunnel)
            with contextlib.suppress(Exception):
                await tunnel.close()
            with contextlib.suppress(Exception):
                await connector.close()

    async def close(self) -> None:
        """Our own stop: what is still in flight on retiring sessions ends now."""
        await self._tasks.cancel_all()
