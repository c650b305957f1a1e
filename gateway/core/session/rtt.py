"""The path's round-trip time, and how long a transport may go without progress.

A fixed stall timeout is either too long (a black-holed WebSocket held
traffic for 15 s) or too short for a slow path. Like TCP's retransmission
timer (RFC 6298), the session keeps a smoothed RTT and its variation from
what it observes anyway, without sending anything extra:

* an ACK covering the one DATA/CLOSE frame being timed (one at a time, and
  never a retransmitted one: its ACK could answer either copy, Karn's rule);
* the PONG answering our heartbeat PING;
* a probe's answer (the candidate transport's round trip, measured just
  before traffic moves onto it).

A transport whose acks or pongs stop, with data or a ping outstanding, is
stalled after ``STALL_RTTS`` retransmission timeouts, never sooner than
``STALL_FLOOR`` (a loaded event loop must not look like a dead path) and
never later than the configured ``stall_timeout``, which is also the bound
used before any round trip was observed.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STALL_FLOOR", "STALL_RTTS", "RoundTrip"]

#: Never declare a stall sooner than this (seconds).
STALL_FLOOR: Final = 0.5
#: A stall is this many retransmission timeouts (srtt + 4 * rttvar) without progress.
STALL_RTTS: Final = 3.0
_ALPHA: Final = 0.125  # RFC 6298's gains
_BETA: Final = 0.25


class RoundTrip:
    """Smoothed RTT, its variation, and the one frame being timed."""

    # Thousands of idle sessions hold one: no per-instance dict.
    __slots__ = ("rttvar", "srtt", "timed_at", "timed_seq")

    def __init__(self) -> None:
        self.srtt: float | None = None  # None: nothing observed yet
        self.rttvar = 0.0
        self.timed_seq = 0  # 0: no frame being timed
        self.timed_at = 0.0

    def sample(self, rtt: float) -> None:
        """Fold one observed round trip in (RFC 6298, section 2)."""
        rtt = max(0.0, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar += _BETA * (abs(self.srtt - rtt) - self.rttvar)
        self.srtt += _ALPHA * (rtt - self.srtt)

    def sent(self, first: int, last: int, high_before: int, now: float) -> None:
        """Frames ``first..last`` went out; ``high_before`` was the highest seq sent before.

        Resending the frame being timed spoils its sample (Karn); a fresh
        frame starts a new one when none is running.
        """
        if last < first:
            return
        if self.timed_seq and first <= self.timed_seq:
            self.timed_seq = 0
        if not self.timed_seq and last > high_before:
            self.timed_seq, self.timed_at = last, now

    def acked(self, upto: int, now: float) -> None:
        """The peer has everything up to ``upto``: the timed frame's sample, if it is covered."""
        if self.timed_seq and upto >= self.timed_seq:
            self.timed_seq = 0
            self.sample(now - self.timed_at)

    def stall_after(self, bound: float) -> float:
        """Seconds without progress that mean the transport is stalled (``bound`` at most)."""
        if self.srtt is None:
            return bound
        rto = self.srtt + 4 * self.rttvar
        return min(bound, max(STALL_FLOOR, STALL_RTTS * rto))
