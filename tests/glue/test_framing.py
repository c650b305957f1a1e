"""Framing of tunnelled HTTP: no request smuggling through a tunnel OPEN, no lying responses.

A hostile hop peer speaks the tunnel protocol by hand (``rawpeers.RawTunnel``)
to a real server gateway whose origin is a raw socket that records exactly
what it parsed (``rawpeers.RawOrigin``: it answers after the head and then
skips the body the head announced, as many origins do, so a lying length
shows up as a broken next request). Each variant must be refused or framed
honestly, and the next legit request through the same gateway must get its
own answer.

The response direction: a lying answering peer (``rawpeers.RawAnswerer``)
behind a real opening ``TunnelLink`` (and behind a relaying middle link);
the downstream client must never get a response whose length lies.

Last, the origin connections a session (and the gateway) may hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.core.tunnel import ResetCode, ResponseReceived, StreamReset
from gateway.glue.link import TunnelLink
from gateway.server import Gateway
from gateway.status import GatewayStats
from gateway.transports.connector import SessionConnector
from gateway.transports.endpoint import SessionServer
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings
from tests.conftest import MakeGateway
from tests.glue.chain import forwarder_for, serve
from tests.glue.rawpeers import RawAnswerer, RawOrigin, RawTunnel, Scripted, raw_session
from tests.helpers import until

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------ requests: a hostile opener


@pytest.fixture
async def raw_origin() -> AsyncIterator[RawOrigin]:
    origin = RawOrigin()
    await origin.start()
    yield origin
    await origin.close()


@pytest.fixture(params=["server", "relay"])
async def attacked(
    request: pytest.FixtureRequest, make_gateway: MakeGateway, raw_origin: RawOrigin
) -> Gateway:
    """The gateway the attacker opens a session to: the origin's sidecar, or a middle
    gateway relaying its streams over its own session to that sidecar."""
    server = await make_gateway("server", {"upstream": raw_origin.url})
    if request.param == "server":
        return server
    middle = await make_gateway("server", {"upstream": server.url})
    async with aiohttp.ClientSession() as http, asyncio.timeout(15):
        while (link := middle.link()) is None or link.tunnel() is None:
            async with http.get(middle.url + "/legit/warmup") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.05)
    return middle


async def legit_answers(gateway: Gateway, raw: RawTunnel, origin: RawOrigin, n: int = 3) -> None:
    """``n`` legit requests each way (plain HTTP, tunnel stream) get their own answer."""
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            async with http.get(f"{gateway.url}/legit/plain/{i}") as resp:
                assert resp.status == 200
                assert (await resp.text()).startswith(f"GET /legit/plain/{i} ")
            answer = await raw.answer(
                raw.open("GET", f"/legit/tunnel/{i}".encode(), [("Host", "x")])
            )
            assert answer.status == 200, answer
            assert bytes(answer.body).startswith(f"GET /legit/tunnel/{i} ".encode())
    assert origin.bad == [], origin.bad  # nothing ever parsed out of a lying body


def no_lie_at_origin(origin: RawOrigin) -> None:
    """Every request the origin parsed is one a client sent, framed as it claims."""
    assert origin.bad == [], origin.bad
    for seen in origin.requests:
        assert seen.target.startswith(("/legit/", "/honest", "/attack", "/hold/")), seen
        assert seen.header("Via"), seen  # it came through the gateway, not out of a body
        assert len(seen.header("Content-Length")) <= 1 and not (
            seen.header("Content-Length") and seen.header("Transfer-Encoding")
        ), seen


# (name, method, headers, body chunks or None (no body), end after the body)
SMUGGLING: list[tuple[str, str, list[tuple[str, bytes]], list[bytes] | None]] = [
    ("CL with no body", "GET", [("Content-Length", b"60")], None),
    ("CL larger than body", "POST", [("Content-Length", b"100")], [b"x" * 40]),
    ("CL smaller than body", "POST", [("Content-Length", b"10")], [b"y" * 50]),
    ("CL smaller, split", "POST", [("Content-Length", b"10")], [b"y" * 6, b"GET /x HTTP/1.1"]),
    ("two CLs", "POST", [("Content-Length", b"5"), ("Content-Length", b"6")], [b"12345"]),
    ("CL list", "POST", [("Content-Length", b"5, 5")], [b"12345"]),
    ("CL non-digit", "POST", [("Content-Length", b"5x")], [b"12345"]),
    ("CL signed", "POST", [("Content-Length", b"+5")], [b"12345"]),
    ("CL unicode digit", "POST", [("Content-Length", "\u0665".encode())], [b"12345"]),
    ("CL superscript", "POST", [("Content-Length", "⁵".encode())], [b"12345"]),
    ("CL huge", "POST", [("Content-Length", b"9" * 40)], [b"12345"]),
    (
        "TE chunked with CL",
        "POST",
        [("Transfer-Encoding", b"chunked"), ("Content-Length", b"5")],
        [b"12345"],
    ),
    ("TE with no body", "GET", [("Transfer-Encoding", b"chunked")], None),
    ("TE gzip", "POST", [("Transfer-Encoding", b"gzip")], [b"12345"]),
    (
        "CL hidden by Connection",
        "GET",
        [("Connection", b"content-length"), ("Content-Length", b"60")],
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "headers", "body"), SMUGGLING, ids=[s[0] for s in SMUGGLING]
)
async def test_a_lying_open_never_reaches_the_origin_as_a_lie(
    attacked: Gateway,
    raw_origin: RawOrigin,
    name: str,
    method: str,
    headers: list[tuple[str, bytes]],
    body: list[bytes] | None,
) -> None:
    gateway = attacked
    async with raw_session(gateway.url) as raw:
        await legit_answers(gateway, raw, raw_origin, n=1)  # a pooled connection to abuse
        before = len(raw_origin.requests)
        answer = await raw.answer(
            raw.open(method, b"/attack", [("Host", "x"), *headers], body=body)
        )
        assert answer.reset is not None, (name, answer)
        assert answer.reset.code == ResetCode.PROTOCOL, answer.reset
        attacks = raw_origin.requests[before:]
        for seen in attacks:  # a body that broke its length mid-way: at most its head got there
            assert len(seen.body) <= int(seen.header("Content-Length")[0]), seen
            await until(lambda s=seen: s.conn not in raw_origin.live_connections, "conn closed")  # type: ignore[misc]
        await legit_answers(gateway, raw, raw_origin)
        for seen in attacks:  # never reused after the broken body
            assert [s for s in raw_origin.requests if s.conn == seen.conn][-1] is seen
        assert not raw.hop.closed, "a refused stream must not cost the session"
    no_lie_at_origin(raw_origin)


HONEST: list[tuple[str, str, list[tuple[str, bytes]], list[bytes] | None, str | None, bytes]] = [
    # name, method, headers, body, framing header the origin gets, body it gets
    ("GET no body", "GET", [], None, None, b""),
    ("GET CL 0", "GET", [("Content-Length", b"0")], None, "Content-Length: 0", b""),
    (
        "POST CL",
        "POST",
        [("Content-Length", b"10")],
        [b"abcd", b"efghij"],
        "Content-Length: 10",
        b"abcdefghij",
    ),
    (
        "POST CL twice",
        "POST",
        [("Content-Length", b"3"), ("Content-Length", b"3")],
        [b"abc"],
        "Content-Length: 3",
        b"abc",
    ),
    ("POST no length", "POST", [], [b"ab", b"cd"], "Transfer-Encoding: chunked", b"abcd"),
    (
        "POST TE chunked",
        "POST",
        [("Transfer-Encoding", b"chunked")],
        [b"abc"],
        "Transfer-Encoding: chunked",
        b"abc",
    ),
    ("POST CL 0 empty", "POST", [("Content-Length", b"0")], [], "Content-Length: 0", b""),
]


@pytest.mark.parametrize(
    ("name", "method", "headers", "body", "framing", "received"), HONEST, ids=[s[0] for s in HONEST]
)
async def test_honest_opens_are_framed_by_the_gateway(
    attacked: Gateway,
    raw_origin: RawOrigin,
    name: str,
    method: str,
    headers: list[tuple[str, bytes]],
    body: list[bytes] | None,
    framing: str | None,
    received: bytes,
) -> None:
    gateway = attacked
    async with raw_session(gateway.url) as raw:
        answer = await raw.answer(
            raw.open(method, b"/honest", [("Host", "x"), *headers], body=body)
        )
        assert answer.status == 200, answer
        [seen] = [s for s in raw_origin.requests if s.target == "/honest"]
        assert seen.body == received
        fields = [
            f"{k}: {v}"
            for k, v in seen.headers
            if k.lower() in ("content-length", "transfer-encoding")
        ]
        assert fields == ([framing] if framing else []), fields
        await legit_answers(gateway, raw, raw_origin, n=1)
    no_lie_at_origin(raw_origin)


async def test_a_body_ending_early_closes_its_origin_connection(
    make_gateway: MakeGateway, raw_origin: RawOrigin
) -> None:
    """The origin got part of a declared body: that connection is closed, never pooled."""
    gateway = await make_gateway("server", {"upstream": raw_origin.url})
    async with raw_session(gateway.url) as raw:
        await legit_answers(gateway, raw, raw_origin, n=1)
        sid = raw.open(
            "POST",
            b"/hold/attack",
            [("Host", "x"), ("Content-Length", b"100")],
            body=[b"z" * 40],
            end=False,
        )
        await until(lambda: len(raw_origin.requests) == 3, "the head at the origin")
        attack = raw_origin.requests[-1]
        await until(
            lambda: raw_origin.received[attack.conn].endswith(b"z" * 40), "40 body bytes there"
        )
        conns = raw_origin.connections
        raw.tunnel.end(sid)  # 60 bytes short
        raw.flush()
        answer = await raw.answer(sid)
        assert answer.reset is not None and answer.reset.code == ResetCode.PROTOCOL, answer
        assert "40 of" in answer.reset.reason
        await until(lambda: attack.conn not in raw_origin.live_connections, "conn closed")
        await legit_answers(gateway, raw, raw_origin)
        assert raw_origin.connections > conns
        assert [s for s in raw_origin.requests if s.conn == attack.conn][-1] is attack
    no_lie_at_origin(raw_origin)


async def test_a_peer_reset_mid_body_sends_no_end_of_chunked_body(
    make_gateway: MakeGateway, raw_origin: RawOrigin
) -> None:
    gateway = await make_gateway("server", {"upstream": raw_origin.url})
    async with raw_session(gateway.url) as raw:
        sid = raw.open("POST", b"/hold/attack", [("Host", "x")], body=[b"q" * 30], end=False)
        await until(lambda: len(raw_origin.requests) == 1, "the head at the origin")
        [attack] = raw_origin.requests
        await until(lambda: b"q" * 30 in raw_origin.received[attack.conn], "the chunk there")
        raw.tunnel.reset(sid, ResetCode.CANCEL, "client went away")
        raw.flush()
        await until(lambda: attack.conn not in raw_origin.live_connections, "conn closed")
        assert not raw_origin.received[attack.conn].endswith(b"0\r\n\r\n")
        await legit_answers(gateway, raw, raw_origin, n=1)
    no_lie_at_origin(raw_origin)


# --------------------------------------------- responses: a lying answerer


LIES: dict[bytes, Scripted] = {
    b"/ok": Scripted(headers=(("Content-Length", "5"),), body=(b"hello",)),
    b"/chunked": Scripted(headers=(("Transfer-Encoding", "chunked"),), body=(b"hel", b"lo")),
    b"/more": Scripted(
        headers=(("Content-Length", "5"),), body=(b"hello", b"HTTP/1.1 200 OK\r\n\r\n")
    ),
    b"/less": Scripted(headers=(("Content-Length", "10"),), body=(b"hello",)),
    b"/nobody": Scripted(headers=(("Content-Length", "60"),), body=None),
    b"/two": Scripted(headers=(("Content-Length", "5"), ("Content-Length", "6")), body=(b"hello",)),
    b"/bad": Scripted(headers=(("Content-Length", "5x"),), body=(b"hello",)),
    b"/te-cl": Scripted(
        headers=(("Transfer-Encoding", "chunked"), ("Content-Length", "5")), body=(b"hello",)
    ),
    b"/interim": Scripted(status=101, headers=(("Upgrade", "evil"),), body=None),
}


async def response_chain(
    *, relay: bool, cleanups: list[Callable[[], Awaitable[Any]]]
) -> tuple[str, RawAnswerer | None, list[RawAnswerer]]:
    """client -> entry server (opener link) [-> middle relay] -> a lying RawAnswerer."""
    settings = SessionSettings(reprobe_initial=3600, reprobe_max=3600, close_timeout=2)
    answerers: list[RawAnswerer] = []
    liar = SessionServer(settings, on_session=lambda hop: answerers.append(RawAnswerer(hop, LIES)))
    liar_runner, liar_url = await serve(liar.handle)
    cleanups += [liar_runner.cleanup, liar.close]

    async def open_link(url: str, name: str) -> TunnelLink:
        config = Config(role="server", upstream=URL(url))
        forwarder = forwarder_for(config, GatewayStats(role="server", mode="sidecar"))
        http = aiohttp.ClientSession()
        connector = SessionConnector(URL(url), http, settings)
        hop = await connector.connect()
        link = TunnelLink(hop, opener=True, forwarder=forwarder, upstream=URL(url))
        cleanups.extend([forwarder.client.close, http.close, connector.close, link.close])
        return link

    upstream_url = liar_url
    if relay:
        onward = await open_link(liar_url, "onward")
        config = Config(role="server", upstream=URL(liar_url))
        forwarder = forwarder_for(config, GatewayStats(role="server", mode="sidecar"))
        middle_links: list[TunnelLink] = []

        def on_session(hop: HopSession) -> None:
            middle_links.append(
                TunnelLink(
                    hop,
                    opener=False,
                    forwarder=forwarder,
                    upstream=URL(liar_url),
                    next_hop=lambda: onward,
                    peer_ip="127.0.0.1",
                )
            )

        middle = SessionServer(settings, on_session=on_session)
        middle_runner, upstream_url = await serve(middle.handle)
        cleanups += [forwarder.client.close, middle_runner.cleanup, middle.close]
    entry_link = await open_link(upstream_url, "entry")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await entry_link.forward(request, request.raw_path, origin_key="liar")

    runner, url = await serve(handle)
    cleanups.append(runner.cleanup)
    return url, None, answerers


async def raw_get(url: str, path: str, method: str = "GET") -> tuple[bytes, bool]:
    """Send one request on a fresh connection; (everything received, closed by the server?)."""
    parsed = URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = bytearray()
    try:
        async with asyncio.timeout(5):
            while not complete(bytes(data), method):
                chunk = await reader.read(65536)
                if not chunk:
                    return bytes(data), True
                data += chunk
        try:  # a complete response: does the connection stay open?
            async with asyncio.timeout(0.2):
                return bytes(data + await reader.read(65536)), True
        except TimeoutError:
            return bytes(data), False
    finally:
        writer.close()


def complete(data: bytes, method: str) -> bool:
    """``data`` holds a whole response (as its head frames it)."""
    if b"\r\n\r\n" not in data:
        return False
    _status, fields, body = split_response(data)
    if method == "HEAD":
        return True
    if "content-length" in fields:
        return len(body) >= int(fields["content-length"][0])
    return body.endswith(b"0\r\n\r\n")


def split_response(data: bytes) -> tuple[bytes, dict[str, list[str]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.decode().partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return status, fields, body


@pytest.fixture
async def cleanups() -> AsyncIterator[list[Callable[[], Awaitable[Any]]]]:
    todo: list[Callable[[], Awaitable[Any]]] = []
    yield todo
    for cleanup in reversed(todo):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await cleanup()


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relayed"])
async def test_a_lying_response_never_reaches_the_client_as_a_lie(
    relay: bool, cleanups: list[Callable[[], Awaitable[Any]]]
) -> None:
    url, _, _answerers = await response_chain(relay=relay, cleanups=cleanups)

    data, closed = await raw_get(url, "/ok")
    status, fields, body = split_response(data)
    assert status.startswith(b"HTTP/1.1 200") and fields["content-length"] == ["5"]
    assert body == b"hello" and not closed  # honest: the connection stays usable

    data, closed = await raw_get(url, "/chunked")
    status, fields, body = split_response(data)
    assert fields["transfer-encoding"] == ["chunked"] and "content-length" not in fields
    assert body == b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n" and not closed  # framed anew by us

    # Over its length: at most the declared bytes (a relay's reset drops what it had
    # queued), then the connection is cut; the excess never.
    data, closed = await raw_get(url, "/more")
    status, fields, body = split_response(data)
    assert fields["content-length"] == ["5"] and b"hello".startswith(body) and closed, data
    if not relay:
        assert body == b"hello"

    # Short of its length: cut after what came, never a complete-looking body.
    data, closed = await raw_get(url, "/less")
    status, fields, body = split_response(data)
    assert fields["content-length"] == ["10"] and b"hello".startswith(body) and closed, data

    # A head that lies or is invalid: a clean 502 instead.
    for path in ("/nobody", "/two", "/bad", "/te-cl", "/interim"):
        data, _closed = await raw_get(url, path)
        status, fields, body = split_response(data)
        assert status.startswith(b"HTTP/1.1 502"), (path, data)
        assert int(fields["content-length"][0]) == len(body), (path, data)

    # HEAD: the length describes the GET's body; nothing follows, the connection stays.
    data, closed = await raw_get(url, "/nobody", method="HEAD")
    status, fields, body = split_response(data)
    assert status.startswith(b"HTTP/1.1 200") and fields["content-length"] == ["60"], data
    assert body == b"" and not closed

    async with aiohttp.ClientSession() as http, http.get(url + "/ok") as resp:
        assert resp.status == 200 and await resp.read() == b"hello"


# ------------------------------------------------- origin connections held


async def test_one_session_holds_at_most_session_connections_origin_requests(
    make_gateway: MakeGateway, raw_origin: RawOrigin
) -> None:
    cap = 3
    gateway = await make_gateway("server", {"upstream": raw_origin.url, "session_connections": cap})
    async with raw_session(gateway.url) as raw, raw_session(gateway.url) as other:
        sids = [raw.open("GET", f"/hold/{i}".encode(), [("Host", "x")]) for i in range(cap + 5)]
        await until(lambda: raw_origin.held == cap, f"{cap} held polls at the origin")
        await asyncio.sleep(0.3)
        assert raw_origin.held == raw_origin.max_held == cap
        assert all(sid not in raw.answers for sid in sids), "waiting streams are not refused"
        # A stream reset while it waits leaves the queue: the origin never sees it.
        waiting = sids[-1]
        raw.tunnel.reset(waiting, ResetCode.CANCEL, "client went away")
        raw.flush()
        # The cap is per session: another session's request goes through at once.
        answer = await other.answer(other.open("GET", b"/legit/other", [("Host", "x")]))
        assert answer.status == 200
        raw_origin.release.set()
        started = time.monotonic()
        for sid in sids[:-1]:
            answer = await raw.answer(sid)
            assert answer.status == 200, answer
        assert time.monotonic() - started < 5
    assert raw_origin.max_held == cap
    held = [t for t in raw_origin.paths() if t.startswith("/hold/")]
    assert sorted(held) == sorted(f"/hold/{i}" for i in range(cap + 4))


async def test_sessions_of_one_address_share_a_quarter_of_max_connections(
    make_gateway: MakeGateway, raw_origin: RawOrigin
) -> None:
    """Many sessions from one address cannot take every origin connection from others."""
    gateway = await make_gateway("server", {"upstream": raw_origin.url, "max_connections": 8})
    share = 8 // 4
    async with raw_session(gateway.url) as one, raw_session(gateway.url) as two:
        waiting = [
            raw.open("GET", f"/hold/{n}-{i}".encode(), [("Host", "x")])
            for n, raw in enumerate((one, two))
            for i in range(3)
        ]
        await until(lambda: raw_origin.held == share, f"{share} held polls at the origin")
        await asyncio.sleep(0.3)
        assert raw_origin.max_held == share, "one address took more than its share"
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/legit/plain") as resp:
            assert resp.status == 200  # the rest of --max-connections is still there
        raw_origin.release.set()
        for raw, sids in ((one, waiting[:3]), (two, waiting[3:])):
            for sid in sids:
                assert (await raw.answer(sid)).status == 200
    assert raw_origin.max_held == share


async def test_requests_beyond_max_connections_wait_then_get_504(
    make_gateway: MakeGateway, raw_origin: RawOrigin
) -> None:
    gateway = await make_gateway(
        "server", {"upstream": raw_origin.url, "max_connections": 2, "connect_timeout": 1.0}
    )
    async with aiohttp.ClientSession() as http, raw_session(gateway.url) as raw:
        held = [asyncio.create_task(http.get(f"{gateway.url}/hold/{i}")) for i in range(2)]
        await until(lambda: raw_origin.active == 2, "two held polls")
        started = time.monotonic()
        async with http.get(f"{gateway.url}/legit/late") as resp:
            assert resp.status == 504, await resp.text()
            assert "did not answer in time" in await resp.text()
        waited = time.monotonic() - started
        assert 0.8 < waited < 5, waited
        answer = await raw.answer(raw.open("GET", b"/legit/tunnel-late", [("Host", "x")]))
        assert isinstance(answer.head, StreamReset) and answer.head.code == ResetCode.TIMEOUT
        assert raw_origin.max_active == 2
        raw_origin.release.set()
        for task in held:
            resp = await task
            assert resp.status == 200
            resp.release()
        answer = await raw.answer(raw.open("GET", b"/legit/after", [("Host", "x")]))
        assert isinstance(answer.head, ResponseReceived) and answer.status == 200
