"""Two Tunnel objects joined by a direct in-memory pipe; no event loop anywhere.

``down`` is the downstream gateway (it opened the hop session: odd stream
ids), ``up`` the upstream one. ``Pipe.pump`` moves session messages both ways
until neither side has anything to send, like an always-writable session.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack
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
    StreamWritable,
    Tunnel,
    TunnelConfig,
    TunnelUsageError,
    WebSocketAccepted,
    WebSocketClosed,
    WebSocketMessage,
    WebSocketRequested,
)
from gateway.core.tunnel.frames import (
    FrameDecoder,
    FrameType,
    encode_data,
    encode_end,
    encode_message,
    encode_open_http,
    encode_reset,
    encode_response,
    encode_window,
    new_packer,
)

SMALL = TunnelConfig(
    initial_window=64 * 1024, max_chunk=4096, max_pending=16 * 1024, max_message=16 * 1024
)


class Pipe:
    def __init__(
        self,
        config: TunnelConfig | None = None,
        *,
        up_config: TunnelConfig | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.down = Tunnel(config, opener=True)
        self.up = Tunnel(up_config or config, opener=False)
        self.max_bytes = max_bytes
        self.sizes: list[int] = []

    def step(self, sender: Tunnel) -> bool:
        """Move one session message from sender to its peer; False if it had none."""
        message = sender.next_message(self.max_bytes)
        if message is None:
            return False
        self.sizes.append(len(message))
        (self.up if sender is self.down else self.down).receive_message(message)
        return True

    def pump(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            moved_down = self.step(self.down)
            moved_up = self.step(self.up)
            if not (moved_down or moved_up):
                return
        raise AssertionError("pipe never went quiet")


def body(events: Iterable[Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def consume_all(tunnel: Tunnel, events: Iterable[Event]) -> None:
    for e in events:
        if isinstance(e, DataReceived):
            tunnel.consumed(e.stream_id, len(e.data))
        elif isinstance(e, WebSocketMessage):
            tunnel.consumed(e.stream_id, e.size)


def kinds(events: Iterable[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def stream_pattern(tag: int, size: int) -> bytes:
    return bytes((tag * 7 + i) % 251 for i in range(size))


# -- HTTP exchanges --------------------------------------------------------------


def test_http_exchange_with_streamed_bodies_both_ways() -> None:
    pipe = Pipe(SMALL)
    headers: list[tuple[bytes | str, bytes | str]] = [
        (b"Host", b"origin"),
        (b"X-Dup", b"1"),
        ("x-dup", "2"),
        (b"Accept", b"*/*"),
    ]
    sid = pipe.down.open_http("POST", "/poll?id=7&x=%20", headers, has_body=True)
    upload = stream_pattern(1, 50_000)
    for i in range(0, len(upload), 10_000):
        assert pipe.down.send_data(sid, upload[i : i + 10_000]) in (True, False)
        pipe.pump()
        consume_all(pipe.up, got := pipe.up.events_received())
        if i == 0:
            request = got[0]
            assert request == RequestReceived(
                stream_id=sid,
                method="POST",
                target=b"/poll?id=7&x=%20",
                headers=(
                    (b"Host", b"origin"),
                    (b"X-Dup", b"1"),
                    (b"x-dup", b"2"),
                    (b"Accept", b"*/*"),
                ),
                has_body=True,
            )
            received = body(got, sid)
        else:
            received += body(got, sid)
    pipe.down.end(sid)
    pipe.pump()
    assert kinds(pipe.up.events_received()) == ["StreamEnded"]
    assert received == upload

    pipe.up.respond(sid, 200, "OK", [("Content-Type", "text/event-stream")])
    events: list[Event] = []
    for n in range(5):  # a streaming (SSE) body: chunk by chunk as it arrives
        pipe.up.send_data(sid, b"data: %d\n\n" % n)
        pipe.pump()
        got = pipe.down.events_received()
        assert got[-1] == DataReceived(stream_id=sid, data=b"data: %d\n\n" % n)
        events += got
    pipe.up.end(sid)
    pipe.pump()
    events += pipe.down.events_received()
    assert events[0] == ResponseReceived(
        stream_id=sid,
        status=200,
        reason=b"OK",
        headers=((b"Content-Type", b"text/event-stream"),),
        has_body=True,
    )
    assert isinstance(events[-1], StreamEnded)
    assert body(events, sid) == b"".join(b"data: %d\n\n" % n for n in range(5))
    assert pipe.down.stream_count == pipe.up.stream_count == 0


def test_bodiless_request_and_response_need_no_end_frames() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", b"/poll", [(b"Host", b"h")])
    pipe.pump()
    (request,) = pipe.up.events_received()
    assert isinstance(request, RequestReceived) and not request.has_body
    pipe.up.respond(sid, 204, b"No Content", has_body=False)
    pipe.pump()
    (response,) = pipe.down.events_received()
    assert isinstance(response, ResponseReceived) and response.status == 204
    assert not response.has_body
    assert pipe.down.stream_count == pipe.up.stream_count == 0


def test_many_concurrent_streams_each_get_their_own_answer() -> None:
    pipe = Pipe(SMALL)
    sids = [pipe.down.open_http("GET", f"/r/{i}") for i in range(200)]
    assert sids == list(range(1, 400, 2))
    pipe.pump()
    requests = pipe.up.events_received()
    assert [e.stream_id for e in requests] == sids
    for request in reversed(requests):
        assert isinstance(request, RequestReceived)
        pipe.up.respond(request.stream_id, 200, "OK")
        pipe.up.send_data(request.stream_id, request.target * 50)
        pipe.up.end(request.stream_id)
    pipe.pump()
    events = pipe.down.events_received()
    for i, sid in enumerate(sids):
        assert body(events, sid) == f"/r/{i}".encode() * 50
    assert sum(isinstance(e, StreamEnded) for e in events) == 200
    assert pipe.down.stream_count == pipe.up.stream_count == 0


def test_both_sides_may_open_streams_with_their_own_parity() -> None:
    pipe = Pipe()
    a = pipe.down.open_http("GET", "/a")
    b = pipe.up.open_http("GET", "/b")
    pipe.pump()
    assert (a % 2, b % 2) == (1, 0)
    assert pipe.up.events_received()[0].stream_id == a
    assert pipe.down.events_received()[0].stream_id == b


# -- flow control and fairness ---------------------------------------------------------


def test_stalled_consumer_stops_its_stream_at_the_window_while_others_flow() -> None:
    pipe = Pipe(SMALL)
    stalled = pipe.down.open_http("POST", "/stalled", has_body=True)
    flowing = pipe.down.open_http("POST", "/flowing", has_body=True)
    received = {stalled: 0, flowing: 0}
    for _ in range(300):
        for sid in (stalled, flowing):
            if pipe.down.is_writable(sid):
                pipe.down.send_data(sid, stream_pattern(sid, 4000))
        pipe.step(pipe.down)
        pipe.step(pipe.up)
        for event in pipe.up.events_received():
            if isinstance(event, DataReceived):
                received[event.stream_id] += len(event.data)
                if event.stream_id == flowing:  # only this one's consumer keeps up
                    pipe.up.consumed(flowing, len(event.data))
    assert received[stalled] == SMALL.initial_window  # exactly its credit, never more
    assert received[flowing] >= 10 * SMALL.initial_window
    assert not pipe.down.is_writable(stalled)  # backpressure reached the sender's caller

    pipe.up.consumed(stalled, received[stalled])
    pipe.pump()
    assert body(pipe.up.events_received(), stalled)  # and it resumes
    pipe.pump()
    assert StreamWritable(stream_id=stalled) in pipe.down.events_received()


def test_small_response_overtakes_a_big_download_within_one_chunk() -> None:
    pipe = Pipe(TunnelConfig(max_chunk=16 * 1024, max_pending=256 * 1024))
    big = pipe.down.open_http("GET", "/big.iso")
    poll = pipe.down.open_http("GET", "/poll")
    pipe.pump()
    pipe.up.events_received()
    pipe.up.respond(big, 200, "OK")
    for _ in range(16):  # 256 KiB queued, a full window
        pipe.up.send_data(big, bytes(16 * 1024))
    assert pipe.step(pipe.up)  # the download is on its way...
    assert body(pipe.down.events_received(), big)
    pipe.up.respond(poll, 200, "OK")
    pipe.up.send_data(poll, b'{"messages": ["hi"]}')
    pipe.up.end(poll)
    order: list[Event] = []
    while pipe.step(pipe.up):
        order += pipe.down.events_received()
    first_poll = next(i for i, e in enumerate(order) if e.stream_id == poll)
    big_bytes_before = len(body(order[:first_poll], big))
    assert big_bytes_before <= 16 * 1024
    assert body(order, poll) == b'{"messages": ["hi"]}'


def test_small_upload_goes_before_the_rest_of_a_big_upload() -> None:
    pipe = Pipe(TunnelConfig(max_chunk=16 * 1024, max_pending=512 * 1024, max_message=20_000))
    big = pipe.down.open_http("PUT", "/upload", has_body=True)
    pipe.down.send_data(big, bytes(400_000))
    pipe.step(pipe.down)
    small = pipe.down.open_http("POST", "/send", has_body=True)
    pipe.down.send_data(small, b"msg")
    pipe.down.end(small)
    message = pipe.down.next_message()
    assert message is not None
    frames = [(raw[0], raw[1]) for raw in FrameDecoder().decode(message)]
    data_of_big = (FrameType.DATA, big)
    before_big = frames[: frames.index(data_of_big)] if data_of_big in frames else frames
    assert before_big == [
        (FrameType.OPEN_HTTP, small),
        (FrameType.DATA, small),
        (FrameType.END, small),
    ]


def test_round_robin_shares_bandwidth_between_bulk_streams() -> None:
    pipe = Pipe(SMALL)
    sids = [pipe.down.open_http("PUT", f"/{i}", has_body=True) for i in range(3)]
    for sid in sids:
        pipe.down.send_data(sid, bytes(60_000))
    totals = dict.fromkeys(sids, 0)
    for _ in range(4):  # 4 x 16 KiB messages: no stream may hog them
        pipe.step(pipe.down)
        for e in pipe.up.events_received():
            if isinstance(e, DataReceived):
                totals[e.stream_id] += len(e.data)
    assert max(totals.values()) - min(totals.values()) <= SMALL.max_chunk


def test_send_data_reports_backpressure_and_writable_again() -> None:
    pipe = Pipe(SMALL)
    sid = pipe.down.open_http("POST", "/", has_body=True)
    assert pipe.down.send_data(sid, bytes(8 * 1024))
    assert not pipe.down.send_data(sid, bytes(8 * 1024))  # reached max_pending
    with pytest.raises(TunnelUsageError, match="not writable"):
        pipe.down.send_data(sid, b"x")
    pipe.step(pipe.down)
    assert pipe.down.events_received() == [StreamWritable(stream_id=sid)]
    assert pipe.down.send_data(sid, b"more")


def test_messages_respect_the_byte_budget() -> None:
    pipe = Pipe(SMALL, max_bytes=5000)
    sids = [pipe.down.open_http("POST", "/", has_body=True) for _ in range(5)]
    for sid in sids:
        pipe.down.send_data(sid, bytes(12_000))
        pipe.down.end(sid)
    pipe.pump()
    assert max(pipe.sizes) <= 5000
    consume_all(pipe.up, pipe.up.events_received())
    assert len(pipe.sizes) > 12


def test_consumed_more_than_received_is_local_misuse() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("POST", "/", has_body=True)
    pipe.down.send_data(sid, b"abc")
    pipe.pump()
    pipe.up.consumed(sid, 2)
    with pytest.raises(TunnelUsageError):
        pipe.up.consumed(sid, 2)


# -- resets, exactly-once, close_all -----------------------------------------------------


def test_client_abort_of_a_held_poll_reaches_the_upstream_as_cancel() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", "/poll")
    pipe.pump()
    pipe.up.events_received()
    pipe.down.reset(sid, ResetCode.CANCEL, "client went away")
    pipe.up.respond(sid, 200, "OK")  # crosses the RESET on the wire
    pipe.up.send_data(sid, b"late")
    pipe.pump()
    assert pipe.up.events_received() == [
        StreamReset(
            stream_id=sid,
            code=ResetCode.CANCEL,
            reason="client went away",
            remote=True,
            retry_safe=False,
        )
    ]
    assert pipe.down.events_received() == []  # late frames of a reset stream are ignored
    assert pipe.up.send_data(sid, b"after") is False  # a race, not a bug
    assert pipe.down.stream_count == pipe.up.stream_count == 0


@pytest.mark.parametrize(
    ("code", "status"), [(ResetCode.TIMEOUT, 504), (ResetCode.CONNECT_FAILED, 502)]
)
def test_upstream_failure_reaches_the_downstream_with_its_status(
    code: ResetCode, status: int
) -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("POST", "/", has_body=True)
    pipe.down.send_data(sid, b"body")
    pipe.pump()
    pipe.up.reset(sid, code, "origin trouble")
    pipe.pump()
    (event,) = pipe.down.events_received()
    assert isinstance(event, StreamReset) and event.remote and not event.retry_safe
    assert ResetCode(event.code).http_status == status
    assert pipe.down.send_data(sid, b"more") is False


@pytest.mark.parametrize("with_body", [False, True])
def test_reset_before_the_open_left_sends_nothing(with_body: bool) -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("POST", "/", has_body=with_body)
    if with_body:
        pipe.down.end(sid)  # END must not escape for a stream the peer never saw
    assert not pipe.down.open_sent(sid)
    pipe.down.reset(sid)
    assert pipe.down.next_message() is None
    assert not pipe.down.has_pending()


def test_end_without_data_follows_its_open() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("POST", "/", has_body=True)
    pipe.down.end(sid)
    pipe.pump()
    assert kinds(pipe.up.events_received()) == ["RequestReceived", "StreamEnded"]


def test_open_sent_flips_when_the_open_is_handed_to_the_session() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", "/")
    assert not pipe.down.open_sent(sid)
    message = pipe.down.next_message()
    assert message is not None and pipe.down.open_sent(sid)


def test_close_all_resets_everything_and_says_what_may_be_retried() -> None:
    pipe = Pipe()
    sent = pipe.down.open_http("GET", "/sent")
    pipe.pump()
    peer = pipe.up.open_http("GET", "/theirs")
    pipe.pump()
    unsent = pipe.down.open_http("POST", "/unsent", has_body=True)
    pipe.down.events_received()
    pipe.down.close_all("session expired")
    events = {e.stream_id: e for e in pipe.down.events_received()}
    assert set(events) == {sent, peer, unsent}
    assert all(
        isinstance(e, StreamReset) and e.code == ResetCode.SESSION_LOST for e in events.values()
    )
    assert [sid for sid, e in events.items() if isinstance(e, StreamReset) and e.retry_safe] == [
        unsent
    ]
    assert pipe.down.closed and pipe.down.next_message() is None
    assert pipe.down.send_data(unsent, b"x") is False
    with pytest.raises(TunnelUsageError, match="closed"):
        pipe.down.open_http("GET", "/")
    with pytest.raises(TunnelUsageError, match="closed"):
        pipe.down.receive_message(b"")


def test_refused_streams_are_retry_safe() -> None:
    pipe = Pipe(up_config=TunnelConfig(max_streams=2))
    sids = [pipe.down.open_http("GET", f"/{i}", has_body=True) for i in range(3)]
    for sid in sids:
        pipe.down.send_data(sid, b"payload")  # the refused one's DATA arrives late: ignored
    pipe.pump()
    assert [
        e.stream_id for e in pipe.up.events_received() if isinstance(e, RequestReceived)
    ] == sids[:2]
    (refused,) = pipe.down.events_received()
    assert refused == StreamReset(
        stream_id=sids[2],
        code=ResetCode.REFUSED,
        reason="too many streams",
        remote=True,
        retry_safe=True,
    )
    pipe.up.reset(sids[0])  # frees a slot
    pipe.pump()
    pipe.down.events_received()
    retried = pipe.down.open_http("GET", "/2")
    pipe.pump()
    assert [e.stream_id for e in pipe.up.events_received()] == [retried]


# -- WebSockets ---------------------------------------------------------------------


def open_ws(pipe: Pipe) -> int:
    sid = pipe.down.open_websocket("/ws", [(b"Origin", b"https://a")], ["chat", "superchat"])
    pipe.pump()
    assert pipe.up.events_received() == [
        WebSocketRequested(
            stream_id=sid,
            target=b"/ws",
            headers=((b"Origin", b"https://a"),),
            protocols=("chat", "superchat"),
        )
    ]
    pipe.up.accept_websocket(sid, "chat", [("X-Served-By", "origin")])
    pipe.pump()
    assert pipe.down.events_received() == [
        WebSocketAccepted(stream_id=sid, protocol="chat", headers=((b"X-Served-By", b"origin"),))
    ]
    return sid


def test_websocket_messages_both_ways_and_close_handshake() -> None:
    pipe = Pipe(SMALL)
    sid = open_ws(pipe)
    big = stream_pattern(3, 300_000)  # larger than the window: chunked and credited
    outbox: list[bytes | str] = ["h\u00e9llo", b"", big, "x" * 10_000]
    got: list[Event] = []
    for _ in range(1000):
        while outbox and pipe.down.is_writable(sid):
            pipe.down.send_ws_message(sid, outbox.pop(0))
        pipe.pump()
        events = pipe.up.events_received()
        consume_all(pipe.up, events)
        got += events
        if len(got) == 4:
            break
    assert [e.data for e in got if isinstance(e, WebSocketMessage)] == [
        "h\u00e9llo",
        b"",
        big,
        "x" * 10_000,
    ]
    pipe.up.send_ws_message(sid, b"\x00\x01")
    pipe.up.close_websocket(sid, 1000, "bye")
    pipe.pump()
    back = [e for e in pipe.down.events_received() if not isinstance(e, StreamWritable)]
    assert kinds(back) == ["WebSocketMessage", "WebSocketClosed"]
    assert back[1] == WebSocketClosed(stream_id=sid, code=1000, reason="bye")
    with pytest.raises(TunnelUsageError):
        pipe.up.send_ws_message(sid, b"after close")
    pipe.down.close_websocket(sid, 1000, "bye")
    pipe.pump()
    assert pipe.up.events_received() == [WebSocketClosed(stream_id=sid, code=1000, reason="bye")]
    assert pipe.down.stream_count == pipe.up.stream_count == 0


def test_websocket_refused_with_an_http_response() -> None:
    pipe = Pipe()
    sid = pipe.down.open_websocket("/ws")
    pipe.pump()
    pipe.up.events_received()
    pipe.up.respond(sid, 403, "Forbidden", [("Content-Type", "text/plain")])
    pipe.up.send_data(sid, b"go away")
    pipe.up.end(sid)
    pipe.pump()
    events = pipe.down.events_received()
    assert kinds(events) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert isinstance(events[0], ResponseReceived) and events[0].status == 403
    assert pipe.down.stream_count == pipe.up.stream_count == 0


def test_no_websocket_message_before_accept() -> None:
    pipe = Pipe()
    sid = pipe.down.open_websocket("/ws")
    with pytest.raises(TunnelUsageError, match="HEAD"):
        pipe.down.send_ws_message(sid, "too early")
    pipe.pump()
    with pytest.raises(TunnelUsageError, match="HEAD"):
        pipe.up.send_ws_message(sid, "too early")


def test_oversize_websocket_message_resets_only_that_stream() -> None:
    pipe = Pipe(SMALL, up_config=TunnelConfig(max_ws_message=10_000))
    sid = open_ws(pipe)
    other = pipe.down.open_http("GET", "/still-fine")
    pipe.down.send_ws_message(sid, bytes(20_000))
    pipe.pump()
    events = pipe.up.events_received()
    assert (
        StreamReset(
            stream_id=sid,
            code=ResetCode.TOO_LARGE,
            reason="WebSocket message too large",
            remote=False,
            retry_safe=False,
        )
        in events
    )
    assert any(isinstance(e, RequestReceived) and e.stream_id == other for e in events)
    (reset,) = [e for e in pipe.down.events_received() if isinstance(e, StreamReset)]
    assert ResetCode(reset.code).ws_close_code == 1009
    fresh = open_ws(pipe)
    with pytest.raises(TunnelUsageError, match="max_ws_message"):
        pipe.down.send_ws_message(fresh, bytes(2 * 1024 * 1024))


# -- limits and bad input --------------------------------------------------------------


def test_oversize_head_is_refused_locally_and_by_the_peer() -> None:
    pipe = Pipe(up_config=TunnelConfig(max_header_bytes=1000))
    with pytest.raises(TunnelUsageError, match="over the limit"):
        pipe.down.open_http("GET", "/", [(b"Cookie", bytes(70_000))])
    sid = pipe.down.open_http("GET", "/", [(b"Cookie", bytes(5000))])
    pipe.pump()
    assert pipe.up.events_received() == []
    (reset,) = pipe.down.events_received()
    assert isinstance(reset, StreamReset) and reset.code == ResetCode.TOO_LARGE
    assert ResetCode(reset.code).http_status == 431
    assert reset.stream_id == sid


def raw_peer(pipe: Pipe, *frames: bytes) -> None:
    pipe.down.receive_message(b"".join(frames))


def test_window_overrun_is_a_remote_protocol_error() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", "/")
    pipe.pump()
    pipe.up.respond(sid, 200, "OK")
    pipe.pump()
    packer = new_packer()
    window = TunnelConfig().initial_window
    with pytest.raises(FlowControlError) as info:
        raw_peer(pipe, encode_data(packer, sid, bytes(window)), encode_data(packer, sid, b"!"))
    assert info.value.code == 1008
    assert pipe.down.closed
    resets = [e for e in pipe.down.events_received() if isinstance(e, StreamReset)]
    assert [e.stream_id for e in resets] == [sid]
    assert resets[0].code == ResetCode.SESSION_LOST


def test_window_credit_overflow_is_a_flow_control_error() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("POST", "/", has_body=True)
    pipe.pump()
    with pytest.raises(FlowControlError):
        raw_peer(pipe, encode_window(new_packer(), sid, 2**31 - 1))


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (encode_data(new_packer(), 99, b"x"), "never opened"),
        (encode_data(new_packer(), 98, b"x"), "never opened"),
        (encode_end(new_packer(), 2), "DONE"),
        (encode_end(new_packer(), 1), "HEAD"),
        (encode_open_http(new_packer(), 3, 65536, "GET", b"/", [], False), "ours to allocate"),
        (encode_open_http(new_packer(), 2, 65536, "GET", b"/", [], False), "not above"),
        (encode_response(new_packer(), 2, 200, b"OK", [], False), "peer opened itself"),
        (encode_message(new_packer(), 1, 1, b"x"), "HEAD"),
    ],
)
def test_peer_violations_are_remote_protocol_errors(frame: bytes, match: str) -> None:
    pipe = Pipe()
    pipe.down.open_http("GET", "/")  # stream 1: our request, no body
    pipe.up.open_http("GET", "/")  # stream 2: theirs
    pipe.pump()
    with pytest.raises(RemoteProtocolError, match=match):
        raw_peer(pipe, frame)
    assert pipe.down.closed


def test_late_frames_for_a_closed_stream_are_ignored() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", "/")
    pipe.pump()
    pipe.up.respond(sid, 200, "OK", has_body=False)
    pipe.pump()
    assert pipe.down.stream_count == 0
    packer = new_packer()
    raw_peer(
        pipe,
        encode_data(packer, sid, b"late"),
        encode_window(packer, sid, 10),
        encode_reset(packer, sid, 0, "late"),
    )
    assert kinds(pipe.down.events_received()) == ["ResponseReceived"]
    assert not pipe.down.closed


def test_invalid_utf8_text_resets_the_stream_only() -> None:
    pipe = Pipe()
    sid = open_ws(pipe)
    raw_peer(pipe, encode_message(new_packer(), sid, 3, b"\xff\xfe"))
    (reset,) = pipe.down.events_received()
    assert isinstance(reset, StreamReset) and reset.code == ResetCode.PROTOCOL
    assert not pipe.down.closed


def test_unknown_reset_code_from_a_newer_peer_reads_as_internal() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", "/")
    pipe.pump()
    raw_peer(pipe, encode_reset(new_packer(), sid, 200, "?"))
    (reset,) = pipe.down.events_received()
    assert isinstance(reset, StreamReset) and reset.code == ResetCode.INTERNAL


def test_text_session_message_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="binary"):
        Tunnel(opener=True).receive_message("hello")


def test_frames_before_a_bad_one_in_the_same_message_take_effect() -> None:
    pipe = Pipe()
    packer = new_packer()
    good = encode_open_http(packer, 2, 65536, "GET", b"/", [], False)
    with pytest.raises(RemoteProtocolError):
        raw_peer(pipe, good, msgpack.packb([42]))
    events = pipe.down.events_received()
    assert kinds(events) == ["RequestReceived", "StreamReset"]


def test_api_misuse_is_local_protocol_error() -> None:
    pipe = Pipe()
    sid = pipe.down.open_http("GET", "/")
    with pytest.raises(TunnelUsageError, match="DONE"):
        pipe.down.send_data(sid, b"no body declared")
    with pytest.raises(TunnelUsageError, match="peer answers"):
        pipe.down.respond(sid, 200)
    with pytest.raises(TunnelUsageError, match="never opened"):
        pipe.down.send_data(99, b"x")
    with pytest.raises(TunnelUsageError):
        pipe.down.next_message(10)
    with pytest.raises(TunnelUsageError):
        pipe.down.open_http("G E T\u00e9" * 20, "/")
    pipe.pump()
    with pytest.raises(TunnelUsageError, match="not a WebSocket"):
        pipe.up.accept_websocket(sid)
    pipe.up.respond(sid, 200, has_body=True)
    with pytest.raises(TunnelUsageError, match="BODY"):
        pipe.up.respond(sid, 200)
    with pytest.raises(ValueError, match="initial_window"):
        TunnelConfig(initial_window=1000)


# -- relaying ------------------------------------------------------------------------


def test_relay_forwards_payloads_as_the_same_bytes() -> None:
    """client -> relay_in | relay | relay_out -> origin; payloads are never re-encoded.

    The relay holds chunks while the next hop's stream is not writable and
    credits the inbound stream only once a chunk was handed on, so it holds
    at most one window plus max_pending per stream.
    """
    first = Pipe(SMALL)
    second = Pipe(SMALL)
    client, relay_in = first.down, first.up
    relay_out, origin = second.down, second.up
    upload = stream_pattern(9, 200_000)

    sid = client.open_http("PUT", "/file", [(b"Host", b"o")], has_body=True)
    outbox = [upload[i : i + 30_000] for i in range(0, len(upload), 30_000)]
    route: dict[int, int] = {}
    held: dict[int, list[bytes]] = {}
    ended: set[int] = set()
    received: list[Event] = []
    relayed_same_object = False
    for _ in range(10_000):
        while outbox and client.is_writable(sid):
            client.send_data(sid, outbox.pop(0))
            if not outbox:
                client.end(sid)
        first.pump()
        for e in relay_in.events_received():
            if isinstance(e, RequestReceived):
                route[e.stream_id] = relay_out.open_http(
                    e.method, e.target, e.headers, has_body=e.has_body
                )
                held[e.stream_id] = []
            elif isinstance(e, DataReceived):
                held[e.stream_id].append(e.data)
            elif isinstance(e, StreamEnded):
                ended.add(e.stream_id)
        for in_sid, chunks in held.items():
            out = route[in_sid]
            while chunks and relay_out.is_writable(out):
                chunk = chunks.pop(0)
                relay_out.send_data(out, chunk)
                queued = relay_out._table.streams[out].queue  # white-box: the very same object
                relayed_same_object |= queued[-1] is chunk
                relay_in.consumed(in_sid, len(chunk))
            if not chunks and in_sid in ended:
                relay_out.end(out)
                ended.discard(in_sid)
        second.pump()
        relay_out.events_received()  # StreamWritable: the loop above re-checks anyway
        events = origin.events_received()
        consume_all(origin, events)
        received += events
        if any(isinstance(e, StreamEnded) for e in received):
            break
    assert relayed_same_object
    assert body(received, route[sid]) == upload


def test_a_message_refused_as_not_writable_leaves_no_trace() -> None:
    pipe = Pipe(SMALL)
    sid = open_ws(pipe)
    while pipe.down.send_ws_message(sid, b"b" * 1000):
        pass
    with pytest.raises(TunnelUsageError, match="not writable"):
        pipe.down.send_ws_message(sid, "refused")  # a text message: its flag must not stay
    got: list[bytes | str] = []
    for _ in range(100):
        pipe.pump()
        events = pipe.up.events_received()
        consume_all(pipe.up, events)
        got += [e.data for e in events if isinstance(e, WebSocketMessage)]
        if pipe.down.is_writable(sid):
            break
    pipe.down.send_ws_message(sid, b"after")
    pipe.pump()
    got += [e.data for e in pipe.up.events_received() if isinstance(e, WebSocketMessage)]
    assert got[-1] == b"after"
    assert all(data == b"b" * 1000 for data in got[:-1])
