"""Tunnel frames: msgpack layouts, encoders and a hostile-input decoder.

A tunnel frame is one msgpack array whose first element is the frame type
and whose second is the stream id. One hop-session message carries a *batch*:
any number of whole frames concatenated (``docs/tunnel.md`` is the normative
description; this module is its executable form).

Encoding. Control frames are built with one shared ``msgpack.Packer``. The hot
frames (DATA, MESSAGE) are never packed as a whole: their fixed prefix
(array header, type, stream id) is computed once per stream, the bin header
per chunk, and the payload goes into the batch as the caller's own object,
so a chunk is copied exactly once, when the batch is joined.

Decoding is where peer-controlled bytes enter, so :class:`FrameDecoder` is
written defensively: msgpack limits keep allocations bounded, every field is
type- and range-checked against :data:`LAYOUTS`, and *anything* that goes
wrong comes out as :class:`RemoteProtocolError` (msgpack raises half a dozen
exception types, some of them plain ``ValueError``; letting one escape would
turn a bad peer into a crashed task).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
from typing import Any, Final, TypeGuard

import msgpack

from gateway.core.tunnel.errors import RemoteProtocolError
from gateway.core.wire import NOT_ONE, BatchReader, WireError

__all__ = [
    "BASE_WINDOW",
    "FLAG_FIN",
    "FLAG_TEXT",
    "FRAME_OVERHEAD",
    "LAYOUTS",
    "MAX_HEADER_FIELDS",
    "MAX_METHOD_LENGTH",
    "MAX_PAYLOAD",
    "MAX_PROTOCOLS",
    "MAX_PROTOCOL_LENGTH",
    "MAX_REASON_BYTES",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "FrameDecoder",
    "FrameType",
    "bin_header",
    "check_frame",
    "data_prefix",
    "encode_accept",
    "encode_close",
    "encode_data",
    "encode_end",
    "encode_message",
    "encode_open_http",
    "encode_open_http_packed",
    "encode_open_ws",
    "encode_push",
    "encode_reset",
    "encode_response",
    "encode_response_packed",
    "encode_response_whole",
    "encode_window",
    "message_prefix",
    "new_packer",
]

#: Credit each side has for a new stream before any WINDOW: the receiver
#: of an OPEN tops it up to its own initial window with one WINDOW frame.
BASE_WINDOW: Final = 64 * 1024
MAX_WINDOW: Final = 2**31 - 1
MAX_STREAM_ID: Final = 2**62
#: Largest bin a receiver accepts in any frame (a chunk, a header value).
MAX_PAYLOAD: Final = 1024 * 1024
MAX_HEADER_FIELDS: Final = 256
MAX_METHOD_LENGTH: Final = 32
MAX_PROTOCOLS: Final = 32
MAX_PROTOCOL_LENGTH: Final = 255
#: Same limit as a WebSocket close reason, so reasons relay verbatim.
MAX_REASON_BYTES: Final = 123
#: Upper bound of a DATA/MESSAGE frame's size minus its payload: array and
#: type (2), uint64 stream id (9), flags (1), bin32 header (5).
FRAME_OVERHEAD: Final = 17

FLAG_FIN: Final = 0x01
FLAG_TEXT: Final = 0x02


class FrameType(IntEnum):
    OPEN_HTTP = 1
    OPEN_WS = 2
    RESPONSE = 3
    ACCEPT = 4
    DATA = 5
    END = 6
    MESSAGE = 7
    CLOSE = 8
    WINDOW = 9
    RESET = 10
    # Poll-ahead (core/pollahead/codec.py owns the payload); sent only to a
    # peer that asked for it (the Hopgate-Poll-Ahead hop header of an OPEN).
    PUSH = 11
    # Heads with a compacted header block (``packing.py``); sent only to a
    # peer known to read them (docs/tunnel.md "Header compaction").
    OPEN_HTTP_PACKED = 16
    RESPONSE_PACKED = 17
    # A whole answer: RESPONSE_PACKED, one DATA and END in one frame; sent only
    # to a peer that said it reads them (docs/tunnel.md "Whole answers").
    RESPONSE_WHOLE = 18


# -- encoding ---------------------------------------------------------------


def new_packer() -> msgpack.Packer:
    """A Packer for control frames; ``table`` shares one among all tunnels of a process."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def encode_open_http(
    packer: msgpack.Packer,
    sid: int,
    window: int,
    method: str,
    target: bytes,
    headers: list[bytes],
    has_body: bool,
) -> bytes:
    return packer.pack((1, sid, window, method, target, headers, has_body))


def encode_open_http_packed(
    packer: msgpack.Packer,
    sid: int,
    window: int,
    method: str,
    target: bytes,
    block: list[int | bytes | None],
    has_body: bool,
) -> bytes:
    return packer.pack((16, sid, window, method, target, block, has_body))


def encode_response_packed(
    packer: msgpack.Packer,
    sid: int,
    status: int,
    reason: bytes,
    block: list[int | bytes | None],
    has_body: bool,
) -> bytes:
    return packer.pack((17, sid, status, reason, block, has_body))


def encode_response_whole(
    packer: msgpack.Packer,
    sid: int,
    status: int,
    reason: bytes,
    block: list[int | bytes | None],
    body: bytes,
) -> bytes:
    """RESPONSE_WHOLE with its block as given (a tunnel packs its own as it sends them)."""
    return packer.pack((18, sid, status, reason, block, body))


def encode_open_ws(
    packer: msgpack.Packer,
    sid: int,
    window: int,
    target: bytes,
    headers: list[bytes],
    protocols: list[str],
) -> bytes:
    return packer.pack((2, sid, window, target, headers, protocols))


def encode_response(
    packer: msgpack.Packer,
    sid: int,
    status: int,
    reason: bytes,
    headers: list[bytes],
    has_body: bool,
) -> bytes:
    return packer.pack((3, sid, status, reason, headers, has_body))


def encode_accept(
    packer: msgpack.Packer, sid: int, window: int, protocol: str | None, headers: list[bytes]
) -> bytes:
    return packer.pack((4, sid, window, protocol, headers))


def encode_data(packer: msgpack.Packer, sid: int, payload: bytes | memoryview) -> bytes:
    """Whole DATA frame; the tunnel itself uses data_prefix + bin_header instead."""
    return packer.pack((5, sid, payload))


def encode_end(packer: msgpack.Packer, sid: int) -> bytes:
    return packer.pack((6, sid))


def encode_message(
    packer: msgpack.Packer, sid: int, flags: int, payload: bytes | memoryview
) -> bytes:
    """Whole MESSAGE frame; the tunnel itself uses message_prefix + bin_header instead."""
    return packer.pack((7, sid, flags, payload))


def encode_close(packer: msgpack.Packer, sid: int, code: int, reason: str) -> bytes:
    return packer.pack((8, sid, code, reason))


def encode_window(packer: msgpack.Packer, sid: int, increment: int) -> bytes:
    return packer.pack((9, sid, increment))


def encode_reset(packer: msgpack.Packer, sid: int, code: int, reason: str) -> bytes:
    return packer.pack((10, sid, code, reason))


def encode_push(packer: msgpack.Packer, ident: int, op: int, payload: bytes) -> bytes:
    return packer.pack((11, ident, op, payload))


def data_prefix(packer: msgpack.Packer, sid: int) -> bytes:
    """``[5, sid, `` of a DATA frame: prefix + bin_header(n) + payload is the frame."""
    return b"\x93\x05" + packer.pack(sid)


def message_prefix(packer: msgpack.Packer, sid: int) -> bytes:
    """``[7, sid, `` of a MESSAGE frame: add the flags byte, bin header and payload."""
    return b"\x94\x07" + packer.pack(sid)


def bin_header(n: int) -> bytes:
    """msgpack bin8/bin16/bin32 header for an n-byte payload."""
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


# -- decoding ---------------------------------------------------------------


def _fail(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed tunnel frame: {what}")


def _is_sid(v: object) -> bool:
    return type(v) is int and 0 < v <= MAX_STREAM_ID


def _is_window(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_WINDOW


def _is_increment(v: object) -> bool:
    return type(v) is int and 0 < v <= MAX_WINDOW


def _is_bool(v: object) -> bool:
    return type(v) is bool


def _is_bin(v: object) -> bool:
    return type(v) is bytes


def _is_method(v: object) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_METHOD_LENGTH and v.isascii()


def _is_headers(v: object) -> bool:
    return (
        type(v) is list
        and len(v) % 2 == 0
        and len(v) <= 2 * MAX_HEADER_FIELDS
        and all(type(x) is bytes for x in v)
    )


def _is_block(v: object) -> bool:
    """A packed header block's shape; ``packing.decode_block`` checks each element."""
    return type(v) is list and len(v) <= 2 * MAX_HEADER_FIELDS


def _is_protocol(v: object) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_PROTOCOL_LENGTH


def _is_protocols(v: object) -> bool:
    return type(v) is list and len(v) <= MAX_PROTOCOLS and all(_is_protocol(p) for p in v)


def _is_optional_protocol(v: object) -> bool:
    return v is None or _is_protocol(v)


def _is_status(v: object) -> bool:
    return type(v) is int and 100 <= v <= 999


def _is_flags(v: object) -> bool:
    return type(v) is int and 0 <= v <= (FLAG_FIN | FLAG_TEXT)


def _is_op(v: object) -> bool:
    return type(v) is int and 0 < v < 64


def _is_close_code(v: object) -> bool:
    return type(v) is int and 1000 <= v <= 4999


def _is_reset_code(v: object) -> bool:
    return type(v) is int and 0 <= v <= 255


def _is_reason(v: object) -> bool:
    # msgpack (raw=False) only yields valid UTF-8 strs, so encode() cannot fail.
    return type(v) is str and len(v) <= MAX_REASON_BYTES and len(v.encode()) <= MAX_REASON_BYTES


_Field = tuple[str, Callable[[object], bool]]
_SID: Final[_Field] = ("stream id", _is_sid)
_HEADERS: Final[_Field] = ("headers", _is_headers)

#: Frame type -> (name, fields after the type). The executable layout table.
LAYOUTS: Final[dict[int, tuple[str, tuple[_Field, ...]]]] = {
    FrameType.OPEN_HTTP: (
        "OPEN_HTTP",
        (
            _SID,
            ("window", _is_window),
            ("method", _is_method),
            ("target", _is_bin),
            _HEADERS,
            ("has_body", _is_bool),
        ),
    ),
    FrameType.OPEN_WS: (
        "OPEN_WS",
        (_SID, ("window", _is_window), ("target", _is_bin), _HEADERS, ("protocols", _is_protocols)),
    ),
    FrameType.RESPONSE: (
        "RESPONSE",
        (_SID, ("status", _is_status), ("reason", _is_bin), _HEADERS, ("has_body", _is_bool)),
    ),
    FrameType.ACCEPT: (
        "ACCEPT",
        (_SID, ("window", _is_window), ("protocol", _is_optional_protocol), _HEADERS),
    ),
    FrameType.DATA: ("DATA", (_SID, ("payload", _is_bin))),
    FrameType.END: ("END", (_SID,)),
    FrameType.MESSAGE: ("MESSAGE", (_SID, ("flags", _is_flags), ("payload", _is_bin))),
    FrameType.CLOSE: ("CLOSE", (_SID, ("code", _is_close_code), ("reason", _is_reason))),
    FrameType.WINDOW: ("WINDOW", (_SID, ("increment", _is_increment))),
    FrameType.RESET: ("RESET", (_SID, ("code", _is_reset_code), ("reason", _is_reason))),
    FrameType.PUSH: ("PUSH", (("id", _is_sid), ("op", _is_op), ("payload", _is_bin))),
    FrameType.OPEN_HTTP_PACKED: (
        "OPEN_HTTP_PACKED",
        (
            _SID,
            ("window", _is_window),
            ("method", _is_method),
            ("target", _is_bin),
            ("header block", _is_block),
            ("has_body", _is_bool),
        ),
    ),
    FrameType.RESPONSE_PACKED: (
        "RESPONSE_PACKED",
        (
            _SID,
            ("status", _is_status),
            ("reason", _is_bin),
            ("header block", _is_block),
            ("has_body", _is_bool),
        ),
    ),
    FrameType.RESPONSE_WHOLE: (
        "RESPONSE_WHOLE",
        (
            _SID,
            ("status", _is_status),
            ("reason", _is_bin),
            ("header block", _is_block),
            ("body", _is_bin),
        ),
    ),
}


def check_frame(raw: object) -> list[Any]:
    """Validate one unpacked msgpack object against LAYOUTS; return it unchanged."""
    if type(raw) is not list or not raw:
        raise _fail("a frame must be a non-empty array")
    kind = raw[0]
    layout = LAYOUTS.get(kind) if type(kind) is int else None
    if layout is None:
        raise _fail(f"unknown frame type {kind!r:.20}")
    name, fields = layout
    if len(raw) != len(fields) + 1:
        raise _fail(f"{name} has {len(raw)} fields, expected {len(fields) + 1}")
    for i, (field, valid) in enumerate(fields, 1):
        if not valid(raw[i]):
            raise _fail(f"{name} {field} is invalid")
    return raw


class FrameDecoder:
    """Turns session messages (batches of concatenated frames) into validated frames.

    One per tunnel. A batch must hold whole frames only; a frame cut at the
    end of a message is an error, because the session delivers whole messages.
    """

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        self._reader = BatchReader(max_bin=MAX_PAYLOAD, max_array=2 * MAX_HEADER_FIELDS, slack=4096)

    def decode(self, message: bytes | bytearray | memoryview) -> Iterable[list[Any]]:
        """Each frame of one message, validated; only RemoteProtocolError escapes.

        Lazy on purpose: the frames before a bad one take effect, exactly as
        if they had come in an earlier message. A message of one frame (most
        of them, one message per loop turn) skips the streaming decoder.
        """
        raw = self._reader.one(message)
        if raw is NOT_ONE:
            return self._frames(message)
        return (raw if _is_hot(raw) else check_frame(raw),)

    def _frames(self, message: bytes | bytearray | memoryview) -> Iterator[list[Any]]:
        try:
            for raw in self._reader.objects(message):
                yield raw if _is_hot(raw) else check_frame(raw)
        except WireError as exc:
            raise _fail(str(exc)) from exc


def _is_hot(raw: object) -> TypeGuard[list[Any]]:
    """A well-formed DATA or MESSAGE frame: the checks of LAYOUTS, inline (they are most frames)."""
    if type(raw) is not list:
        return False
    n = len(raw)
    if n == 4:  # MESSAGE: [7, sid, flags, payload]
        flags = raw[2]
        ok = raw[0] == 7 and type(flags) is int and 0 <= flags <= (FLAG_FIN | FLAG_TEXT)
    else:  # DATA: [5, sid, payload]
        ok = n == 3 and raw[0] == 5
    if not ok:
        return False
    sid = raw[1]
    return (
        type(raw[0]) is int
        and type(sid) is int
        and 0 < sid <= MAX_STREAM_ID
        and type(raw[-1]) is bytes
    )
