"""Functional tests of plain HTTP forwarding: real origins, real gateways, real sockets.

Each test builds its own chain (client -> [client gateway ->] server gateway
-> origin) on loopback.  Where the exact bytes on the wire matter (hop-by-hop
headers, odd paths, ``Expect``) the client is a raw socket; elsewhere it is
an ``aiohttp.ClientSession`` with nothing added automatically.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.server import Gateway
from tests.helpers import until
from tests.processes import free_port

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

# ------------------------------------------------------------------- helpers


async def echo(request: web.Request) -> web.Response:
    """Reports exactly what the origin received, as JSON."""
    body = await request.read()
    info = {
        "method": request.method,
        "raw_path": request.raw_path,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    return web.Response(
        text=json.dumps(info),
        content_type="application/json",
        headers={"X-Echo-Method": request.method, "X-Echo-Body": body.decode("latin-1")[:200]},
    )


def header_pairs(info: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in info["headers"]]


def header_values(info: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *_: Any, **__: Any) -> io.BytesIO:
        return self._file


def parse_response(data: bytes, method: str = "GET") -> RawResponse:
    response = http.client.HTTPResponse(_Bytes(data), method=method)  # type: ignore[arg-type]
    response.begin()
    return RawResponse(response.status, list(response.getheaders()), response.read())


async def raw_exchange(base: str, request: bytes, *, method: str = "GET") -> RawResponse:
    """Send ``request`` verbatim on a fresh connection; read until the server closes."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 15)
    finally:
        writer.close()
    return parse_response(data, method)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=45)
    ) as session:
        yield session


async def two_gateways(
    make_gateway: MakeGateway, origin: str, *, upgrade: str = "auto", **server_settings: Any
) -> tuple[Gateway, Gateway]:
    """client gateway -> server gateway -> origin (the hop upgrades unless ``never``)."""
    server = await make_gateway(
        "server",
        {"upstream": origin, "via_name": "gw-server", "upgrade": upgrade, **server_settings},
    )
    client_gw = await make_gateway(
        "client", {"upstream": server.url, "via_name": "gw-client", "upgrade": upgrade}
    )
    return client_gw, server


# -------------------------------------------------------------- long polling


async def test_long_poll_held_30s_through_two_gateways(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    """Two polls held 30 s side by side; quick requests keep flowing meanwhile."""
    held = 0
    both_held = asyncio.Event()

    async def poll(request: web.Request) -> web.Response:
        nonlocal held
        held += 1
        if held == 2:
            both_held.set()
        await asyncio.sleep(30)
        return web.Response(text=f"news for {request.query['id']}")

    app = web.Application()
    app.router.add_get("/poll", poll)
    app.router.add_route("*", "/echo", echo)
    origin = await make_origin(app)
    entry, _ = await two_gateways(make_gateway, origin)

    async def one_poll(poll_id: str) -> tuple[str, float]:
        started = time.monotonic()
        async with client.get(f"{entry.url}/poll?id={poll_id}") as resp:
            assert resp.status == 200
            return await resp.text(), time.monotonic() - started

    polls = asyncio.gather(one_poll("a"), one_poll("b"))
    await asyncio.wait_for(both_held.wait(), 5)
    quick: list[float] = []
    for i in range(10):
        started = time.monotonic()
        async with client.post(f"{entry.url}/echo", data=f"ping {i}".encode()) as resp:
            assert (await resp.json())["body_len"] == len(f"ping {i}")
        quick.append(time.monotonic() - started)
        await asyncio.sleep(0.5)
    (text_a, elapsed_a), (text_b, elapsed_b) = await polls
    print(f"held polls: {elapsed_a:.2f}s {elapsed_b:.2f}s; quick requests max {max(quick):.3f}s")
    assert text_a == "news for a"
    assert text_b == "news for b"
    assert 30 <= elapsed_a < 36
    assert 30 <= elapsed_b < 36
    assert max(quick) < 1.0


async def test_default_upstream_timeout_is_long_enough_for_held_polls(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway("server", {"upstream": await make_origin(echo)})
    assert gw.config.upstream_timeout >= 600


# ------------------------------------------------------------------ streaming


async def test_sse_events_arrive_one_by_one(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    """The origin sends event N+1 only after the client has read event N via the gateways."""
    acks = [asyncio.Event() for _ in range(5)]

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, ack in enumerate(acks):
            await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
            await asyncio.wait_for(ack.wait(), 10)
        return resp

    entry, _ = await two_gateways(make_gateway, await make_origin(events))
    async with client.get(f"{entry.url}/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert "Content-Length" not in resp.headers
        for i, ack in enumerate(acks):
            event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert event == f"id: {i}\ndata: event {i}\n\n".encode()
            ack.set()
        assert await resp.read() == b""


async def test_forever_frame_chunks_arrive_one_by_one(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    acks = [asyncio.Event() for _ in range(4)]

    async def frame(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"<html><body>\n" + b" " * 256)
        for i, ack in enumerate(acks):
            await resp.write(f"<script>parent.push({i})</script>\n".encode())
            await asyncio.wait_for(ack.wait(), 10)
        await resp.write(b"</body></html>")
        return resp

    entry, _ = await two_gateways(make_gateway, await make_origin(frame))
    async with client.get(f"{entry.url}/frame") as resp:
        assert "Content-Length" not in resp.headers
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        seen = b""
        for i, ack in enumerate(acks):
            want = f"<script>parent.push({i})</script>\n".encode()
            while want not in seen:
                seen += await asyncio.wait_for(resp.content.readany(), 5)
            assert f"push({i + 1})".encode() not in seen
            ack.set()
        rest = await resp.read()
        assert (seen + rest).endswith(b"</body></html>")


async def test_request_body_is_streamed_to_the_origin_as_it_arrives(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    """The client sends chunk N+1 only after the origin has read chunk N."""
    got = [asyncio.Event() for _ in range(4)]

    async def upload(request: web.Request) -> web.Response:
        received = b""
        for i, event in enumerate(got):
            want = f"part-{i};".encode()
            while not received.endswith(want):
                received += await asyncio.wait_for(request.content.readany(), 10)
            event.set()
        received += await request.content.read()
        return web.Response(body=received)

    async def body() -> AsyncIterator[bytes]:
        for i, event in enumerate(got):
            yield f"part-{i};".encode()
            await asyncio.wait_for(event.wait(), 5)

    entry, _ = await two_gateways(make_gateway, await make_origin(upload))
    async with client.post(f"{entry.url}/upload", data=body()) as resp:
        assert resp.status == 200
        assert await resp.read() == b"part-0;part-1;part-2;part-3;"


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway("server", {"upstream": await make_origin(echo)})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        response = parse_response(await asyncio.wait_for(reader.read(-1), 5), "POST")
    finally:
        writer.close()
    assert response.status == 200
    info = json.loads(response.body)
    assert info["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert header_values(info, "Expect") == []


# ------------------------------------------------------------- client abort


@pytest.mark.parametrize("hops", [1, 2])
@pytest.mark.parametrize("phase", ["held", "mid-body"])
async def test_client_abort_cancels_the_upstream_request(
    make_origin: MakeOrigin, make_gateway: MakeGateway, hops: int, phase: str
) -> None:
    started = asyncio.Event()
    ended = asyncio.Event()
    how: list[str] = []

    async def hold(request: web.Request) -> web.StreamResponse:
        try:
            if phase == "mid-body":
                resp = web.StreamResponse()
                await resp.prepare(request)
                await resp.write(b"first chunk\n")
            started.set()
            for _ in range(600):
                await asyncio.sleep(0.1)
                if phase == "mid-body":
                    await resp.write(b".")
            return web.Response(text="too late")
        except asyncio.CancelledError:
            how.append("cancelled")
            raise
        except ConnectionError as exc:
            how.append(type(exc).__name__)
            raise
        finally:
            ended.set()

    origin = await make_origin(hold)
    if hops == 2:
        entry, server = await two_gateways(make_gateway, origin)
        gateways = [entry, server]
    else:
        entry = await make_gateway("server", {"upstream": origin})
        gateways = [entry]

    reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    if phase == "mid-body":
        assert b"first chunk" in await asyncio.wait_for(reader.readuntil(b"first chunk\n"), 5)
    assert [gw.stats.active_streams for gw in gateways] == [1] * hops
    writer.close()
    aborted = time.monotonic()
    await asyncio.wait_for(ended.wait(), 2)
    print(f"origin request ended {time.monotonic() - aborted:.3f}s after the client left: {how}")
    assert how and how[0] in ("cancelled", "ClientConnectionResetError", "ConnectionResetError")
    for _ in range(50):
        if all(gw.stats.active_streams == 0 for gw in gateways):
            break
        await asyncio.sleep(0.02)
    assert [gw.stats.active_streams for gw in gateways] == [0] * hops


# ------------------------------------------------------------------- errors


async def test_refused_upstream_is_a_502_naming_it_in_the_log_only(
    make_gateway: MakeGateway, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    gw = await make_gateway("server", {"upstream": f"http://127.0.0.1:{port}"})
    with caplog.at_level(logging.WARNING, logger="hopgate.forward"):
        async with client.get(f"{gw.url}/anything") as resp:
            body = await resp.text()
            assert resp.status == 502
            assert resp.content_type == "text/plain"
    assert body == (
        "hopgate: could not connect to the upstream: ConnectionRefusedError "
        "(Connection refused) (the gateway's log has the details)\n"
    )
    assert str(port) not in body  # where the gateway forwards is nobody else's business
    assert f"could not connect to upstream http://127.0.0.1:{port}" in caplog.text
    state = gw.stats.as_json()["upstreams"][0]
    assert state["errors"] == 1


async def test_refused_upstream_behind_a_second_gateway_reaches_the_client(
    make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    entry, _ = await two_gateways(make_gateway, f"http://127.0.0.1:{port}")
    async with client.get(f"{entry.url}/x") as resp:
        assert resp.status == 502
        body = await resp.text()
    assert "could not connect to the upstream: ConnectionRefusedError" in body
    assert str(port) not in body


async def test_slow_upstream_is_a_504(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(text="late")

    origin = await make_origin(slow)
    gw = await make_gateway("server", {"upstream": origin, "upstream_timeout": 0.5})
    started = time.monotonic()
    async with client.get(f"{gw.url}/slow") as resp:
        body = await resp.text()
        assert resp.status == 504
    assert time.monotonic() - started < 3
    assert "the upstream did not answer in time" in body and origin not in body
    assert "read timeout 0.5s" in body


async def _raw_origin(script: bytes, close_after: float = 0.0) -> tuple[str, asyncio.Server]:
    """An origin that reads one request head, writes ``script`` and drops the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(script)
        await writer.drain()
        await asyncio.sleep(close_after)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


@pytest.mark.parametrize(
    "script",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_origin_dying_mid_body_truncates_visibly(
    make_gateway: MakeGateway, client: aiohttp.ClientSession, script: bytes
) -> None:
    origin, server = await _raw_origin(script, close_after=0.2)
    try:
        entry, _ = await two_gateways(make_gateway, origin)
        async with client.get(f"{entry.url}/stream") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    finally:
        server.close()


async def test_origin_closing_without_answering_is_a_502_and_not_retried(
    make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    """A request that reached the origin is never sent to it twice, even a GET."""
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen += 1
            if b"/first" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                continue
            writer.transport.abort()
            return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        gw = await make_gateway("server", {"upstream": origin})
        async with client.get(f"{gw.url}/first") as resp:
            assert await resp.read() == b"ok"
        async with client.get(f"{gw.url}/second") as resp:
            body = await resp.text()
            assert resp.status == 502
        assert "closed the connection without answering" in body
        assert seen == 2
    finally:
        server.close()


# ------------------------------------------------------------------ headers


#: What ``--upgrade auto`` adds to a forwarded request: the hop-by-hop
#: discovery mark (DESIGN.md layer 1), which a legacy origin ignores.
MARK = [("Hopgate", "v=1"), ("Connection", "Hopgate")]


@pytest.mark.parametrize("upgrade", ["never", "auto"])
async def test_hop_by_hop_headers_are_removed_and_nothing_is_added(
    upgrade: str, make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = await make_origin(echo)
    gw = await make_gateway("server", {"upstream": origin, "upgrade": upgrade})
    request = (
        b"POST /h HTTP/1.1\r\n"
        b"Host: front.example:8000\r\n"
        b"Connection: close, X-Hop-A, x-hop-b\r\n"
        b"X-Hop-A: a\r\n"
        b"X-Hop-B: b\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic cHJveHk6cHc=\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Authorization: Bearer end-to-end\r\n"
        b"Cookie: sid=abc; theme=dark\r\n"
        b"X-Custom: one\r\n"
        b"X-Custom: two\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
        b"body"
    )
    response = await raw_exchange(gw.url, request, method="POST")
    assert response.status == 200
    info = json.loads(response.body)
    port = URL(origin).port
    assert sorted(header_pairs(info)) == sorted(
        [
            ("Host", f"127.0.0.1:{port}"),
            ("Authorization", "Bearer end-to-end"),
            ("Cookie", "sid=abc; theme=dark"),
            ("X-Custom", "one"),
            ("X-Custom", "two"),
            ("Content-Length", "4"),
            ("X-Forwarded-For", "127.0.0.1"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "front.example:8000"),
            ("Via", "1.1 hopgate"),
            *(MARK if upgrade == "auto" else []),
        ]
    )
    assert info["body_len"] == 4


async def test_response_hop_by_hop_headers_are_removed(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.headers["Connection"] = "X-Internal"
        resp.headers["X-Internal"] = "origin secret"
        resp.headers["Keep-Alive"] = "timeout=3"
        resp.headers["Proxy-Authenticate"] = 'Basic realm="p"'
        resp.headers["Upgrade"] = "h2c"
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; HttpOnly")
        resp.headers["X-End"] = "kept"
        return resp

    entry, _ = await two_gateways(make_gateway, await make_origin(handler))
    async with client.get(f"{entry.url}/r") as resp:
        assert await resp.text() == "ok"
        for name in ("X-Internal", "Keep-Alive", "Proxy-Authenticate", "Upgrade"):
            assert name not in resp.headers, name
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
        assert resp.headers["X-End"] == "kept"
        assert resp.headers.getall("Via") == ["1.1 gw-server, 1.1 gw-client"]


async def test_via_and_forwarded_headers_across_two_gateways(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    origin = await make_origin(echo)
    entry, _ = await two_gateways(make_gateway, origin)
    async with client.get(f"{entry.url}/who", headers={"Authorization": "Basic dTpw"}) as resp:
        info = await resp.json()
    assert header_values(info, "Via") == ["1.1 gw-client, 1.1 gw-server"]
    assert header_values(info, "X-Forwarded-For") == ["127.0.0.1, 127.0.0.1"]
    assert header_values(info, "X-Forwarded-Proto") == ["http"]
    assert header_values(info, "X-Forwarded-Host") == [f"127.0.0.1:{entry.port}"]
    assert header_values(info, "Host") == [f"127.0.0.1:{URL(origin).port}"]
    assert header_values(info, "Authorization") == ["Basic dTpw"]


async def test_preserve_host_passes_the_clients_host(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway("server", {"upstream": await make_origin(echo), "preserve_host": True})
    response = await raw_exchange(
        gw.url, b"GET / HTTP/1.1\r\nHost: chat.example.com\r\nConnection: close\r\n\r\n"
    )
    assert header_values(json.loads(response.body), "Host") == ["chat.example.com"]


async def test_upstream_base_path_prefixes_the_request_path(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    origin = await make_origin(echo)
    gw = await make_gateway("server", {"upstream": f"{origin}/app/"})
    async with client.get(f"{gw.url}/poll?x=1") as resp:
        assert (await resp.json())["raw_path"] == "/app/poll?x=1"


async def test_a_request_cannot_climb_out_of_the_upstream_base_path(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="origin")

    gw = await make_gateway("server", {"upstream": f"{await make_origin(record)}/app/"})
    for target in (b"/../admin", b"/%2e%2e/admin"):
        response = await raw_exchange(
            gw.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert response.status == 400, response
        assert b"base path /app" in response.body
    assert seen == []


METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@pytest.mark.parametrize("method", METHODS)
async def test_every_method_is_forwarded_with_its_body(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession, method: str
) -> None:
    entry, _ = await two_gateways(make_gateway, await make_origin(echo))
    payload = f"payload for {method}".encode()
    async with client.request(method, f"{entry.url}/m", data=payload) as resp:
        assert resp.status == 200
        assert resp.headers["X-Echo-Method"] == method
        assert resp.headers["X-Echo-Body"] == payload.decode()
        body = await resp.read()
    if method == "HEAD":
        assert body == b""
        assert int(resp.headers["Content-Length"]) > 0
    else:
        info = json.loads(body)
        assert info["method"] == method
        assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_keep_the_connection_usable(
    make_origin: MakeOrigin, make_gateway: MakeGateway, status: int
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/empty":
            return web.Response(status=status, headers={"ETag": '"v1"'})
        return web.Response(text="after")

    entry, _ = await two_gateways(make_gateway, await make_origin(handler))
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{entry.url}/empty") as resp:
            assert resp.status == status
            assert resp.headers["ETag"] == '"v1"'
            assert await resp.read() == b""
        async with session.get(f"{entry.url}/next") as resp:
            assert await resp.text() == "after"


ODD_TARGETS = [
    "/plain",
    "/a%2Fb/%7Euser/caf%C3%A9/%25zz/%2e%2E/x",
    "/semi;colon;p=1/under_score/t%C3%AAte?q=a%20b+c&x=%2F&&empty=&u=%E2%9C%93",
    "//double//slashes/",
    "/dots/./and/../kept",
    "/?only=query&k=%00",
    "/brackets[1]/%5B2%5D?a[b]=c",
]


@pytest.mark.parametrize("target", ODD_TARGETS)
async def test_path_and_query_pass_byte_for_byte(
    make_origin: MakeOrigin, make_gateway: MakeGateway, target: str
) -> None:
    entry, _ = await two_gateways(make_gateway, await make_origin(echo))
    response = await raw_exchange(
        entry.url, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.status == 200
    assert json.loads(response.body)["raw_path"] == target


async def test_gzip_bodies_pass_untouched_both_ways(
    make_origin: MakeOrigin, make_gateway: MakeGateway, client: aiohttp.ClientSession
) -> None:
    plain = b"long-poll payload " * 200
    compressed = gzip.compress(plain)

    async def handler(request: web.Request) -> web.Response:
        received = await request.read()  # the origin's own server inflates it
        return web.Response(
            body=compressed,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "X-Request-Body-Sha": hashlib.sha256(received).hexdigest(),
                "X-Request-Encoding": request.headers.get("Content-Encoding", "-"),
                "X-Request-Length": request.headers.get("Content-Length", "-"),
            },
        )

    entry, _ = await two_gateways(make_gateway, await make_origin(handler))
    async with client.post(
        f"{entry.url}/gz",
        data=compressed,
        headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    ) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["X-Request-Encoding"] == "gzip"
        assert resp.headers["X-Request-Length"] == str(len(compressed))
        assert resp.headers["X-Request-Body-Sha"] == hashlib.sha256(plain).hexdigest()
        assert int(resp.headers["Content-Length"]) == len(compressed)
        assert await resp.read() == compressed


async def test_cookies_do_not_leak_between_clients(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    async def handler(request: web.Request) -> web.Response:
        resp = await echo(request)
        if request.path == "/login":
            resp.set_cookie("sid", "alice-secret", path="/")
        return resp

    entry, _ = await two_gateways(make_gateway, await make_origin(handler))
    # Neither client keeps cookies itself: a Cookie at the origin would be the gateway's.
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as alice,
        alice.get(f"{entry.url}/login") as resp,
    ):
        assert "alice-secret" in resp.headers["Set-Cookie"]
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bob,
        bob.get(f"{entry.url}/page") as resp,
    ):
        info = await resp.json()
    assert header_values(info, "Cookie") == []


@pytest.mark.parametrize("upgrade", ["never", "auto"])
async def test_user_agent_and_accept_are_not_added(
    upgrade: str, make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    entry, _ = await two_gateways(make_gateway, await make_origin(echo), upgrade=upgrade)
    response = await raw_exchange(
        entry.url, b"GET /bare HTTP/1.1\r\nHost: bare\r\nConnection: close\r\n\r\n"
    )
    names = {name.lower() for name, _ in header_pairs(json.loads(response.body))}
    mark = {name.lower() for name, _ in MARK} if upgrade == "auto" else set()
    assert (
        names == {"host", "via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} | mark
    )


async def test_response_gets_no_content_type_or_server_the_origin_did_not_send(
    make_gateway: MakeGateway,
) -> None:
    origin, server = await _raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nuntyped")
    try:
        entry, _ = await two_gateways(make_gateway, origin)
        response = await raw_exchange(
            entry.url, b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    finally:
        server.close()
    assert response.body == b"untyped"
    names = {name.lower() for name, _ in response.headers}
    assert names == {"content-length", "via", "date", "connection"}
    assert response.values("Via") == ["1.1 gw-server, 1.1 gw-client"]


async def test_chunked_upload_is_forwarded_with_its_framing_redone(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    entry, _ = await two_gateways(make_gateway, await make_origin(echo))
    response = await raw_exchange(
        entry.url,
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        method="PUT",
    )
    info = json.loads(response.body)
    assert info["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert header_values(info, "Content-Length") == []
    assert header_values(info, "Transfer-Encoding") == ["chunked"]


async def test_http10_client_gets_an_unsized_stream_close_delimited(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"<script>p({i})</script>".encode())
            await asyncio.sleep(0.05)
        return resp

    entry, _ = await two_gateways(make_gateway, await make_origin(stream))
    response = await raw_exchange(entry.url, b"GET /s HTTP/1.0\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert response.body == b"<script>p(0)</script><script>p(1)</script><script>p(2)</script>"
    assert response.values("Transfer-Encoding") == []


async def test_client_abort_during_upload_ends_the_upstream_request(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    first_bytes = asyncio.Event()
    ended: list[str] = []

    async def upload(request: web.Request) -> web.Response:
        try:
            await request.content.readany()
            first_bytes.set()
            await request.read()
            ended.append("complete")
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        except Exception as exc:
            ended.append(type(exc).__name__)
            raise
        return web.Response(text="should not happen")

    entry, _ = await two_gateways(make_gateway, await make_origin(upload))
    _, writer = await asyncio.open_connection("127.0.0.1", entry.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    await asyncio.wait_for(first_bytes.wait(), 5)
    writer.close()
    for _ in range(100):
        if ended:
            break
        await asyncio.sleep(0.02)
    assert ended and ended[0] != "complete"


# ------------------------------------------------------------------- writes


@pytest.mark.parametrize("upgrade", ["never", "auto"], ids=["plain", "websocket-hop"])
async def test_a_small_answer_leaves_in_one_write_to_the_client(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    upgrade: str,
) -> None:
    """Head and body of an answer that came whole leave in one send: the client
    is woken once per answer, not twice (issue 13, per-request cost). Chunked
    (no length from the origin) the final empty chunk goes in that send too."""

    async def small(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=b"hello", content_type="text/plain")  # one write
        if request.path == "/chunked":
            response.enable_chunked_encoding()  # no length: chunked on every hop
        return response

    client_gw, _server = await two_gateways(make_gateway, await make_origin(small), upgrade=upgrade)
    if upgrade == "auto":
        [state] = client_gw.stats.upstreams.values()
        await until(lambda: state.as_json()["transport"] == "websocket", "the websocket hop")
    url = URL(client_gw.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    port = writer.get_extra_info("sockname")[1]
    sent: list[bytes] = []
    transport_class = type(writer.transport)  # the gateway's side is the same class
    original = transport_class.write

    def counting(self: asyncio.Transport, data: Any) -> None:
        peer = self.get_extra_info("peername")
        if peer is not None and peer[1] == port:
            sent.append(bytes(data))
        original(self, data)

    def counting_lines(self: asyncio.Transport, data: Any) -> None:
        counting(self, b"".join(data))

    monkeypatch.setattr(transport_class, "write", counting)
    monkeypatch.setattr(transport_class, "writelines", counting_lines)
    try:
        for path in ("/sized", "/chunked"):
            sent.clear()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            async with asyncio.timeout(10):
                while not data.endswith((b"hello", b"0\r\n\r\n")):
                    data += await reader.read(65536)
            assert len(sent) == 1, (path, sent)
            assert sent[0].startswith(b"HTTP/1.1 200") and b"hello" in sent[0], (path, sent)
    finally:
        writer.close()
