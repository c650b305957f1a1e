"""bench/bare_tunnel.py: the bare WebSocket pair of the legacy table, as the suite runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bench.suite_procs import ROOT, hop_path
from tests.processes import free_port


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.path_qs,
            "cookie": request.headers.get("Cookie", ""),
            "body": body.decode(),
        },
        status=int(request.query.get("status", "200")),
        headers={"X-Origin": "yes"},
    )


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_requests_cross_whole_both_ways_and_concurrently(origin: str) -> None:
    route_cm = hop_path("bare-ws", origin, ROOT)
    route = await asyncio.to_thread(route_cm.__enter__)
    try:
        assert len(route.gateways) == 2  # near and far: their CPU is the column's
        async with aiohttp.ClientSession() as http:

            async def one(i: int) -> None:
                url = f"{route.url}/poll?since={i}&status={200 + i % 3}"
                async with http.post(url, data=f"body {i}", headers={"Cookie": f"c={i}"}) as r:
                    doc = await r.json()
                    assert r.status == 200 + i % 3 and r.headers["X-Origin"] == "yes"
                assert doc == {
                    "method": "POST",
                    "path_qs": f"/poll?since={i}&status={200 + i % 3}",
                    "cookie": f"c={i}",
                    "body": f"body {i}",
                }

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 30)
    finally:
        await asyncio.to_thread(route_cm.__exit__, None, None, None)


async def test_an_origin_or_far_side_that_is_gone_gives_a_502_not_a_hang() -> None:
    route_cm = hop_path("bare-ws", f"http://127.0.0.1:{free_port()}", ROOT)
    route = await asyncio.to_thread(route_cm.__enter__)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{route.url}/poll") as r:
                assert r.status == 502 and "origin:" in await r.text()
            route.gateways[1].stop(5)  # the far side
            async with http.get(f"{route.url}/poll") as r:
                # (whether near saw the close before this request or while sending it)
                assert r.status == 502 and "the far side is gone" in await r.text()
    finally:
        await asyncio.to_thread(route_cm.__exit__, None, None, None)
