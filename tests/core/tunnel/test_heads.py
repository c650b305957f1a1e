"""Heads from the I/O layer to wire form: bytes through untouched, our limits, caller bugs."""

from __future__ import annotations

import pytest

from gateway.core.tunnel.errors import TunnelUsageError
from gateway.core.tunnel.frames import MAX_HEADER_FIELDS, MAX_REASON_BYTES
from gateway.core.tunnel.heads import (
    checked_protocols,
    checked_reason,
    encode_head,
    header_pairs,
)


def test_str_undoes_aiohttps_surrogateescape_and_bytes_pass_as_they_are() -> None:
    raw_value = b"caf\xe9"  # latin-1 on the wire: aiohttp hands it over surrogate-escaped
    escaped = raw_value.decode("utf-8", "surrogateescape")
    target, flat = encode_head("/p?q", [("X-A", escaped), (b"X-B", b"v")], 1024)
    assert target == b"/p?q"
    assert header_pairs(flat) == ((b"X-A", raw_value), (b"X-B", b"v"))


def test_head_limits_count_bytes_and_fields() -> None:
    encode_head(b"/", [(b"a", b"x" * 98)], 100)  # target + name + value = 100: fits
    with pytest.raises(TunnelUsageError, match="101 bytes/1 fields over the limit"):
        encode_head(b"/", [(b"a", b"x" * 99)], 100)
    with pytest.raises(TunnelUsageError, match="fields over the limit"):
        encode_head(b"/", [(b"a", b"")] * (MAX_HEADER_FIELDS + 1), 1 << 20)


@pytest.mark.parametrize("headers", [[(b"a",)], [b"ab"], [(b"a", 1)], [(None, b"v")]])
def test_malformed_headers_are_the_callers_bug(headers: list[object]) -> None:
    with pytest.raises(TunnelUsageError):
        encode_head(b"/", headers, 1024)  # type: ignore[arg-type]


def test_reasons_and_protocols() -> None:
    assert checked_reason("ok") == "ok"
    assert checked_reason("\udc80") == "?"  # made valid UTF-8, never a crash later
    with pytest.raises(TunnelUsageError):
        checked_reason("x" * (MAX_REASON_BYTES + 1))
    assert checked_protocols(("chat", "v2")) == ["chat", "v2"]
    with pytest.raises(TunnelUsageError, match="subprotocol"):
        checked_protocols(("",))


def test_header_pairs_pair_in_order_and_refuse_an_odd_list() -> None:
    assert header_pairs([]) == ()
    assert header_pairs([b"a", b"1", b"b", b"2", b"a", b"3"]) == (
        (b"a", b"1"),
        (b"b", b"2"),
        (b"a", b"3"),
    )
    with pytest.raises(ValueError):
        header_pairs([b"a", b"1", b"b"])
