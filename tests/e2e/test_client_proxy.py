"""A real ``hopgate client`` behind a real squid (``deploy/squid``) it finds in ``http_proxy``.

::

    legacy client -> hopgate client --(http_proxy)--> squid -> hopgate server -> origin

Both gateways are processes, squid runs from the shipped recipe (only its
``{{TOKENS}}`` filled in, plus, where a test says so, the ``acl SSL_ports
port N`` line the recipe tells an operator to add), and each test reads
squid's own ``access.log`` to see which traffic went through it and how
(absolute-form ``GET http://...``, ``CONNECT host:port``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import MakeOrigin, TLSFiles
from tests.processes import GatewayProcess, SpawnGateway, free_port
from tests.proxies import SQUID_STOP_TIMEOUT, ProxyProcess, host_port, running_squid
from tests.waiting import eventually

#: Requests sent through the client gateway in each test.
REQUESTS = 20
#: Longest wait for the hop to settle on a transport.
SETTLE = 15.0


async def hello(request: web.BaseRequest) -> web.Response:
    return web.Response(text=f"hello {request.path}")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Sets this test's proxy variables (conftest's autouse fixture cleared the shell's)."""
    return monkeypatch


async def status_of(client: GatewayProcess) -> dict[str, Any]:
    """The client gateway's one upstream entry in ``/.hopgate/status`` (read directly)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{client.url}/.hopgate/status") as resp,
    ):
        document = await resp.json()
    (upstream,) = document["upstreams"]
    assert isinstance(upstream, dict)
    return upstream


async def settled_on(client: GatewayProcess, transport: str) -> dict[str, Any]:
    """Wait until the hop is on ``transport``; its status entry (fails naming where it is)."""
    seen: dict[str, Any] = {}

    async def there() -> bool:
        seen.update(await status_of(client))
        return seen.get("transport") == transport

    assert await eventually(there, SETTLE, interval=0.2), f"hop not on {transport}: {seen}"
    return seen


async def transport_of(client: GatewayProcess, transport: str, *, negate: bool = False) -> bool:
    """Whether the hop is on ``transport`` (with ``negate``: on anything else)."""
    return ((await status_of(client)).get("transport") == transport) != negate


async def send_requests(client: GatewayProcess, count: int = REQUESTS) -> None:
    """``count`` legacy GETs through the client gateway, each answered by the origin."""
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            async with http.get(f"{client.url}/r{i}") as resp:
                assert (resp.status, await resp.text()) == (200, f"hello /r{i}")


def squid_lines(squid: ProxyProcess, pattern: str) -> list[str]:
    """The lines of squid's access.log matching ``pattern`` (a regex)."""
    return [line for line in squid.log_text("access.log").splitlines() if re.search(pattern, line)]


def start_pair(
    spawn_gateway: SpawnGateway, origin: str, *server_flags: str, client_flags: tuple[str, ...] = ()
) -> tuple[GatewayProcess, GatewayProcess]:
    """A ``hopgate server`` for ``origin``, then a ``hopgate client`` in this process's env."""
    server = spawn_gateway("server", "--upstream", origin, *server_flags)
    client = spawn_gateway("client", "--upstream", server.url, *client_flags)
    return server, client


async def test_shipped_recipe_carries_requests_and_the_hop_on_long_poll(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, proxy_env: pytest.MonkeyPatch
) -> None:
    """Recipe as shipped (CONNECT to 443 only): everything goes through squid, the hop on long-poll.

    Before this change squid's access.log stayed empty after 20 requests:
    the client ignored ``http_proxy``.
    """
    origin = await make_origin(hello)
    with running_squid() as squid:
        proxy_env.setenv("http_proxy", squid.url)
        server, client = start_pair(spawn_gateway, origin)
        hop = await settled_on(client, "long-poll")
        await send_requests(client)
        client.stop()  # the hop streams (a GET and a POST each carrying many batches)
        await asyncio.sleep(0.2)  # squid logs a transaction once it ends
        where = re.escape(host_port(server.url))
        assert squid_lines(squid, rf"TCP_\w+/200 .* GET http://{where}/\.hopgate/hello")
        assert squid_lines(squid, rf"/200 .* POST http://{where}/\.hopgate/session ")
        polls = squid_lines(squid, rf"/200 .* (GET|POST) http://{where}/\.hopgate/session/")
        assert len(polls) >= 2, polls
        # The WebSocket was tried through CONNECT, refused by the recipe's SSL_ports.
        assert squid_lines(squid, rf"TCP_DENIED/403 .* CONNECT {where} ")
        assert "refused CONNECT" in hop["last_error"] and squid.url in hop["last_error"], hop
        assert f"http:// via {squid.url} (http_proxy)" in client.output()


async def test_websocket_hop_goes_through_squid_connect(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, proxy_env: pytest.MonkeyPatch
) -> None:
    """With the server's port in SSL_ports (the recipe's comment), the ws:// hop is a CONNECT."""
    origin = await make_origin(hello)
    port = free_port()
    with running_squid(connect_ports=(port,)) as squid:
        proxy_env.setenv("http_proxy", squid.url)
        server = spawn_gateway("server", "--upstream", origin, listen=f"127.0.0.1:{port}")
        client = spawn_gateway("client", "--upstream", server.url)
        await settled_on(client, "websocket")
        await send_requests(client)
        hop = await status_of(client)
        assert hop["transport"] == "websocket", hop
        client.stop()  # squid logs a tunnel when it closes
        tunnel = rf"TCP_TUNNEL/200 .* CONNECT 127\.0\.0\.1:{port} "
        assert await eventually(lambda: bool(squid_lines(squid, tunnel)), 10)
        assert squid_lines(squid, rf"GET http://127\.0\.0\.1:{port}/\.hopgate/hello")
        assert not squid_lines(squid, r"TCP_DENIED"), squid.log_text("access.log")


async def test_no_proxy_sends_the_upstream_direct(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, proxy_env: pytest.MonkeyPatch
) -> None:
    """A host in ``no_proxy`` is dialled directly: nothing of it in squid's log."""
    origin = await make_origin(hello)
    with running_squid() as squid:
        proxy_env.setenv("http_proxy", squid.url)
        proxy_env.setenv("no_proxy", "example.com,127.0.0.1")
        _server, client = start_pair(spawn_gateway, origin)
        await settled_on(client, "websocket")  # direct: nothing refuses the CONNECT
        await send_requests(client)
        client.stop()
        assert not squid_lines(squid, r"GET |POST |CONNECT "), squid.log_text("access.log")


async def test_unreachable_proxy_is_a_502_naming_it(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, proxy_env: pytest.MonkeyPatch
) -> None:
    origin = await make_origin(hello)
    nowhere = f"http://127.0.0.1:{free_port()}"
    proxy_env.setenv("http_proxy", nowhere)
    _server, client = start_pair(spawn_gateway, origin)
    async with aiohttp.ClientSession() as http, http.get(f"{client.url}/x") as resp:
        text = await resp.text()
    assert resp.status == 502, text
    assert f"proxy {nowhere.removeprefix('http://')}" in text, text


async def test_https_upstream_goes_through_connect(
    make_origin: MakeOrigin,
    spawn_gateway: SpawnGateway,
    proxy_env: pytest.MonkeyPatch,
    tls_files: TLSFiles,
) -> None:
    """An ``https://`` hopgate server: hello, session and the wss:// hop all inside CONNECT."""
    origin = await make_origin(hello)
    port = free_port()
    tls = ("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))
    with running_squid(connect_ports=(port,)) as squid:
        proxy_env.setenv("https_proxy", squid.url)
        server = spawn_gateway("server", "--upstream", origin, *tls, listen=f"127.0.0.1:{port}")
        assert server.url.startswith("https://")
        client = spawn_gateway("client", "--upstream", server.url, "--ca-file", str(tls_files.ca))
        await settled_on(client, "websocket")
        await send_requests(client)
        assert not squid_lines(squid, r"GET |POST |TCP_DENIED"), squid.log_text("access.log")
        squid.stop(SQUID_STOP_TIMEOUT)
        # The wss:// hop lived inside squid's tunnel: it ends with squid.
        assert await eventually(lambda: transport_of(client, "websocket", negate=True), SETTLE)


async def test_forward_proxy_mode_chains_through_squid(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, proxy_env: pytest.MonkeyPatch
) -> None:
    """A client gateway without ``--upstream`` sends its clients' requests on through squid."""
    origin = await make_origin(hello)
    with running_squid() as squid:
        proxy_env.setenv("http_proxy", squid.url)
        entry = spawn_gateway("client")
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                async with http.get(f"{origin}/f{i}", proxy=entry.url) as resp:
                    assert (resp.status, await resp.text()) == (200, f"hello /f{i}")
        await asyncio.sleep(0.2)
        where = re.escape(host_port(origin))
        assert len(squid_lines(squid, rf"TCP_MISS/200 .* GET http://{where}/f\d")) == 3


async def test_forward_proxy_connect_chains_through_squid(
    make_origin: MakeOrigin,
    spawn_gateway: SpawnGateway,
    proxy_env: pytest.MonkeyPatch,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    """A client's ``CONNECT`` to the forward proxy is asked of squid in turn (``https_proxy``)."""
    origin = await make_origin(hello, ssl_context=server_tls)
    port = URL(origin).port
    assert port is not None
    with running_squid(connect_ports=(port,)) as squid:
        proxy_env.setenv("https_proxy", squid.url)
        entry = spawn_gateway("client")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{origin}/tls", proxy=entry.url, ssl=client_tls) as resp,
        ):
            assert (resp.status, await resp.text()) == (200, "hello /tls")
        entry.stop()  # squid logs a tunnel when it closes
        tunnel = rf"TCP_TUNNEL/200 .* CONNECT 127\.0\.0\.1:{port} "
        assert await eventually(lambda: bool(squid_lines(squid, tunnel)), 10)


async def test_forward_proxy_connect_refused_by_squid_is_a_502(
    make_origin: MakeOrigin,
    spawn_gateway: SpawnGateway,
    proxy_env: pytest.MonkeyPatch,
    server_tls: ssl.SSLContext,
) -> None:
    origin = await make_origin(hello, ssl_context=server_tls)
    with running_squid() as squid:  # as shipped: CONNECT to 443 only
        proxy_env.setenv("https_proxy", squid.url)
        entry = spawn_gateway("client")
        reader, writer = await asyncio.open_connection("127.0.0.1", URL(entry.url).port)
        target = host_port(origin)
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert f"proxy {squid.url} (https_proxy) refused CONNECT {target}".encode() in answer
