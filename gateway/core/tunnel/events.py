"""Events the tunnel core reports to its I/O layer (``Tunnel.events_received``).

Header lists are tuples of ``(name, value)`` byte pairs in wire order, with
duplicates kept: a gateway forwards them, it does not interpret them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DataReceived",
    "Event",
    "Headers",
    "PushReceived",
    "RequestReceived",
    "ResponseReceived",
    "StreamEnded",
    "StreamReset",
    "StreamWritable",
    "WebSocketAccepted",
    "WebSocketClosed",
    "WebSocketMessage",
    "WebSocketRequested",
    "data_received",
    "websocket_message",
]

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestReceived:
    """The peer opened an HTTP stream. ``has_body=False``: no DataReceived/StreamEnded follow."""

    stream_id: int
    method: str
    target: bytes
    headers: Headers
    has_body: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseReceived:
    """The response head of a stream we opened.

    On a WebSocket stream this is a *refusal*: the endpoint gets this HTTP
    response instead of a 101, and the stream carries its body (if any).
    """

    stream_id: int
    status: int
    reason: bytes
    headers: Headers
    has_body: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class DataReceived:
    """A body chunk. Call ``consumed(stream_id, len(data))`` once it left our hands.

    ``data`` is the peer's bytes as msgpack decoded them; a relay passes the
    same object to the next tunnel's ``send_data``.
    """

    stream_id: int
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamEnded:
    """The peer finished its body (request or response)."""

    stream_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamReset:
    """The stream is gone, in both directions; nothing more will be sent or reported.

    ``remote``: the peer reset it (False: this core did, because the tunnel
    closed or a frame broke one of our limits). ``retry_safe``: we opened the
    stream and the peer provably never processed it (its OPEN never left us,
    or the peer answered REFUSED), so the request may be sent again.
    """

    stream_id: int
    code: int
    reason: str
    remote: bool
    retry_safe: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamWritable:
    """The stream takes more now, after send_* returned False or ``is_writable`` said no.

    Either the stream's own queue drained under ``max_pending`` or the session's
    unread bytes fell under ``max_unread``.
    """

    stream_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class WebSocketRequested:
    """The peer wants an endpoint WebSocket: answer with accept_websocket or respond."""

    stream_id: int
    target: bytes
    headers: Headers
    protocols: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class WebSocketAccepted:
    """Our WebSocket stream was accepted: complete the endpoint's handshake now."""

    stream_id: int
    protocol: str | None
    headers: Headers


@dataclass(frozen=True, kw_only=True, slots=True)
class WebSocketMessage:
    """One whole message: ``str`` if sent as text, else ``bytes``.

    ``size`` is what the message holds against this end's limits (its length
    in bytes, before any UTF-8 decoding): pass it to ``consumed(stream_id,
    size)`` once the endpoint took the message. That returns the credit still
    owed and frees the message's share of ``session_reassembly``.
    """

    stream_id: int
    data: bytes | str
    size: int


@dataclass(frozen=True, kw_only=True, slots=True)
class WebSocketClosed:
    """The peer's side closed with this code; answer with close_websocket (echo)."""

    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PushReceived:
    """A PUSH frame (poll-ahead): ``stream_id`` is a stream's or a push's id, per ``op``.

    No stream state is involved; ``gateway/core/pollahead/codec.py`` reads ``data``.
    """

    stream_id: int
    op: int
    data: bytes


Event = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | StreamWritable
    | WebSocketRequested
    | WebSocketAccepted
    | WebSocketMessage
    | WebSocketClosed
    | PushReceived
)


# -- the per-message events, built fast ---------------------------------------------
#
# A frozen dataclass's ``__init__`` takes keywords and sets each field through
# ``object.__setattr__`` looked up per call: most of the receive path's cost per
# small message. These build the same frozen object from positional fields, each
# field set through its slot's own descriptor (``__set__``, bound once here: no
# lookup by name per call), for less than half the constructor's cost
# (tests/core/tunnel/test_events.py checks they equal the constructors).

_new = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    setter: Callable[[object, object], None] = cls.__dict__[name].__set__
    return setter


_msg_sid = _slot_setter(WebSocketMessage, "stream_id")
_msg_data = _slot_setter(WebSocketMessage, "data")
_msg_size = _slot_setter(WebSocketMessage, "size")
_data_sid = _slot_setter(DataReceived, "stream_id")
_data_data = _slot_setter(DataReceived, "data")


def websocket_message(stream_id: int, data: bytes | str, size: int) -> WebSocketMessage:
    """``WebSocketMessage(stream_id=..., data=..., size=...)``."""
    event = _new(WebSocketMessage)
    _msg_sid(event, stream_id)
    _msg_data(event, data)
    _msg_size(event, size)
    return event


def data_received(stream_id: int, data: bytes) -> DataReceived:
    """``DataReceived(stream_id=..., data=...)``."""
    event = _new(DataReceived)
    _data_sid(event, stream_id)
    _data_data(event, data)
    return event
