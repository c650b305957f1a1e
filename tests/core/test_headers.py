"""Unit tests of the pure header rules (RFC 9110 section 7.6); no event loop."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.core import headers as hdr


def H(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


HOP_BY_HOP_SAMPLES = [
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("TE", "trailers"),
    ("Trailer", "Expires"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Proxy-Authenticate", 'Basic realm="proxy"'),
    ("Proxy-Connection", "keep-alive"),
]

END_TO_END = [
    ("Authorization", "Bearer abc.def"),
    ("Cookie", "a=1; b=2"),
    ("X-Custom", "one"),
    ("X-Custom", "two"),
    ("Content-Type", "application/json"),
    ("Content-Length", "12"),
    ("Accept", "text/event-stream"),
]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP_SAMPLES)
def test_fixed_hop_by_hop_headers_are_stripped(name: str, value: str) -> None:
    out = hdr.strip_hop_by_hop(H((name, value), *END_TO_END))
    assert name not in out
    assert list(out.items()) == END_TO_END


@pytest.mark.parametrize("name", [n for n, _ in HOP_BY_HOP_SAMPLES])
def test_hop_by_hop_matching_ignores_case(name: str) -> None:
    out = hdr.strip_hop_by_hop(H((name.upper(), "x"), (name.lower(), "y"), ("X-Keep", "1")))
    assert list(out.items()) == [("X-Keep", "1")]


def test_headers_named_by_connection_are_stripped() -> None:
    incoming = H(
        ("Connection", "close, X-Hop-One"),
        ("connection", " x-hop-two ,, "),
        ("X-Hop-One", "1"),
        ("X-HOP-TWO", "2"),
        ("X-End", "3"),
    )
    assert hdr.connection_tokens(incoming) == {"close", "x-hop-one", "x-hop-two"}
    assert list(hdr.strip_hop_by_hop(incoming).items()) == [("X-End", "3")]


def test_connection_can_name_an_end_to_end_header_and_it_goes() -> None:
    # A sender that lists Cookie in Connection asks for it to stop here.
    out = hdr.strip_hop_by_hop(H(("Connection", "Cookie"), ("Cookie", "a=1"), ("X-A", "b")))
    assert list(out.items()) == [("X-A", "b")]


def test_keep_reinstates_named_hop_by_hop_headers() -> None:
    incoming = H(("Upgrade", "websocket"), ("Connection", "Upgrade"), ("TE", "trailers"))
    out = hdr.strip_hop_by_hop(incoming, keep=("upgrade", "Connection"))
    assert list(out.items()) == [("Upgrade", "websocket"), ("Connection", "Upgrade")]


def test_strip_accepts_a_read_only_proxy_and_does_not_mutate_it() -> None:
    original = H(("Connection", "X-A"), ("X-A", "1"), ("X-B", "2"))
    proxy = CIMultiDictProxy(original)
    out = hdr.strip_hop_by_hop(proxy)
    assert list(out.items()) == [("X-B", "2")]
    assert len(original) == 3
    out.add("X-C", "3")
    assert "X-C" not in original


def test_repeated_end_to_end_headers_keep_every_value_in_order() -> None:
    incoming = H(("Set-Cookie", "a=1; Path=/"), ("X-Mid", "m"), ("Set-Cookie", "b=2; HttpOnly"))
    out = hdr.strip_hop_by_hop(incoming)
    assert out.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert [name for name, _ in out.items()] == ["Set-Cookie", "X-Mid", "Set-Cookie"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((1, 1), "1.1 hopgate"),
        ((1, 0), "1.0 hopgate"),
        ((2, 0), "2 hopgate"),
        ((3, 0), "3 hopgate"),
    ],
)
def test_via_entry_uses_the_received_protocol_version(
    version: tuple[int, int], expected: str
) -> None:
    assert hdr.via_entry(version, "hopgate") == expected


def test_via_is_appended_to_an_existing_chain_as_one_field() -> None:
    headers = H(("Via", "1.0 fred"), ("Via", "1.1 p.example.net"))
    hdr.append_via(headers, (1, 1), "gw-b")
    assert headers.getall("Via") == ["1.0 fred, 1.1 p.example.net, 1.1 gw-b"]


def test_via_is_created_when_absent() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    hdr.append_via(headers, (1, 1), "edge")
    assert headers.getall("Via") == ["1.1 edge"]


def test_forwarded_for_grows_by_one_hop_and_proto_host_keep_the_first() -> None:
    headers = H(
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", " 10.0.0.1 "),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "chat.example.com"),
    )
    hdr.add_forwarded_for(headers, client_ip="127.0.0.1", proto="http", host="127.0.0.1:8000")
    assert headers.getall("X-Forwarded-For") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]
    assert headers.getall("X-Forwarded-Proto") == ["https"]
    assert headers.getall("X-Forwarded-Host") == ["chat.example.com"]


def test_forwarded_headers_are_filled_in_by_the_first_proxy() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    hdr.add_forwarded_for(headers, client_ip="192.0.2.1", proto="https", host="app.test")
    assert dict(headers) == {
        "X-Forwarded-For": "192.0.2.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.test",
    }


def test_forwarded_for_without_a_peer_address_adds_nothing_for_it() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    hdr.add_forwarded_for(headers, client_ip=None, proto="http", host=None)
    assert dict(headers) == {"X-Forwarded-Proto": "http"}


def test_request_headers_for_upstream_full_rule_set() -> None:
    incoming = H(
        ("Host", "gateway.local:8000"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Expect", "100-continue"),
        ("Authorization", "Bearer t"),
        ("Cookie", "sid=1"),
        ("Content-Length", "5"),
        ("X-App", "v"),
    )
    out = hdr.request_headers_for_upstream(
        incoming,
        http_version=(1, 1),
        via_name="hopgate",
        client_ip="127.0.0.1",
        proto="http",
        upstream_host="origin.test:9000",
    )
    assert dict(out) == {
        "Authorization": "Bearer t",
        "Cookie": "sid=1",
        "Content-Length": "5",
        "X-App": "v",
        "Host": "origin.test:9000",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "gateway.local:8000",
        "Via": "1.1 hopgate",
    }
    assert len(out) == 9


def test_request_headers_preserve_host_keeps_the_clients_host() -> None:
    out = hdr.request_headers_for_upstream(
        H(("Host", "public.example")),
        http_version=(1, 0),
        via_name="gw",
        client_ip=None,
        proto="https",
        upstream_host=None,
    )
    assert out.getall("Host") == ["public.example"]
    assert out["Via"] == "1.0 gw"
    assert out["X-Forwarded-Host"] == "public.example"


def test_response_headers_for_downstream() -> None:
    incoming = H(
        ("Content-Length", "3"),
        ("Connection", "close"),
        ("Keep-Alive", "timeout=1"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Via", "1.1 origin-cache"),
        ("Content-Encoding", "gzip"),
    )
    out = hdr.response_headers_for_downstream(incoming, http_version=(1, 1), via_name="hopgate")
    assert list(out.items()) == [
        ("Content-Length", "3"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Encoding", "gzip"),
        ("Via", "1.1 origin-cache, 1.1 hopgate"),
    ]
