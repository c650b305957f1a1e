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

Why a hop moved
---------------
Every move names its reason, one token of a small fixed set (it is the
``reason`` label of ``hopgate_transport_switches_total``, so no addresses or
numbers), and a ``detail`` sentence for people.  The ladder keeps the last
``HISTORY`` moves (:class:`Transition`) and counts every move by
``(from, to, reason)`` in ``switches``:

    session_opened    plain -> websocket|long-poll: a session opened on the
                      transport it asked for first
    upgrade_refused   -> long-poll: the WebSocket upgrade was answered
                      without a 101 (detail: the status, e.g. a proxy's 400)
    upgrade_failed    -> long-poll: the WebSocket could not be connected,
                      its handshake or its probe failed (detail: the error)
    websocket_closed  websocket -> long-poll: the socket closed and the
                      WebSocket is in back-off, so the session resumed on
                      long-poll until the next probe
    probe_succeeded   long-poll -> websocket: a re-probe (or a resume) got a
                      WebSocket that answered its probe
    stalled           websocket -> long-poll: the watchdog saw no progress
    demoted           websocket -> long-poll: asked to (``demote()``)
    peer_closed       -> plain: the peer closed the session (1000/1001)
    session_expired   -> plain: the peer forgot the session, or no transport
                      worked for ``resume_grace`` (4000/4002)
    session_lost      -> plain: any other end (protocol error, auth failure)
    shutdown          -> plain: this gateway is stopping

A session that opens on long-poll because the WebSocket was refused or
failed counts as a fallback too: the hop fell back from what it tried, and
``last_error`` says why until a WebSocket works.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

from gateway.core.backoff import Backoff
from gateway.core.session.errors import CloseCode

Rung = Literal["plain", "long-poll", "websocket"]

# The reasons a hop moves (see the module docstring); a metric label, so a fixed set.
SESSION_OPENED: Final = "session_opened"
UPGRADE_REFUSED: Final = "upgrade_refused"
UPGRADE_FAILED: Final = "upgrade_failed"
WEBSOCKET_CLOSED: Final = "websocket_closed"
PROBE_SUCCEEDED: Final = "probe_succeeded"
STALLED: Final = "stalled"
DEMOTED: Final = "demoted"
PEER_CLOSED: Final = "peer_closed"
SESSION_EXPIRED: Final = "session_expired"
SESSION_LOST: Final = "session_lost"
SHUTDOWN: Final = "shutdown"
#: The peer said GOAWAY (it is draining): a new session is opened at once.
GOAWAY: Final = "goaway"
REASONS: Final = frozenset(
    {
        SESSION_OPENED,
        UPGRADE_REFUSED,
        UPGRADE_FAILED,
        WEBSOCKET_CLOSED,
        PROBE_SUCCEEDED,
        STALLED,
        DEMOTED,
        PEER_CLOSED,
        SESSION_EXPIRED,
        SESSION_LOST,
        SHUTDOWN,
        GOAWAY,
    }
)
#: Reasons that mean "the WebSocket did not work": the hop fell back from what it tried.
_WEBSOCKET_FAILED: Final = frozenset({UPGRADE_REFUSED, UPGRADE_FAILED})
#: Moves kept for status (the counters in ``switches`` keep counting beyond).
HISTORY: Final = 16


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


def close_reason(code: int) -> str:
    """The reason token for a session that ended with close ``code`` (not by our shutdown)."""
    if code in (CloseCode.SESSION_EXPIRED, CloseCode.UNKNOWN_SESSION):
        return SESSION_EXPIRED
    if code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
        return PEER_CLOSED
    return SESSION_LOST


class Peer(Enum):
    UNKNOWN = "unknown"
    GATEWAY = "gateway"
    LEGACY = "legacy"


@dataclass(frozen=True, kw_only=True)
class LadderSettings:
    retry_initial: float = 1.0
    #: Short enough that a peer back from a restart or crash is rejoined
    #: within half a minute; one POST per attempt is cheap for the peer.
    retry_max: float = 30.0
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
        #: The latest moves, oldest first.
        self.transitions: deque[Transition] = deque(maxlen=HISTORY)
        #: Every move since start, by (from, to, reason).
        self.switches: Counter[tuple[str, str, str]] = Counter()
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

    def session_up(
        self, now: float, transport: Rung, reason: str = SESSION_OPENED, detail: str = ""
    ) -> None:
        """A session opened on ``transport``; ``reason`` says why that one (see REASONS)."""
        self.connecting = False
        self.last_error = detail if reason in _WEBSOCKET_FAILED else ""
        self._session_since = now
        self._move(now, transport, reason, detail)

    def transport_changed(self, now: float, transport: Rung, reason: str, detail: str = "") -> None:
        """The session switched transport (probe succeeded, watchdog demoted...)."""
        if self.rung == "plain" or transport == self.rung:
            return
        if transport == "websocket":
            self.last_error = ""
        elif detail:
            self.last_error = detail
        self._move(now, transport, reason, detail)

    def session_lost(
        self, now: float, reason: str, detail: str = "", *, retry_now: bool = False
    ) -> None:
        """The session ended: forward plain until a new one opens.

        ``retry_now``: the peer moved us on (GOAWAY) or lost the session (a crashed
        instance behind a load balancer); the path works, so no back-off for this one.
        """
        self.last_error = detail or reason
        lived = 0.0 if self._session_since is None else now - self._session_since
        self._session_since = None
        if lived >= self.settings.stable_after:
            self._retry = self._retry.reset()
        if retry_now:
            self._not_before = now
        else:
            self._back_off(now)
        self._move(now, "plain", reason, detail)

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

    def _move(self, now: float, rung: Rung, reason: str, detail: str) -> None:
        assert reason in REASONS, f"unknown reason token {reason!r}"
        before = self.rung
        if _HEIGHT[rung] > _HEIGHT[before]:
            self.upgrades += 1
        elif _HEIGHT[rung] < _HEIGHT[before]:
            self.fallbacks += 1
        if reason in _WEBSOCKET_FAILED and before == "plain":
            self.fallbacks += 1  # opened on long-poll: fell back from the WebSocket it tried
        self.rung = rung
        if rung != before:
            self.transitions.append(Transition(now, before, rung, reason, detail))
            self.switches[(before, rung, reason)] += 1
