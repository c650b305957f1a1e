"""The session's timers, kept as timestamps of the caller's clock.

No clock inside, so every timer is a timestamp compared with the ``now`` the
I/O layer passes in; ``Session.next_deadline`` says when to call
``handle_timer`` next. Timers: heartbeat PING after ``heartbeat_interval``
without sending; retransmit (data outstanding and no ack progress for
``retransmit_timeout``: a batch was lost inside a transport); stall watchdog
(data or ping outstanding and no ack/pong progress for a few round trips,
``stall_timeout`` at most, see ``rtt`` -> ``TransportStalled`` once per
transport); expiry (no transport for
``resume_grace``); close handshake (``close_timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.session.config import SessionConfig
from gateway.core.session.rtt import RoundTrip

__all__ = ["LATE_GRACE", "LATE_TOLERATED", "Liveness"]

#: A timer this late (seconds) means the caller's loop did not run: see ``excuse``.
LATE_TOLERATED = 0.02
#: After an excused lateness, the time the loop has to read what waits in its sockets.
LATE_GRACE = 0.05


@dataclass(slots=True)
class Liveness:
    """When things last happened on the transport, and the heartbeat PING in flight."""

    detached_since: float | None  # None while a transport is attached
    last_sent_at: float  # heartbeat: a PING goes after heartbeat_interval of silence
    retx_since: float  # retransmit: last ack progress (or first send) with data outstanding
    watch_since: float  # stall watch: last ack/pong progress
    stall_reported: bool = False  # TransportStalled went out for this transport
    ping_nonce: int | None = None  # the heartbeat PING awaiting its PONG
    ping_due: bool = False  # that PING still has to go out
    nonce: int = 0  # last nonce handed to a PING or a probe
    ping_sent_at: float = 0.0  # when the heartbeat PING went out (its round trip)
    rtt: RoundTrip = field(default_factory=RoundTrip)  # sets how soon a stall is declared
    excused: float = 0.0  # seconds of the caller's lateness the stall watch has forgiven

    def restart(self, now: float) -> None:
        """A new transport carries the session: every timer starts over."""
        self.last_sent_at = self.retx_since = self.watch_since = now
        self.stall_reported = False
        self.excused = 0.0

    def attach(self) -> None:
        """A transport is attached: the resume_grace clock stops; a PING due was the old one's."""
        self.detached_since = None
        self.ping_nonce = None
        self.ping_due = False

    def detach(self, now: float) -> None:
        """The transport is gone: the resume_grace clock starts; its PING will not be answered."""
        self.detached_since = now
        self.ping_nonce = None

    def progress(self, now: float) -> None:
        """The peer acked data or answered a ping: the stall watch starts over."""
        self.watch_since = now
        self.stall_reported = False
        self.excused = 0.0

    def heartbeat_answered(self, nonce: int, now: float) -> bool:
        """The PONG answers our heartbeat PING (sent, not just due): the stall watch restarts."""
        if nonce != self.ping_nonce or self.ping_due:
            return False
        self.ping_nonce = None
        self.rtt.sample(now - self.ping_sent_at)
        self.progress(now)
        return True

    def ping_sent(self, now: float) -> None:
        """The heartbeat PING is in the batch going out now: its round trip starts."""
        self.ping_due = False
        self.ping_sent_at = now

    def acked(self, upto: int, now: float) -> None:
        """The peer acked new data: maybe a round trip; the retransmit and stall clocks restart."""
        self.rtt.acked(upto, now)
        self.retx_since = now
        self.progress(now)

    def new_nonce(self) -> int:
        # A counter is enough: a nonce must be fresh within the session, not secret.
        self.nonce += 1
        return self.nonce

    def watching(self, data_outstanding: bool) -> bool:
        """The stall watch runs: a ping or data waits for the peer."""
        ping_in_flight = self.ping_nonce is not None and not self.ping_due
        return ping_in_flight or data_outstanding

    def excuse(self, late: float, bound: float) -> None:
        """The caller's timer ran ``late`` seconds after its deadline: do not count that time.

        A process that got no CPU (a loaded machine, a long GC pause) finds
        the peer's ack unread in its socket when the stall timer finally runs:
        the time it could not run is its own silence, not the path's.  The
        stall watch moves on by the lateness and ``LATE_GRACE`` more, so the
        loop reads what is waiting before the watch is judged again;
        ``bound`` seconds per watch at most, so a dead path on a starved
        process still shows.
        """
        if late < LATE_TOLERATED or self.stall_reported:
            return
        shift = min(late + LATE_GRACE, bound - self.excused)
        if shift > 0.0:
            self.watch_since += shift
            self.excused += shift

    def run_transport_timers(
        self, now: float, config: SessionConfig, data_outstanding: bool
    ) -> tuple[bool, bool]:
        """Fire the attached transport's due timers: (retransmit now, stall to report now).

        A heartbeat that falls due just makes the PING due (``ping_due``).
        """
        retransmit = data_outstanding and now >= self.retx_since + config.retransmit_timeout
        if retransmit:  # nothing acked for a while: a batch was lost inside the transport
            self.retx_since = now
        stalled = (
            not self.stall_reported
            and self.watching(data_outstanding)
            and now >= self.watch_since + self.rtt.stall_after(config.stall_timeout)
        )
        if stalled:
            self.stall_reported = True
        if not self.ping_due and now >= self.last_sent_at + config.heartbeat_interval:
            self.ping_nonce = self.new_nonce()
            self.ping_due = True
        return retransmit, stalled

    def attached_deadline(self, config: SessionConfig, data_outstanding: bool) -> float | None:
        """The next heartbeat, retransmit or stall deadline of an attached transport.

        Runs after every batch either way: the earliest is kept as it goes, no list.
        """
        due = None if self.ping_due else self.last_sent_at + config.heartbeat_interval
        if data_outstanding:
            retransmit = self.retx_since + config.retransmit_timeout
            if due is None or retransmit < due:
                due = retransmit
        if not self.stall_reported and self.watching(data_outstanding):
            stall = self.watch_since + self.rtt.stall_after(config.stall_timeout)
            if due is None or stall < due:
                due = stall
        return due
