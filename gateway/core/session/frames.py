"""Hop session frames: msgpack layouts, encoders and a hostile-input decoder.

Every frame is one msgpack array whose first element is the frame type; a
transport *batch* (one WebSocket message, one HTTP body) is any number of
whole frames concatenated. ``docs/protocol.md`` is the normative description;
this module is its executable form.

Encoding goes through module functions taking the session's reused
``msgpack.Packer`` so the hot path (DATA) builds no frame object at all; the
frame dataclasses exist for decoding, tests and logs.

Decoding is where peer-controlled bytes enter, so :class:`FrameDecoder` is
written defensively: msgpack limits keep allocations bounded, every field is
type- and range-checked, and *anything* that goes wrong comes out as
:class:`RemoteProtocolError` (msgpack raises half a dozen exception types,
some of them plain ``ValueError``; letting one escape would turn a bad peer
into a crashed task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, TypeGuard

import msgpack

from gateway.core.session.errors import CloseCode, RemoteProtocolError
from gateway.core.wire import BatchReader, WireError

__all__ = [
    "DATA_OVERHEAD",
    "FLAG_FIN",
    "FLAG_TEXT",
    "MAX_FRAGMENT_SIZE",
    "MAX_REASON_BYTES",
    "MAX_SESSION_ID_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MAX_UINT64",
    "PROTOCOL_VERSION",
    "Abort",
    "Ack",
    "Close",
    "Data",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAway",
    "Hello",
    "Ping",
    "Pong",
    "encode_abort",
    "encode_ack",
    "encode_close",
    "encode_data",
    "encode_goaway",
    "encode_hello",
    "encode_ping",
    "encode_pong",
    "new_packer",
]

PROTOCOL_VERSION: Final = 1
MAX_UINT64: Final = 2**64 - 1
#: Largest DATA payload a receiver accepts, whatever its own fragment_size.
MAX_FRAGMENT_SIZE: Final = 1024 * 1024
MAX_SESSION_ID_LENGTH: Final = 128
MAX_TOKEN_LENGTH: Final = 64
#: Same limit as a WebSocket close reason, so it can be relayed verbatim.
MAX_REASON_BYTES: Final = 123
#: Upper bound of a DATA frame's size minus its payload (array, type, uint64
#: seq, flags, bin32 header). Used to account buffer space before encoding.
DATA_OVERHEAD: Final = 1 + 1 + 9 + 1 + 5

FLAG_FIN: Final = 0x01
FLAG_TEXT: Final = 0x02
_FLAG_MASK: Final = FLAG_FIN | FLAG_TEXT


class FrameType(IntEnum):
    HELLO = 1
    DATA = 2
    ACK = 3
    PING = 4
    PONG = 5
    CLOSE = 6
    ABORT = 7
    GOAWAY = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """Opens every transport: who we are and what we have (resume point)."""

    version: int
    session_id: str
    last_received: int
    token: bytes | None = field(default=None, repr=False)

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_hello(packer, self.version, self.session_id, self.last_received, self.token)


@dataclass(frozen=True, kw_only=True, slots=True)
class Data:
    """One fragment of a message; ``fin`` marks the last fragment."""

    seq: int
    fin: bool
    text: bool
    payload: bytes = field(repr=False)

    def encode(self, packer: msgpack.Packer) -> bytes:
        flags = (FLAG_FIN if self.fin else 0) | (FLAG_TEXT if self.text else 0)
        return encode_data(packer, self.seq, flags, self.payload)

    def __str__(self) -> str:
        kind = "text" if self.text else "bin"
        return f"DATA #{self.seq} {kind} {len(self.payload)}B{' fin' if self.fin else ''}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """Cumulative: every sequence number <= ``received`` arrived."""

    received: int

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_ack(packer, self.received)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ping:
    nonce: int

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_ping(packer, self.nonce)


@dataclass(frozen=True, kw_only=True, slots=True)
class Pong:
    nonce: int

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_pong(packer, self.nonce)


@dataclass(frozen=True, kw_only=True, slots=True)
class Close:
    """Graceful close; sequenced like DATA so it arrives after all data."""

    seq: int
    code: int
    reason: str

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_close(packer, self.seq, self.code, self.reason)


@dataclass(frozen=True, kw_only=True, slots=True)
class Abort:
    """Unsequenced, best-effort: the sender has already given up the session."""

    code: int
    reason: str

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_abort(packer, self.code, self.reason)


@dataclass(frozen=True, kw_only=True, slots=True)
class GoAway:
    """Unsequenced: the sender will stop serving this session; open new streams elsewhere.

    ``last_stream_id`` is the highest stream the receiver opened that the
    sender got (and serves to the end); streams above it were not processed.
    """

    last_stream_id: int
    reason: str

    def encode(self, packer: msgpack.Packer) -> bytes:
        return encode_goaway(packer, self.last_stream_id, self.reason)


Frame = Hello | Data | Ack | Ping | Pong | Close | Abort | GoAway


# -- encoding ---------------------------------------------------------------


def new_packer() -> msgpack.Packer:
    """The one Packer a session reuses for all its frames."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def encode_hello(
    packer: msgpack.Packer, version: int, session_id: str, last_received: int, token: bytes | None
) -> bytes:
    return packer.pack((FrameType.HELLO.value, version, session_id, last_received, token))


def encode_data(packer: msgpack.Packer, seq: int, flags: int, payload: bytes | memoryview) -> bytes:
    return packer.pack((2, seq, flags, payload))


def encode_ack(packer: msgpack.Packer, received: int) -> bytes:
    return packer.pack((3, received))


def encode_ping(packer: msgpack.Packer, nonce: int) -> bytes:
    return packer.pack((4, nonce))


def encode_pong(packer: msgpack.Packer, nonce: int) -> bytes:
    return packer.pack((5, nonce))


def encode_close(packer: msgpack.Packer, seq: int, code: int, reason: str) -> bytes:
    return packer.pack((6, seq, code, reason))


def encode_abort(packer: msgpack.Packer, code: int, reason: str) -> bytes:
    return packer.pack((7, code, reason))


def encode_goaway(packer: msgpack.Packer, last_stream_id: int, reason: str) -> bytes:
    return packer.pack((8, last_stream_id, reason))


# -- decoding ---------------------------------------------------------------


def _fail(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed frame: {what}", CloseCode.PROTOCOL_ERROR)


def _uint(value: object, what: str, *, low: int = 0) -> int:
    # ``type() is int`` on purpose: bool is an int subclass and is not a number here.
    if type(value) is not int or not low <= value <= MAX_UINT64:
        raise _fail(f"{what} must be an integer in [{low}, 2**64-1]")
    return value


def _code(value: object) -> int:
    if type(value) is not int or not 1000 <= value <= 4999:
        raise _fail("close code must be an integer in [1000, 4999]")
    return value


def _reason(value: object) -> str:
    if type(value) is not str or len(value.encode("utf-8", "surrogatepass")) > MAX_REASON_BYTES:
        raise _fail(f"close reason must be a string of at most {MAX_REASON_BYTES} bytes")
    return value


def _arity(raw: list[Any], n: int, name: str) -> None:
    if len(raw) != n:
        raise _fail(f"{name} has {len(raw)} fields, expected {n}")


def _parse_hello(raw: list[Any]) -> Hello:
    _arity(raw, 5, "HELLO")
    _, version, session_id, last_received, token = raw
    if type(session_id) is not str or not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH:
        raise _fail("HELLO session id must be a non-empty short string")
    if token is not None and (type(token) is not bytes or len(token) > MAX_TOKEN_LENGTH):
        raise _fail("HELLO token must be nil or a short bin")
    return Hello(
        version=_uint(version, "HELLO version"),
        session_id=session_id,
        last_received=_uint(last_received, "HELLO last_received"),
        token=token,
    )


def _parse_data(raw: list[Any]) -> Data:
    if len(raw) != 4:
        _arity(raw, 4, "DATA")
    _, seq, flags, payload = raw
    if type(seq) is not int or not 0 < seq <= MAX_UINT64:
        raise _fail("DATA seq must be an integer in [1, 2**64-1]")
    if type(flags) is not int or flags & ~_FLAG_MASK:
        raise _fail("DATA flags must be an integer using only bits 0x03")
    if type(payload) is not bytes:
        raise _fail("DATA payload must be bin")
    return Data(seq=seq, fin=bool(flags & FLAG_FIN), text=bool(flags & FLAG_TEXT), payload=payload)


def _parse_ack(raw: list[Any]) -> Ack:
    _arity(raw, 2, "ACK")
    return Ack(received=_uint(raw[1], "ACK received"))


def _parse_ping(raw: list[Any]) -> Ping:
    _arity(raw, 2, "PING")
    return Ping(nonce=_uint(raw[1], "PING nonce"))


def _parse_pong(raw: list[Any]) -> Pong:
    _arity(raw, 2, "PONG")
    return Pong(nonce=_uint(raw[1], "PONG nonce"))


def _parse_close(raw: list[Any]) -> Close:
    _arity(raw, 4, "CLOSE")
    return Close(seq=_uint(raw[1], "CLOSE seq", low=1), code=_code(raw[2]), reason=_reason(raw[3]))


def _parse_abort(raw: list[Any]) -> Abort:
    _arity(raw, 3, "ABORT")
    return Abort(code=_code(raw[1]), reason=_reason(raw[2]))


def _parse_goaway(raw: list[Any]) -> GoAway:
    _arity(raw, 3, "GOAWAY")
    return GoAway(last_stream_id=_uint(raw[1], "GOAWAY last_stream_id"), reason=_reason(raw[2]))


_PARSERS: Final[dict[int, Callable[[list[Any]], Frame]]] = {
    FrameType.HELLO: _parse_hello,
    FrameType.DATA: _parse_data,
    FrameType.ACK: _parse_ack,
    FrameType.PING: _parse_ping,
    FrameType.PONG: _parse_pong,
    FrameType.CLOSE: _parse_close,
    FrameType.ABORT: _parse_abort,
    FrameType.GOAWAY: _parse_goaway,
}


def parse_frame(raw: object) -> Frame:
    """Validate one unpacked msgpack object and turn it into a frame."""
    if type(raw) is not list or not raw:
        raise _fail("a frame must be a non-empty array")
    kind = raw[0]
    parser = _PARSERS.get(kind) if type(kind) is int else None
    if parser is None:
        raise _fail(f"unknown frame type {kind!r:.20}")
    return parser(raw)


class FrameDecoder:
    """Turns batches of concatenated msgpack frames into validated frames.

    One per session: the streaming Unpacker and its buffer are reused. A batch
    must hold whole frames only; a frame cut at the end of a batch is an
    error, not something to complete with the next batch, because transports
    (WebSocket messages, HTTP bodies) never split frames legitimately.
    """

    __slots__ = ("_reader",)

    def __init__(self, *, max_payload: int = MAX_FRAGMENT_SIZE) -> None:
        self._reader = BatchReader(max_bin=max_payload, max_array=8)

    def decode(self, batch: bytes | bytearray | memoryview) -> list[Frame]:
        """All frames of one batch, or RemoteProtocolError; nothing else escapes."""
        try:
            return [parse_frame(raw) for raw in self._reader.whole(batch)]
        except WireError as exc:
            raise _fail(str(exc)) from exc

    def decode_hot(self, batch: bytes | bytearray | memoryview) -> list[Frame | list[Any] | int]:
        """``decode``, except that a DATA frame stays the checked list ``[2, seq, flags, payload]``
        and an ACK becomes its checked ``received`` count, an ``int``.

        The session's receive path, where nearly every batch is a DATA and an
        ACK: a ``Data`` or ``Ack`` object per batch cost more than the rest of
        their handling (a frozen dataclass is built field by field). Every
        frame is still checked before any takes effect.
        """
        try:
            raws = self._reader.whole(batch)
            return [_hot(raw) for raw in raws]
        except WireError as exc:
            raise _fail(str(exc)) from exc


def _hot(raw: object) -> Frame | list[Any] | int:
    """One frame as ``decode_hot`` gives it: a checked DATA list, an ACK's count, else parsed."""
    if type(raw) is list and len(raw) == 2 and raw[0] == 3 and type(raw[0]) is int:
        received = raw[1]
        if type(received) is int and 0 <= received <= MAX_UINT64:
            return received
    elif _is_data(raw):
        return raw
    return parse_frame(raw)


def _is_data(raw: object) -> TypeGuard[list[Any]]:
    """A well-formed DATA frame: ``_parse_data``'s checks, inline."""
    if type(raw) is not list or len(raw) != 4 or raw[0] != 2 or type(raw[0]) is not int:
        return False
    _, seq, flags, payload = raw
    return (
        type(seq) is int
        and 0 < seq <= MAX_UINT64
        and type(flags) is int
        and not flags & ~_FLAG_MASK
        and type(payload) is bytes
    )
