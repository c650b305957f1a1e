"""The ``deploy/`` recipes, run for real: nginx, HAProxy and squid between hopgate pieces.

Reverse proxies sit where operators put them, in front of the sidecar::

    legacy client -> hopgate client -> nginx | HAProxy -> hopgate server -> origin

and squid where a corporate network puts it, in front of a legacy client::

    legacy client --(http proxy)--> squid -> hopgate server -> origin

Every proxy runs from its recipe with only the ``{{TOKENS}}`` filled in (see
``tests/proxies.py``), so a broken recipe fails here.  Origins are the demo
Comet chat (``hold`` = ``HOLD`` s), an SSE stream that only sends the next
event once the client has seen the previous one (a proxy that buffers
deadlocks it, and the test times out), and an aiohttp WebSocket echo.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.config import Config
from gateway.demo.comet import make_app
from gateway.demo.legacy_client import LegacyChatClient
from gateway.server import Gateway
from tests.processes import LISTENING, GatewayProcess
from tests.proxies import (  # noqa: F401  (proxies is a fixture)
    DEPLOY_DIR,
    Proxies,
    ProxyProcess,
    find_binary,
    proxies,
)

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

#: How long the Comet origin holds an empty poll.
HOLD = 2.0
#: Bound on each test's network part.
STEP_TIMEOUT = 15.0

REVERSE_PROXIES = ["nginx", "haproxy"]
WEBSOCKET_PROXIES = ["nginx-ws", "haproxy"]

# -------------------------------------------------------------------- origins


def ws_echo_app() -> web.Application:
    """``GET /ws``: says ``welcome`` unprompted, then echoes every message."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("welcome")
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


SSE_EVENTS = 4


def lockstep_sse_app(seen: list[asyncio.Event]) -> web.Application:
    """``GET /events``: event ``i`` is written only after the client has seen ``i - 1``.

    A proxy that holds the stream back until its buffer fills or the response
    ends never lets the client see event 1, so the origin never sends event 2.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await resp.prepare(request)
        for i in range(SSE_EVENTS):
            await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
            await seen[i].wait()
        return resp

    app = web.Application()
    app.router.add_get("/events", handler)
    return app


# --------------------------------------------------------------------- chains


@dataclass
class Chain:
    """client gateway -> proxy -> server gateway -> origin; legacy clients use ``url``."""

    origin: str
    server: Gateway
    proxy: ProxyProcess
    client: Gateway

    @property
    def url(self) -> str:
        return self.client.url


BuildChain = Callable[[str, web.Application], Awaitable[Chain]]


@pytest.fixture
async def chain(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    proxies: Proxies,  # noqa: F811
) -> AsyncIterator[BuildChain]:
    """``await chain(kind, app)``: the whole path, ``kind`` as in ``Proxies.reverse``."""

    async def build(kind: str, app: web.Application) -> Chain:
        origin = await make_origin(app)
        server = await make_gateway("server", {"upstream": origin})
        proxy = proxies.reverse(kind, server.url)
        client = await make_gateway("client", {"upstream": proxy.url})
        return Chain(origin=origin, server=server, proxy=proxy, client=client)

    yield build


async def held_poll_released_by_send(ann: LegacyChatClient, bob: LegacyChatClient) -> None:
    """``ann``'s poll is held until ``bob`` sends, then brings exactly that message."""
    loop = asyncio.get_running_loop()
    poll = asyncio.create_task(ann.poll_once())
    try:
        await asyncio.sleep(0.5)
        assert not poll.done(), f"the poll was answered at once, not held: {poll.result()}"
        sent_at = loop.time()
        receipt = await bob.send("wake up")
        messages = await poll
    finally:
        poll.cancel()
    assert [(m.id, m.sender, m.text) for m in messages] == [(receipt.id, "bob", "wake up")]
    assert loop.time() - sent_at < HOLD / 2, "the poll ended with the hold, not with the send"


async def empty_poll_lasts_the_hold(ann: LegacyChatClient) -> None:
    """With nothing to say the origin answers after ``HOLD``: the path keeps it open."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await ann.poll_once() == []
    assert HOLD - 0.2 < loop.time() - started < HOLD + 2.0


# ---------------------------------------------------------- reverse proxies


@pytest.mark.parametrize("kind", REVERSE_PROXIES)
async def test_held_poll_is_released_by_send(kind: str, chain: BuildChain) -> None:
    path = await chain(kind, make_app(hold=HOLD))
    async with (
        asyncio.timeout(STEP_TIMEOUT),
        LegacyChatClient(path.url, "ann") as ann,
        LegacyChatClient(path.url, "bob") as bob,
    ):
        await held_poll_released_by_send(ann, bob)
        await empty_poll_lasts_the_hold(ann)


@pytest.mark.parametrize("kind", REVERSE_PROXIES)
async def test_post_bodies_arrive(kind: str, chain: BuildChain) -> None:
    path = await chain(kind, make_app(hold=HOLD))
    texts = ["plain", "ünïcödé ✓ 中文", "x" * 3000]
    async with (
        asyncio.timeout(STEP_TIMEOUT),
        LegacyChatClient(path.url, "ann") as ann,
    ):
        for text in texts:
            await ann.send(text)
        # A chunked upload (no Content-Length) passes too.
        body = json.dumps({"from": "ann", "text": "chunked"}).encode()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 7):
                yield body[i : i + 7]

        async with ann.session.post(f"{path.url}/send", data=chunks()) as resp:
            assert resp.status == 200, await resp.text()
        received = await ann.poll_once()
    assert [(m.sender, m.text) for m in received] == [("ann", t) for t in [*texts, "chunked"]]
    assert [m.id for m in received] == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", REVERSE_PROXIES)
async def test_sse_streams_event_by_event(kind: str, chain: BuildChain) -> None:
    seen = [asyncio.Event() for _ in range(SSE_EVENTS)]
    path = await chain(kind, lockstep_sse_app(seen))
    async with (
        asyncio.timeout(STEP_TIMEOUT),
        aiohttp.ClientSession() as session,
        session.get(f"{path.url}/events") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for i in range(SSE_EVENTS):
            try:
                async with asyncio.timeout(3.0):
                    event = await resp.content.readuntil(b"\n\n")
            except TimeoutError:
                pytest.fail(f"event {i} did not arrive on its own: {kind} buffers the stream")
            assert event == f"id: {i}\ndata: event {i}\n\n".encode()
            seen[i].set()
        assert await resp.content.read() == b""


# ------------------------------------------------------------- WebSockets


async def echo_round_trip(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive(timeout=5)).data == "welcome"
        await ws.send_str("ping ✓")
        assert (await ws.receive(timeout=5)).data == "ping ✓"
        payload = bytes(range(256)) * 300
        await ws.send_bytes(payload)
        reply = await ws.receive(timeout=5)
        assert reply.type == WSMsgType.BINARY
        assert reply.data == payload
        await ws.close()
    assert ws.close_code == 1000


@pytest.mark.parametrize("kind", WEBSOCKET_PROXIES)
async def test_recipe_passes_websocket_directly(
    kind: str,
    make_origin: MakeOrigin,
    proxies: Proxies,  # noqa: F811
) -> None:
    """The proxy alone, no gateway: proves the recipe carries WebSockets."""
    origin = await make_origin(ws_echo_app())
    proxy = proxies.reverse(kind, origin)
    async with asyncio.timeout(STEP_TIMEOUT):
        await echo_round_trip(f"{proxy.url}/ws")


async def test_default_nginx_recipe_does_not_pass_websocket(
    make_origin: MakeOrigin,
    proxies: Proxies,  # noqa: F811
) -> None:
    """nginx's default behaviour is kept: Upgrade is a hop-by-hop header it drops."""
    origin = await make_origin(ws_echo_app())
    proxy = proxies.nginx(origin)
    async with aiohttp.ClientSession() as session, asyncio.timeout(STEP_TIMEOUT):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{proxy.url}/ws")
    assert refused.value.status == 400


@pytest.mark.parametrize("kind", WEBSOCKET_PROXIES)
async def test_endpoint_websocket_echo_through_gateways(kind: str, chain: BuildChain) -> None:
    """client gateway -> nginx(websocket) | HAProxy -> server gateway -> echo origin."""
    path = await chain(kind, ws_echo_app())
    async with asyncio.timeout(STEP_TIMEOUT):
        await echo_round_trip(f"{path.url}/ws")


# ------------------------------------------------------------------- squid


async def test_squid_forwards_long_polls_to_the_sidecar(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    proxies: Proxies,  # noqa: F811
) -> None:
    """Legacy clients behind a corporate squid reach ``hopgate server``: held poll, POST."""
    vias: list[str] = []
    app = make_app(hold=HOLD)

    async def record_via(request: web.Request, response: web.StreamResponse) -> None:
        vias.append(request.headers.get("Via", ""))

    app.on_response_prepare.append(record_via)
    origin = await make_origin(app)
    sidecar = await make_gateway("server", {"upstream": origin})
    squid = proxies.squid()
    async with (
        asyncio.timeout(STEP_TIMEOUT),
        aiohttp.ClientSession(proxy=squid.url) as ann_http,
        aiohttp.ClientSession(proxy=squid.url) as bob_http,
        LegacyChatClient(sidecar.url, "ann", session=ann_http) as ann,
        LegacyChatClient(sidecar.url, "bob", session=bob_http) as bob,
    ):
        await held_poll_released_by_send(ann, bob)
        await bob.send("second")
        assert [m.text for m in await ann.poll_once()] == ["second"]
    assert vias, "nothing reached the origin"
    # squid names itself in Via, the sidecar adds its own entry after it.
    assert all(re.search(r"\(squid/[\d.]+\).*hopgate", via) for via in vias), vias


# ------------------------------------------------------------ static checks


def timeouts_in_seconds(path: Path, pattern: str) -> list[float]:
    units = {"s": 1, "m": 60, "h": 3600, " minutes": 60, " seconds": 1, "": 1}
    found = re.findall(pattern, path.read_text(), flags=re.MULTILINE)
    assert found, f"{pattern!r} not in {path}"
    return [float(value) * units[unit] for value, unit in found]


@pytest.mark.parametrize(
    ("recipe", "pattern"),
    [
        ("nginx/hopgate-default.conf", r"^\s*proxy_read_timeout (\d+)(s|m|h|);"),
        ("nginx/hopgate-websocket.conf", r"^\s*proxy_read_timeout (\d+)(s|m|h|);"),
        ("haproxy/hopgate.cfg", r"^\s*timeout (?:client|server|tunnel) (\d+)(s|m|h|)$"),
        ("squid/squid.conf", r"^read_timeout (\d+)( minutes| seconds)$"),
    ],
    ids=["nginx-default", "nginx-websocket", "haproxy", "squid"],
)
def test_recipe_waits_longer_than_the_gateway(recipe: str, pattern: str) -> None:
    """A held request outlives hopgate's own ``--upstream-timeout``, so its 504 comes first.

    (The held poll itself is only ``HOLD`` seconds in the live tests.)
    """
    gateway_wait = Config(role="server").upstream_timeout
    for seconds in timeouts_in_seconds(DEPLOY_DIR / recipe, pattern):
        assert seconds > gateway_wait, f"{recipe}: {seconds}s <= {gateway_wait}s"


# ------------------------------------------------------------------ systemd


UNITS = ["hopgate-server.service", "hopgate-client.service"]
RECIPE_BINARY = "/opt/hopgate/bin/hopgate"


def hopgate_binary() -> str:
    path = Path(sys.executable).parent / "hopgate"
    assert path.exists(), f"{path} missing: the package is not installed in this venv"
    return str(path)


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_verifies_and_is_hardened(unit: str, tmp_path: Path) -> None:
    analyze = find_binary("systemd-analyze")
    text = (DEPLOY_DIR / "systemd" / unit).read_text()
    assert RECIPE_BINARY in text
    (tmp_path / unit).write_text(text.replace(RECIPE_BINARY, hopgate_binary()))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    settings = unit_settings(text)
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
    }.items():
        assert settings.get(key) == [value], f"{unit}: {key}={settings.get(key)}"


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_exec_start_serves_and_stops_in_time(unit: str, tmp_path: Path) -> None:
    """The unit's ExecStart, with a config file, listens; KillSignal stops it in time."""
    settings = unit_settings((DEPLOY_DIR / "systemd" / unit).read_text())
    argv = settings["ExecStart"][0].split()
    role = argv[1]
    config_file = tmp_path / "hopgate.toml"
    lines = ['listen = "127.0.0.1:0"']
    if role == "server":
        lines.append('upstream = "http://127.0.0.1:9"')
    config_file.write_text("\n".join(lines) + "\n")
    argv = [hopgate_binary() if a == RECIPE_BINARY else a for a in argv]
    argv[argv.index("--config") + 1] = str(config_file)
    stop_within = float(settings["TimeoutStopSec"][0].removesuffix("s"))

    gw = GatewayProcess.start(argv, name=f"hopgate {role}", announce=LISTENING)
    try:
        url = gw.wait_announced()
        with urllib.request.urlopen(f"{url}/.hopgate/status", timeout=5) as resp:
            assert json.load(resp)["role"] == role
        gw.send_signal(getattr(signal, settings["KillSignal"][0]))
        assert gw.wait(stop_within) == 0, gw.output()
    finally:
        gw.stop(1.0)
