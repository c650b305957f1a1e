"""The idle-timeout learning rule (``gateway.core.idle``) and the heartbeat it drives."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.idle import IdleLearner, IdleRule, Lesson
from gateway.core.session import SessionConfig
from gateway.core.session.frames import FrameDecoder, Ping
from tests.core.session.fakelink import FakeLink, InFlight, make_pair


def test_two_deaths_after_about_ten_seconds_teach_a_five_second_heartbeat() -> None:
    learner = IdleLearner(20.0)
    assert learner.websocket_died(10.02) is None  # once is not a pattern
    assert learner.heartbeat == 20.0 and learner.learned is None
    lesson = learner.websocket_died(10.01)
    assert lesson == Lesson(limit=10.01, heartbeat=5.0)
    assert learner.heartbeat == 5.0 and learner.learned == 10.01


def test_deaths_at_different_idle_times_teach_nothing() -> None:
    learner = IdleLearner(20.0)
    for idle in (4.0, 12.0, 6.0, 18.0, 3.0):
        assert learner.websocket_died(idle) is None
    assert learner.heartbeat == 20.0


def test_a_short_silence_is_not_an_idle_death() -> None:
    """Cuts while traffic flows (a relay, a restart) must not drive the heartbeat down."""
    learner = IdleLearner(20.0)
    for idle in (0.2, 0.4, 0.3, 1.9, 1.8, 0.0, math.nan):
        assert learner.websocket_died(idle) is None
    assert learner.heartbeat == 20.0 and learner.learned is None


def test_the_floor_holds() -> None:
    learner = IdleLearner(20.0)
    learner.websocket_died(2.5)
    assert learner.websocket_died(2.6) == Lesson(limit=2.5, heartbeat=2.0)


def test_a_lesson_is_kept_and_only_a_shorter_limit_lowers_it() -> None:
    learner = IdleLearner(20.0)
    learner.websocket_died(15.0)
    assert learner.websocket_died(14.5) == Lesson(limit=14.5, heartbeat=7.2)
    # Two more deaths near the same limit: the heartbeat already beats it.
    learner.websocket_died(7.0)
    assert learner.websocket_died(7.1) == Lesson(limit=7.0, heartbeat=3.5)
    learner.websocket_died(3.4)
    assert learner.websocket_died(3.45) == Lesson(limit=3.4, heartbeat=2.0)  # the floor
    learner.websocket_died(2.3)
    assert learner.websocket_died(2.2) is None  # nothing below the floor to go to
    assert learner.heartbeat == 2.0 and learner.learned == 3.4


def test_about_the_same_is_twenty_percent_or_one_and_a_half_seconds() -> None:
    rule = IdleRule()
    assert rule.same(5.0, 6.5) and rule.same(30.0, 37.5)
    assert not rule.same(5.0, 6.6) and not rule.same(30.0, 37.6)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        IdleLearner(0.0)
    with pytest.raises(ValueError):
        IdleRule(ratio=1.0)
    with pytest.raises(ValueError):
        IdleRule(floor=0.0)


idle_times = st.floats(min_value=0.0, max_value=600.0, allow_nan=False)


@given(st.floats(min_value=0.5, max_value=120.0), st.lists(idle_times, max_size=30))
def test_the_heartbeat_never_rises_never_falls_below_the_floor(
    start: float, deaths: list[float]
) -> None:
    learner = IdleLearner(start)
    previous = start
    for idle in deaths:
        lesson = learner.websocket_died(idle)
        assert learner.heartbeat <= previous
        if lesson is not None:
            assert lesson.heartbeat == learner.heartbeat >= learner.rule.floor
            assert lesson.heartbeat < lesson.limit <= idle  # below what killed the socket
        else:
            assert learner.heartbeat == previous
        previous = learner.heartbeat


@given(st.floats(min_value=2.5, max_value=300.0), st.floats(min_value=-0.05, max_value=0.05))
def test_any_steady_limit_is_learned_from_two_deaths(limit: float, jitter: float) -> None:
    learner = IdleLearner(1000.0)
    learner.websocket_died(limit)
    lesson = learner.websocket_died(limit * (1 + jitter))
    assert lesson is not None
    assert learner.rule.floor <= lesson.heartbeat <= max(2.0, 0.5 * lesson.limit + 0.05)


# -- the heartbeat the learner sets, in the session core -------------------------------


def _pings(batch: bytes) -> int:
    return sum(isinstance(f, Ping) for f in FrameDecoder().decode(batch))


def test_a_new_heartbeat_applies_to_a_running_session() -> None:
    client, server = make_pair(SessionConfig(heartbeat_interval=20.0))
    link = FakeLink(client, server)
    link.settle()
    start = link.now
    assert client.next_deadline() == pytest.approx(start + 20.0, abs=0.1)
    client.set_heartbeat(5.0)
    assert client.config.heartbeat_interval == 5.0
    assert client.next_deadline() == pytest.approx(start + 5.0, abs=0.1)
    with pytest.raises(ValueError):
        client.set_heartbeat(0.0)


def test_no_direction_stays_silent_longer_than_the_heartbeat() -> None:
    """The path's idle clock counts both directions; so must our silence.

    ``last_sent_at`` counts only our own batches, but every batch from the
    peer (other than a bare ACK or a PONG) is acked at once, and our PING is
    answered by a PONG: whichever way traffic flows or stops, a byte crosses
    the path each way at least every heartbeat (plus the round trip).
    """
    heartbeat = 3.0
    client, server = make_pair(SessionConfig(heartbeat_interval=60.0))
    client.set_heartbeat(heartbeat)
    link = FakeLink(client, server, latency=0.01)
    last = {"ab": link.now, "ba": link.now}
    longest = {"ab": 0.0, "ba": 0.0}
    pings = 0
    dt = 0.05
    for tick in range(int(40.0 / dt)):
        t = tick * dt
        if 10.0 <= t < 20.0 and tick % 10 == 0:
            server.send_message(b"only the server talks")
        if 25.0 <= t < 30.0 and tick % 10 == 0:
            client.send_message(b"only the client talks")
        link.now += dt
        link.timers()
        for name in ("ab", "ba"):
            direction = link.direction(name)
            while batch := direction.sender.data_to_send(link.now):
                pings += _pings(batch) if name == "ab" else 0
                longest[name] = max(longest[name], link.now - last[name])
                last[name] = link.now
                direction.in_flight.append(InFlight(link.now + link.latency, batch))
        link.deliver()
    for name in ("ab", "ba"):
        # + up to two round trips (4 ticks): our last ack came after their last batch.
        assert longest[name] <= heartbeat + 5 * dt, (name, longest)
    assert pings >= 5  # the silent stretches were broken by our PINGs
