"""Fuzz receive_message: whatever the peer sends, only RemoteProtocolError may escape.

Three sources of hostile input: raw bytes; msgpack arrays shaped like frames
with wrong/edge values in every field; and a recorded valid conversation
with one message mutated (flipped, truncated, spliced). After the input, a
tunnel that raised must be closed with only StreamReset events pending, and
a tunnel that did not must still work (schedule, answer, close).
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.tunnel import (
    DataReceived,
    RemoteProtocolError,
    ResetCode,
    StreamReset,
    Tunnel,
    TunnelConfig,
    WebSocketMessage,
    WebSocketRequested,
)

LOST = ResetCode.SESSION_LOST
CONFIG = TunnelConfig(max_streams=4, max_header_bytes=2000, max_ws_message=5000)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def busy_tunnel() -> Tunnel:
    """The receiving side (not the session opener) with a few streams in flight."""
    tunnel = Tunnel(CONFIG, opener=False)
    peer = Tunnel(CONFIG, opener=True)
    http = peer.open_http("POST", "/up", [(b"Host", b"x")], has_body=True)
    ws = peer.open_websocket("/ws", protocols=["chat"])
    peer.send_data(http, b"partial body")
    mine = tunnel.open_http("GET", "/mine")
    for _ in range(3):
        for src, dst in ((peer, tunnel), (tunnel, peer)):
            message = src.next_message()
            if message is not None:
                dst.receive_message(message)
    tunnel.accept_websocket(ws, "chat")
    tunnel.respond(http, 200, "OK")
    peer.events_received()
    tunnel.events_received()
    assert mine == 2
    return tunnel


def feed(tunnel: Tunnel, *messages: bytes) -> None:
    try:
        for message in messages:
            tunnel.receive_message(message)
            answer(tunnel)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, int)
        assert tunnel.closed and tunnel.stream_count == 0
        # Events of the frames before the bad one stay; the local resets come last.
        is_lost = [
            isinstance(e, StreamReset) and e.code == LOST and not e.remote
            for e in tunnel.events_received()
        ]
        assert is_lost == sorted(is_lost)
        assert tunnel.next_message() is None
        return
    # Still alive: it must keep working.
    while tunnel.next_message(4096) is not None:
        pass
    tunnel.open_http("GET", "/after")
    assert tunnel.next_message() is not None
    tunnel.close_all("fuzz done")
    assert all(isinstance(e, StreamReset) for e in tunnel.events_received())


def answer(tunnel: Tunnel) -> None:
    """Play the I/O layer: accept every WebSocket, consume every byte."""
    for event in tunnel.events_received():
        if isinstance(event, WebSocketRequested):
            tunnel.accept_websocket(event.stream_id)
        elif isinstance(event, DataReceived):
            tunnel.consumed(event.stream_id, len(event.data))
        elif isinstance(event, WebSocketMessage):
            tunnel.consumed(event.stream_id, event.size)


@FUZZ
@given(st.binary(max_size=400))
def test_raw_bytes(data: bytes) -> None:
    feed(Tunnel(CONFIG, opener=True), data)
    feed(busy_tunnel(), data)


field = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 200, 999, 1000, 4999, 2**31, 2**62]),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.lists(st.binary(max_size=8), max_size=6),
    st.lists(st.text(max_size=8), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)
frame = st.builds(
    lambda kind, sid, rest: [kind, sid, *rest],
    st.integers(0, 12),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 99, 100, -1, 2**62, 2**64 - 1, True]),
    st.lists(field, max_size=7),
)


@FUZZ
@given(st.lists(frame, min_size=1, max_size=8), st.booleans())
def test_frame_shaped_garbage(frames: list[list[Any]], busy: bool) -> None:
    message = b"".join(msgpack.packb(f, use_bin_type=True) for f in frames)
    feed(busy_tunnel() if busy else Tunnel(CONFIG, opener=False), message)


def recorded_conversation() -> list[bytes]:
    """What an opener sends in a busy but valid exchange."""
    opener = Tunnel(CONFIG, opener=True)
    answerer = Tunnel(CONFIG, opener=False)
    sent: list[bytes] = []
    http = opener.open_http("POST", "/a", [(b"H", b"v")] * 3, has_body=True)
    ws = opener.open_websocket("/ws", protocols=["p"])
    opener.open_http("GET", "/b")
    opener.send_data(http, bytes(3000))
    for round_ in range(6):
        for src, dst in ((opener, answerer), (answerer, opener)):
            message = src.next_message(1024)
            if message is not None:
                if src is opener:
                    sent.append(message)
                dst.receive_message(message)
        for event in answerer.events_received():
            if event.stream_id == ws and round_ == 0:
                answerer.accept_websocket(ws, "p")
        if round_ == 2:
            opener.events_received()
            opener.send_ws_message(ws, "hello " * 100)
            opener.end(http)
    return sent


CONVERSATION = recorded_conversation()


@FUZZ
@given(
    st.integers(0, len(CONVERSATION) - 1),
    st.integers(0, 10_000),
    st.sampled_from(["flip", "truncate", "insert", "splice"]),
    st.binary(min_size=1, max_size=4),
)
def test_mutated_conversation(index: int, position: int, how: str, junk: bytes) -> None:
    messages = list(CONVERSATION)
    target = messages[index]
    at = position % len(target)
    if how == "flip":
        target = target[:at] + bytes([target[at] ^ junk[0]]) + target[at + 1 :]
    elif how == "truncate":
        target = target[:at]
    elif how == "insert":
        target = target[:at] + junk + target[at:]
    else:
        other = messages[(index + 1) % len(messages)]
        target = target[:at] + other[at % len(other) :]
    messages[index] = target
    feed(Tunnel(CONFIG, opener=False), *messages)


def test_the_recorded_conversation_itself_is_valid() -> None:
    assert len(CONVERSATION) >= 3
    tunnel = Tunnel(CONFIG, opener=False)
    seen: list[str] = []
    for message in CONVERSATION:
        tunnel.receive_message(message)
        events = tunnel.events_received()
        seen += [type(e).__name__ for e in events]
        for event in events:
            if isinstance(event, WebSocketRequested):
                tunnel.accept_websocket(event.stream_id)
    assert not tunnel.closed
    assert {"RequestReceived", "WebSocketMessage", "StreamEnded"} <= set(seen)
