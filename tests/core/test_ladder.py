"""The fallback ladder, driven with a fake clock and no event loop."""

from __future__ import annotations

from gateway.core.ladder import Ladder, LadderSettings, Peer

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
    ladder.transport_changed("websocket")
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("websocket", 2, 0)
    ladder.transport_changed("long-poll")
    assert (ladder.rung, ladder.upgrades, ladder.fallbacks) == ("long-poll", 2, 1)
    ladder.session_lost(5.0, "expired")
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
    ladder.session_lost(101.0, "cut")  # lived 1 s: back-off keeps growing
    assert ladder.next_attempt() == 101.0 + 8.0
    ladder.session_up(200.0, "websocket")
    ladder.session_lost(260.0, "cut")  # lived 60 s: start over
    assert ladder.next_attempt() == 261.0


def test_transport_change_without_a_session_is_ignored() -> None:
    ladder = Ladder(SETTINGS)
    ladder.transport_changed("websocket")
    assert (ladder.rung, ladder.upgrades) == ("plain", 0)
