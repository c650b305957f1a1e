"""What the tunnel does with each frame the peer sends: one handler per frame type.

A frame that is malformed, illegal in its stream's state, for a
never-opened stream, or over a window raises RemoteProtocolError (the
caller closes the whole tunnel). A frame that only breaks one of *our*
policy limits (too many streams, head too large, WebSocket message too
large, invalid UTF-8 text) resets that one stream with a RESET to the peer.
A frame for a stream that was closed is a late one and is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from gateway.core.tunnel.config import MAX_MESSAGE_FRAMES
from gateway.core.tunnel.errors import GOING_AWAY, RemoteProtocolError, ResetCode
from gateway.core.tunnel.events import (
    PushReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WebSocketAccepted,
    WebSocketClosed,
    WebSocketRequested,
    data_received,
    websocket_message,
)
from gateway.core.tunnel.flow import FlowControl
from gateway.core.tunnel.frames import (
    BASE_WINDOW,
    FLAG_FIN,
    FLAG_TEXT,
    FrameDecoder,
    FrameType,
    encode_reset,
    encode_window,
)
from gateway.core.tunnel.heads import header_pairs
from gateway.core.tunnel.packing import BadReference, HeadTooLarge, decode_block
from gateway.core.tunnel.stream_state import (
    ACCEPT,
    BODY,
    CLOSE,
    DATA,
    DONE,
    END,
    HEAD,
    HEAD_BODY,
    HEAD_EMPTY,
    MESSAGE,
    REFUSED,
    WS,
    Stream,
    step,
)
from gateway.core.tunnel.table import StreamTable

__all__ = ["receive_frames"]


def receive_frames(
    table: StreamTable, decoder: FrameDecoder, message: bytes | bytearray | memoryview | str
) -> None:
    """Handle every frame of one session message (RemoteProtocolError if the peer broke it)."""
    if isinstance(message, str):
        raise RemoteProtocolError("tunnel messages are binary, got a text message")
    handlers = _HANDLERS
    frames = decoder.decode(message)
    if type(frames) is tuple:  # one frame (decode's fast path): no count to keep
        raw = frames[0]
        handlers[raw[0]](table, raw)
        return
    for n, raw in enumerate(frames):
        if n == MAX_MESSAGE_FRAMES:
            raise RemoteProtocolError(f"more than {n} frames in one session message")
        handlers[raw[0]](table, raw)


# -- opening ------------------------------------------------------------------


def _on_open_http(table: StreamTable, raw: list[Any]) -> None:
    _, sid, window, method, target, flat, has_body = raw
    stream = _admit(
        table, sid, window, target, flat, ws=False, recv_state=BODY if has_body else DONE
    )
    if stream is None:
        return
    if has_body:
        extra = table.flow.announce(stream) - BASE_WINDOW
        if extra > 0:
            stream.recv_window += extra
            table.control.append(encode_window(table.packer, sid, extra))
    table.events.append(
        RequestReceived(
            stream_id=sid,
            method=method,
            target=target,
            headers=header_pairs(flat),
            has_body=has_body,
        )
    )


def _on_open_ws(table: StreamTable, raw: list[Any]) -> None:
    _, sid, window, target, flat, protocols = raw
    if _admit(table, sid, window, target, flat, ws=True, recv_state=HEAD) is None:
        return
    table.events.append(
        WebSocketRequested(
            stream_id=sid, target=target, headers=header_pairs(flat), protocols=tuple(protocols)
        )
    )


def _admit(
    table: StreamTable,
    sid: int,
    window: int,
    target: bytes,
    flat: list[bytes],
    *,
    ws: bool,
    recv_state: int,
    refusal: tuple[ResetCode, str] | None = None,
) -> Stream | None:
    """A new peer stream, or None after refusing it with a RESET (policy limits, ``refusal``)."""
    if (sid & 1) == table.opener:
        raise RemoteProtocolError(f"OPEN for stream {sid}: that id is ours to allocate")
    if sid <= table.highest_peer_id:
        raise RemoteProtocolError(f"OPEN for stream {sid}, not above {table.highest_peer_id}")
    table.highest_peer_id = sid
    config = table.config
    if table.refuse_above is not None and sid > table.refuse_above:
        table.answer(encode_reset(table.packer, sid, ResetCode.REFUSED, GOING_AWAY))
        return None
    if refusal is not None:
        table.answer(encode_reset(table.packer, sid, *refusal))
        return None
    if table.peer_streams >= config.max_streams:
        table.answer(encode_reset(table.packer, sid, ResetCode.REFUSED, "too many streams"))
        return None
    if len(target) + sum(map(len, flat)) > config.max_header_bytes:
        table.answer(encode_reset(table.packer, sid, ResetCode.TOO_LARGE, "request head too large"))
        return None
    stream = table.new_stream(sid, local=False, ws=ws, send_state=HEAD, recv_state=recv_state)
    stream.send_credit = window
    table.flow.see_window(stream)
    table.streams[sid] = stream
    table.peer_streams += 1
    return stream


# -- packed heads -------------------------------------------------------------------


def _unpack(table: StreamTable, block: list[object], first: bytes) -> list[bytes] | ResetCode:
    """The flat headers of a packed block; the reset code if it breaks only its stream.

    Decoded before anything else looks at the frame, even for a stream that is
    gone: the peer's table changed as it sent the block, ours must too.
    """
    recv = table.receive_table()
    try:
        return decode_block(recv, block, table.config.max_header_bytes - len(first))
    except BadReference:
        return ResetCode.PROTOCOL
    except HeadTooLarge:
        return ResetCode.TOO_LARGE
    except ValueError as exc:
        raise RemoteProtocolError(f"malformed tunnel frame: {exc}") from exc


_UNPACK_REASONS: Final = {
    ResetCode.PROTOCOL: "header block refers to an entry the header table does not hold",
    ResetCode.TOO_LARGE: "head too large",
}


def _on_open_http_packed(table: StreamTable, raw: list[Any]) -> None:
    _, sid, window, method, target, block, has_body = raw
    flat = _unpack(table, block, target)
    if isinstance(flat, ResetCode):
        refusal = (flat, _UNPACK_REASONS[flat])
        _admit(table, sid, window, target, [], ws=False, recv_state=DONE, refusal=refusal)
        return
    _on_open_http(table, [1, sid, window, method, target, flat, has_body])


def _on_response_packed(table: StreamTable, raw: list[Any]) -> None:
    _, sid, status, reason, block, has_body = raw
    flat = _unpack(table, block, reason)
    if isinstance(flat, ResetCode):
        stream = _target(table, sid, "RESPONSE")
        if stream is not None:
            table.reset_locally(stream, flat, _UNPACK_REASONS[flat])
        return
    _on_response(table, [3, sid, status, reason, flat, has_body])


def _on_response_whole(table: StreamTable, raw: list[Any]) -> None:
    """RESPONSE_PACKED, DATA and END in one frame: each takes effect as if sent alone.

    So a head that resets the stream (too large, a bad reference) leaves its
    body and end to a stream that is gone: ignored, as late frames are.
    """
    _, sid, status, reason, block, body = raw
    _on_response_packed(table, [FrameType.RESPONSE_PACKED, sid, status, reason, block, True])
    if body:
        _on_data(table, [FrameType.DATA, sid, body])
    _on_end(table, [FrameType.END, sid])


# -- answers to our streams -------------------------------------------------------


def _on_response(table: StreamTable, raw: list[Any]) -> None:
    _, sid, status, reason, flat, has_body = raw
    stream = _target(table, sid, "RESPONSE")
    if stream is None:
        return
    if len(reason) + sum(map(len, flat)) > table.config.max_header_bytes:
        table.reset_locally(stream, ResetCode.TOO_LARGE, "response head too large")
        return
    table.recv_step(stream, HEAD_BODY if has_body else HEAD_EMPTY)
    if stream.ws:
        stream.send_state = step(sid, stream.send_state, REFUSED, local=False)
        table.as_http(stream)
    table.events.append(
        ResponseReceived(
            stream_id=sid,
            status=status,
            reason=reason,
            headers=header_pairs(flat),
            has_body=has_body,
        )
    )
    table.maybe_forget(stream)


def _on_accept(table: StreamTable, raw: list[Any]) -> None:
    _, sid, window, protocol, flat = raw
    stream = _target(table, sid, "ACCEPT")
    if stream is None:
        return
    if not stream.ws:
        raise RemoteProtocolError(f"ACCEPT on HTTP stream {sid}")
    table.recv_step(stream, ACCEPT)
    stream.send_state = step(sid, stream.send_state, ACCEPT, local=False)
    stream.send_credit = window
    table.flow.see_window(stream)
    table.events.append(
        WebSocketAccepted(stream_id=sid, protocol=protocol, headers=header_pairs(flat))
    )


def _target(table: StreamTable, sid: int, frame: str) -> Stream | None:
    """The stream a head answers: it must be ours."""
    stream = table.lookup(sid)
    if stream is not None and not stream.local:
        raise RemoteProtocolError(f"{frame} on stream {sid}, which the peer opened itself")
    return stream


# -- bodies and messages ------------------------------------------------------------


def _on_data(table: StreamTable, raw: list[Any]) -> None:
    sid = raw[1]
    stream = table.lookup(sid)
    if stream is None:
        return
    payload: bytes = raw[2]
    if stream.recv_state != BODY:  # BODY --DATA--> BODY needs no table lookup
        table.recv_step(stream, DATA)
    FlowControl.take_credit(stream, len(payload))
    stream.unconsumed += len(payload)
    table.events.append(data_received(sid, payload))


def _on_end(table: StreamTable, raw: list[Any]) -> None:
    sid = raw[1]
    stream = table.lookup(sid)
    if stream is None:
        return
    table.recv_step(stream, END)
    table.events.append(StreamEnded(stream_id=sid))
    table.maybe_forget(stream)


def _on_message(table: StreamTable, raw: list[Any]) -> None:
    _, sid, flags, payload = raw
    stream = table.streams.get(sid)
    if stream is None and (stream := table.lookup(sid)) is None:
        return
    if stream.recv_state != WS:  # WS --MESSAGE--> WS needs no table lookup
        table.recv_step(stream, MESSAGE)
    n = len(payload)
    if n > stream.recv_window:
        FlowControl.take_credit(stream, n)  # raises: over the window
    stream.recv_window -= n  # take_credit, inline: once per message
    if flags == FLAG_FIN and not stream.msg_parts:
        # A whole binary message in one frame (most are): no type to match, nothing held.
        stream.msg_text = False
        if n > table.config.max_ws_message:
            table.reset_locally(stream, ResetCode.TOO_LARGE, "WebSocket message too large")
            return
        table.reassembly.add_whole(stream, n)
        table.events.append(websocket_message(sid, payload, n))
        return
    text = bool(flags & FLAG_TEXT)
    if stream.msg_parts:
        if text != stream.msg_text:
            raise RemoteProtocolError(f"MESSAGE on stream {sid} changes type mid-message")
    else:
        stream.msg_text = text
    if stream.msg_size + n > table.config.max_ws_message:
        table.reset_locally(stream, ResetCode.TOO_LARGE, "WebSocket message too large")
        return
    whole = table.reassembly.add(stream, payload, fin=bool(flags & FLAG_FIN))
    if whole is None:
        return
    data: bytes | str = whole
    if text:
        try:
            data = whole.decode("utf-8")
        except UnicodeDecodeError:
            table.reset_locally(stream, ResetCode.PROTOCOL, "text message is not UTF-8")
            return
    table.events.append(websocket_message(sid, data, len(whole)))


def _on_close(table: StreamTable, raw: list[Any]) -> None:
    _, sid, code, reason = raw
    stream = table.lookup(sid)
    if stream is None:
        return
    table.recv_step(stream, CLOSE)
    if stream.msg_parts:
        raise RemoteProtocolError(f"CLOSE inside a fragmented message on stream {sid}")
    table.events.append(WebSocketClosed(stream_id=sid, code=code, reason=reason))
    table.maybe_forget(stream)


# -- flow and resets ----------------------------------------------------------------------


def _on_window(table: StreamTable, raw: list[Any]) -> None:
    _, sid, increment = raw
    stream = table.lookup(sid)
    if stream is None:
        return
    table.flow.window_received(stream, increment)
    table.scheduler.schedule(stream)
    table.flow.feed_starved()


def _on_reset(table: StreamTable, raw: list[Any]) -> None:
    _, sid, code, reason = raw
    stream = table.lookup(sid)
    if stream is None:
        return
    known = ResetCode.of(code)
    table.forget(stream)
    table.events.append(
        StreamReset(
            stream_id=sid,
            code=known,
            reason=reason,
            remote=True,
            retry_safe=stream.local and known == ResetCode.REFUSED,
        )
    )


def _on_push(table: StreamTable, raw: list[Any]) -> None:
    """Poll-ahead: no stream state; the glue checks whom it concerns."""
    table.events.append(PushReceived(stream_id=raw[1], op=raw[2], data=raw[3]))


_HANDLERS: Final[dict[int, Callable[[StreamTable, list[Any]], None]]] = {
    FrameType.OPEN_HTTP: _on_open_http,
    FrameType.OPEN_WS: _on_open_ws,
    FrameType.RESPONSE: _on_response,
    FrameType.ACCEPT: _on_accept,
    FrameType.DATA: _on_data,
    FrameType.END: _on_end,
    FrameType.MESSAGE: _on_message,
    FrameType.CLOSE: _on_close,
    FrameType.WINDOW: _on_window,
    FrameType.RESET: _on_reset,
    FrameType.PUSH: _on_push,
    FrameType.OPEN_HTTP_PACKED: _on_open_http_packed,
    FrameType.RESPONSE_PACKED: _on_response_packed,
    FrameType.RESPONSE_WHOLE: _on_response_whole,
}
