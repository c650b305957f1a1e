"""Delayed acks: a bare ACK waits for data to ride on, bounded in time, frames and bytes.

``wants_write`` still counts a bare ACK (long-poll answers, the doctor);
``wants_write_now`` is what a WebSocket writer uses: a message arriving alone
costs no frame back until ACK_DELAY, ACK_EVERY frames or ACK_BYTES.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.session import MessageReceived, Session
from gateway.core.session.frames import Ack, Data, FrameDecoder
from gateway.core.session.outbox import ACK_BYTES, ACK_DELAY, ACK_EVERY
from tests.core.session.fakelink import make_pair


def _frames(batch: bytes) -> list[object]:
    return list(FrameDecoder().decode(batch))


def _one_way(sender: Session, receiver: Session, now: float, *messages: bytes) -> None:
    for message in messages:
        sender.send_message(message)
    receiver.receive_data(sender.data_to_send(now), now)


def test_a_lone_message_owes_an_ack_that_waits_ack_delay() -> None:
    client, server = make_pair()
    server.data_to_send(0.0)  # the HELLO
    _one_way(client, server, 0.0, b"m")
    assert server.wants_write and not server.wants_write_now
    deadline = server.next_deadline()
    assert deadline is not None and deadline <= ACK_DELAY
    server.handle_timer(ACK_DELAY / 2)
    assert not server.wants_write_now
    server.handle_timer(ACK_DELAY)
    assert server.wants_write_now
    assert [type(f) for f in _frames(server.data_to_send(ACK_DELAY))] == [Ack]
    assert not server.wants_write and not server.wants_write_now


def test_the_ack_rides_on_data_and_is_then_owed_no_more() -> None:
    client, server = make_pair()
    server.data_to_send(0.0)
    _one_way(client, server, 0.0, b"m")
    server.send_message(b"reply")
    assert server.wants_write_now
    frames = _frames(server.data_to_send(0.001))
    assert [type(f) for f in frames] == [Ack, Data]
    assert not server.wants_write
    server.handle_timer(1.0)
    assert not server.wants_write_now


def test_ack_every_frames_or_bytes_goes_at_once() -> None:
    client, server = make_pair()
    server.data_to_send(0.0)
    _one_way(client, server, 0.0, *[b"x"] * (ACK_EVERY - 1))
    assert not server.wants_write_now
    _one_way(client, server, 0.0, b"x")
    assert server.wants_write_now
    server.data_to_send(0.0)
    big = b"y" * (ACK_BYTES // 4 + 1)
    _one_way(client, server, 0.0, big, big, big)
    assert not server.wants_write_now
    _one_way(client, server, 0.0, big)
    assert server.wants_write_now


def test_a_duplicate_or_a_close_is_acked_at_once() -> None:
    client, server = make_pair()
    server.data_to_send(0.0)
    client.send_message(b"m")
    batch = client.data_to_send(0.0)
    server.receive_data(batch, 0.0)
    assert not server.wants_write_now
    server.receive_data(batch, 0.0)  # the peer replays: tell it where we are now
    assert server.wants_write_now
    server.data_to_send(0.0)
    client.close(now=0.0)
    server.receive_data(client.data_to_send(0.0), 0.0)
    assert server.wants_write_now


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "tick", "carry", "drop"]), st.integers(0, 9)),
        max_size=120,
    )
)
def test_writers_using_wants_write_now_deliver_everything_once_in_order(
    ops: list[tuple[str, int]],
) -> None:
    """Random sends, time steps, deliveries and losses; then quiet: all acked, once, in order."""
    a, b = make_pair()
    now = 0.0
    wires: dict[str, list[bytes]] = {"ab": [], "ba": []}
    got: dict[str, list[bytes | str]] = {"ab": [], "ba": []}
    sent = {"ab": 0, "ba": 0}
    ends = {"ab": (a, b), "ba": (b, a)}

    def write_all(force: bool = False) -> None:
        for name, (sender, _) in ends.items():
            if sender.wants_write_now or (force and sender.wants_write):
                wires[name].append(sender.data_to_send(now))

    def carry(name: str, count: int) -> None:
        receiver = ends[name][1]
        for batch in wires[name][:count]:
            receiver.receive_data(batch, now)
        del wires[name][:count]
        got[name] += [e.data for e in receiver.events_received() if isinstance(e, MessageReceived)]

    for op, n in ops:
        if op in ("a", "b"):
            name = "ab" if op == "a" else "ba"
            sender = ends[name][0]
            for _ in range(n % 4 + 1):
                if sender.writable:
                    sender.send_message(f"{name} {sent[name]}".encode())
                    sent[name] += 1
        elif op == "tick":
            now += n * ACK_DELAY / 3
            for s in (a, b):
                if (d := s.next_deadline()) is not None and d <= now:
                    s.handle_timer(now)
        elif op == "carry":
            carry("ab" if n % 2 else "ba", n // 2 + 1)
        elif op == "drop" and wires["ab" if n % 2 else "ba"]:
            wires["ab" if n % 2 else "ba"].pop(0)  # a transport lost a batch
        write_all()
    # Quiet: time passes (retransmit, delayed acks), everything in flight arrives.
    for _ in range(200):
        now += ACK_DELAY
        for s in (a, b):
            if (d := s.next_deadline()) is not None and d <= now:
                s.handle_timer(now)
        write_all()
        carry("ab", len(wires["ab"]))
        carry("ba", len(wires["ba"]))
        if not (a.buffered_frames or b.buffered_frames or a.wants_write or b.wants_write):
            break
        now += a.config.retransmit_timeout / 20
    for name in ("ab", "ba"):
        assert got[name] == [f"{name} {i}".encode() for i in range(sent[name])]
    assert a.buffered_frames == 0 and b.buffered_frames == 0
