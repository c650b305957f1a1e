"""Frame layouts, limits and the decoder's answer to every class of bad input."""

from __future__ import annotations

import msgpack
import pytest

from gateway.core.session.errors import CloseCode, RemoteProtocolError
from gateway.core.session.frames import (
    MAX_FRAGMENT_SIZE,
    MAX_UINT64,
    PROTOCOL_VERSION,
    Abort,
    Ack,
    Close,
    Data,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encode_data,
    new_packer,
)

ALL_FRAMES: list[Frame] = [
    Hello(version=PROTOCOL_VERSION, session_id="abc", last_received=7, token=b"k" * 32),
    Hello(version=PROTOCOL_VERSION, session_id="abc", last_received=0, token=None),
    Data(seq=1, fin=True, text=False, payload=b"\x00\xff"),
    Data(seq=MAX_UINT64, fin=False, text=True, payload="h\u00e9".encode()),
    Data(seq=3, fin=True, text=False, payload=b""),
    Ack(received=0),
    Ack(received=MAX_UINT64),
    Ping(nonce=5),
    Pong(nonce=MAX_UINT64),
    Close(seq=9, code=1000, reason="bye"),
    Abort(code=4000, reason="expired: no transport for 60 s"),
]


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    encoded = frame.encode(new_packer())
    assert FrameDecoder().decode(encoded) == [frame]


def test_batch_of_many_frames_round_trips_in_order() -> None:
    packer = new_packer()
    batch = b"".join(f.encode(packer) for f in ALL_FRAMES)
    assert FrameDecoder().decode(batch) == ALL_FRAMES


def test_wire_layouts_are_the_documented_arrays() -> None:
    packer = new_packer()
    assert msgpack.unpackb(Data(seq=4, fin=True, text=True, payload=b"hi").encode(packer)) == [
        2,
        4,
        3,
        b"hi",
    ]
    assert msgpack.unpackb(Ack(received=3).encode(packer)) == [3, 3]
    hello = Hello(version=1, session_id="s", last_received=2, token=b"t")
    assert msgpack.unpackb(hello.encode(packer)) == [1, 1, "s", 2, b"t"]
    assert msgpack.unpackb(Close(seq=5, code=1000, reason="").encode(packer)) == [6, 5, 1000, ""]
    assert msgpack.unpackb(Abort(code=1002, reason="x").encode(packer)) == [7, 1002, "x"]


def test_memoryview_payload_encodes_as_bin() -> None:
    packer = new_packer()
    view = memoryview(b"0123456789")[2:5]
    (frame,) = FrameDecoder().decode(encode_data(packer, 1, 1, view))
    assert frame == Data(seq=1, fin=True, text=False, payload=b"234")


def test_decoder_is_reusable_across_batches() -> None:
    decoder, packer = FrameDecoder(), new_packer()
    for i in range(1, 5):
        assert decoder.decode(Ack(received=i).encode(packer)) == [Ack(received=i)]
    assert decoder.decode(b"") == []


def test_largest_fragment_accepted_and_one_more_byte_rejected() -> None:
    packer = new_packer()
    ok = encode_data(packer, 1, 1, b"a" * MAX_FRAGMENT_SIZE)
    (frame,) = FrameDecoder().decode(ok)
    assert isinstance(frame, Data) and len(frame.payload) == MAX_FRAGMENT_SIZE
    too_big = encode_data(packer, 1, 1, b"a" * (MAX_FRAGMENT_SIZE + 1))
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().decode(too_big)
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_frame_split_across_feed_chunks_still_decodes() -> None:
    packer = new_packer()
    frames = [Data(seq=i, fin=True, text=False, payload=bytes([i]) * 100_000) for i in range(1, 8)]
    batch = b"".join(f.encode(packer) for f in frames)
    assert FrameDecoder().decode(batch) == frames


MALFORMED = {
    "not msgpack (reserved byte)": b"\xc1",
    "truncated frame": pack([3, 5])[:-1],
    "valid frame then truncated": pack([3, 5]) + pack([4, 1])[:1],
    "not an array": pack({"type": 2}),
    "scalar": pack(42),
    "empty array": pack([]),
    "unknown frame type": pack([99, 1]),
    "frame type is a string": pack(["DATA", 1, 1, b""]),
    "frame type is bool": pack([True, 1]),
    "DATA short": pack([2, 1, 1]),
    "DATA long": pack([2, 1, 1, b"", 0]),
    "DATA seq zero": pack([2, 0, 1, b"x"]),
    "DATA seq negative": pack([2, -1, 1, b"x"]),
    "DATA seq float": pack([2, 1.0, 1, b"x"]),
    "DATA seq bool": pack([2, True, 1, b"x"]),
    "DATA unknown flag": pack([2, 1, 4, b"x"]),
    "DATA payload str": pack([2, 1, 1, "x"]),
    "DATA payload nested": pack([2, 1, 1, [b"x"]]),
    "ACK str": pack([3, "1"]),
    "ACK nil": pack([3, None]),
    "ACK huge negative": pack([3, -(2**63)]),
    "PING arity": pack([4]),
    "PONG float": pack([5, 1.5]),
    "HELLO arity": pack([1, 1, "s", 0]),
    "HELLO empty session": pack([1, 1, "", 0, None]),
    "HELLO session not str": pack([1, 1, b"s", 0, None]),
    "HELLO long session": pack([1, 1, "s" * 200, 0, None]),
    "HELLO token str": pack([1, 1, "s", 0, "tok"]),
    "HELLO token huge": pack([1, 1, "s", 0, b"t" * 100]),
    "CLOSE code low": pack([6, 1, 999, ""]),
    "CLOSE code high": pack([6, 1, 5000, ""]),
    "CLOSE seq zero": pack([6, 0, 1000, ""]),
    "CLOSE reason bytes": pack([6, 1, 1000, b"bye"]),
    "CLOSE reason too long": pack([6, 1, 1000, "x" * 200]),
    "ABORT arity": pack([7, 1000]),
    "map inside frame": pack([3, {"a": 1}]),
    "ext type": pack([3, msgpack.ExtType(5, b"x")]),
    "long array": pack(list(range(20))),
    "deep nesting": b"\x91" * 5000 + b"\x01",
    "invalid utf-8 str": b"\x92\x04\xa2\xff\xfe",
    "bin length claims 4 GiB": b"\x94\x02\x01\x01\xc6\xff\xff\xff\xff",
    "str too long": pack([3, "x" * 5000]),
}


@pytest.mark.parametrize("batch", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_remote_protocol_error(batch: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().decode(batch)
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    assert "malformed frame" in info.value.reason


def test_error_names_the_problem() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type 99"):
        FrameDecoder().decode(pack([99]))
    with pytest.raises(RemoteProtocolError, match="ends inside a frame"):
        FrameDecoder().decode(pack([3, 5])[:-1])


def test_data_repr_does_not_dump_payload() -> None:
    frame = Data(seq=3, fin=True, text=False, payload=b"secret" * 1000)
    assert "secret" not in repr(frame)
    assert str(frame) == "DATA #3 bin 6000B fin"
    assert "k" * 8 not in repr(ALL_FRAMES[0])  # token hidden


@pytest.mark.parametrize("batch", MALFORMED.values(), ids=MALFORMED.keys())
def test_the_receive_path_rejects_the_same_input(batch: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().decode_hot(batch)
    assert "malformed frame" in info.value.reason


def test_the_receive_path_keeps_data_as_its_checked_list_and_an_ack_as_its_count() -> None:
    frames, packer = list(ALL_FRAMES), new_packer()
    assert any(isinstance(f, Ack) for f in frames)
    batch = b"".join(f.encode(packer) for f in frames)
    hot = FrameDecoder().decode_hot(batch)
    for frame, got in zip(frames, hot, strict=True):
        if isinstance(frame, Data):
            flags = (1 if frame.fin else 0) | (2 if frame.text else 0)
            assert got == [2, frame.seq, flags, frame.payload]
        elif isinstance(frame, Ack):
            assert type(got) is int and got == frame.received
        else:
            assert got == frame


@pytest.mark.parametrize(
    "raw", [[3, -1], [3, -(2**63)], [3, True], [3, 1.0], [3, 1, 2], [3], [True, 1]]
)
def test_the_receive_path_refuses_a_bad_ack_as_decode_does(raw: list[object]) -> None:
    batch = msgpack.packb(raw)
    with pytest.raises(RemoteProtocolError) as full:
        FrameDecoder().decode(batch)
    with pytest.raises(RemoteProtocolError) as hot:
        FrameDecoder().decode_hot(batch)
    assert str(hot.value) == str(full.value)
