"""bench/bare_ws_relay.py: the stock-aiohttp WebSocket relay beside the hop message columns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from bench.bare_ws_relay import relay_app
from tests.processes import free_port

#: The close codes the origin received from a client that closed first.
CLOSED_WITH = web.AppKey("closed_with", list[int | None])


async def origin_ws(request: web.Request) -> web.WebSocketResponse:
    """Echoes each message; "close" makes it close first, with 4001."""
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT and msg.data == "close":
            await ws.close(code=4001, message=b"origin done")
            return ws
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        else:
            await ws.send_bytes(msg.data)
    request.app[CLOSED_WITH].append(ws.close_code)
    return ws


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def origin() -> AsyncIterator[tuple[str, list[int | None]]]:
    app = web.Application()
    app[CLOSED_WITH] = closed = []
    app.router.add_get("/ws", origin_ws)
    runner, url = await serve(app)
    yield url, closed
    await runner.cleanup()


@pytest.fixture
async def relay(origin: tuple[str, list[int | None]]) -> AsyncIterator[str]:
    runner, url = await serve(relay_app(origin[0]))
    yield url
    await runner.cleanup()


async def test_messages_cross_both_ways_in_order_whatever_their_size(relay: str) -> None:
    sent: list[bytes | str] = [
        bytes([i % 256]) * (1 + i * 997 % 70_000) if i % 3 else f"text {i}" for i in range(200)
    ]
    async with aiohttp.ClientSession() as http, http.ws_connect(relay + "/ws") as ws:
        for data in sent:
            await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))
        got = [(await asyncio.wait_for(ws.receive(), 10)).data for _ in sent]
    assert got == sent  # each message whole, text as text, in order


async def test_a_close_crosses_with_its_code_either_way(
    relay: str, origin: tuple[str, list[int | None]]
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(relay + "/ws") as ws:
            await ws.send_str("close")  # the origin closes first
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type is WSMsgType.CLOSE and msg.data == 4001
        async with http.ws_connect(relay + "/ws") as ws:
            await ws.close(code=4002)  # the client closes first
        for _ in range(100):
            if 4002 in origin[1]:
                break
            await asyncio.sleep(0.05)
        assert origin[1] == [4002]


async def test_a_target_that_is_gone_closes_the_client_with_1011_saying_so() -> None:
    runner, url = await serve(relay_app(f"http://127.0.0.1:{free_port()}"))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws") as ws:
            msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1011
        assert msg.extra.startswith("bare_ws_relay: target")
    finally:
        await runner.cleanup()
