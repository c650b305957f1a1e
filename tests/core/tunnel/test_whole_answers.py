"""Whole answers: RESPONSE_WHOLE carries a small answer's head, body and end in one frame."""

from __future__ import annotations

import pytest

from gateway.core.tunnel import (
    DataReceived,
    Event,
    FlowControlError,
    RemoteProtocolError,
    RequestReceived,
    ResetCode,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    Tunnel,
)
from gateway.core.tunnel.config import WHOLE_BODY_MAX
from gateway.core.tunnel.frames import FrameDecoder, FrameType, encode_response_whole, new_packer
from tests.core.tunnel.test_streams import Pipe

HEAD = [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")]


def asked(pipe: Pipe, *, whole: bool = True) -> int:
    """A GET from down to up, with packed heads (and whole answers, if ``whole``) agreed."""
    pipe.down.peer_reads_packed_heads()
    if whole:
        pipe.up.peer_reads_whole_answers()
    sid = pipe.down.open_http("GET", b"/poll?since=1", [(b"Host", b"app")])
    pipe.pump()
    [request] = pipe.up.events_received()
    assert isinstance(request, RequestReceived)
    return sid


def frames_of(tunnel: Tunnel) -> tuple[list[int], bytes]:
    message = tunnel.next_message()
    assert message is not None
    return [frame[0] for frame in FrameDecoder().decode(message)], message


def as_read(events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, ResponseReceived):
            out.append(("head", e.status, e.headers, e.has_body))
        elif isinstance(e, DataReceived):
            out.append(("data", e.data))
        else:
            out.append((type(e).__name__,))
    return out


@pytest.mark.parametrize("body", [b"", b'{"events": []}', b"x" * WHOLE_BODY_MAX])
def test_a_small_whole_answer_is_one_frame_and_reads_as_head_body_and_end(body: bytes) -> None:
    pipe = Pipe()
    sid = asked(pipe)
    assert pipe.up.answers_whole
    pipe.up.respond_whole(sid, 200, b"OK", HEAD, body)
    kinds, message = frames_of(pipe.up)
    assert kinds == [FrameType.RESPONSE_WHOLE]
    pipe.down.receive_message(message)
    data = [("data", body)] if body else []
    assert as_read(pipe.down.events_received()) == [
        ("head", 200, tuple(HEAD), True),
        *data,
        ("StreamEnded",),
    ]
    assert pipe.up.stream_count == pipe.down.stream_count == 0


@pytest.mark.parametrize(
    ("whole", "body", "why"),
    [
        (False, b"{}", "the peer did not say it reads them"),
        (True, b"x" * (WHOLE_BODY_MAX + 1), "over WHOLE_BODY_MAX"),
    ],
)
def test_otherwise_a_whole_answer_goes_as_the_three_frames(
    whole: bool, body: bytes, why: str
) -> None:
    pipe = Pipe()
    sid = asked(pipe, whole=whole)
    pipe.up.respond_whole(sid, 200, b"OK", HEAD, body)
    kinds, message = frames_of(pipe.up)
    assert kinds == [FrameType.RESPONSE_PACKED, FrameType.DATA, FrameType.END], why
    pipe.down.receive_message(message)
    assert as_read(pipe.down.events_received()) == [
        ("head", 200, tuple(HEAD), True),
        ("data", body),
        ("StreamEnded",),
    ]


def test_heads_stay_plain_and_answers_split_to_a_peer_that_never_packed() -> None:
    """Whole answers ride on packed heads: without them (the shim) nothing changes."""
    pipe = Pipe()
    pipe.up.peer_reads_whole_answers()
    sid = pipe.down.open_http("GET", b"/", [(b"Host", b"app")])
    pipe.pump()
    pipe.up.events_received()
    assert not pipe.up.answers_whole
    pipe.up.respond_whole(sid, 200, b"OK", HEAD, b"{}")
    assert frames_of(pipe.up)[0] == [FrameType.RESPONSE, FrameType.DATA, FrameType.END]


def test_whole_answers_share_a_message_and_keep_the_header_table_in_step() -> None:
    pipe = Pipe()
    first = asked(pipe)
    second = pipe.down.open_http("GET", b"/poll?since=2", [(b"Host", b"app")])
    pipe.pump()
    pipe.up.events_received()
    pipe.up.respond_whole(first, 200, b"OK", HEAD, b"1")
    pipe.up.respond_whole(second, 200, b"OK", [*HEAD, (b"X-N", b"2")], b"2")
    kinds, message = frames_of(pipe.up)
    assert kinds == [FrameType.RESPONSE_WHOLE] * 2
    pipe.down.receive_message(message)
    heads = [e.headers for e in pipe.down.events_received() if isinstance(e, ResponseReceived)]
    assert heads == [tuple(HEAD), (*HEAD, (b"X-N", b"2"))]


# -- from a hostile peer -------------------------------------------------------------


def opened() -> tuple[Tunnel, int]:
    down = Tunnel(opener=True)
    sid = down.open_http("GET", b"/")
    down.next_message()
    return down, sid


def test_a_body_over_the_streams_window_is_a_flow_control_error() -> None:
    down, sid = opened()
    over = b"x" * (256 * 1024 + 1)  # the default initial window, plus one
    with pytest.raises(FlowControlError):
        down.receive_message(encode_response_whole(new_packer(), sid, 200, b"", [], over))


def test_a_whole_answer_to_a_stream_the_peer_opened_is_a_protocol_error() -> None:
    up = Tunnel(opener=False)
    up.receive_message(new_packer().pack((1, 1, 65536, "GET", b"/", [], False)))
    up.events_received()
    with pytest.raises(RemoteProtocolError, match="RESPONSE on stream 1"):
        up.receive_message(encode_response_whole(new_packer(), 1, 200, b"", [], b"{}"))


def test_a_whole_answer_to_a_stream_never_opened_is_a_protocol_error() -> None:
    down, _ = opened()
    with pytest.raises(RemoteProtocolError, match="never opened"):
        down.receive_message(encode_response_whole(new_packer(), 99, 200, b"", [], b"{}"))


def test_a_body_that_is_not_bin_is_malformed() -> None:
    down, sid = opened()
    frame = new_packer().pack((18, sid, 200, b"", [], "text"))
    with pytest.raises(RemoteProtocolError, match="RESPONSE_WHOLE body is invalid"):
        down.receive_message(frame)


def test_a_bad_head_reference_resets_the_stream_and_drops_its_body() -> None:
    down, sid = opened()
    down.receive_message(encode_response_whole(new_packer(), sid, 200, b"", [0], b"secret"))
    [event] = down.events_received()
    assert isinstance(event, StreamReset) and event.code == ResetCode.PROTOCOL
    assert not event.remote and down.stream_count == 0


def test_a_whole_answer_for_a_stream_already_gone_changes_only_the_header_table() -> None:
    """The peer's table changed when it sent the frame, so it is still decoded."""
    down, sid = opened()
    down.reset(sid)
    packer = new_packer()
    down.receive_message(encode_response_whole(packer, sid, 200, b"", [b"X-A", b"1"], b"late"))
    assert down.events_received() == []
    second = down.open_http("GET", b"/")
    down.next_message()
    down.receive_message(encode_response_whole(packer, second, 200, b"", [0], b"ok"))
    events = down.events_received()
    assert isinstance(events[0], ResponseReceived) and events[0].headers == ((b"X-A", b"1"),)
    assert isinstance(events[-1], StreamEnded)
