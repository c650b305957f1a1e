"""The fallback ladder, driven with a fake clock and no event loop."""

from __future__ import annotations

import pytest

from gateway.core import ladder as reasons
from gateway.core.ladder import HISTORY, REASONS, Ladder, LadderSettings, Peer, close_reason
from gateway.core.session.errors import CloseCode

SETTINGS = LadderSettings(retry_initial=1.0, retry_max=8.0, stable_after=30.0, legacy_recheck=600.0)


def test_unknown_peer_is_not_connected_to_but_hello_is_asked_once() -> None:
    ladder = Ladder(SETTINGS)
    assert not ladder.should_connect(0.0)
    assert ladder.should_check_hello(0.0)
    ladder.peer_is_legacy(0.0)
    assert not ladder.should_check_hello(599.0)
    assert ladder.should_check_hello(600.0)
    assert ladder.rung == "plain"
    assert (ladder.upgrades, ladder.fallbacks) == (0, 0)


def test_climb_and_fall_are_counted() -> None:
    ladder = Ladder(SETTINGS)
    ladder.peer_is_gateway()
    assert ladder.should_connect(0.0)
    ladder.connect_started()
    assert not ladder.should_connect(0.0), "one attempt at a time"
    ladder.session_up(0.5, "long-poll")
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("long-poll", 1, 0)
    ladder.transport_changed(1.0, "websocket", reasons.PROBE_SUCCEEDED)
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("websocket", 2, 0)
    ladder.transport_changed(2.0, "long-poll", reasons.STALLED)
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("long-poll", 2, 1)
    ladder.session_lost(5.0, reasons.SESSION_EXPIRED, "expired")
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("plain", 2, 2)
    assert ladder.last_error == "expired"
    assert ladder.peer is Peer.GATEWAY


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    ladder = Ladder(SETTINGS)
    ladder.peer_is_gateway()
    now = 0.0
    waits = []
    for _ in range(6):
        assert ladder.should_connect(now)
        ladder.connect_started()
        ladder.connect_failed(now, "refused")
        waits.append(ladder.next_attempt() - now)
        assert not ladder.should_connect(now)
        now = ladder.next_attempt()
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_stable_session_resets_the_back_off_a_short_one_does_not() -> None:
    ladder = Ladder(SETTINGS)
    ladder.peer_is_gateway()
    for _ in range(3):
        ladder.connect_started()
        ladder.connect_failed(0.0, "x")
    ladder.session_up(100.0, "websocket")
    ladder.session_lost(101.0, reasons.SESSION_LOST, "cut")  # lived 1 s: back-off keeps growing
    assert ladder.next_attempt() == 101.0 + 8.0
    ladder.session_up(200.0, "websocket")
    ladder.session_lost(260.0, reasons.SESSION_LOST, "cut")  # lived 60 s: start over
    assert ladder.next_attempt() == 261.0


def test_transport_change_without_a_session_is_ignored() -> None:
    ladder = Ladder(SETTINGS)
    ladder.transport_changed(0.0, "websocket", reasons.PROBE_SUCCEEDED)
    assert (ladder.rung, ladder.upgrades) == ("plain", 0)
    assert not ladder.transitions and not ladder.switches


def test_every_move_is_kept_with_its_reason_and_counted() -> None:
    ladder = Ladder(SETTINGS)
    ladder.peer_is_gateway()
    ladder.session_up(1.0, "websocket")
    ladder.transport_changed(2.0, "long-poll", reasons.STALLED, "WebSocket stalled")
    ladder.transport_changed(3.0, "websocket", reasons.PROBE_SUCCEEDED, "probe answered")
    ladder.transport_changed(3.5, "websocket", reasons.PROBE_SUCCEEDED)  # no move: not kept
    ladder.session_lost(4.0, reasons.PEER_CLOSED, "session closed (1001 going away)")
    moves = [(t.at, t.from_rung, t.to_rung, t.reason, t.detail) for t in ladder.transitions]
    assert moves == [
        (1.0, "plain", "websocket", "session_opened", ""),
        (2.0, "websocket", "long-poll", "stalled", "WebSocket stalled"),
        (3.0, "long-poll", "websocket", "probe_succeeded", "probe answered"),
        (4.0, "websocket", "plain", "peer_closed", "session closed (1001 going away)"),
    ]
    assert dict(ladder.switches) == {
        ("plain", "websocket", "session_opened"): 1,
        ("websocket", "long-poll", "stalled"): 1,
        ("long-poll", "websocket", "probe_succeeded"): 1,
        ("websocket", "plain", "peer_closed"): 1,
    }
    assert (ladder.upgrades, ladder.fallbacks) == (2, 2)


def test_a_refused_upgrade_is_a_fallback_and_the_error_until_a_websocket_works() -> None:
    """The hop that opened on long-poll because a proxy answered the upgrade 400 says so."""
    ladder = Ladder(SETTINGS)
    ladder.peer_is_gateway()
    refused = "WebSocket upgrade refused (400 missing or malformed last=)"
    ladder.session_up(1.0, "long-poll", reasons.UPGRADE_REFUSED, refused)
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("long-poll", 1, 1)
    assert ladder.last_error == refused
    [move] = ladder.transitions
    assert (move.from_rung, move.to_rung, move.reason, move.detail) == (
        "plain",
        "long-poll",
        "upgrade_refused",
        refused,
    )
    ladder.transport_changed(9.0, "websocket", reasons.PROBE_SUCCEEDED)
    assert ladder.last_error == ""
    ladder.transport_changed(10.0, "long-poll", reasons.WEBSOCKET_CLOSED, "websocket lost: reset")
    assert ladder.last_error == "websocket lost: reset"
    assert ladder.switches[("plain", "long-poll", "upgrade_refused")] == 1


def test_the_history_is_bounded_and_the_counters_are_not() -> None:
    ladder = Ladder(SETTINGS)
    ladder.session_up(0.0, "websocket")
    for i in range(HISTORY * 3):
        down = i % 2 == 0
        rung = "long-poll" if down else "websocket"
        reason = reasons.STALLED if down else reasons.PROBE_SUCCEEDED
        ladder.transport_changed(float(i + 1), rung, reason)
    assert len(ladder.transitions) == HISTORY
    assert ladder.transitions[-1].at == HISTORY * 3
    assert sum(ladder.switches.values()) == HISTORY * 3 + 1


def test_an_unknown_reason_is_a_bug_caught_at_once() -> None:
    ladder = Ladder(SETTINGS)
    with pytest.raises(AssertionError, match="unknown reason"):
        ladder.session_up(0.0, "websocket", "refused by 10.0.0.1")


def test_reason_tokens_are_label_safe() -> None:
    """A Prometheus label value from a fixed set: lowercase words, no numbers or addresses."""
    assert len(REASONS) == 12
    for token in REASONS:
        assert token.replace("_", "").isalpha() and token.islower(), token


@pytest.mark.parametrize(
    ("code", "token"),
    [
        (CloseCode.SESSION_EXPIRED, "session_expired"),
        (CloseCode.UNKNOWN_SESSION, "session_expired"),
        (CloseCode.NORMAL, "peer_closed"),
        (CloseCode.GOING_AWAY, "peer_closed"),
        (CloseCode.PROTOCOL_ERROR, "session_lost"),
        (CloseCode.AUTH_FAILED, "session_lost"),
    ],
)
def test_close_codes_map_to_reasons(code: int, token: str) -> None:
    assert close_reason(code) == token


def test_a_session_lost_with_retry_now_opens_the_next_one_without_back_off() -> None:
    """GOAWAY or a crashed instance behind a load balancer: the path works, try again now."""
    ladder = Ladder(LadderSettings(retry_initial=5.0))
    ladder.peer_is_gateway()
    ladder.session_up(1.0, "websocket")
    ladder.session_lost(2.0, "goaway", "the peer said GOAWAY", retry_now=True)
    assert ladder.rung == "plain" and ladder.should_connect(2.0)
    ladder.session_up(2.1, "websocket")
    ladder.session_lost(3.0, "session_lost", "closed")  # anything else backs off as before
    assert not ladder.should_connect(3.0) and ladder.should_connect(8.0)
