"""Request targets: one deliberate answer for each RFC 9112 form, never another host, never 500.

The parser is tested on its own (no loop), then every form is sent as exact
bytes on a raw socket to a running sidecar, client gateway and forward proxy,
with a real origin (the configured upstream) and a second server standing for
"another host" that must never see a request it was not addressed to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from yarl import URL

from gateway.core.targets import (
    AbsoluteForm,
    AsteriskForm,
    AuthorityForm,
    BadTarget,
    OriginForm,
    join_upstream,
    names_this_listener,
    parse_port,
    parse_target,
)
from gateway.server import Gateway

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

# ---------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("method", "raw", "expected"),
    [
        ("GET", "/a%2Fb?x=%41", OriginForm("/a%2Fb?x=%41")),
        ("GET", "//double//slashes/", OriginForm("//double//slashes/")),
        ("GET", "http://h/x?q", AbsoluteForm(URL("http://h/x?q"))),
        ("GET", "HTTP://Evil.Example:81/X", AbsoluteForm(URL("http://evil.example:81/X"))),
        ("GET", "hTTpS://h", AbsoluteForm(URL("https://h/"))),
        ("GET", "http://[::1]:8080/v6", AbsoluteForm(URL("http://[::1]:8080/v6"))),
        ("CONNECT", "example.com:443", AuthorityForm("example.com", 443)),
        ("CONNECT", "[::1]:443", AuthorityForm("::1", 443)),
        ("OPTIONS", "*", AsteriskForm()),
    ],
)
def test_each_form_is_recognised(method: str, raw: str, expected: object) -> None:
    assert parse_target(method, raw) == expected


@pytest.mark.parametrize(
    ("method", "raw", "reason"),
    [
        ("GET", "", "empty"),
        ("GET", "m://127.0.0.1:19099/leak", "not http or https"),
        ("GET", "ftp://h/x", "not http or https"),
        ("GET", "evil:80", "neither origin-form"),
        ("GET", "x/y", "neither origin-form"),
        ("GET", "*", "OPTIONS only"),
        ("GET", "/a\x01b", "control"),
        ("GET", "/a b", "whitespace"),
        ("GET", "/x#frag", "'#'"),
        ("GET", "http://user@h/x", "no user"),
        ("GET", "http:///x", "must name a host"),
        ("GET", "http://h:²/x", "port must be 1-65535"),
        ("GET", "http://h:0/x", "port must be 1-65535"),
        ("GET", "http://h:" + "9" * 5000 + "/x", "port must be 1-65535"),
        ("GET", "/" + "a" * 9000, "longer than"),
        ("CONNECT", "example.com", "has no port"),
        ("CONNECT", "example.com:0", "port must be 1-65535"),
        ("CONNECT", "example.com:\uff14\uff14\uff13", "port must be 1-65535"),  # fullwidth 443
        ("CONNECT", "user@h:443", "not host:port"),
        ("CONNECT", "/path", "not host:port"),
    ],
)
def test_anything_else_is_refused_with_a_reason(method: str, raw: str, reason: str) -> None:
    with pytest.raises(BadTarget, match=reason.replace("*", r"\*")):
        parse_target(method, raw)


@pytest.mark.parametrize("text", ["²", "١٢", "+1", " 1", "1 ", "", "65536", "0", "9" * 5000])
def test_ports_are_ascii_digits_and_bounded(text: str) -> None:
    assert parse_port(text) is None


def test_join_upstream_keeps_the_raw_encoding_under_the_base_path() -> None:
    url = join_upstream(URL("http://v:81/app/"), "/a%2Fb/caf%C3%A9?q=a%20b+c&x=%2F")
    assert str(url) == "http://v:81/app/a%2Fb/caf%C3%A9?q=a%20b+c&x=%2F"
    assert join_upstream(URL("http://v"), "//x//y").raw_path == "//x//y"
    assert join_upstream(URL("http://v"), "/").raw_path_qs == "/"


@pytest.mark.parametrize("target", ["m://127.0.0.1:19099/leak", "127.0.0.1:1/x", "@evil/x", "*"])
def test_join_upstream_never_leaves_the_upstream(target: str) -> None:
    """What string concatenation turned into ``http://vm://...`` (host ``vm``) is refused."""
    with pytest.raises(BadTarget):
        join_upstream(URL("http://v"), target)


@pytest.mark.parametrize("path", ["//evil:1/x", "/@evil/x", "/%2F%2Fevil/x", "/x/..evil//y"])
def test_join_upstream_result_names_the_upstream_host_and_port(path: str) -> None:
    upstream = URL("http://v:8080/base")
    url = join_upstream(upstream, path)
    assert (url.scheme, url.host, url.port) == ("http", "v", 8080)


@pytest.mark.parametrize(
    "path",
    ["/../admin", "/a/../../admin", "/%2e%2e/admin", "/%2E./x", "/a%2F..%2Fb", "/a\\..\\b", "/a/."],
)
def test_a_path_under_a_base_path_may_not_climb_out_of_it(path: str) -> None:
    """``/app/../admin`` is ``/admin`` to an origin that resolves dot-segments."""
    with pytest.raises(BadTarget, match="could leave the upstream's base path /app"):
        join_upstream(URL("http://v/app/"), path)


def test_dots_that_are_not_segments_and_a_root_upstream_pass() -> None:
    for path in ("/a..b", "/..a", "/.well-known/x", "/a/...", "/x?next=/../y"):
        assert join_upstream(URL("http://v/app"), path).raw_path_qs == "/app" + path
    # with no base path there is nothing to climb out of: the origin's root clamps
    assert join_upstream(URL("http://v"), "/../x").raw_path == "/../x"


def test_names_this_listener_only_for_the_socket_address() -> None:
    local = ("127.0.0.1", 8080)
    assert names_this_listener(URL("http://127.0.0.1:8080/x"), tls=False, local=local)
    assert names_this_listener(URL("http://localhost:8080/x"), tls=False, local=local)
    assert not names_this_listener(URL("https://127.0.0.1:8080/x"), tls=False, local=local)
    assert not names_this_listener(URL("http://127.0.0.1:8081/x"), tls=False, local=local)
    assert not names_this_listener(URL("http://evil:8080/x"), tls=False, local=local)
    assert not names_this_listener(URL("http://127.0.0.1:8080/x"), tls=False, local=None)


# -------------------------------------------------------------- on the wire


@dataclass
class Recorder:
    """A real aiohttp server recording every request line it receives."""

    name: str
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(f"{request.method} {request.raw_path}")
        return web.Response(text=f"{self.name}\n")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def exchange(gw: Gateway, data: bytes) -> Answer:
    """Send ``data`` verbatim on a fresh connection; the gateway's whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def request(method: str, target: str, *extra: str) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@dataclass
class Setup:
    upstream: Recorder
    other: Recorder
    other_port: int
    sidecar: Gateway
    client: Gateway
    proxy: Gateway

    def seen(self) -> list[str]:
        return self.upstream.seen + self.other.seen

    def clear(self) -> None:
        self.upstream.seen.clear()
        self.other.seen.clear()


@pytest.fixture
async def setup(make_origin: MakeOrigin, make_gateway: MakeGateway) -> AsyncIterator[Setup]:
    upstream, other = Recorder("upstream"), Recorder("other")
    upstream_url = await make_origin(upstream.handle)
    other_url = URL(await make_origin(other.handle))
    sidecar = await make_gateway("server", {"upstream": upstream_url, "upgrade": "never"})
    client = await make_gateway("client", {"upstream": sidecar.url, "upgrade": "never"})
    proxy = await make_gateway("client", {"upgrade": "never"})
    assert other_url.port is not None
    yield Setup(upstream, other, other_url.port, sidecar, client, proxy)


def gateways(s: Setup) -> dict[str, Gateway]:
    return {"sidecar": s.sidecar, "client": s.client, "proxy": s.proxy}


REFUSED_EVERYWHERE = [
    ("GET", "m://127.0.0.1:{other}/leak"),
    ("GET", "M://127.0.0.1:{other}/leak"),
    ("GET", "ftp://127.0.0.1:{other}/x"),
    ("GET", "*"),
    ("GET", "127.0.0.1:{other}/x"),
    ("GET", "http://user@127.0.0.1:{other}/x"),
    ("GET", "http://127.0.0.1:²/x"),
    ("GET", "/x\x7fy"),
]


@pytest.mark.parametrize(("method", "pattern"), REFUSED_EVERYWHERE)
@pytest.mark.parametrize("which", ["sidecar", "client", "proxy"])
async def test_malformed_targets_get_400_and_reach_nobody(
    setup: Setup, which: str, method: str, pattern: str
) -> None:
    answer = await exchange(
        gateways(setup)[which], request(method, pattern.format(other=setup.other_port))
    )
    assert answer.status == 400
    assert setup.seen() == []


@pytest.mark.parametrize("scheme", ["http", "HTTP", "Http"])
@pytest.mark.parametrize("which", ["sidecar", "client"])
async def test_absolute_form_to_a_gateway_with_an_upstream_is_400_not_an_open_proxy(
    setup: Setup, which: str, scheme: str
) -> None:
    target = f"{scheme}://127.0.0.1:{setup.other_port}/x"
    answer = await exchange(gateways(setup)[which], request("GET", target))
    assert answer.status == 400
    assert b"not an open proxy" in answer.body
    assert setup.seen() == []


@pytest.mark.parametrize("scheme", ["http", "HTTP", "hTtP"])
async def test_a_forward_proxy_takes_absolute_form_in_any_case(setup: Setup, scheme: str) -> None:
    target = f"{scheme}://127.0.0.1:{setup.other_port}/x?a=%41"
    answer = await exchange(setup.proxy, request("GET", target))
    assert answer.status == 200
    assert setup.other.seen == ["GET /x?a=%41"]
    assert setup.upstream.seen == []


@pytest.mark.parametrize("which", ["sidecar", "client", "proxy"])
async def test_status_only_for_origin_form(setup: Setup, which: str) -> None:
    """``HTTP://evil/.hopgate/status`` is not this gateway's status page."""
    gw = gateways(setup)[which]
    answer = await exchange(gw, request("GET", "HTTP://evil.invalid/.hopgate/status"))
    assert b'"upstreams"' not in answer.body
    assert answer.status in (400, 502)  # a forward proxy tries evil.invalid: 502
    own = await exchange(gw, request("GET", "/.hopgate/status"))
    assert own.status == 200 and b'"upstreams"' in own.body
    assert setup.seen() == []


@pytest.mark.parametrize("which", ["sidecar", "client", "proxy"])
async def test_options_asterisk_is_answered_by_the_gateway(setup: Setup, which: str) -> None:
    answer = await exchange(gateways(setup)[which], request("OPTIONS", "*"))
    assert answer.status == 200
    assert "OPTIONS" in answer.headers["allow"]
    assert ("CONNECT" in answer.headers["allow"]) == (which == "proxy")
    assert answer.body == b""
    assert setup.seen() == []  # never forwarded as "OPTIONS /"


@pytest.mark.parametrize("which", ["sidecar", "client"])
async def test_connect_is_for_a_forward_proxy_only(setup: Setup, which: str) -> None:
    answer = await exchange(
        gateways(setup)[which], request("CONNECT", f"127.0.0.1:{setup.other_port}")
    )
    assert answer.status == 403
    assert b"not an open proxy" in answer.body
    assert setup.seen() == []


async def test_absolute_form_naming_the_gateway_itself_is_origin_form(setup: Setup) -> None:
    for host in ("127.0.0.1", "localhost", "LOCALHOST"):
        answer = await exchange(
            setup.sidecar, request("GET", f"http://{host}:{setup.sidecar.port}/own?q=%2F")
        )
        assert answer.status == 200
    assert setup.upstream.seen == ["GET /own?q=%2F"] * 3
    assert setup.other.seen == []
    status = await exchange(
        setup.sidecar, request("GET", f"http://127.0.0.1:{setup.sidecar.port}/.hopgate/status")
    )
    assert status.status == 200 and b'"upstreams"' in status.body


async def test_a_forward_proxy_does_not_forward_to_itself(setup: Setup) -> None:
    answer = await exchange(setup.proxy, request("GET", f"http://127.0.0.1:{setup.proxy.port}/x"))
    assert answer.status == 400
    assert b"forward proxy" in answer.body
    assert setup.seen() == []


async def test_origin_form_goes_under_the_upstream_base_path_as_sent(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    upstream = Recorder("upstream")
    base = await make_origin(upstream.handle)
    sidecar = await make_gateway("server", {"upstream": base + "/app", "upgrade": "never"})
    for target in ("/x?q=%2F", "//double//slash", "/@evil/x", "/a%2Fb"):
        assert (await exchange(sidecar, request("GET", target))).status == 200
    assert upstream.seen == [
        "GET /app/x?q=%2F",
        "GET /app//double//slash",
        "GET /app/@evil/x",
        "GET /app/a%2Fb",
    ]


async def test_glued_scheme_cannot_move_the_request_to_another_host(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    """Before: ``--upstream http://127.0.0.`` + ``1:PORT/leak`` reached 127.0.0.1:PORT."""
    other = Recorder("other")
    other_port = URL(await make_origin(other.handle)).port
    sidecar = await make_gateway("server", {"upstream": "http://127.0.0.", "upgrade": "never"})
    for target in (f"1:{other_port}/leak", f"m://127.0.0.1:{other_port}/leak"):
        answer = await exchange(sidecar, request("GET", target))
        assert answer.status == 400
    assert other.seen == []


# ------------------------------------------------------- numbers at the edge


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: \u00b2",
        "Content-Length: \u0661",
        "Content-Length: " + "9" * 5000,
        "Content-Length: -1",
        "Content-Length: 1, 2",
        "Content-Length: +5",
    ],
)
async def test_bad_numbers_in_headers_are_4xx_never_500(setup: Setup, extra: str) -> None:
    answer = await exchange(setup.sidecar, request("POST", "/x", extra))
    assert 400 <= answer.status < 500
    assert setup.seen() == []


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:\u00b2/x", "http://127.0.0.1:\u0661\u0662/x", "http://h:" + "9" * 5000],
)
async def test_bad_ports_in_targets_are_400(setup: Setup, target: str) -> None:
    for gw in gateways(setup).values():
        assert (await exchange(gw, request("GET", target))).status == 400
    assert setup.seen() == []
