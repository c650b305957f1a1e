"""A legacy endpoint's own WebSocket through gateways, against a real aiohttp origin.

Every test runs on two paths:

* ``chain``: client -> ``hopgate client --upstream`` -> ``hopgate server`` -> origin;
* ``forward``: client with ``proxy=`` -> forward-proxy gateway -> origin
  (aiohttp sends the upgrade in absolute form, ``GET http://origin/ws``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.server import Gateway
from tests.conftest import MakeOrigin
from tests.helpers import running_gateway, until

LIMIT = 10.0


@dataclass
class Origin:
    """A WebSocket origin that echoes, closes on request and records what it saw."""

    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)
    closes: asyncio.Queue[tuple[int | None, str]] = field(default_factory=asyncio.Queue)

    async def ws(self, request: web.Request) -> web.StreamResponse:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        ws = web.WebSocketResponse(
            protocols=("chat.v2",), autoclose=False, max_msg_size=32 * 1024 * 1024
        )
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
                _, code, reason = msg.data.split(":", 2)
                await ws.close(code=int(code), message=reason.encode())
                await self.closes.put((ws.close_code, "(reply)"))
                break
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                # Answer with the client's own code, as RFC 6455 5.5.1 suggests.
                await self.closes.put((msg.data, msg.extra))
                await ws.close(code=msg.data)
                break
            else:
                await self.closes.put((ws.close_code, f"({msg.type.name})"))
                break
        return ws

    async def refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets for you", headers={"X-Why": "policy"})


@pytest.fixture
async def origin(make_origin: MakeOrigin) -> Origin:
    server = Origin()
    app = web.Application()
    app.router.add_get("/ws", server.ws)
    app.router.add_get("/refuse", server.refuse)
    server.url = await make_origin(app)
    return server


@dataclass
class Path:
    """How a client reaches ``origin`` through gateways."""

    session: aiohttp.ClientSession
    base: str
    proxy: str | None
    gateways: list[Gateway]

    async def connect(self, path: str = "/ws", **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(
            self.base + path, proxy=self.proxy, autoping=False, **kwargs
        )

    def active(self) -> int:
        return sum(gw.stats.active_websockets for gw in self.gateways)


@contextlib.asynccontextmanager
async def open_path(kind: str, origin: Origin, **settings: Any) -> AsyncIterator[Path]:
    """``kind`` (``chain`` or ``forward``) to ``origin``, every gateway given ``settings``."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        if kind == "chain":
            sidecar = running_gateway("server", upstream=origin.url, **settings)
            sidecar_gw = await stack.enter_async_context(sidecar)
            local = running_gateway("client", upstream=sidecar_gw.url, **settings)
            local_gw = await stack.enter_async_context(local)
            yield Path(session, local_gw.url, None, [local_gw, sidecar_gw])
        else:
            proxy = await stack.enter_async_context(running_gateway("client", **settings))
            yield Path(session, origin.url, proxy.url, [proxy])


@pytest.fixture(params=["chain", "forward"])
async def path(request: pytest.FixtureRequest, origin: Origin) -> AsyncIterator[Path]:
    async with open_path(request.param, origin) as opened:
        yield opened


async def test_text_and_binary_echo_both_ways(path: Path) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect()
        await ws.send_str("hello ☃")
        assert (await ws.receive()).data == "hello ☃"
        await ws.send_bytes(b"\x00\xffbinary")
        msg = await ws.receive()
        assert msg.type is WSMsgType.BINARY
        assert msg.data == b"\x00\xffbinary"
        assert path.active() == len(path.gateways)
        await ws.close()
        await until(lambda: path.active() == 0)


async def test_large_message_arrives_whole(path: Path) -> None:
    big = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB, above aiohttp's default limit
    async with asyncio.timeout(LIMIT):
        ws = await path.connect(max_msg_size=0)
        await ws.send_bytes(big)
        assert (await ws.receive()).data == big
        await ws.close()


@pytest.mark.parametrize("kind", ["chain", "forward"])
async def test_oversize_message_closes_both_sides_with_1009(origin: Origin, kind: str) -> None:
    """``--max-message-size`` bounds an endpoint's WebSocket messages, tunnelled or not."""
    async with open_path(kind, origin, max_message_size=64 * 1024) as path:
        async with asyncio.timeout(LIMIT):
            ws = await path.connect()
            await ws.send_bytes(b"x" * (64 * 1024))
            assert len((await ws.receive()).data) == 64 * 1024  # at the limit: it passes
            await ws.send_bytes(b"x" * (64 * 1024 + 1))
            msg = await ws.receive()
            assert msg.type is WSMsgType.CLOSE
            assert msg.data == 1009
            code, _ = await origin.closes.get()
            assert code == 1009
            await until(lambda: path.active() == 0)


async def test_ping_is_answered_end_to_end(path: Path) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect()
        await ws.ping(b"are you there")
        msg = await ws.receive()
        assert msg.type is WSMsgType.PONG
        assert msg.data == b"are you there"
        await ws.close()


async def test_subprotocol_chosen_by_origin_is_echoed(path: Path, origin: Origin) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect(protocols=("chat.v1", "chat.v2"))
        assert ws.protocol == "chat.v2"
        assert origin.headers[-1]["sec-websocket-protocol"] == "chat.v1,chat.v2"
        await ws.close()


async def test_no_subprotocol_when_origin_supports_none_offered(path: Path) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect(protocols=("chat.v9",))
        assert ws.protocol is None
        await ws.close()


async def test_end_to_end_headers_reach_origin(path: Path, origin: Origin) -> None:
    headers = {"Cookie": "sid=42", "Authorization": "Bearer t0k", "Origin": "http://app.example"}
    async with asyncio.timeout(LIMIT):
        ws = await path.connect(headers=headers)
        await ws.close()
    seen = origin.headers[-1]
    assert seen["cookie"] == "sid=42"
    assert seen["authorization"] == "Bearer t0k"
    assert seen["origin"] == "http://app.example"
    assert "hopgate" in seen["via"]
    assert seen["upgrade"] == "websocket"


async def test_client_close_code_and_reason_reach_origin_and_come_back(
    path: Path, origin: Origin
) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect()
        await ws.close(code=4001, message=b"client done")
        assert ws.close_code == 4001
        assert await origin.closes.get() == (4001, "client done")
        await until(lambda: path.active() == 0)


async def test_origin_close_code_and_reason_reach_client_and_its_answer_goes_back(
    path: Path, origin: Origin
) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect(autoclose=False)
        await ws.send_str("close:4002:origin done")
        msg = await ws.receive()
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4002, "origin done")
        await ws.close(code=4003)
        assert await origin.closes.get() == (4003, "(reply)")
        await until(lambda: path.active() == 0)


async def test_origin_refusal_is_passed_back_with_status_and_body(path: Path) -> None:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with asyncio.timeout(LIMIT):
        async with path.session.get(
            path.base + "/refuse", headers=headers, proxy=path.proxy
        ) as resp:
            assert resp.status == 403
            assert resp.headers["X-Why"] == "policy"
            assert await resp.text() == "no sockets for you"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await path.connect("/refuse")
        assert info.value.status == 403
    assert path.active() == 0


async def test_invalid_client_handshake_gets_400_before_reaching_origin(
    path: Path, origin: Origin
) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket"}  # no key, no version
    async with (
        asyncio.timeout(LIMIT),
        path.session.get(path.base + "/ws", headers=headers, proxy=path.proxy) as resp,
    ):
        assert resp.status == 400
        assert "invalid WebSocket handshake" in await resp.text()
    assert origin.headers == []


async def test_missing_origin_path_gives_the_origins_404(path: Path) -> None:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await path.connect("/nowhere")
        assert info.value.status == 404


async def test_client_vanishing_closes_the_origin_side(path: Path, origin: Origin) -> None:
    async with asyncio.timeout(LIMIT):
        ws = await path.connect()
        await ws.send_str("x")
        await ws.receive()
        # Drop the TCP connection without a Close frame.
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        code, _ = await origin.closes.get()
        assert code == 1001
        await until(lambda: path.active() == 0)
