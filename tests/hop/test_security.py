"""Hop security at the gateway level: no open proxy through a tunnel, hop secret, origins.

* A tunnelled stream is just another way for a request to reach a gateway;
  it must not reach anything but the gateway's configured upstream, whatever
  target or ``Host`` it names.  An attacker speaking the tunnel protocol
  directly (a raw ``Tunnel`` core over a real hop session) tries.
* ``--hop-secret`` / ``--hop-secret-file``: a gateway without the secret gets
  a clear 403 when it tries to open a session and keeps working over plain
  HTTP.
* ``--allowed-origin``: a browser page of a foreign origin cannot open (or
  use) a hop session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.cli import build_parser, settings_from_args
from gateway.config import ConfigError, build_config
from gateway.core.tunnel import (
    Event,
    ResponseReceived,
    StreamReset,
)
from gateway.server import Gateway
from gateway.status import STATUS_PATH
from gateway.transports.handshake import AUTH_HEADER, SESSION_PATH, auth_header_value
from tests.glue.rawpeers import raw_session
from tests.helpers import until
from tests.hop.conftest import StartGateway

pytestmark = pytest.mark.timeout(60)


def upstream_entry(gw: Gateway) -> dict[str, Any]:
    [state] = gw.stats.upstreams.values()
    return state.as_json()


class Recorder:
    """An origin that logs every request it gets: ``GET /path Host``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.lines.append(f"{request.method} {request.raw_path}")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws
        return web.Response(text=self.name)


def is_refused(event: Event) -> bool:
    return isinstance(event, StreamReset) or (
        isinstance(event, ResponseReceived) and event.status >= 400
    )


ESCAPES = [
    ("GET", "http://127.0.0.1:{evil}/steal"),
    ("GET", "http://127.0.0.1:{evil}"),
    ("CONNECT", "127.0.0.1:{evil}"),
    ("GET", "//127.0.0.1:{evil}/steal"),
    ("OPTIONS", "*"),
    ("GET", "127.0.0.1:{evil}/steal"),
]


@pytest.mark.parametrize("role", ["server", "relay", "forward-proxy"])
async def test_a_tunnelled_request_reaches_only_the_upstream(
    role: str, make_origin: Any, start_gateway: StartGateway
) -> None:
    upstream, evil = Recorder("upstream"), Recorder("evil")
    upstream_url = await make_origin(upstream.handle)
    evil_url = URL(await make_origin(evil.handle))
    if role == "server":
        target_gw = await start_gateway("server", {"upstream": upstream_url})
    elif role == "relay":
        # The attacked gateway relays over its own session to the next one.
        server = await start_gateway("server", {"upstream": upstream_url})
        target_gw = await start_gateway("client", {"upstream": server.url})
        await until(lambda: upstream_entry(target_gw)["transport"] == "websocket", "relay hop")
    else:
        target_gw = await start_gateway("client")  # a forward proxy: no upstream at all
    async with raw_session(target_gw.url) as raw:

        async def ask(method: str, target: bytes, host: str) -> Event | None:
            return (await raw.answer(raw.open(method, target, [("Host", host)]))).head

        async def ask_websocket(target: bytes) -> Event | None:
            sid = raw.tunnel.open_websocket(target, [("Host", "x")], [])
            raw.flush()
            return (await raw.answer(sid)).head

        evil_host = f"127.0.0.1:{evil_url.port}"
        for method, pattern in ESCAPES:
            target = pattern.format(evil=evil_url.port).encode()
            answer = await ask(method, target, evil_host)
            assert answer is not None and is_refused(answer), (method, target, answer)
        answer = await ask_websocket(f"http://{evil_host}/ws".encode())
        assert answer is not None and is_refused(answer), answer

        # Host names the evil origin: the connection still goes to the upstream.
        answer = await ask("GET", b"/steal", evil_host)
        assert not raw.hop.closed, "a refused stream must not cost the session"
    if role == "forward-proxy":
        assert answer is not None and is_refused(answer), answer
        assert upstream.lines == []
    else:
        assert isinstance(answer, ResponseReceived) and answer.status == 200, answer
        assert upstream.lines[-1] == "GET /steal"
    assert evil.lines == []
    assert all(" /" in line for line in upstream.lines), upstream.lines


async def test_the_http_side_is_no_open_proxy_either(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    upstream, evil = Recorder("upstream"), Recorder("evil")
    gw = await start_gateway("server", {"upstream": await make_origin(upstream.handle)})
    evil_url = await make_origin(evil.handle)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{evil_url}/steal", proxy=gw.url) as resp,
    ):
        assert resp.status == 400
    assert evil.lines == []


# ---------------------------------------------------------------- hop secret


async def test_without_the_hop_secret_a_gateway_gets_403_and_stays_plain(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = Recorder("origin")
    server = await start_gateway(
        "server", {"upstream": await make_origin(origin.handle), "hop_secret": "s3cret-hop-secret"}
    )
    for secret in (None, "wrong-hop-secret-value"):
        settings = {"upstream": server.url} | ({"hop_secret": secret} if secret else {})
        client = await start_gateway("client", settings)
        await until(lambda c=client: "403" in upstream_entry(c)["last_error"], "the refusal")  # type: ignore[misc]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{client.url}/still-works") as resp:
                assert resp.status == 200
                assert await resp.text() == "origin"
            async with http.get(client.url + STATUS_PATH) as resp:
                [status] = (await resp.json())["upstreams"]
        assert status["transport"] == "plain"
        assert status["peer"] == "gateway"  # it is one; it just may not open sessions
        assert "hop secret" in status["last_error"]
    assert server.stats.active_sessions == 0
    assert origin.lines.count("GET /still-works") == 2

    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + SESSION_PATH) as resp:
            assert resp.status == 403
            assert "hop secret" in await resp.text()
        headers = {AUTH_HEADER: auth_header_value("s3cret-hop-secret")}
        async with http.post(server.url + SESSION_PATH, headers=headers) as resp:
            assert resp.status == 200


async def test_a_captured_hop_secret_header_cannot_be_replayed(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    """A tap between two gateways records the client's proof; replaying it gets 403."""
    server = await start_gateway(
        "server",
        {"upstream": await make_origin(Recorder("o").handle), "hop_secret": "s3cret-hop-secret"},
    )
    captured: list[str] = []
    answered: list[int] = []
    async with aiohttp.ClientSession() as relay_http:

        async def tap(request: web.Request) -> web.StreamResponse:
            if request.method == "POST" and request.path == SESSION_PATH:
                captured.append(request.headers.get(AUTH_HEADER, ""))
            skip = {"host", "upgrade", "connection", "content-length", "transfer-encoding"}
            headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
            async with relay_http.request(
                request.method, server.url + request.path_qs, headers=headers,
                data=await request.read(), timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:  # fmt: skip
                body = await resp.read()
                if request.method == "POST" and request.path == SESSION_PATH:
                    answered.append(resp.status)
                keep = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
                return web.Response(status=resp.status, body=body, headers=keep)

        tap_url = await make_origin(tap)
        await start_gateway("client", {"upstream": tap_url, "hop_secret": "s3cret-hop-secret"})
        await until(lambda: bool(answered), "the client gateway's session POST")
    [proof] = captured[:1]
    assert proof.startswith("v2 ") and len(proof.split()) == 4  # time, nonce, MAC
    assert answered[0] == 200
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + SESSION_PATH, headers={AUTH_HEADER: proof}) as resp:
            assert resp.status == 403
            assert "replayed" in await resp.text()
        fresh = {AUTH_HEADER: auth_header_value("s3cret-hop-secret")}
        async with http.post(server.url + SESSION_PATH, headers=fresh) as resp:
            assert resp.status == 200


async def test_hop_secret_file_lets_the_session_open(
    tmp_path: Path, make_origin: Any, start_gateway: StartGateway
) -> None:
    secret_file = tmp_path / "hop.secret"
    secret_file.write_text("s3cret-hop-secret\n")
    secret_file.chmod(0o600)
    server = await start_gateway(
        "server",
        {"upstream": await make_origin(Recorder("o").handle), "hop_secret_file": str(secret_file)},
    )
    client = await start_gateway(
        "client", {"upstream": server.url, "hop_secret_file": str(secret_file)}
    )
    await until(lambda: upstream_entry(client)["transport"] == "websocket", "the session")
    assert server.config.hop_secret == "s3cret-hop-secret"
    assert server.stats.active_sessions == 1


def test_hop_secret_file_flag_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("  abc def ghi jkl mno \n")
    args = build_parser().parse_args(
        ["server", "--upstream", "http://127.0.0.1:9", "--hop-secret-file", str(path)]
    )
    config = build_config("server", settings_from_args(args))
    assert config.hop_secret == "abc def ghi jkl mno"
    assert config.hop_secret_file == path
    upstream = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="not both"):
        build_config(
            "server", {"upstream": upstream, "hop_secret": "x", "hop_secret_file": str(path)}
        )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        build_config("server", {"upstream": upstream, "hop_secret_file": str(empty)})
    with pytest.raises(ConfigError, match="no such file"):
        build_config("server", {"upstream": upstream, "hop_secret_file": str(tmp_path / "nope")})
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            build_config("server", {"upstream": upstream, "hop_secret_file": str(path)})


# ------------------------------------------------------------ browser origins


async def test_foreign_browser_origins_cannot_open_or_use_sessions(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(
        "server",
        {
            "upstream": await make_origin(Recorder("o").handle),
            "allowed_origins": ["https://app.example"],
        },
    )
    own = f"http://127.0.0.1:{gw.port}"
    cases = {
        "https://evil.example": 403,
        "null": 403,
        f"http://127.0.0.1:{gw.port + 1 if gw.port < 65535 else 1}": 403,
        "https://127.0.0.1": 403,  # same host, another port
        f"http://localhost:{gw.port}": 403,  # another host name
        own: 200,
        own.upper(): 200,
        "https://app.example": 200,
        "https://APP.example/": 200,
    }
    async with aiohttp.ClientSession() as http:
        for origin, expected in cases.items():
            async with http.post(gw.url + SESSION_PATH, headers={"Origin": origin}) as resp:
                assert resp.status == expected, (origin, await resp.text())
                if expected == 403:
                    assert "origin" in (await resp.text()).lower()
        async with http.post(gw.url + SESSION_PATH) as resp:  # not a browser: no Origin
            assert resp.status == 200
            session_id = resp.headers["X-Hopgate-Session"]
        # Using an existing session from a foreign page is refused as well.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                f"{gw.url}{SESSION_PATH}/{session_id}?epoch=1",
                protocols=["hopgate.v1"],
                headers={"Origin": "https://evil.example"},
            )
        assert refused.value.status == 403
