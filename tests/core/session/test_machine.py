"""Two Session objects joined by a fake link: delivery, replay, timers, close, hello, probe."""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import pytest

from gateway.core.session import (
    PROTOCOL_VERSION,
    BufferFull,
    CloseCode,
    HelloReceived,
    HelloRejected,
    MessageTooBig,
    ProbeAnswered,
    RemoteProtocolError,
    SendWindowOpened,
    Session,
    SessionClosed,
    SessionConfig,
    SessionState,
    SessionUsageError,
    TransportStalled,
)
from gateway.core.session.frames import (
    Ack,
    Close,
    Data,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    new_packer,
)

from .fakelink import SESSION_ID, TOKEN, FakeLink, make_pair

SMALL = SessionConfig(
    fragment_size=1024,
    max_buffer_bytes=8 * 1024,
    max_buffer_frames=16,
    max_message_size=64 * 1024,
)


def linked(config: SessionConfig | None = None) -> FakeLink:
    client, server = make_pair(config)
    link = FakeLink(client, server)
    link.settle()  # exchange HELLOs
    return link


def frames_of(batch: bytes) -> list[Frame]:
    return FrameDecoder().decode(batch)


def data_seqs(batch: bytes) -> list[int]:
    return [f.seq for f in FrameDecoder().decode(batch) if isinstance(f, Data | Close)]


def closed_events(events: Sequence[object]) -> list[SessionClosed]:
    return [e for e in events if isinstance(e, SessionClosed)]


# -- delivery -----------------------------------------------------------------


def test_hello_exchange_reports_first_hello_on_both_sides() -> None:
    link = linked()
    for d in (link.ab, link.ba):
        hellos = [e for e in d.events if isinstance(e, HelloReceived)]
        assert hellos == [HelloReceived(last_received=0, first=True)]


def test_ordered_delivery_both_directions() -> None:
    link = linked()
    for i in range(100):
        link.a.send_message(f"c{i}")
        link.b.send_message(f"s{i}".encode())
    link.settle()
    assert link.ab.messages() == [f"c{i}" for i in range(100)]
    assert link.ba.messages() == [f"s{i}".encode() for i in range(100)]
    assert link.a.buffered_frames == 0 and link.b.buffered_frames == 0  # all acked


def test_large_message_fragmented_and_reassembled() -> None:
    link = linked(SMALL)
    big = bytes(range(256)) * 200  # 51200 bytes = 50 fragments, more than the buffer holds
    link.a.send_message(big)
    assert link.a.buffered_frames == SMALL.max_buffer_frames - 9  # 7 fit in 8 KiB
    assert not link.a.writable  # the rest is pending
    link.settle(rounds=200)
    assert link.ab.messages() == [big]
    assert link.ab.batches_sent > 1


def test_fragments_of_big_message_are_limited_to_fragment_size() -> None:
    client, _ = make_pair(SMALL)
    client.send_message(b"x" * 3000)
    frames = frames_of(client.data_to_send(0.0))
    sizes = [len(f.payload) for f in frames if isinstance(f, Data)]
    fins = [f.fin for f in frames if isinstance(f, Data)]
    assert sizes == [1024, 1024, 952]
    assert fins == [False, False, True]


def test_text_and_binary_preserved_including_empty_and_multibyte() -> None:
    link = linked(SMALL)
    sent: list[bytes | str] = ["", b"", "h\u00e9llo \U0001f600" * 300, b"\xff\xfe", "plain"]
    for m in sent:
        link.a.send_message(m)
        link.settle()
    got = link.ab.messages()
    assert got == sent
    assert [type(m) for m in got] == [str, bytes, str, bytes, str]


def test_bytearray_and_memoryview_are_copied_and_sent_as_binary() -> None:
    link = linked()
    buf = bytearray(b"abc")
    link.a.send_message(buf)
    link.a.send_message(memoryview(b"xyz"))
    buf[:] = b"zzz"  # caller reuses its buffer: must not change what was queued
    link.settle()
    assert link.ab.messages() == [b"abc", b"xyz"]


def test_batches_respect_max_bytes_but_always_carry_one_frame() -> None:
    client, _ = make_pair(SMALL)
    for _ in range(5):
        client.send_message(b"y" * 1000)
    first = client.data_to_send(0.0, max_bytes=10)
    assert data_seqs(first) == [1]
    assert data_seqs(client.data_to_send(0.0, max_bytes=2100)) == [2, 3]
    assert data_seqs(client.data_to_send(0.0)) == [4, 5]
    assert client.data_to_send(0.0) == b""


# -- backpressure ----------------------------------------------------------------


def test_backpressure_buffer_full_then_window_opens_nothing_dropped() -> None:
    link = linked(SMALL)
    sent = []
    i = 0
    while link.a.writable:
        msg = f"m{i}".encode() * 10
        link.a.send_message(msg)
        sent.append(msg)
        i += 1
    assert len(sent) == SMALL.max_buffer_frames
    with pytest.raises(BufferFull):
        link.a.send_message(b"one too many")
    assert link.a.buffered_frames == SMALL.max_buffer_frames  # the refused one was not queued
    link.settle()
    assert SendWindowOpened() in link.ba.events
    assert link.a.writable
    link.a.send_message(b"after")
    link.settle()
    assert link.ab.messages() == [*sent, b"after"]


def test_backpressure_by_bytes() -> None:
    link = linked(SMALL)
    link.a.send_message(b"a" * 1000)
    link.a.send_message(b"b" * 7500)  # partially admitted, rest pending
    assert link.a.buffered_bytes <= SMALL.max_buffer_bytes
    with pytest.raises(BufferFull):
        link.a.send_message(b"c")
    link.settle()
    assert link.ab.messages() == [b"a" * 1000, b"b" * 7500]


def test_oversize_local_message_is_local_error() -> None:
    client, _ = make_pair(SMALL)
    with pytest.raises(SessionUsageError, match="exceeds max_message_size"):
        client.send_message(b"x" * (SMALL.max_message_size + 1))
    assert client.buffered_frames == 0


def test_oversize_message_from_peer_is_1009() -> None:
    sender = Session(SessionConfig(), session_id=SESSION_ID, token=TOKEN, is_client=True, now=0)
    receiver = Session(SMALL, session_id=SESSION_ID, token=TOKEN, is_client=False, now=0)
    link = FakeLink(sender, receiver)
    link.reconnect()
    link.settle()
    sender.send_message(b"z" * (SMALL.max_message_size + 1))
    link.settle(rounds=20)
    assert isinstance(link.ab.errors[0], MessageTooBig)
    assert link.ab.errors[0].code == 1009
    assert receiver.state is SessionState.CLOSED
    # the ABORT reached the sender, which learns why
    assert closed_events(link.ba.events) == [
        SessionClosed(code=1009, reason=link.ab.errors[0].reason, by_peer=True)
    ]


# -- loss, duplication, resume ----------------------------------------------------


def test_resume_after_lost_transport_replays_exactly_the_missing_frames() -> None:
    link = linked()
    for i in range(5):
        link.a.send_message(f"early{i}")
    link.settle()  # delivered and acked
    for i in range(5):
        link.a.send_message(f"late{i}")
    link.flush()
    assert len(link.ab.in_flight) == 1
    link.disconnect()  # the batch with late0..4 is lost
    link.reconnect()
    replay = link.a.data_to_send(link.now)
    decoded = frames_of(replay)
    assert isinstance(decoded[0], Hello) and decoded[0].last_received == 0
    assert data_seqs(replay) == [6, 7, 8, 9, 10]
    link.b.receive_data(replay, link.now)
    link.settle()
    assert link.ab.messages() == [f"early{i}" for i in range(5)] + [f"late{i}" for i in range(5)]


def test_resume_when_acks_were_lost_discards_duplicates() -> None:
    link = linked()
    for i in range(10):
        link.a.send_message(f"m{i}")
    link.flush()
    link.step(link.latency)  # b got everything; its ack is now in flight
    assert len(link.ab.messages()) == 10
    link.switch()  # ack lost: a will replay all 10
    link.settle()
    assert link.ab.messages() == [f"m{i}" for i in range(10)]
    assert link.a.buffered_frames == 0


def test_many_switches_mid_traffic() -> None:
    link = linked(SMALL)
    expected = []
    for round_ in range(20):
        for i in range(5):
            msg = f"{round_}:{i}".encode() * (round_ * 50 + 1)
            while not link.a.writable:
                link.step(link.latency)
            link.a.send_message(msg)
            expected.append(msg)
        link.flush()
        link.switch()
    link.settle(rounds=500)
    assert link.ab.messages() == expected


def test_duplicated_batches_are_discarded() -> None:
    link = linked()
    for i in range(3):
        link.a.send_message(f"d{i}")
    link.flush()
    link.duplicate("ab")
    link.duplicate("ab")
    assert len(link.ab.in_flight) == 3
    link.settle()
    assert link.ab.messages() == ["d0", "d1", "d2"]


def test_reordered_batches_recovered_in_order() -> None:
    link = linked()
    link.a.send_message("first")
    link.flush()
    link.a.send_message("second")
    link.flush()
    link.reorder("ab")
    link.step(link.latency)
    # "second" arrived first and was discarded as out of order; "first" then fit
    assert link.ab.messages() == ["first"]
    link.run(SessionConfig().retransmit_timeout + 1, dt=0.5)
    assert link.ab.messages() == ["first", "second"]


def test_retransmit_timer_recovers_from_dropped_batch() -> None:
    link = linked()
    link.a.send_message("lost once")
    link.flush()
    assert link.drop("ab")
    timeout = link.a.config.retransmit_timeout
    assert link.a.next_deadline() == pytest.approx(link.now + timeout)
    link.run(timeout - 1, dt=0.5)
    assert link.ab.messages() == []
    link.run(2, dt=0.5)
    assert link.ab.messages() == ["lost once"]


def test_long_poll_rewind_resends_after_lost_response() -> None:
    client, server = make_pair()
    server.send_message("r1")
    lost_get_response = server.data_to_send(0.0)
    assert data_seqs(lost_get_response) == [1]
    assert server.data_to_send(0.0) == b""  # nothing new until told otherwise
    server.rewind(1.0, client.last_received)  # next GET says: I have 0
    resent = server.data_to_send(1.0)
    assert data_seqs(resent) == [1]
    client.receive_data(resent, 1.0)
    assert client.last_received == 1
    server.rewind(2.0, client.last_received)
    assert server.buffered_frames == 0
    assert data_seqs(server.data_to_send(2.0)) == []


def test_rewind_beyond_sent_is_peer_fault() -> None:
    _, server = make_pair()
    with pytest.raises(RemoteProtocolError, match="only 0 were sent"):
        server.rewind(0.0, 5)
    assert server.state is SessionState.CLOSED


def test_ack_of_unsent_data_closes_session() -> None:
    _, server = make_pair()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(Ack(received=3).encode(new_packer()), 0.0)
    assert server.state is SessionState.CLOSED
    (closed,) = closed_events(server.events_received())
    assert closed.code == CloseCode.PROTOCOL_ERROR and not closed.by_peer
    abort = frames_of(server.data_to_send(0.0))
    assert [type(f).__name__ for f in abort] == ["Abort"]


# -- heartbeat, stall, expiry ------------------------------------------------------


def test_idle_heartbeat_ping_is_sent_and_answered() -> None:
    link = linked()
    interval = link.a.config.heartbeat_interval
    deadline = link.a.next_deadline()
    assert deadline is not None and link.now + interval - 1 < deadline <= link.now + interval
    link.a.handle_timer(deadline - 0.001)
    assert link.a.data_to_send(deadline - 0.001) == b""  # not yet
    link.now = deadline
    link.a.handle_timer(link.now)
    ping_batch = link.a.data_to_send(link.now)
    (ping,) = frames_of(ping_batch)
    assert isinstance(ping, Ping)
    link.b.receive_data(ping_batch, link.now)
    pong_batch = link.b.data_to_send(link.now)
    (pong,) = frames_of(pong_batch)
    assert pong == Pong(nonce=ping.nonce)
    link.a.receive_data(pong_batch, link.now)
    # Steps shorter than the stall floor: a 1 s step is a 1 s round trip, a stall
    # after the instant ones observed so far (gateway/core/session/rtt.py).
    link.run(interval * 3, dt=0.1)
    assert not [e for e in link.ba.events + link.ab.events if isinstance(e, TransportStalled)]
    assert link.a.state is SessionState.OPEN


def test_stall_watchdog_fires_when_acks_stop() -> None:
    link = linked()
    link.a.send_message("into the void")
    sent_at = link.now
    link.flush()
    link.ab.in_flight.clear()
    link.connected = False  # a buffering proxy: nothing moves any more
    stall = link.a.config.stall_timeout
    link.now = sent_at + stall - 0.1
    link.timers()
    assert not [e for e in link.ba.events if isinstance(e, TransportStalled)]
    assert link.a.next_deadline() == pytest.approx(sent_at + stall)
    link.now = link.a.next_deadline()  # type: ignore[assignment]
    link.timers()
    stalls = [e for e in link.ba.events if isinstance(e, TransportStalled)]
    assert stalls == [TransportStalled(since=sent_at)]
    link.now += 60  # reported once per transport
    link.a.handle_timer(link.now)
    assert not [e for e in link.a.events_received() if isinstance(e, TransportStalled)]
    # demote to another transport: nothing lost
    link.connected = True
    link.switch()
    link.settle()
    assert link.ab.messages() == ["into the void"]


def test_unanswered_heartbeat_is_a_stall() -> None:
    link = linked()
    link.connected = False
    cfg = link.a.config
    link.now += cfg.heartbeat_interval
    link.timers()
    link.a.data_to_send(link.now)  # ping written, never answered
    link.now += cfg.stall_timeout
    link.timers()
    assert [e for e in link.ba.events if isinstance(e, TransportStalled)]


def test_expiry_after_resume_grace_on_both_sides() -> None:
    link = linked()
    link.disconnect()
    grace = link.a.config.resume_grace
    assert link.a.next_deadline() == pytest.approx(link.now + grace)
    link.now += grace - 0.01
    link.timers()
    assert link.a.state is SessionState.OPEN
    link.now += 0.01
    link.timers()
    for d in (link.ab, link.ba):
        assert closed_events(d.events) == [
            SessionClosed(code=4000, reason="expired: no transport for 60 s", by_peer=False)
        ]
    assert link.a.next_deadline() is None


def test_expiry_reason_reaches_a_peer_that_comes_back() -> None:
    client = Session(
        SessionConfig(resume_grace=300), session_id=SESSION_ID, token=TOKEN, is_client=True, now=0
    )
    server = Session(
        SessionConfig(resume_grace=30), session_id=SESSION_ID, token=TOKEN, is_client=False, now=0
    )
    link = FakeLink(client, server)
    link.reconnect()
    link.settle()
    link.disconnect()
    link.now += 31
    link.timers()
    assert closed_events(link.ab.events)[0].code == CloseCode.SESSION_EXPIRED
    assert client.state is SessionState.OPEN
    link.reconnect()  # the client resumes; the server (I/O layer) still has the object
    link.settle()
    assert closed_events(link.ba.events) == [
        SessionClosed(code=4000, reason="expired: no transport for 30 s", by_peer=True)
    ]


def test_reattach_within_grace_cancels_expiry() -> None:
    link = linked()
    link.disconnect()
    link.now += 59
    link.timers()
    link.reconnect()
    link.run(120, dt=5)
    assert link.a.state is SessionState.OPEN and link.b.state is SessionState.OPEN


# -- close --------------------------------------------------------------------------


def test_close_with_code_and_reason_after_pending_data() -> None:
    link = linked()
    link.a.send_message("before close")
    link.a.close(1001, "going away", now=link.now)
    assert link.a.state is SessionState.CLOSING
    with pytest.raises(SessionUsageError, match="CLOSING"):
        link.a.send_message("too late")
    link.settle()
    assert link.ab.messages() == ["before close"]
    assert closed_events(link.ab.events) == [
        SessionClosed(code=1001, reason="going away", by_peer=True)
    ]
    assert closed_events(link.ba.events) == [
        SessionClosed(code=1001, reason="going away", by_peer=False)
    ]
    assert link.a.state is link.b.state is SessionState.CLOSED
    assert link.a.next_deadline() is None and link.b.next_deadline() is None


def test_peer_flushes_its_own_data_before_close_completes() -> None:
    link = linked(SMALL)
    big = b"q" * 30_000  # more than the buffer: still pending when the CLOSE arrives
    link.b.send_message(big)
    link.a.close(now=link.now)
    link.settle(rounds=300)
    assert link.ba.messages() == [big]
    assert closed_events(link.ba.events)[0].code == 1000


def test_close_survives_a_transport_switch() -> None:
    link = linked()
    link.a.close(1000, "bye", now=link.now)
    link.flush()
    link.switch()  # CLOSE lost in flight: replayed like data
    link.settle()
    assert closed_events(link.ab.events) == [SessionClosed(code=1000, reason="bye", by_peer=True)]
    assert link.a.state is SessionState.CLOSED


def test_close_timeout_when_peer_never_answers() -> None:
    link = linked()
    link.connected = False
    link.a.close(1000, "bye", now=link.now)
    link.now += link.a.config.close_timeout
    link.timers()
    (closed,) = closed_events(link.ba.events)
    assert closed.code == CloseCode.CLOSE_TIMEOUT
    assert "1000 bye" in closed.reason


def test_simultaneous_close() -> None:
    link = linked()
    link.a.close(1000, "a", now=link.now)
    link.b.close(1001, "b", now=link.now)
    link.settle()
    assert closed_events(link.ba.events) == [SessionClosed(code=1000, reason="a", by_peer=False)]
    assert closed_events(link.ab.events) == [SessionClosed(code=1001, reason="b", by_peer=False)]


def test_closed_session_ignores_data_but_reacks() -> None:
    link = linked()
    link.a.close(now=link.now)
    link.settle()
    link.b.receive_data(b"\xc1 garbage", link.now)  # no exception after close
    assert link.b.events_received() == []
    assert [type(f) for f in frames_of(link.b.data_to_send(link.now))] == [Ack]


def test_bad_close_arguments() -> None:
    client, _ = make_pair()
    with pytest.raises(SessionUsageError):
        client.close(999, now=0)
    with pytest.raises(SessionUsageError):
        client.close(1000, "x" * 200, now=0)
    assert client.state is SessionState.OPEN


# -- hello ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "session_id", "token", "code"),
    [
        (PROTOCOL_VERSION + 1, SESSION_ID, TOKEN, CloseCode.UNSUPPORTED_VERSION),
        (PROTOCOL_VERSION, "other-session", TOKEN, CloseCode.UNKNOWN_SESSION),
        (PROTOCOL_VERSION, SESSION_ID, b"w" * 32, CloseCode.AUTH_FAILED),
        (PROTOCOL_VERSION, SESSION_ID, None, CloseCode.AUTH_FAILED),
    ],
    ids=["version", "session", "token", "no-token"],
)
def test_bad_hello_rejected_with_code(
    version: int, session_id: str, token: bytes | None, code: int
) -> None:
    _, server = make_pair()
    hello = Hello(version=version, session_id=session_id, last_received=0, token=token)
    with pytest.raises(HelloRejected) as info:
        server.receive_data(hello.encode(new_packer()), 0.0)
    assert info.value.code == code
    assert server.state is SessionState.CLOSED
    events = server.events_received()
    expected = SessionClosed(code=code, reason=info.value.reason, by_peer=False)
    assert closed_events(events) == [expected]
    assert not [e for e in events if isinstance(e, HelloReceived)]


def test_client_sends_token_server_does_not() -> None:
    client, server = make_pair()
    (c_hello,) = frames_of(client.data_to_send(0.0))
    (s_hello,) = frames_of(server.data_to_send(0.0))
    assert isinstance(c_hello, Hello) and c_hello.token == TOKEN
    assert isinstance(s_hello, Hello) and s_hello.token is None
    assert server.verify_token(TOKEN) and not server.verify_token(b"nope")


def test_every_attach_resends_hello_with_last_received() -> None:
    link = linked()
    link.b.send_message("x")
    link.settle()
    link.switch()
    (hello, *_) = frames_of(link.a.data_to_send(link.now))
    assert hello == Hello(
        version=PROTOCOL_VERSION, session_id=SESSION_ID, last_received=1, token=TOKEN
    )


# -- probe -----------------------------------------------------------------------------


def test_probe_round_trip_over_a_candidate_transport() -> None:
    link = linked()
    nonce, probe = link.a.probe_request(link.now)
    reply = link.b.probe_reply(probe, link.now)
    answer = link.a.probe_check(reply, link.now + 0.25)
    assert answer == ProbeAnswered(nonce=nonce, rtt=0.25)
    assert link.a.probe_check(reply, link.now) is None  # a probe is answered once


def test_bad_probe_fails_the_candidate_not_the_session() -> None:
    link = linked()
    forged = Hello(version=PROTOCOL_VERSION, session_id=SESSION_ID, last_received=0, token=b"f")
    batch = forged.encode(new_packer()) + Ping(nonce=1).encode(new_packer())
    with pytest.raises(HelloRejected) as info:
        link.b.probe_reply(batch, link.now)
    assert info.value.code == CloseCode.AUTH_FAILED
    with pytest.raises(RemoteProtocolError):
        link.b.probe_reply(b"\xc1", link.now)
    with pytest.raises(RemoteProtocolError, match="needs a HELLO and a PING"):
        link.b.probe_reply(Ping(nonce=1).encode(new_packer()), link.now)
    assert link.b.state is SessionState.OPEN
    link.a.send_message("still fine")
    link.settle()
    assert link.ab.messages() == ["still fine"]


def test_probe_answered_over_the_current_transport_is_an_event() -> None:
    link = linked()
    nonce, probe = link.a.probe_request(link.now)
    link.b.receive_data(probe, link.now)
    link.a.receive_data(link.b.data_to_send(link.now), link.now + 0.1)
    (answer,) = [e for e in link.a.events_received() if isinstance(e, ProbeAnswered)]
    assert answer.nonce == nonce and answer.rtt == pytest.approx(0.1)


def test_switch_to_probed_transport_keeps_everything() -> None:
    link = linked()
    link.a.send_message("on long-poll")
    link.flush()
    _, probe = link.a.probe_request(link.now)
    answered = link.a.probe_check(link.b.probe_reply(probe, link.now), link.now)
    assert answered is not None
    link.switch()  # the in-flight long-poll batch is abandoned
    link.a.send_message("on websocket")
    link.settle()
    assert link.ab.messages() == ["on long-poll", "on websocket"]


# -- misuse -------------------------------------------------------------------------------


def test_invalid_construction() -> None:
    with pytest.raises(SessionUsageError):
        Session(session_id="", token=TOKEN, is_client=True, now=0)
    with pytest.raises(SessionUsageError):
        Session(session_id="s", token=b"", is_client=True, now=0)
    with pytest.raises(ValueError, match="fragment"):
        SessionConfig(fragment_size=10, max_buffer_bytes=20)
    with pytest.raises(ValueError, match="timeouts"):
        SessionConfig(stall_timeout=0)


def test_bare_ack_is_not_payload() -> None:
    client, server = make_pair()
    client.send_message("x")
    server.receive_data(client.data_to_send(0.0), 0.0)
    server.data_to_send(0.0, include_data=False)  # HELLO + ACK, e.g. in a POST reply
    assert not server.wants_write
    client.send_message("y")
    server.receive_data(client.data_to_send(0.0), 0.0)
    assert server.wants_write and not server.has_payload_to_send
    assert [type(f) for f in frames_of(server.data_to_send(0.0))] == [Ack]
    server.send_message("z")
    assert server.has_payload_to_send


def test_detached_session_sends_nothing() -> None:
    client = Session(session_id="s", token=TOKEN, is_client=True, now=0)
    client.send_message("queued")
    assert not client.wants_write
    assert client.data_to_send(0.0) == b""
    client.transport_attached(1.0)
    assert client.wants_write
    assert data_seqs(client.data_to_send(1.0)) == [1]


def test_garbage_closes_with_abort_for_the_peer() -> None:
    link = linked()
    with pytest.raises(RemoteProtocolError):
        link.b.receive_data(msgpack.packb([2, 1, 9, b"x"]), link.now)
    link.settle()
    (closed,) = closed_events(link.ba.events)
    assert closed.by_peer and closed.code == CloseCode.PROTOCOL_ERROR
    assert "flags" in closed.reason


def test_hop_sessions_reassemble_at_most_a_tunnel_batch_of_session_message() -> None:
    """A hop session carries tunnel batches (64 KiB, or one head alone), never 16 MiB.

    The endpoint WebSocket limit (``max_message_size``) is the tunnel's
    business; the session core reassembles at most ``max_session_message``.
    """
    from gateway.config import build_config
    from gateway.core.session.events import MessageReceived
    from gateway.core.tunnel import Tunnel, TunnelConfig
    from gateway.settings import derive
    from gateway.transports.session_settings import SessionSettings

    settings = derive(build_config("client", {})).session  # what a gateway's sessions get
    hop = settings.core_config()
    assert hop.max_message_size == settings.max_session_message == 2 * 1024 * 1024
    assert settings.max_message_size == 16 * 1024 * 1024
    # A session used as a plain message transport keeps max_message_size.
    assert SessionSettings().core_config().max_message_size == 16 * 1024 * 1024
    # The largest single frame a Tunnel sends: a head at max_header_bytes.
    tunnel = Tunnel(TunnelConfig(), opener=True)
    tunnel.open_http("GET", b"/" + b"t" * 1000, [(b"h", b"v" * (64 * 1024 - 1003))])
    largest = tunnel.next_message()
    assert largest is not None and 64 * 1024 < len(largest) < hop.max_message_size // 16
    sender = Session(SessionConfig(), session_id=SESSION_ID, token=TOKEN, is_client=True, now=0)
    receiver = Session(hop, session_id=SESSION_ID, token=TOKEN, is_client=False, now=0)
    link = FakeLink(sender, receiver)
    link.reconnect()
    link.settle()
    sender.send_message(largest)
    sender.send_message(b"z" * (hop.max_message_size + 1))
    link.settle(rounds=40)
    assert [len(e.data) for e in link.ab.events if isinstance(e, MessageReceived)] == [len(largest)]
    assert isinstance(link.ab.errors[0], MessageTooBig)
    assert link.ab.errors[0].code == 1009


@pytest.mark.parametrize(("grace", "close_timeout"), [(60.0, 10.0), (1.0, 10.0)])
def test_a_closing_session_wakes_for_the_earliest_of_its_deadlines(
    grace: float, close_timeout: float
) -> None:
    link = linked(SessionConfig(resume_grace=grace, close_timeout=close_timeout))
    start = link.now
    link.a.close(1000, "bye", now=link.now)
    attached = link.a.next_deadline()
    assert attached is not None and attached <= start + close_timeout
    link.disconnect()  # detached and closing: expiry or the close timeout, whichever first
    assert link.a.next_deadline() == pytest.approx(min(start + close_timeout, link.now + grace))
