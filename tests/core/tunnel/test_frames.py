"""Wire format: every encoder round-trips, the hot-path prefixes match msgpack, bad frames fail."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gateway.core.tunnel import RemoteProtocolError
from gateway.core.tunnel.frames import (
    FLAG_FIN,
    FLAG_TEXT,
    LAYOUTS,
    MAX_HEADER_FIELDS,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    FrameDecoder,
    FrameType,
    bin_header,
    data_prefix,
    encode_accept,
    encode_close,
    encode_data,
    encode_end,
    encode_message,
    encode_open_http,
    encode_open_ws,
    encode_reset,
    encode_response,
    encode_window,
    message_prefix,
    new_packer,
)

P = new_packer()
H = [b"Host", b"example", b"X", b"1", b"X", b"2"]


def decode(message: bytes) -> list[list[Any]]:
    return list(FrameDecoder().decode(message))


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            encode_open_http(P, 1, 65536, "POST", b"/a?b", H, True),
            [1, 1, 65536, "POST", b"/a?b", H, True],
        ),
        (encode_open_ws(P, 3, 0, b"/ws", [], ["chat"]), [2, 3, 0, b"/ws", [], ["chat"]]),
        (encode_response(P, 2, 404, b"Not Found", H, False), [3, 2, 404, b"Not Found", H, False]),
        (encode_accept(P, 5, 2**31 - 1, None, []), [4, 5, 2**31 - 1, None, []]),
        (encode_accept(P, 5, 10, "chat", H), [4, 5, 10, "chat", H]),
        (encode_data(P, MAX_STREAM_ID, b"x" * 70_000), [5, MAX_STREAM_ID, b"x" * 70_000]),
        (encode_end(P, 7), [6, 7]),
        (encode_message(P, 9, FLAG_FIN | FLAG_TEXT, b"hi"), [7, 9, 3, b"hi"]),
        (encode_close(P, 9, 4999, "caf\u00e9"), [8, 9, 4999, "caf\u00e9"]),
        (encode_window(P, 9, 1), [9, 9, 1]),
        (encode_reset(P, 11, 255, ""), [10, 11, 255, ""]),
    ],
)
def test_every_frame_round_trips(frame: bytes, expected: list[Any]) -> None:
    assert decode(frame) == [expected]


def test_layout_table_covers_every_frame_type() -> None:
    assert set(LAYOUTS) == set(FrameType)


@pytest.mark.parametrize("sid", [1, 127, 128, 255, 256, 65_536, 2**32 + 1, MAX_STREAM_ID])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 100_000])
def test_hot_path_prefixes_are_exactly_what_msgpack_packs(sid: int, size: int) -> None:
    payload = bytes(size)
    assert data_prefix(P, sid) + bin_header(size) + payload == encode_data(P, sid, payload)
    flags = FLAG_TEXT
    manual = message_prefix(P, sid) + bytes((flags,)) + bin_header(size) + payload
    assert manual == encode_message(P, sid, flags, payload)


def test_a_batch_larger_than_the_feed_slice_decodes_frame_by_frame() -> None:
    frames = [encode_data(P, 1, bytes([i]) * 200_000) for i in range(5)]
    frames.insert(2, encode_end(P, 3))
    decoded = decode(b"".join(frames))
    assert [raw[0] for raw in decoded] == [5, 5, 6, 5, 5, 5]
    assert decoded[4][2] == bytes([3]) * 200_000


def test_one_decoder_handles_many_messages() -> None:
    decoder = FrameDecoder()
    for i in range(1, 50):
        assert list(decoder.decode(encode_window(P, i, i))) == [[9, i, i]]


def packed(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (packed({"a": 1}), "undecodable"),  # maps are never used
        (packed(5), "non-empty array"),
        (packed([]), "non-empty array"),
        (packed([99, 1]), "unknown frame type"),
        (packed([True, 1]), "unknown frame type"),  # bool is not a type number
        (packed([6]), "END has 1 fields"),
        (packed([6, 1, 2]), "END has 3 fields"),
        (packed([6, 0]), "stream id"),
        (packed([6, -1]), "stream id"),
        (packed([6, True]), "stream id"),
        (packed([6, MAX_STREAM_ID + 1]), "stream id"),
        (packed([5, 1, "text"]), "payload"),
        (packed([7, 1, 4, b""]), "flags"),
        (packed([9, 1, 0]), "increment"),
        (packed([9, 1, 2**31]), "increment"),
        (packed([10, 1, 256, ""]), "code"),
        (packed([10, 1, 0, "x" * 124]), "reason"),
        (packed([10, 1, 0, "\u00e9" * 62]), "reason"),  # 124 bytes in UTF-8
        (packed([8, 1, 999, ""]), "code"),
        (packed([3, 1, 99, b"", [], True]), "status"),
        (packed([3, 1, 200, "OK", [], True]), "reason"),
        (packed([3, 1, 200, b"OK", [b"odd"], True]), "headers"),
        (packed([3, 1, 200, b"OK", ["str", "str"], True]), "headers"),
        (packed([3, 1, 200, b"OK", [], 1]), "has_body"),
        (packed([1, 1, 10, "", b"/", [], False]), "method"),
        (packed([1, 1, 10, "G\u00c9T", b"/", [], False]), "method"),
        (packed([1, 1, -1, "GET", b"/", [], False]), "window"),
        (packed([2, 1, 10, b"/", [], [""]]), "protocols"),
        (packed([2, 1, 10, b"/", [], ["p"] * 33]), "protocols"),
        (packed([4, 1, 10, "", []]), "protocol"),
        (
            packed([1, 1, 10, "GET", b"/", [b""] * (2 * MAX_HEADER_FIELDS + 2), False]),
            "undecodable",
        ),
        (b"\xc1", "undecodable"),  # reserved byte
        (b"\x92\x06", "ends inside a frame"),
        (encode_end(P, 1) + b"\x92", "ends inside a frame"),
        (b"\xa2\xff\xfe", "undecodable"),  # str that is not UTF-8
        (b"\xd4\x01\x00", "undecodable"),  # ext types are never used
        (b"\xc6" + (MAX_PAYLOAD + 1).to_bytes(4, "big") + bytes(MAX_PAYLOAD + 1), "undecodable"),
        (b"\x91" * 5000, "undecodable"),  # nesting bomb
    ],
)
def test_malformed_input_is_a_remote_protocol_error(message: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(message)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ([5.0, 1, b"x"], "unknown frame type"),  # a float is not a type number, even 5.0
        ([7.0, 1, 1, b"x"], "unknown frame type"),
        ([7, 1, 1.0, b"x"], "MESSAGE flags"),
        ([7, 0, 1, b"x"], "MESSAGE stream id"),
        ([7, 1, 1, "x"], "MESSAGE payload"),
        ([5, MAX_STREAM_ID + 1, b"x"], "DATA stream id"),
        ([5, 1, b"x", 0], "4 fields"),
    ],
)
def test_hot_frames_get_every_check_alone_or_in_a_batch(frame: list[Any], match: str) -> None:
    """DATA and MESSAGE skip the layout table and a one-frame message the streaming decoder."""
    for message in (packed(frame), encode_end(P, 3) + packed(frame)):
        with pytest.raises(RemoteProtocolError, match=match):
            decode(message)


def test_a_one_frame_message_decodes_like_a_batch_of_one() -> None:
    for frame in (
        encode_message(P, 3, FLAG_FIN, b"m" * 100),
        encode_data(P, 5, b"d"),
        encode_end(P, 7),
    ):
        assert decode(frame) == decode(frame + frame)[:1]
