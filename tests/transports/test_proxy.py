"""``gateway.transports.proxy``: reading the proxy variables, and CONNECT tunnels.

The variables are read the way urllib reads them (compared here with
urllib's own functions on the same environments); tunnels are opened
through the real squid of ``deploy/squid`` and, for answers squid will not
give (407), through a small loopback server that records what it was sent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.clients import outgoing_proxies
from gateway.config import ConfigError
from gateway.transports.proxy import (
    ProxyRefused,
    ProxyTable,
    ProxyUnreachable,
    _environment_proxies,
    dial_through,
    open_connection,
    proxy_connector,
)
from tests.conftest import MakeOrigin
from tests.processes import free_port
from tests.proxies import running_squid

ENVIRONMENTS = [
    {"http_proxy": "http://a:3128"},
    {"HTTP_PROXY": "http://A:3128", "http_proxy": "http://a:3128"},
    {"HTTP_PROXY": "http://A:3128"},
    {"HTTP_PROXY": "http://A:3128", "http_proxy": ""},
    {"HTTP_PROXY": "http://A:3128", "REQUEST_METHOD": "GET"},
    {"http_proxy": "http://a:3128", "REQUEST_METHOD": "GET"},
    {"HTTPS_PROXY": "b:8080", "NO_PROXY": "localhost", "no_proxy": "example.com"},
    {"Https_Proxy": "http://c:1", "ALL_PROXY": "http://d:2"},
    {},
]


@pytest.mark.parametrize("environ", ENVIRONMENTS)
def test_variables_read_as_urllib_reads_them(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lower case wins, an empty lower-case value unsets, HTTP_PROXY ignored under CGI."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    ours = {scheme: value for scheme, (_name, value) in _environment_proxies(environ).items()}
    assert ours == urllib.request.getproxies_environment()


NO_PROXY_CASES = [
    ("example.com", "http://example.com/"),
    ("example.com", "http://www.example.com/"),
    ("example.com", "http://notexample.com/"),
    (".example.com", "http://example.com/"),
    ("EXAMPLE.com", "http://www.Example.COM/"),
    ("example.com:8080", "http://example.com:8080/"),
    ("example.com:8080", "http://example.com:9090/"),
    ("127.0.0.1", "http://127.0.0.1:4000/"),
    ("127.0.0.1", "http://127.0.0.10:4000/"),
    ("localhost, 127.0.0.1 ,", "http://localhost:1/"),
    ("*", "http://anything:1/"),
    ("", "http://example.com/"),
]


@pytest.mark.parametrize(("no_proxy", "url"), NO_PROXY_CASES)
def test_no_proxy_matches_as_urllib_does(no_proxy: str, url: str) -> None:
    table = ProxyTable.from_env({"http_proxy": "http://proxy:3128", "no_proxy": no_proxy})
    parsed = URL(url)
    bypass = urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
        f"{parsed.host}:{parsed.port}", {"no": no_proxy}
    )
    assert (table.for_url(parsed) is None) == bool(bypass)


def test_each_scheme_takes_its_variable() -> None:
    table = ProxyTable.from_env({"http_proxy": "http://p:1", "https_proxy": "http://s:2"})
    picked = {s: table.for_url(URL(f"{s}://h:9/x")) for s in ("http", "ws", "https", "wss")}
    assert {s: str(p.url) if p else None for s, p in picked.items()} == {
        "http": "http://p:1",
        "ws": "http://p:1",
        "https": "http://s:2",
        "wss": "http://s:2",
    }
    only_http = ProxyTable.from_env({"HTTP_PROXY": "p:1"})
    assert only_http.for_url(URL("https://h/")) is None
    assert str(only_http.for_url(URL("http://h/"))) == "http://p:1 (HTTP_PROXY)"


def test_credentials_kept_apart_and_never_shown() -> None:
    table = ProxyTable.from_env({"http_proxy": "http://ann:s3cret@proxy.corp:3128/"})
    proxy = table.for_url(URL("http://h/"))
    assert proxy is not None
    assert proxy.authorization == "Basic " + base64.b64encode(b"ann:s3cret").decode()
    assert "s3cret" not in str(proxy) and "s3cret" not in table.describe()
    assert "http:// via http://proxy.corp:3128 (http_proxy)" in table.describe()


@pytest.mark.parametrize("value", ["socks5://ann:s3cret@h:1080", "https://ann:s3cret@h:3129"])
def test_a_proxy_hopgate_cannot_speak_to_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ProxyTable.from_env({"https_proxy": value})
    message = str(caught.value)
    assert message.startswith("https_proxy=") and "http://" in message
    assert "s3cret" not in message


def test_only_the_client_role_reads_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert outgoing_proxies("server") is None
    client = outgoing_proxies("client")
    assert client is not None and client.for_url(URL("http://h/")) is not None


def test_hopgate_client_refuses_a_socks_proxy_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["http_proxy"] = "socks5://ann:s3cret@127.0.0.1:1080"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "client", "--listen", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "http_proxy=socks5://127.0.0.1:1080" in done.stderr
    assert "s3cret" not in done.stderr


# ------------------------------------------------------------------ tunnels


async def http_get_over(sock_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /through HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    return await sock_reader.read()


async def test_tunnel_through_squid_carries_http(make_origin: MakeOrigin) -> None:
    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="through the tunnel")

    origin = URL(await make_origin(hello))
    assert origin.port is not None
    with running_squid(connect_ports=(origin.port,)) as squid:
        proxy = ProxyTable.from_env({"http_proxy": squid.url}).for_url(origin)
        assert proxy is not None
        sock, early = await dial_through(proxy, "127.0.0.1", origin.port, 10)
        assert early == b""
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            answer = await asyncio.wait_for(http_get_over(reader, writer), 10)
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"through the tunnel")


async def test_squid_refusing_connect_is_proxy_refused_403() -> None:
    port = free_port()
    with running_squid() as squid:  # the shipped recipe: CONNECT to 443 only
        proxy = ProxyTable.from_env({"http_proxy": squid.url}).for_url(URL("http://h/"))
        assert proxy is not None
        with pytest.raises(ProxyRefused) as caught:
            await dial_through(proxy, "127.0.0.1", port, 10)
    assert caught.value.status == 403
    assert f"proxy {squid.url} (http_proxy) refused CONNECT 127.0.0.1:{port}" in str(caught.value)


async def test_unreachable_proxy_names_it() -> None:
    where = f"127.0.0.1:{free_port()}"
    proxy = ProxyTable.from_env({"http_proxy": where}).for_url(URL("http://h/"))
    assert proxy is not None
    with pytest.raises(ProxyUnreachable, match=f"cannot connect to proxy http://{where}"):
        await dial_through(proxy, "h", 80, 5)


Answer = Callable[[bytes], bytes]
FakeProxy = tuple[list[bytes], Callable[[Answer], Awaitable[str]]]


@pytest.fixture
async def fake_proxy() -> AsyncIterator[FakeProxy]:
    """Start loopback servers answering CONNECT as told; ``heads`` records each request head."""
    heads: list[bytes] = []
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            writer.write(answer(head))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield heads, start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_credentials_go_in_proxy_authorization(fake_proxy: FakeProxy) -> None:
    heads, start = fake_proxy
    url = await start(lambda _head: b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    user_url = url.replace("http://", "http://ann:s3cret@")
    proxy = ProxyTable.from_env({"http_proxy": user_url}).for_url(URL("http://h/"))
    assert proxy is not None
    with pytest.raises(ProxyRefused) as caught:
        await dial_through(proxy, "::1", 8080, 5)
    assert caught.value.status == 407 and "s3cret" not in str(caught.value)
    (head,) = heads
    token = base64.b64encode(b"ann:s3cret").decode()
    assert head.startswith(b"CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n")
    assert f"Proxy-Authorization: Basic {token}\r\n".encode() in head


async def test_bytes_after_the_200_are_handed_back(fake_proxy: FakeProxy) -> None:
    _heads, start = fake_proxy
    url = await start(lambda _head: b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-x\r\n")
    proxy = ProxyTable.from_env({"http_proxy": url}).for_url(URL("http://h/"))
    assert proxy is not None
    sock, early = await dial_through(proxy, "h", 22, 5)
    sock.close()
    assert early.startswith(b"SSH-2.0-x")


# ------------------------------------------------- which requests go how


def ok_answer(_head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def refuse(_head: bytes) -> bytes:
    return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def session_through(proxy_url: str, **env: str) -> aiohttp.ClientSession:
    table = ProxyTable.from_env({"http_proxy": proxy_url, "https_proxy": proxy_url, **env})
    return aiohttp.ClientSession(connector=proxy_connector(table))


async def test_plain_request_is_absolute_form_with_credentials(fake_proxy: FakeProxy) -> None:
    heads, start = fake_proxy
    url = (await start(ok_answer)).replace("http://", "http://ann:s3cret@")
    async with (
        await session_through(url) as http,
        http.get("http://upstream.test:8080/x?y=1") as resp,
    ):
        assert (resp.status, await resp.read()) == (200, b"ok")
    (head,) = heads
    assert head.startswith(b"GET http://upstream.test:8080/x?y=1 HTTP/1.1\r\n")
    assert b"\r\nProxy-Authorization: Basic " in head


@pytest.mark.parametrize(
    ("target", "line"),
    [
        ("ws://upstream.test:8080/s", b"CONNECT upstream.test:8080 HTTP/1.1\r\n"),
        ("wss://upstream.test/s", b"CONNECT upstream.test:443 HTTP/1.1\r\n"),
        ("https://upstream.test/s", b"CONNECT upstream.test:443 HTTP/1.1\r\n"),
    ],
)
async def test_websockets_and_https_ask_for_a_tunnel(
    fake_proxy: FakeProxy, target: str, line: bytes
) -> None:
    """ws:// too: squid answers an absolute-form WebSocket upgrade with 501."""
    heads, start = fake_proxy
    url = (await start(refuse)).replace("http://", "http://ann:s3cret@")
    async with await session_through(url) as http:
        with pytest.raises(aiohttp.ClientError) as caught:
            if target.startswith("http"):
                await http.get(target)
            else:
                await http.ws_connect(target)
    (head,) = heads
    assert head.startswith(line), head
    assert b"\r\nProxy-Authorization: Basic " in head
    assert "403" in str(caught.value)


async def test_no_proxy_host_is_dialled_directly(
    fake_proxy: FakeProxy, make_origin: MakeOrigin
) -> None:
    heads, start = fake_proxy
    url = await start(ok_answer)

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="direct")

    origin = await make_origin(hello)
    async with await session_through(url, no_proxy="127.0.0.1") as http:
        async with http.get(f"{origin}/x") as resp:
            assert await resp.text() == "direct"
        with pytest.raises(aiohttp.ClientError):  # the hop's ws:// upgrade: direct too
            await http.ws_connect(f"{origin.replace('http', 'ws')}/ws")
    assert heads == []


async def test_forward_proxy_streams_start_with_the_bytes_after_the_200(
    fake_proxy: FakeProxy,
) -> None:
    """A server that speaks first (SSH, SMTP) loses nothing of what came with the 200."""
    heads, start = fake_proxy
    url = await start(lambda _head: b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-x\r\n")
    table = ProxyTable.from_env({"https_proxy": url, "http_proxy": "http://unused:1"})
    reader, writer = await open_connection(table, "ssh.test", 22, limit=1024)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b"SSH-2.0-x\r\n"
    finally:
        writer.close()
    assert heads[0].startswith(b"CONNECT ssh.test:22 HTTP/1.1\r\n")
