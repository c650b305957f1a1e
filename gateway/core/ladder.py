"""The fallback ladder of one hop: plain HTTP, long-poll session, WebSocket session.

Theory of operation
-------------------
Each upstream of a gateway sits on one rung:

    websocket      a hop session whose current transport is a WebSocket
    long-poll      a hop session carried by held GETs and POSTs
    plain          no session: requests are forwarded as ordinary HTTP

A hop climbs when it learns the peer is a gateway (a discovery note or a
verified hello) and a session opens; the session layer itself moves between
long-poll and WebSocket (probe first, watchdog back down) and reports each
move here.  A hop falls to ``plain`` when its session is lost or the peer
stops answering as a gateway; it then waits out a back-off before trying
again, doubling each time an attempt fails and starting over once a
session has lived for a while.  A peer found to be legacy is not asked again
until ``legacy_recheck`` has passed: a legacy origin pays for at most one
well-known-path request per recheck period, and nothing per request.

The ladder is pure bookkeeping with the clock passed in, so the I/O layer
(``gateway.link``) decides *when* to act by asking it, and the tests
drive it without an event loop.  The counters are what ``/.hopgate/status``
shows as ``upgrades`` and ``fallbacks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from gateway.core.backoff import Backoff

Rung = Literal["plain", "long-poll", "websocket"]


@dataclass(frozen=True, slots=True)
class Transition:
    """One move of a hop between rungs, kept so status and metrics can say why.

    ``reason`` is a short token from a small fixed set (it is a metric
    label, so it must not carry addresses or numbers); ``detail`` is the
    sentence an operator reads ("WebSocket upgrade refused (400)").
    ``at`` is the clock the I/O layer passed in.
    """

    at: float
    from_rung: Rung
    to_rung: Rung
    reason: str
    detail: str = ""


_HEIGHT: dict[Rung, int] = {"plain": 0, "long-poll": 1, "websocket": 2}


class Peer(Enum):
    UNKNOWN = "unknown"
    GATEWAY = "gateway"
    LEGACY = "legacy"


@dataclass(frozen=True, kw_only=True)
class LadderSettings:
    retry_initial: float = 1.0
    retry_max: float = 300.0
    #: A session that lived this long resets the back-off.
    stable_after: float = 30.0
    #: How long a peer found to be legacy is left alone before asking again.
    legacy_recheck: float = 600.0


class Ladder:
    """Which rung a hop is on, and whether it is time to try climbing."""

    def __init__(self, settings: LadderSettings | None = None) -> None:
        self.settings = settings or LadderSettings()
        self.rung: Rung = "plain"
        self.peer = Peer.UNKNOWN
        self.upgrades = 0
        self.fallbacks = 0
        self.connecting = False
        self.last_error = ""
        self._retry = Backoff(self.settings.retry_initial, self.settings.retry_max)
        self._not_before = 0.0
        self._session_since: float | None = None
        self._recheck_at: float | None = None

    # -- what the I/O layer learns ------------------------------------------

    def peer_is_gateway(self) -> None:
        """A note or a verified hello came back: the next hop is a gateway."""
        self.peer = Peer.GATEWAY
        self._recheck_at = None

    def peer_is_legacy(self, now: float) -> None:
        """The hello got no valid answer: leave this peer alone for a while."""
        self.peer = Peer.LEGACY
        self._recheck_at = now + self.settings.legacy_recheck

    def connect_started(self) -> None:
        self.connecting = True

    def connect_failed(self, now: float, reason: str) -> None:
        """A session could not be opened; back off before the next attempt."""
        self.connecting = False
        self.last_error = reason
        self._back_off(now)

    def session_up(self, now: float, transport: Rung) -> None:
        self.connecting = False
        self.last_error = ""
        self._session_since = now
        self._move(transport)

    def transport_changed(self, transport: Rung) -> None:
        """The session switched transport (probe succeeded, or watchdog demoted)."""
        if self.rung != "plain":
            self._move(transport)

    def session_lost(self, now: float, reason: str) -> None:
        """The session ended: forward plain until a new one opens."""
        self.last_error = reason
        lived = 0.0 if self._session_since is None else now - self._session_since
        self._session_since = None
        if lived >= self.settings.stable_after:
            self._retry = self._retry.reset()
        self._back_off(now)
        self._move("plain")

    # -- what the I/O layer asks ---------------------------------------------

    def should_connect(self, now: float) -> bool:
        """Open a session now? Only to a gateway, once at a time, after back-off."""
        return (
            self.peer is Peer.GATEWAY
            and self.rung == "plain"
            and not self.connecting
            and now >= self._not_before
        )

    def should_check_hello(self, now: float) -> bool:
        """Ask the well-known path now? Never per request; once per recheck period."""
        if self.peer is Peer.GATEWAY or self.connecting:
            return False
        return self._recheck_at is None or now >= self._recheck_at

    def next_attempt(self) -> float:
        return self._not_before

    # -- internals -------------------------------------------------------------

    def _back_off(self, now: float) -> None:
        self._not_before = now + self._retry.delay
        self._retry = self._retry.doubled()

    def _move(self, rung: Rung) -> None:
        if _HEIGHT[rung] > _HEIGHT[self.rung]:
            self.upgrades += 1
        elif _HEIGHT[rung] < _HEIGHT[self.rung]:
            self.fallbacks += 1
        self.rung = rung
