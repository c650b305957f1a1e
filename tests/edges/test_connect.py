"""``CONNECT`` tunnels through a forward-proxy gateway, against real sockets.

Raw sockets drive the request line byte by byte where the framing matters;
an aiohttp client with ``proxy=`` drives the real-world case (HTTPS through
the tunnel, certificate verified end to end by the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import trustme
from aiohttp import http_parser, web, web_protocol

from gateway.edges.connect import BadTarget, parse_connect_target
from gateway.server import Gateway
from tests.helpers import running_gateway, until
from tests.processes import free_port

LIMIT = 10.0


# ------------------------------------------------------------------ helpers


class EchoServer:
    """TCP echo server that records when a connection of its ends."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server
    server.server.close()
    for writer in server.writers:
        writer.close()


@pytest.fixture
async def forward_proxy() -> AsyncIterator[Gateway]:
    async with running_gateway(shutdown_grace=1.0) as gateway:
        yield gateway


async def send_connect(
    gateway: Gateway, target: str, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Open a raw connection, send ``CONNECT target`` (plus ``extra``), return the head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + extra)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


Target = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tunnel_to(
    gateway: Gateway, target: Target, sock: socket.socket | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A tunnel (``200`` checked) to a loopback server running ``target``, all within LIMIT.

    On the way out, waits until the gateway counts the tunnel ended.
    """
    if sock is None:
        server = await asyncio.start_server(target, "127.0.0.1", 0)
    else:
        server = await asyncio.start_server(target, sock=sock)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(LIMIT):
            reader, writer, head = await send_connect(gateway, f"127.0.0.1:{port}")
            assert status_of(head) == 200
            yield reader, writer
            await until(lambda: gateway.stats.active_tunnels == 0)
    finally:
        server.close()


# -------------------------------------------------------------- target parse


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:443", ("::1", 443)),
    ],
)
def test_parse_connect_target_accepts_host_port(authority: str, expected: tuple[str, int]) -> None:
    assert parse_connect_target(authority) == expected


@pytest.mark.parametrize("authority", ["example.com", "example.com:0", "user@host:443", ":443"])
def test_parse_connect_target_rejects_garbage(authority: str) -> None:
    with pytest.raises(BadTarget):
        parse_connect_target(authority)


# --------------------------------------------------------------------- relay


async def test_tunnel_answers_200_then_relays_bytes_both_ways(
    forward_proxy: Gateway, echo: EchoServer
) -> None:
    async with asyncio.timeout(LIMIT):
        reader, writer, head = await send_connect(forward_proxy, f"127.0.0.1:{echo.port}")
        assert head.startswith(b"HTTP/1.1 200 Connection established\r\n")
        assert b"transfer-encoding" not in head.lower()
        assert b"content-length" not in head.lower()
        assert forward_proxy.stats.active_tunnels == 1

        writer.write(b"ping\n")
        assert await reader.readexactly(5) == b"ping\n"
        writer.close()


@pytest.mark.parametrize("parser", ["default", "pure-python"])
async def test_bytes_sent_with_the_connect_head_are_not_lost(
    forward_proxy: Gateway, echo: EchoServer, parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's C parser holds such bytes back for ``set_parser``; its Python
    parser puts them in ``request.content``: both must reach the target first."""
    if parser == "pure-python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    async with asyncio.timeout(LIMIT):
        reader, writer, head = await send_connect(
            forward_proxy, f"127.0.0.1:{echo.port}", extra=b"early bytes"
        )
        assert status_of(head) == 200
        assert await reader.readexactly(11) == b"early bytes"
        writer.close()


async def test_large_transfer_keeps_every_byte_in_order(
    forward_proxy: Gateway, echo: EchoServer
) -> None:
    """8 MiB through the tunnel while reading concurrently: exercises flow control."""
    payload = bytes(range(256)) * (32 * 1024)
    async with asyncio.timeout(LIMIT * 3):
        reader, writer, head = await send_connect(forward_proxy, f"127.0.0.1:{echo.port}")
        assert status_of(head) == 200

        async def send() -> None:
            for i in range(0, len(payload), 65536):
                writer.write(payload[i : i + 65536])
                await writer.drain()

        sender = asyncio.create_task(send())
        received = await reader.readexactly(len(payload))
        await sender
        assert received == payload
        writer.close()


async def test_https_origin_through_the_tunnel_with_aiohttp_proxy_client(
    forward_proxy: Gateway,
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"secure {request.method} {request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with asyncio.timeout(LIMIT), aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{port}/hello?x=1"
            async with session.get(url, proxy=forward_proxy.url, ssl=client_ctx) as resp:
                assert resp.status == 200
                assert await resp.text() == "secure GET /hello?x=1"
            async with session.post(url, proxy=forward_proxy.url, ssl=client_ctx) as resp:
                assert await resp.text() == "secure POST /hello?x=1"
        async with asyncio.timeout(LIMIT):
            await until(lambda: forward_proxy.stats.active_tunnels == 0)
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- failures


async def test_refused_target_gets_502_with_reason(forward_proxy: Gateway) -> None:
    port = free_port()
    async with asyncio.timeout(LIMIT):
        reader, writer, head = await send_connect(forward_proxy, f"127.0.0.1:{port}")
        assert status_of(head) == 502
        body = await reader.read(4096)
        assert f"could not connect to 127.0.0.1:{port}".encode() in body
        assert forward_proxy.stats.active_tunnels == 0
        writer.close()


async def test_aiohttp_client_sees_refused_tunnel_as_proxy_error(forward_proxy: Gateway) -> None:
    port = free_port()
    async with asyncio.timeout(LIMIT), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            await session.get(f"https://127.0.0.1:{port}/", proxy=forward_proxy.url)
        assert info.value.status == 502


async def test_target_that_never_answers_times_out_with_504() -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so
    # the gateway's connect hangs until its connect timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
    try:
        async with running_gateway(connect_timeout=0.3) as gateway, asyncio.timeout(LIMIT):
            reader, writer, head = await send_connect(gateway, f"127.0.0.1:{port}")
            body = await reader.read(4096)
            writer.close()
    finally:
        for sock in (*fillers, listener):
            sock.close()
    assert status_of(head) == 504, "Linux drops SYNs past a full listen backlog"
    assert b"within 0.3s" in body


@pytest.mark.parametrize(
    ("target", "reason"),
    [("example.com", b"has no port"), ("example.com:0", b"port must be 1-65535")],
)
async def test_target_without_valid_port_gets_400(
    forward_proxy: Gateway, target: str, reason: bytes
) -> None:
    async with asyncio.timeout(LIMIT):
        reader, writer, head = await send_connect(forward_proxy, target)
        assert status_of(head) == 400
        assert reason in await reader.read(4096)
        writer.close()


@pytest.mark.parametrize("target", ["exa mple.com:443", "host:port", "[::1:443"])
async def test_garbage_target_gets_400(forward_proxy: Gateway, target: str) -> None:
    async with asyncio.timeout(LIMIT):
        _, writer, head = await send_connect(forward_proxy, target)
        assert status_of(head) == 400
        writer.close()


@pytest.mark.parametrize("role", ["server", "client"])
async def test_gateway_with_upstream_refuses_connect(role: str, echo: EchoServer) -> None:
    """A sidecar or reverse gateway is never an open proxy."""
    async with running_gateway(role, upstream="http://127.0.0.1:9") as gateway:
        async with asyncio.timeout(LIMIT):
            reader, writer, head = await send_connect(gateway, f"127.0.0.1:{echo.port}")
            assert status_of(head) == 403
            assert b"not an open proxy" in await reader.read(4096)
            writer.close()
        assert echo.connections == 0


# ----------------------------------------------------------------- closing


async def test_client_closing_closes_the_target_connection(
    forward_proxy: Gateway, echo: EchoServer
) -> None:
    async with asyncio.timeout(LIMIT):
        reader, writer, head = await send_connect(forward_proxy, f"127.0.0.1:{echo.port}")
        assert status_of(head) == 200
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        writer.close()
        await echo.closed.wait()
        await until(lambda: forward_proxy.stats.active_tunnels == 0)


async def test_target_closing_reaches_the_client_as_eof(forward_proxy: Gateway) -> None:
    async def greet_and_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    async with tunnel_to(forward_proxy, greet_and_close) as (reader, writer):
        assert await reader.read() == b"bye"  # read() returns at EOF only
        writer.close()


async def test_target_half_close_lets_the_client_finish_sending(forward_proxy: Gateway) -> None:
    """The target shuts its write side; what the client sends after that still arrives."""
    got = asyncio.get_running_loop().create_future()

    async def shut_then_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ready")
        writer.write_eof()
        got.set_result(await reader.read())
        writer.close()

    async with tunnel_to(forward_proxy, shut_then_read) as (reader, writer):
        assert await reader.read() == b"ready"
        writer.write(b"late data")
        await writer.drain()
        writer.close()
        assert await got == b"late data"


async def test_client_sending_then_closing_delivers_everything(forward_proxy: Gateway) -> None:
    """A slow target: the client's EOF arrives while the gateway still holds its bytes."""
    got = asyncio.get_running_loop().create_future()

    async def collect_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        while chunk := await reader.read(16384):
            received += chunk
            await asyncio.sleep(0.001)
        got.set_result(bytes(received))
        writer.close()

    # A small receive window keeps the gateway's writes to the target
    # congested, so its reader still holds client bytes when the EOF comes.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    listener.bind(("127.0.0.1", 0))
    payload = bytes(range(256)) * 8192
    async with tunnel_to(forward_proxy, collect_slowly, listener) as (_, writer):
        writer.write(payload)
        writer.write_eof()
        assert await got == payload
        writer.close()
