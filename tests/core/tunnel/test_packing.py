"""Header compaction: the table, the block codec, and packed heads between two tunnels."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.tunnel import (
    RemoteProtocolError,
    RequestReceived,
    ResetCode,
    ResponseReceived,
    StreamReset,
    Tunnel,
    TunnelConfig,
)
from gateway.core.tunnel.frames import (
    MAX_HEADER_FIELDS,
    FrameDecoder,
    FrameType,
    encode_open_http_packed,
    encode_response_packed,
    new_packer,
)
from gateway.core.tunnel.packing import (
    TABLE_BYTES,
    TABLE_ENTRIES,
    BadReference,
    HeaderTable,
    HeadTooLarge,
    decode_block,
    encode_block,
)
from tests.core.tunnel.test_streams import Pipe

BROWSER = [
    (b"Host", b"app.example"),
    (
        b"User-Agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    ),
    (b"Accept", b"application/json, text/javascript, */*; q=0.01"),
    (b"Accept-Language", b"en-GB,en;q=0.9"),
    (b"Cookie", b"session=" + b"ab12" * 100),
]


def flat(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [x for pair in pairs for x in pair]


def roundtrip(heads: list[list[bytes]]) -> tuple[HeaderTable, HeaderTable, list[list[bytes]]]:
    """Each head encoded then decoded through a pair of tables, as one direction would."""
    sender, receiver = HeaderTable(indexed=True), HeaderTable(indexed=False)
    out = []
    for head in heads:
        block = encode_block(sender, head)
        wire = msgpack.unpackb(msgpack.packb(block, use_bin_type=True), raw=False)
        out.append(decode_block(receiver, wire, 1 << 20))
    return sender, receiver, out


def test_a_repeated_head_becomes_one_byte_per_field() -> None:
    head = flat(BROWSER)
    _, _, out = roundtrip([head, head])
    assert out == [head, head]
    sender = HeaderTable(indexed=True)
    first = msgpack.packb(encode_block(sender, head), use_bin_type=True)
    again = msgpack.packb(encode_block(sender, head), use_bin_type=True)
    assert len(first) > sum(map(len, head))
    assert len(again) == 1 + len(BROWSER)  # fixarray header + one fixint per field


def test_a_changed_value_reuses_the_name() -> None:
    sender = HeaderTable(indexed=True)
    encode_block(sender, [b"Date", b"Mon, 01 Jan 2026 00:00:00 GMT"])
    block = encode_block(sender, [b"Date", b"Mon, 01 Jan 2026 00:00:01 GMT"])
    assert block == [-1, b"Mon, 01 Jan 2026 00:00:01 GMT"]


def test_a_field_too_big_for_the_table_goes_literally_and_is_not_kept() -> None:
    big = [b"Cookie", b"x" * TABLE_BYTES]
    sender, receiver, out = roundtrip([big, big])
    assert out == [big, big]
    assert len(sender) == len(receiver) == 0


@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from([b"a", b"Cookie", b"Accept", b"X-Long"]),
                st.binary(max_size=1500) | st.sampled_from([b"", b"1", b"gzip"]),
            ),
            max_size=12,
        ),
        max_size=30,
    )
)
@settings(max_examples=200, deadline=None)
def test_any_sequence_of_heads_decodes_to_itself_within_the_bounds(
    heads: list[list[tuple[bytes, bytes]]],
) -> None:
    flats = [flat(h) for h in heads]
    sender, receiver, out = roundtrip(flats)
    assert out == flats
    for table in (sender, receiver):
        assert len(table) <= TABLE_ENTRIES and table.size <= TABLE_BYTES
    assert [receiver.get(i) for i in range(len(receiver))] == [
        sender.get(i) for i in range(len(sender))
    ]


def test_a_peer_inserting_without_end_is_held_to_the_bounds() -> None:
    receiver = HeaderTable(indexed=False)
    for i in range(1000):
        decode_block(receiver, [b"n%d" % i, b"v" * (i % 300)], 1 << 20)
        assert len(receiver) <= TABLE_ENTRIES and receiver.size <= TABLE_BYTES
    decode_block(receiver, [b"huge", b"v" * TABLE_BYTES], 1 << 20)
    assert len(receiver) == 0 and receiver.size == 0


@pytest.mark.parametrize("block", [[0], [5], [-1, b"v"], [64], [-65, b"x"]])
def test_a_reference_to_an_entry_not_held_is_a_bad_reference(block: list[object]) -> None:
    with pytest.raises(BadReference):
        decode_block(HeaderTable(indexed=False), block, 1 << 20)


@pytest.mark.parametrize(
    "block", [[b"name"], [None, b"n"], [-1], [3.5], [True], [b"n", 7], [None, b"n", None]]
)
def test_a_malformed_block_is_a_value_error(block: list[object]) -> None:
    table = HeaderTable(indexed=False)
    table.insert(b"a", b"b")
    with pytest.raises(ValueError):
        decode_block(table, block, 1 << 20)


def test_references_cannot_expand_past_the_head_limits() -> None:
    table = HeaderTable(indexed=False)
    decode_block(table, [b"Cookie", b"c" * 1000], 1 << 20)
    with pytest.raises(HeadTooLarge):
        decode_block(table, [0] * 70, 64 * 1024)  # 70 KB from 71 bytes
    with pytest.raises(HeadTooLarge):
        decode_block(table, [b"a", b"", *[0] * MAX_HEADER_FIELDS], 1 << 20)


def test_eviction_keeps_the_encoders_indexes_right() -> None:
    values = [b"%04d" % i + b"v" * 200 for i in range(100)]
    again = values[-5:] + values[:1]
    sender, _, out = roundtrip([[b"X", v] for v in values] + [[b"X", v] for v in again])
    assert out[100:] == [[b"X", v] for v in again]
    assert sender.find(b"X", values[50]) == (None, 0)  # evicted; the name is the newest entry


# -- two tunnels ----------------------------------------------------------------------


def packed_pipe() -> Pipe:
    pipe = Pipe()
    pipe.down.peer_reads_packed_heads()
    return pipe


def exchange(pipe: Pipe, headers: list[tuple[bytes, bytes]]) -> tuple[RequestReceived, int]:
    sid = pipe.down.open_http("GET", b"/poll?since=1", headers)
    pipe.pump()
    [request] = pipe.up.events_received()
    assert isinstance(request, RequestReceived)
    pipe.up.respond(sid, 200, b"OK", [(b"Content-Type", b"application/json")], has_body=True)
    pipe.up.send_data(sid, b"{}")
    pipe.up.end(sid)
    before = sum(pipe.sizes)
    pipe.pump()
    return request, sum(pipe.sizes) - before


def test_packed_heads_cross_and_the_answerer_packs_once_it_got_one() -> None:
    pipe = packed_pipe()
    assert not pipe.up.packs_heads
    request, _ = exchange(pipe, BROWSER)
    assert request.headers == tuple(BROWSER)
    assert pipe.up.packs_heads
    response = pipe.down.events_received()[0]
    assert isinstance(response, ResponseReceived)
    assert response.headers == ((b"Content-Type", b"application/json"),)
    first = sum(pipe.sizes)
    pipe.sizes.clear()
    exchange(pipe, BROWSER)
    assert sum(pipe.sizes) < 90 < first / 5


def test_without_word_from_the_peer_heads_stay_plain() -> None:
    """A peer that never heard of packed heads (the shim, an older gateway) gets plain ones."""
    pipe = Pipe()
    pipe.down.open_http("GET", b"/", BROWSER)
    message = pipe.down.next_message()
    assert message is not None
    [frame] = FrameDecoder().decode(message)
    assert frame[0] == FrameType.OPEN_HTTP
    assert not pipe.down.packs_heads


def test_a_head_reset_before_it_left_changes_no_table() -> None:
    pipe = packed_pipe()
    gone = pipe.down.open_http("GET", b"/gone", [(b"X-Secret", b"1")])
    pipe.down.reset(gone)
    request, _ = exchange(pipe, [(b"X-Secret", b"1"), *BROWSER])
    assert request.headers[0] == (b"X-Secret", b"1")


def test_heads_packed_out_of_queue_order_still_decode() -> None:
    """The up side answers one stream and opens another: OPENs leave first, tables follow."""
    pipe = packed_pipe()
    exchange(pipe, BROWSER)
    pipe.down.events_received()
    sid = pipe.down.open_http("GET", b"/a", BROWSER)
    pipe.pump()
    pipe.up.events_received()
    pipe.up.respond(sid, 200, b"OK", [(b"X-Fresh", b"1")], has_body=False)
    pipe.up.open_http("GET", b"/b", [(b"X-Fresh", b"1")])
    pipe.pump()
    events = pipe.down.events_received()
    assert [e.headers for e in events if isinstance(e, RequestReceived | ResponseReceived)] == [
        ((b"X-Fresh", b"1"),),
        ((b"X-Fresh", b"1"),),
    ]


def test_a_hostile_reference_resets_only_its_stream() -> None:
    up = Tunnel(opener=False)
    packer = new_packer()
    up.receive_message(encode_open_http_packed(packer, 1, 65536, "GET", b"/", [7], False))
    assert up.events_received() == []
    reply = up.next_message()
    assert reply is not None
    [reset] = FrameDecoder().decode(reply)
    assert reset[:3] == [FrameType.RESET, 1, ResetCode.PROTOCOL]
    # The tunnel lives on: the next stream is served.
    up.receive_message(encode_open_http_packed(packer, 3, 65536, "GET", b"/", [b"A", b"b"], False))
    [request] = up.events_received()
    assert isinstance(request, RequestReceived) and request.headers == ((b"A", b"b"),)


def test_a_hostile_response_reference_resets_the_stream_locally() -> None:
    down = Tunnel(opener=True)
    sid = down.open_http("GET", b"/")
    down.next_message()
    down.receive_message(encode_response_packed(new_packer(), sid, 200, b"", [0], True))
    [event] = down.events_received()
    assert isinstance(event, StreamReset) and event.code == ResetCode.PROTOCOL
    assert not event.remote


def test_a_block_expanding_past_max_header_bytes_is_refused_too_large() -> None:
    up = Tunnel(TunnelConfig(max_header_bytes=4096), opener=False)
    packer = new_packer()
    block: list[int | bytes | None] = [b"Cookie", b"c" * 1000, *[0] * 10]
    up.receive_message(encode_open_http_packed(packer, 1, 65536, "GET", b"/", block, False))
    assert up.events_received() == []
    reply = up.next_message()
    assert reply is not None
    [reset] = FrameDecoder().decode(reply)
    assert reset[:3] == [FrameType.RESET, 1, ResetCode.TOO_LARGE]


def test_a_malformed_block_is_a_protocol_error() -> None:
    up = Tunnel(opener=False)
    frame = encode_open_http_packed(new_packer(), 1, 65536, "GET", b"/", [b"name-only"], False)
    with pytest.raises(RemoteProtocolError, match="missing"):
        up.receive_message(frame)


def test_a_repeated_head_reuses_its_block_until_the_table_changes() -> None:
    a, b = flat(BROWSER), flat(BROWSER[:2])
    heads = [a, a, a, b, a, [b"Date", b"1"], a, a, [b"Date", b"2"], b, b, a]
    sender, receiver, out = roundtrip(heads)
    assert out == heads
    assert [sender.get(i) for i in range(len(sender))] == [
        receiver.get(i) for i in range(len(receiver))
    ]
    first = encode_block(sender, a)
    assert encode_block(sender, list(a)) is first  # nothing inserted since: the same block
    encode_block(sender, [b"Date", b"3"])
    assert encode_block(sender, a) is not first


def test_a_repeated_block_is_held_to_the_head_limit_too() -> None:
    table = HeaderTable(indexed=False)
    decode_block(table, [b"Cookie", b"c" * 1000], 1 << 20)
    assert decode_block(table, [0, 0], 1 << 20) == [b"Cookie", b"c" * 1000] * 2
    with pytest.raises(HeadTooLarge):
        decode_block(table, [0, 0], 1500)
