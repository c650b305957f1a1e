"""The stall watch follows the observed round trip: a dead path is caught in a few RTTs, not 15 s.

Pure core on a fake clock (``FakeLink``): ``gateway/core/session/rtt.py``
and the liveness timers that use it.
"""

from __future__ import annotations

import pytest

from gateway.core.session import Session, SessionConfig, TransportStalled
from gateway.core.session.liveness import LATE_GRACE
from gateway.core.session.rtt import STALL_FLOOR, STALL_RTTS, RoundTrip

from .fakelink import FakeLink, make_pair

DEFAULT_BOUND = SessionConfig().stall_timeout


def linked(latency: float, config: SessionConfig | None = None) -> FakeLink:
    client, server = make_pair(config)
    link = FakeLink(client, server, latency=latency)
    link.settle()
    return link


def stalls(link: FakeLink) -> list[TransportStalled]:
    return [e for e in link.ba.events if isinstance(e, TransportStalled)]


def traffic(link: FakeLink, seconds: float, dt: float) -> None:
    """a sends a message every step for ``seconds`` of fake time; everything is delivered."""
    end = link.now + seconds
    while link.now < end:
        link.a.send_message(b"m")
        link.step(dt)


def black_hole(link: FakeLink) -> float:
    """From now on nothing passes either way (the sockets stay open); returns when."""
    link.ab.in_flight.clear()
    link.ba.in_flight.clear()
    link.connected = False
    return link.now


def first_stall_at(link: FakeLink, session: Session, limit: float, dt: float = 0.01) -> float:
    """Run timers and writes (into the void) in ``dt`` steps until ``session`` reports a stall."""
    end = link.now + limit
    while link.now < end:
        link.now += dt
        session.handle_timer(link.now)
        session.data_to_send(link.now)
        link.collect()
        if stalls(link):
            return link.now
    raise AssertionError(f"no stall within {limit} s")


# -- the estimator -------------------------------------------------------------------


def test_before_any_round_trip_the_configured_bound_applies() -> None:
    assert RoundTrip().stall_after(15.0) == 15.0
    assert RoundTrip().stall_after(2.0) == 2.0


def test_first_sample_then_smoothing_as_rfc_6298() -> None:
    rtt = RoundTrip()
    rtt.sample(0.2)
    assert (rtt.srtt, rtt.rttvar) == pytest.approx((0.2, 0.1))
    assert rtt.stall_after(15.0) == pytest.approx(STALL_RTTS * (0.2 + 4 * 0.1))
    for _ in range(200):  # a steady path: the variation decays, the bound nears STALL_RTTS * rtt
        rtt.sample(0.2)
    assert rtt.stall_after(15.0) == pytest.approx(STALL_RTTS * 0.2, rel=0.01)


def test_the_floor_and_the_bound() -> None:
    fast = RoundTrip()
    fast.sample(0.001)
    assert fast.stall_after(15.0) == STALL_FLOOR
    slow = RoundTrip()
    slow.sample(10.0)
    assert slow.stall_after(15.0) == 15.0  # --stall-timeout stays the upper bound
    assert fast.stall_after(0.2) == 0.2  # and wins over the floor when set lower


def test_karn_a_retransmitted_frame_gives_no_sample() -> None:
    rtt = RoundTrip()
    rtt.sent(1, 3, 0, now=0.0)  # seq 3 timed
    rtt.sent(2, 3, 3, now=5.0)  # 2..3 sent again: the ack could answer either copy
    rtt.acked(3, now=5.1)
    assert rtt.srtt is None
    rtt.sent(4, 4, 3, now=6.0)  # a fresh frame is timed again
    rtt.acked(4, now=6.25)
    assert rtt.srtt == pytest.approx(0.25)


def test_only_one_frame_is_timed_and_an_ack_below_it_is_no_sample() -> None:
    rtt = RoundTrip()
    rtt.sent(1, 1, 0, now=0.0)
    rtt.sent(2, 5, 1, now=0.1)  # seq 1 is still being timed
    rtt.acked(0, now=0.2)
    assert rtt.srtt is None
    rtt.acked(2, now=0.4)
    assert rtt.srtt == pytest.approx(0.4)


# -- the session's stall watch -----------------------------------------------------------


def holed_with_data_out(message: bytes) -> tuple[FakeLink, float, float]:
    """A busy link (100 messages/s, acked in ~10 ms) black-holed, then ``message`` written.

    Returns the link, when it was holed, and the stall watch's start.
    """
    link = linked(latency=0.005)
    traffic(link, 2.0, dt=0.01)
    holed = black_hole(link)
    link.a.send_message(message)
    link.a.data_to_send(link.now)  # written, never acked
    return link, holed, link.a._live.watch_since


def test_a_black_holed_busy_transport_stalls_after_the_floor_not_15_s() -> None:
    link, holed, last_progress = holed_with_data_out(b"into the void")
    at = first_stall_at(link, link.a, limit=DEFAULT_BOUND)
    assert at - last_progress == pytest.approx(STALL_FLOOR, abs=0.011)
    assert at - holed < 0.6
    [stall] = stalls(link)
    assert stall.since == pytest.approx(last_progress)


def test_time_the_callers_loop_did_not_run_is_not_the_paths_silence() -> None:
    link, _, since = holed_with_data_out(b"sent just before the process lost the CPU")
    # the stall timer was due at the floor and ran 0.8 s after it
    link.now = since + STALL_FLOOR + 0.8
    link.a.handle_timer(link.now, late=0.8)
    link.collect()
    assert stalls(link) == []
    # the path is really dead: it shows one floor (and the grace to read) after the time excused
    at = first_stall_at(link, link.a, limit=DEFAULT_BOUND)
    assert at - since == pytest.approx(STALL_FLOOR + 0.8 + LATE_GRACE, abs=0.011)


def test_lateness_is_excused_up_to_the_stall_bound_only() -> None:
    link, _, since = holed_with_data_out(b"x")
    late = 1.0
    # a process starved at every timer: each run is a second late
    while not stalls(link):
        link.now += late
        link.a.handle_timer(link.now, late=late)
        link.collect()
        assert link.now - since < DEFAULT_BOUND + STALL_FLOOR + 2 * late
    assert link.now - since >= DEFAULT_BOUND


def test_a_black_holed_idle_transport_is_caught_by_its_heartbeat() -> None:
    link = linked(latency=0.005)
    traffic(link, 1.0, dt=0.01)
    link.settle()
    black_hole(link)
    interval = link.a.config.heartbeat_interval
    quiet_since = link.now
    at = first_stall_at(link, link.a, limit=interval + DEFAULT_BOUND, dt=0.05)
    ping_sent_at = link.a._live.ping_sent_at
    # no PING before the heartbeat is due (no extra traffic), caught soon after it
    assert ping_sent_at >= quiet_since + interval - 0.051
    assert at - ping_sent_at == pytest.approx(STALL_FLOOR, abs=0.051)


def test_a_slow_path_is_not_declared_stalled_while_it_works() -> None:
    link = linked(latency=0.5)  # 1 s round trips
    traffic(link, 30.0, dt=0.05)
    assert not stalls(link)
    rtt = link.a._live.rtt
    assert rtt.srtt is not None and 0.9 < rtt.srtt < 1.2
    assert rtt.stall_after(DEFAULT_BOUND) >= STALL_RTTS * 0.9


def test_a_slow_path_when_black_holed_stalls_after_a_few_of_its_round_trips() -> None:
    link = linked(latency=0.5)
    traffic(link, 30.0, dt=0.05)
    black_hole(link)
    link.a.send_message(b"into the void")
    link.a.data_to_send(link.now)
    since = link.a._live.watch_since
    at = first_stall_at(link, link.a, limit=DEFAULT_BOUND)
    assert STALL_RTTS * 0.9 <= at - since < 6.0


def test_stall_timeout_bounds_the_wait_and_applies_before_any_round_trip() -> None:
    config = SessionConfig(stall_timeout=4.0)
    client, server = make_pair(config)
    link = FakeLink(client, server, latency=0.005)
    link.connected = False  # nothing ever answered: no round trip observed
    client.send_message(b"x")
    client.data_to_send(link.now)
    at = first_stall_at(link, client, limit=10.0)
    assert at == pytest.approx(4.0, abs=0.011)


def test_the_probe_round_trip_seeds_the_estimate() -> None:
    client, server = make_pair()
    now = 1.0
    _nonce, request = client.probe_request(now)
    reply = server.probe_reply(request, now + 0.04)
    answered = client.probe_check(reply, now + 0.08)
    assert answered is not None and answered.rtt == pytest.approx(0.08)
    assert client._live.rtt.srtt == pytest.approx(0.08)
