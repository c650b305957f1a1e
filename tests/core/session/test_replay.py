"""The send side alone (``ReplayBuffer``): numbering, the pending large message, acks, rewind.

The session tests drive it through ``Session``; these pin the seam itself,
so a change to the buffer's book-keeping fails here with a short story.
"""

from __future__ import annotations

import pytest

from gateway.core.session import SessionConfig
from gateway.core.session.errors import RemoteProtocolError, SessionUsageError
from gateway.core.session.frames import Close, Data, FrameDecoder, new_packer
from gateway.core.session.replay import ReplayBuffer, message_payload

CONFIG = SessionConfig(fragment_size=100, max_buffer_frames=4, max_buffer_bytes=4096)


def sent(buffer: ReplayBuffer, limit: int = 1 << 20) -> list[Data | Close]:
    parts: list[bytes] = []
    buffer.take(parts, limit)
    frames = FrameDecoder().decode(b"".join(parts))
    assert all(isinstance(f, Data | Close) for f in frames)
    return frames  # type: ignore[return-value]


def test_a_message_over_the_free_frames_waits_as_pending_and_is_admitted_by_acks() -> None:
    buffer = ReplayBuffer(CONFIG, new_packer())
    buffer.add_message(b"x" * 650, text=False)  # 7 fragments, 4 fit
    assert len(buffer.buf) == 4 and buffer.pending is not None and not buffer.has_room
    assert [f.seq for f in sent(buffer)] == [1, 2, 3, 4]
    assert buffer.ack(2)
    assert len(buffer.buf) == 4 and buffer.pending is not None  # seqs 3..6
    assert [f.seq for f in sent(buffer)] == [5, 6]
    assert buffer.ack(6)
    assert buffer.pending is None and buffer.has_room
    last = sent(buffer)
    assert [(f.seq, f.fin) for f in last if isinstance(f, Data)] == [(7, True)]


def test_close_waits_behind_the_pending_message() -> None:
    buffer = ReplayBuffer(CONFIG, new_packer())
    buffer.add_message(b"x" * 650, text=True)
    buffer.request_close(1000, "bye")
    assert buffer.close_seq is None
    sent(buffer)
    buffer.ack(4)  # the rest of the message fits: CLOSE follows it at once
    assert buffer.close_seq == 8
    frames = sent(buffer)
    assert [f.seq for f in frames] == [5, 6, 7, 8] and isinstance(frames[-1], Close)
    buffer.ack(7)
    assert not buffer.close_acked
    buffer.ack(8)
    assert buffer.close_acked


def test_acks_of_the_past_are_ignored_and_of_the_future_are_the_peers_fault() -> None:
    buffer = ReplayBuffer(CONFIG, new_packer())
    buffer.add_message(b"a", text=False)
    buffer.add_message(b"b", text=False)
    sent(buffer)
    assert buffer.ack(1) and not buffer.ack(1) and not buffer.ack(0)
    with pytest.raises(RemoteProtocolError, match="only 2 were sent"):
        buffer.ack(3)
    assert buffer.outstanding
    buffer.ack(2)
    assert not buffer.outstanding and not buffer.unsent


def test_rewind_resends_from_the_oldest_unacked_frame() -> None:
    buffer = ReplayBuffer(CONFIG, new_packer())
    for payload in (b"a", b"b", b"c"):
        buffer.add_message(payload, text=False)
    assert [f.seq for f in sent(buffer)] == [1, 2, 3]
    assert not buffer.unsent
    buffer.ack(1)
    buffer.rewind()
    assert [f.seq for f in sent(buffer)] == [2, 3]
    assert buffer.high_sent == 3


def test_message_payload_owns_its_bytes_and_marks_text() -> None:
    scratch = bytearray(b"abc")
    payload, text = message_payload(scratch)
    scratch[0] = ord("z")
    assert (payload, text) == (b"abc", False)
    assert message_payload("é") == ("é".encode(), True)
    with pytest.raises(SessionUsageError, match="UTF-8"):
        message_payload("\udc80")


def test_add_message_without_room_queues_nothing_and_says_so() -> None:
    buffer = ReplayBuffer(CONFIG, new_packer())
    assert all(buffer.add_message(b"m", text=False) for _ in range(4))  # max_buffer_frames
    assert not buffer.has_room
    assert buffer.add_message(b"late", text=False) is False
    assert (len(buffer.buf), buffer.next_seq) == (4, 5)
    buffer2 = ReplayBuffer(CONFIG, new_packer())
    assert buffer2.add_message(b"x" * 650, text=False)  # pending: no room for another
    assert buffer2.add_message(b"y", text=False) is False
    assert buffer2.pending is not None and len(buffer2.pending) == 650
