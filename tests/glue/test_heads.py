"""decode_stripped: a replayed head built in one pass is the head the two-pass rules build."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.core import headers as hdr
from gateway.glue import heads
from gateway.glue.heads import (
    decode_headers,
    decode_stripped,
    downstream_fields,
    replay_pairs,
    request_pairs,
    response_pairs,
    set_framing,
)
from gateway.glue.pollahead import mark, mark_pairs
from tests.glue.chain import TRANSPORTS, BuildChain, Origin, headers_of

NAMES = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Connection",
        b"connection",
        b"Keep-Alive",
        b"Upgrade",
        b"X-Custom",
        b"x-custom",
        b"Cookie",
        b"Expect",
        b"Via",
        b"X-Forwarded-For",
        b"Transfer-Encoding",
        b"TE",
        b"\xe2\x84\xaaeep-Alive",  # a KELVIN SIGN: hop-by-hop once lower-cased as text
        b"X-\xc3\xa9t\xc3\xa9",
    ]
)
VALUES = st.sampled_from(
    [
        b"",
        b"a",
        b"close",
        b"x-custom, cookie",
        b" Keep-Alive ,TE",
        b"1.1 up",
        b"\xff\xfe",
        b"h:1",
        b"x-\xc3\xa9t\xc3\xa9, host",
        b"Cookie\x1f, \xc2\xa0via\xc2\xa0",  # spaces str.strip() takes and bytes.strip() not
        b"\xe2\x84\xaaEEP-ALIVE,,x-custom",
    ]
)


@given(st.lists(st.tuples(NAMES, VALUES), max_size=12))
@settings(max_examples=300, deadline=None)
def test_one_pass_equals_decode_then_strip(raw: list[tuple[bytes, bytes]]) -> None:
    stripped, host = decode_stripped(tuple(raw))
    two_pass = decode_headers(tuple(raw))
    assert list(stripped.items()) == list(hdr.strip_hop_by_hop(two_pass).items())
    assert host == two_pass.get("Host")


@given(st.lists(st.tuples(NAMES, VALUES), max_size=12), st.sampled_from([None, "origin:8080"]))
@settings(max_examples=200, deadline=None)
def test_replay_rules_equal_request_headers_for_upstream(
    raw: list[tuple[bytes, bytes]], upstream_host: str | None
) -> None:
    expected = hdr.request_headers_for_upstream(
        decode_headers(tuple(raw)),
        http_version=(1, 1),
        via_name="hopgate",
        client_ip="10.0.0.1",
        proto="http",
        upstream_host=upstream_host,
    )
    out, host = decode_stripped(tuple(raw))
    hdr.rewrite_for_upstream(
        out,
        original_host=host,
        http_version=(1, 1),
        via_name="hopgate",
        client_ip="10.0.0.1",
        proto="http",
        upstream_host=upstream_host,
    )
    assert list(out.items()) == list(expected.items())
    assert isinstance(out, CIMultiDict)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_gateways_pack_heads_and_the_origin_sees_every_head_whole(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    """Each side's session set-up says what its tunnel reads; both tunnels then use it.

    The server's 200 offers packed heads (and whole answers), the client's POST
    whole answers (and packed heads): small answers then leave as one frame.
    """
    _, url = origin
    chain = await build_chain(url, transport)
    assert chain.down.hop.peer_tunnel == {"packed-heads", "whole-answers"}
    assert chain.up.hop.peer_tunnel == {"packed-heads", "whole-answers"}
    views = []
    for i in range(4):
        sent = {"Cookie": "session=" + "c" * 400, "User-Agent": f"agent {i % 2}", "X-N": str(i)}
        async with chain.client.get(chain.url + "/h", headers=sent) as resp:
            assert resp.status == 200
            views.append(headers_of(await resp.json()))
            assert resp.headers.getall("Via") == ["1.1 hopgate, 1.1 hopgate"]
    assert chain.down.tunnel.packs_heads and chain.up.tunnel.packs_heads
    assert chain.up.tunnel.answers_whole
    for i, view in enumerate(views):
        assert view["cookie"] == ["session=" + "c" * 400]
        assert view["user-agent"] == [f"agent {i % 2}"]
        assert view["x-n"] == [str(i)]


@given(st.lists(st.tuples(NAMES, VALUES), max_size=12), st.sampled_from([(1, 1), (1, 0)]))
@settings(max_examples=300, deadline=None)
def test_response_pairs_follow_the_text_rule(
    raw: list[tuple[bytes, bytes]], version: tuple[int, int]
) -> None:
    expected = hdr.response_headers_for_downstream(
        decode_headers(tuple(raw)), http_version=version, via_name="hopgate"
    )
    got = response_pairs(raw, version, "hopgate")
    assert [(n.lower(), v) for n, v in got] == [
        (n.encode("utf-8", "surrogateescape").lower(), v.encode("utf-8", "surrogateescape"))
        for n, v in expected.items()
    ]
    kept = {n for n, _ in raw}
    assert all(n in kept or n == b"Via" for n, _ in got)  # the origin's own spelling


#: Fields the request rule rewrites, besides the hop-by-hop ones ``NAMES`` has.
REQUEST_NAMES = st.one_of(
    NAMES,
    st.sampled_from([b"X-Forwarded-Proto", b"x-forwarded-host", b"X-Forwarded-Host", b"expect"]),
)
REQUEST_VALUES = st.one_of(VALUES, st.sampled_from([b"  ", b" 10.1.1.1 ", b"\xc2\xa0"]))


@given(
    st.lists(st.tuples(REQUEST_NAMES, REQUEST_VALUES), max_size=12),
    st.sampled_from([None, "origin:8080"]),
    st.sampled_from([None, "10.0.0.1"]),
    st.sampled_from([(1, 1), (1, 0)]),
)
@settings(max_examples=400, deadline=None)
def test_request_pairs_equal_request_headers_for_upstream(
    raw: list[tuple[bytes, bytes]],
    upstream_host: str | None,
    client_ip: str | None,
    version: tuple[int, int],
) -> None:
    """The OPEN's head built from the bytes read is the text rule's head, field for field."""
    rules = {"http_version": version, "via_name": "hopgate", "client_ip": client_ip}
    expected = hdr.request_headers_for_upstream(
        decode_headers(tuple(raw)), **rules, proto="http", upstream_host=upstream_host
    )
    got = request_pairs(tuple(raw), **rules, proto="http", upstream_host=upstream_host)
    assert got == [
        (n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for n, v in expected.items()
    ]


@given(
    st.lists(st.tuples(REQUEST_NAMES, VALUES), max_size=12),
    st.sampled_from([None, 0, 77]),
)
@settings(max_examples=300, deadline=None)
def test_downstream_fields_equal_the_stripped_head_with_via_and_framing(
    raw: list[tuple[bytes, bytes]], length: int | None
) -> None:
    """The answer's fields from one pass are those the multidict steps give, in order."""
    raw += [(b"Content-Length", b"12"), (b"transfer-encoding", b"chunked")]
    expected, _ = decode_stripped(tuple(raw))
    hdr.append_via(expected, (1, 1), "hopgate")
    set_framing(expected, length)
    assert downstream_fields(tuple(raw), (1, 1), "hopgate", length) == list(expected.items())


MARK_NAMES = st.sampled_from([b"Hopgate-Poll-Ahead", b"hopgate-poll-ahead", b"X"])


@given(st.lists(st.tuples(MARK_NAMES, VALUES), max_size=6))
def test_mark_pairs_is_mark_on_bytes(raw: list[tuple[bytes, bytes]]) -> None:
    """The OPEN's bytes carry the mark as ``pollahead.mark`` puts it, a client's own one gone."""
    text_head = decode_headers(tuple(raw))
    mark(text_head)
    assert mark_pairs(raw) == [
        (n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for n, v in text_head.items()
    ]


@given(
    st.lists(st.tuples(REQUEST_NAMES, REQUEST_VALUES), max_size=12),
    st.sampled_from([None, "origin:8080"]),
    st.sampled_from([None, "10.0.0.1"]),
    st.sampled_from([None, 0, 77]),
)
@settings(max_examples=400, deadline=None)
def test_replay_pairs_equal_the_replayed_text_head(
    raw: list[tuple[bytes, bytes]],
    upstream_host: str | None,
    client_ip: str | None,
    length: int | None,
) -> None:
    """The answering side's bytes head is the head decode_stripped + replay rules + framing give."""
    raw += [(b"Content-Length", b"12"), (b"transfer-encoding", b"chunked")]
    expected, host = decode_stripped(tuple(raw))
    hdr.rewrite_for_upstream(
        expected,
        original_host=host,
        http_version=(1, 1),
        via_name="hopgate",
        client_ip=client_ip,
        proto="http",
        upstream_host=upstream_host,
    )
    set_framing(expected, length)
    got = replay_pairs(
        tuple(raw),
        via_name="hopgate",
        client_ip=client_ip,
        upstream_host=upstream_host,
        length=length,
    )
    assert got == [
        (n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
        for n, v in expected.items()
    ]


def test_the_name_caches_stay_bounded_and_right_past_their_bound() -> None:
    """A peer inventing names (or Connection values) cannot grow the caches; past the bound
    names are still lower-cased and listed names still dropped."""
    for i in range(3000):
        raw = ((b"X-Made-Up-%d" % i, b"v"), (b"Connection", b"X-Made-Up-%d" % i), (b"X-Kept", b"k"))
        assert response_pairs(raw, (1, 1), "h")[:-1] == [(b"X-Kept", b"k")]
    assert len(heads._LOWERED) <= heads._LOWERED_MAX
    assert len(heads._DROPPED_BY) <= heads._LOWERED_MAX
    assert request_pairs(
        ((b"HOST", b"a"), (b"X-New-Name", b"1")),
        http_version=(1, 1),
        via_name="h",
        client_ip=None,
        proto="http",
        upstream_host=None,
    )[:2] == [(b"HOST", b"a"), (b"X-New-Name", b"1")]
