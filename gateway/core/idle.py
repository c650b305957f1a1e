"""Learning a path's idle timeout from the WebSockets it kills.

Theory of operation
===================

Proxies and load balancers close a connection that carried no byte, either
way, for some time: HAProxy's ``timeout tunnel``, nginx's
``proxy_read_timeout``, a cloud load balancer's idle timeout (60 s by
default). A hop session sends a heartbeat PING after ``heartbeat`` seconds
of silence, so a path whose limit is above the heartbeat never sees an idle
WebSocket; one whose limit is below it kills every idle WebSocket after the
same time, and the hop flaps between WebSocket and long-poll for as long as
it stays idle.

The rule: when a WebSocket dies *by itself* (not our close, not our
demotion) after ``idle`` seconds without a byte either way, and the death
before it came after about the same idle time (within ``tolerance`` of
either value, or ``slack`` seconds), the path has an idle limit of about the
shorter of the two. The heartbeat becomes ``ratio`` times that limit, never
below ``floor``, and never goes up again: a lesson is kept for the upstream,
across sessions. A death after less than ``floor`` seconds of silence says
nothing about idleness (a cut while traffic flows, a restart) and is not
counted, so a path cut at random does not drive the heartbeat down.

Pure: observations in, heartbeat out; no clock, no I/O. The I/O layer
measures ``idle`` (``HopSession.last_activity``) and applies the heartbeat.
``client_js/src/idle.js`` is the same rule for the browser shim.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IdleLearner", "IdleRule", "Lesson"]


@dataclass(frozen=True, kw_only=True, slots=True)
class IdleRule:
    """How close two deaths must be, and how far below the limit the heartbeat goes."""

    #: The lowest heartbeat learned (seconds); shorter silences are not counted.
    floor: float = 2.0
    #: The new heartbeat as a fraction of the observed limit.
    ratio: float = 0.5
    #: Two idle times are "about the same" within this fraction of the larger...
    tolerance: float = 0.2
    #: ...or within this many seconds.
    slack: float = 1.5

    def __post_init__(self) -> None:
        if not (self.floor > 0 and 0 < self.ratio < 1):
            raise ValueError("floor must be > 0 and ratio in (0, 1)")
        if self.tolerance < 0 or self.slack < 0:
            raise ValueError("tolerance and slack must be >= 0")

    def same(self, a: float, b: float) -> bool:
        """Are two idle times about the same?"""
        return abs(a - b) <= max(self.slack, self.tolerance * max(a, b))


@dataclass(frozen=True, slots=True)
class Lesson:
    """What two deaths taught: the path's idle limit and the heartbeat now used."""

    limit: float
    heartbeat: float


class IdleLearner:
    """One upstream's heartbeat: starts at ``start``, lowered by what deaths teach."""

    __slots__ = ("_last", "heartbeat", "learned", "rule")

    def __init__(self, start: float, rule: IdleRule | None = None) -> None:
        if not start > 0:
            raise ValueError("the start heartbeat must be > 0")
        self.rule = rule or IdleRule()
        #: The heartbeat sessions to this upstream use now (seconds).
        self.heartbeat = start
        #: The idle limit learned, None until a lesson.
        self.learned: float | None = None
        self._last: float | None = None

    def websocket_died(self, idle: float) -> Lesson | None:
        """A WebSocket died by itself after ``idle`` s of silence: a new lesson, or None."""
        rule = self.rule
        if not idle > rule.floor:  # also refuses NaN
            return None
        last, self._last = self._last, idle
        if last is None or not rule.same(last, idle):
            return None
        limit = min(last, idle)
        heartbeat = max(rule.floor, round(rule.ratio * limit, 1))
        if heartbeat >= self.heartbeat:
            return None  # the heartbeat already beats it (a lesson learned before)
        self._last = None  # the next lesson needs two new deaths
        self.heartbeat, self.learned = heartbeat, limit
        return Lesson(limit=limit, heartbeat=heartbeat)
