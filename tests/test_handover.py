"""gateway/handover.py: how a session's end decides the next one (no processes needed)."""

from __future__ import annotations

from gateway.core.ladder import GOAWAY, PEER_CLOSED, SESSION_EXPIRED, SESSION_LOST
from gateway.core.session.errors import CloseCode
from gateway.handover import peer_forgot, session_ended
from gateway.status import GatewayStats
from gateway.transports.errors import PEER_FORGOT


def test_goaway_opens_the_next_session_at_once_and_is_counted() -> None:
    stats = GatewayStats(role="client", mode="reverse")
    token, detail, now = session_ended(None, stats)
    assert (token, now) == (GOAWAY, True) and "GOAWAY" in detail
    assert stats.goaways_received == 1 and stats.failovers == 0


def test_a_404_for_our_session_is_a_failover_not_a_back_off() -> None:
    stats = GatewayStats(role="client", mode="reverse")
    assert peer_forgot(CloseCode.SESSION_EXPIRED, PEER_FORGOT)
    token, _, now = session_ended((CloseCode.SESSION_EXPIRED, PEER_FORGOT), stats)
    assert (token, now) == (SESSION_EXPIRED, True)
    assert stats.failovers == 1


def test_other_ends_back_off_as_before() -> None:
    stats = GatewayStats(role="client", mode="reverse")
    expired = (CloseCode.SESSION_EXPIRED, "expired: no transport for 60 s")  # unreachable
    assert not peer_forgot(*expired)
    assert session_ended(expired, stats)[::2] == (SESSION_EXPIRED, False)
    assert session_ended((CloseCode.GOING_AWAY, "bye"), stats)[::2] == (PEER_CLOSED, False)
    assert session_ended((CloseCode.PROTOCOL_ERROR, "bad"), stats)[::2] == (SESSION_LOST, False)
    assert stats.failovers == 0 and stats.goaways_received == 0
