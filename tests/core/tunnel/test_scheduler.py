"""Scheduler: a run of small WebSocket messages of one stream goes out as one pick.

The wire is what frame-by-frame encoding gives (one MESSAGE frame per
message, FIN set, TEXT as sent); what changes is the work per message, and
the unit of fairness between streams stays ``max_chunk`` bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.session import MessageReceived, SessionConfig
from gateway.core.session.frames import FrameDecoder as SessionFrames
from gateway.core.tunnel import TunnelConfig, WebSocketMessage
from gateway.core.tunnel.flow import FlowControl
from gateway.core.tunnel.frames import (
    FLAG_FIN,
    FLAG_TEXT,
    FrameDecoder,
    FrameType,
    encode_close,
    encode_message,
    new_packer,
)
from tests.core.session.fakelink import make_pair
from tests.core.tunnel.test_streams import Pipe, consume_all, open_ws

CONFIG = TunnelConfig(max_chunk=4096, max_message=16 * 1024)


def _frames(message: bytes) -> list[tuple[int, int, int, bytes]]:
    return [(raw[0], raw[1], raw[2], bytes(raw[3])) for raw in FrameDecoder().decode(message)]


def test_a_burst_of_small_messages_costs_one_flow_update_per_max_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = Pipe(CONFIG)
    sid = open_ws(pipe)
    calls: list[int] = []
    chunk_sent = FlowControl.chunk_sent

    def counting(self: FlowControl, stream: object, n: int) -> None:
        calls.append(n)
        chunk_sent(self, stream, n)  # type: ignore[arg-type]

    monkeypatch.setattr(FlowControl, "chunk_sent", counting)
    sent = [bytes([i % 251]) * 100 for i in range(140)]  # 14,000 bytes: fits one message
    for data in sent:
        pipe.down.send_ws_message(sid, data)
    message = pipe.down.next_message()
    assert message is not None
    packer = new_packer()
    assert message == b"".join(encode_message(packer, sid, FLAG_FIN, d) for d in sent)
    assert len(calls) == 4  # 4096-byte runs of 40, 40, 40 and the last 20: not one per message
    assert sum(calls) == 14_000
    assert pipe.down.next_message() is None


def test_runs_keep_text_flags_and_empty_messages_in_order() -> None:
    pipe = Pipe(CONFIG)
    sid = open_ws(pipe)
    sent: list[bytes | str] = ["a", b"", b"b" * 300, "", "\u00e9" * 200, b"c"]
    for data in sent:
        pipe.down.send_ws_message(sid, data)
    message = pipe.down.next_message()
    assert message is not None
    flags = [f for (_, _, f, _) in _frames(message)]
    text, binary = FLAG_FIN | FLAG_TEXT, FLAG_FIN
    assert flags == [text, binary, binary, text, text, binary]


def test_two_bursting_streams_share_each_message_within_max_chunk() -> None:
    pipe = Pipe(CONFIG)
    first, second = open_ws(pipe), open_ws(pipe)
    for _ in range(150):
        pipe.down.send_ws_message(first, b"x" * 100)
        pipe.down.send_ws_message(second, b"y" * 100)
    message = pipe.down.next_message()
    assert message is not None
    per_stream = {first: 0, second: 0}
    for _, sid, _, payload in _frames(message):
        per_stream[sid] += len(payload)
    assert abs(per_stream[first] - per_stream[second]) <= CONFIG.max_chunk


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.text(max_size=100),
            st.binary(min_size=3000, max_size=9000),
        ),
        max_size=120,
    ),
    st.integers(min_value=1024, max_value=20_000),
)
def test_any_burst_arrives_whole_and_in_order_within_the_budget(
    sent: list[bytes | str], max_bytes: int
) -> None:
    pipe = Pipe(TunnelConfig(max_chunk=4096, initial_window=64 * 1024), max_bytes=max_bytes)
    sid = open_ws(pipe)
    got: list[bytes | str] = []
    outbox = list(sent)
    for _ in range(10_000):
        while outbox and pipe.down.is_writable(sid):
            pipe.down.send_ws_message(sid, outbox.pop(0))
        pipe.pump()
        events = pipe.up.events_received()
        consume_all(pipe.up, events)
        got += [e.data for e in events if isinstance(e, WebSocketMessage)]
        pipe.down.events_received()
        if len(got) == len(sent):
            break
    assert got == sent
    assert max(pipe.sizes, default=0) <= max_bytes


def test_with_the_defaults_a_64_kib_message_is_one_frame_one_batch_one_fragment() -> None:
    """The receiving gateway pays per frame, event and session message: one each.

    With 16 KiB chunks in 64 KiB batches a 64 KiB message crossed as 5 chunks
    in 2 session messages (10-18% more gateway CPU per byte).
    """
    pipe = Pipe(TunnelConfig())
    sid = open_ws(pipe)
    data = bytes(range(256)) * 256  # 64 KiB
    pipe.down.send_ws_message(sid, data)
    batch = pipe.down.next_message()
    assert batch is not None and pipe.down.next_message() is None
    assert _frames(batch) == [(FrameType.MESSAGE, sid, FLAG_FIN, data)]
    client, server = make_pair(SessionConfig())
    server.receive_data(client.data_to_send(0.0), 0.0)  # the HELLO
    client.send_message(batch)
    wire = client.data_to_send(0.0)
    assert len(SessionFrames().decode(wire)) == 1  # one DATA frame: not fragmented
    server.receive_data(wire, 0.0)
    got = [e for e in server.events_received() if isinstance(e, MessageReceived)]
    assert [e.data for e in got] == [batch]


def _no_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.core.tunnel.scheduler import Scheduler

    def refused(*args: object) -> None:
        raise AssertionError("a lone small message took the general path")

    monkeypatch.setattr(Scheduler, "_take_chunks", refused)


@pytest.mark.parametrize("data", [b"m", b"x" * 255, b"y" * 256, b"z" * 4096, "t\u00e9xt"])
def test_a_lone_message_per_turn_is_its_frame_without_the_general_path(
    monkeypatch: pytest.MonkeyPatch, data: bytes | str
) -> None:
    pipe = Pipe(CONFIG)
    sid = open_ws(pipe)
    _no_general_path(monkeypatch)
    packer = new_packer()
    payload, flags = (
        (data.encode(), FLAG_FIN | FLAG_TEXT) if isinstance(data, str) else (data, FLAG_FIN)
    )
    stream = pipe.down._table.streams[sid]
    credit = stream.send_credit
    for _ in range(3):  # one per loop turn: each its own batch
        pipe.down.send_ws_message(sid, data)
        assert pipe.down.next_message() == encode_message(packer, sid, flags, payload)
        assert pipe.down.next_message() is None
    # Counted as sent, not queued, as the general path counts it.
    assert (stream.queued, stream.unacked) == (0, 3 * len(payload))
    assert stream.send_credit == credit - 3 * len(payload)
    assert not stream.scheduled and not stream.queue and not stream.text_flags


def test_a_lone_message_carries_its_close_and_says_writable_again() -> None:
    config = TunnelConfig(max_chunk=4096, max_message=16 * 1024, max_pending=1000)
    pipe = Pipe(config)
    sid = open_ws(pipe)
    packer = new_packer()
    assert pipe.down.send_ws_message(sid, b"f" * 1000) is False  # full: wait for StreamWritable
    pipe.down.close_websocket(sid, 1000, "bye")
    message = pipe.down.next_message()
    assert message == encode_message(packer, sid, FLAG_FIN, b"f" * 1000) + encode_close(
        packer, sid, 1000, "bye"
    )
    assert [type(e).__name__ for e in pipe.down.events_received()] == ["StreamWritable"]
    # Over max_chunk: the general path cuts it into chunks, as before.
    pipe2 = Pipe(config)
    sid2 = open_ws(pipe2)
    pipe2.down.send_ws_message(sid2, b"g" * 5000)
    first = pipe2.down.next_message()
    assert first is not None
    assert [(kind, flags, len(p)) for (kind, _, flags, p) in _frames(first)] == [
        (FrameType.MESSAGE, 0, 4096),
        (FrameType.MESSAGE, FLAG_FIN, 904),
    ]


def test_whole_messages_one_per_session_message_past_the_window_are_a_protocol_error() -> None:
    # The receive path's one-frame shortcut takes the credit inline: still checked.
    from gateway.core.tunnel.errors import FlowControlError

    pipe = Pipe(CONFIG)
    sid = open_ws(pipe)
    packer = new_packer()
    window = pipe.down._table.streams[sid].recv_window
    pipe.down.receive_message(encode_message(packer, sid, FLAG_FIN, bytes(window - 1)))
    pipe.down.receive_message(encode_message(packer, sid, FLAG_FIN, b"!"))  # exactly the window
    with pytest.raises(FlowControlError):
        pipe.down.receive_message(encode_message(packer, sid, FLAG_FIN, b"?"))
    assert pipe.down.closed
