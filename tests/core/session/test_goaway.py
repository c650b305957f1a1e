"""GOAWAY: the frame round trip and the session core's state (no event loop)."""

from __future__ import annotations

import msgpack
import pytest

from gateway.core.session import RemoteProtocolError, SessionUsageError
from gateway.core.session.events import GoAwayReceived, MessageReceived
from gateway.core.session.frames import (
    MAX_REASON_BYTES,
    FrameDecoder,
    FrameType,
    GoAway,
    new_packer,
)

from .fakelink import FakeLink, make_pair


def linked() -> FakeLink:
    client, server = make_pair()
    link = FakeLink(client, server)
    link.settle()
    return link


def goaways(events: list[object]) -> list[GoAwayReceived]:
    return [e for e in events if isinstance(e, GoAwayReceived)]


def test_frame_round_trip_and_wire_layout() -> None:
    frame = GoAway(last_stream_id=7, reason="draining")
    raw = frame.encode(new_packer())
    assert msgpack.unpackb(raw) == [8, 7, "draining"]
    assert FrameType.GOAWAY == 8
    assert FrameDecoder().decode(raw) == [frame]


@pytest.mark.parametrize(
    "raw",
    [
        [8, 7],  # arity
        [8, -1, ""],  # negative id
        [8, True, ""],  # bool is not an integer
        [8, 1, b"bytes"],  # reason must be str
        [8, 1, "x" * (MAX_REASON_BYTES + 1)],  # reason too long
        [8, 1, "", 0],  # arity
    ],
)
def test_malformed_goaway_is_a_protocol_error(raw: list[object]) -> None:
    with pytest.raises(RemoteProtocolError, match=r"GOAWAY|close reason"):
        FrameDecoder().decode(msgpack.packb(raw, use_bin_type=True))


def test_goaway_reaches_the_peer_once_and_data_keeps_flowing() -> None:
    link = linked()
    link.b.go_away(5, "draining")
    link.b.send_message(b"still served")
    link.a.send_message(b"answer")
    link.settle()
    assert goaways(link.ba.events) == [GoAwayReceived(last_stream_id=5, reason="draining")]
    assert link.a.goaway.received == 5 and link.b.goaway.sent == 5
    assert [e.data for e in link.ba.events if isinstance(e, MessageReceived)] == [b"still served"]
    assert [e.data for e in link.ab.events if isinstance(e, MessageReceived)] == [b"answer"]
    link.settle()
    assert len(goaways(link.ba.events)) == 1  # not repeated on the same transport


def test_goaway_is_said_again_on_every_new_transport() -> None:
    """A control frame is not replayed: a transport lost with it in flight must not swallow it."""
    link = linked()
    link.b.go_away(3, "draining")
    link.flush()
    link.disconnect()  # the batch with the GOAWAY is gone
    assert goaways(link.ba.events) == []
    link.reconnect()
    link.settle()
    assert goaways(link.ba.events) == [GoAwayReceived(last_stream_id=3, reason="draining")]
    link.disconnect()
    link.reconnect()
    link.settle()
    assert len(goaways(link.ba.events)) == 1  # a repeat with the same id is no news


def test_a_repeat_may_lower_the_id_never_raise_it() -> None:
    link = linked()
    link.b.go_away(9, "draining")
    link.settle()
    with pytest.raises(SessionUsageError, match="may not raise"):
        link.b.go_away(11)
    link.b.go_away(4, "sooner")
    link.settle()
    assert goaways(link.ba.events) == [
        GoAwayReceived(last_stream_id=9, reason="draining"),
        GoAwayReceived(last_stream_id=4, reason="sooner"),
    ]


def test_goaway_wakes_an_idle_session_and_is_ignored_once_closed() -> None:
    link = linked()
    assert not link.b.has_payload_to_send
    link.b.go_away(0)
    assert link.b.has_payload_to_send and link.b.wants_write
    link.settle()
    link.a.close(now=link.now)
    link.settle()
    link.b.go_away(0)  # CLOSED: nothing to tell
    assert not link.b.has_payload_to_send


def test_reason_is_clipped_to_what_a_frame_may_carry() -> None:
    link = linked()
    link.b.go_away(1, "é" * 200)
    link.settle()
    (event,) = goaways(link.ba.events)
    assert len(event.reason.encode()) <= MAX_REASON_BYTES
