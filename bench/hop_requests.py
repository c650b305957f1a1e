"""Small-request throughput through hopgate, as ratios to a direct baseline.

Every figure is measured in the same run on the same machine, so the ratios
mean something even on a shared, noisy box:

    direct            client -> origin                                  (baseline)
    plain             client -> client gw -> server gw -> origin        (--upgrade never)
    websocket         the same, hop upgraded to a WebSocket session
    long-poll         the same, hop on a long-poll session (a relay
                      between the gateways refuses WebSocket upgrades)

Usage:  .venv/bin/python bench/hop_requests.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import build_config
from gateway.server import Gateway
from tests.faultproxy import FaultProxy
from tests.helpers import until


async def origin() -> tuple[web.AppRunner, str]:
    async def poll(request: web.Request) -> web.Response:
        return web.Response(body=b'{"messages": [], "next": 0}', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", poll)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@contextlib.asynccontextmanager
async def path(kind: str, origin_url: str) -> AsyncIterator[str]:
    """A URL that reaches the origin through the named path."""
    if kind == "direct":
        yield origin_url
        return
    upgrade = "never" if kind == "plain" else "auto"
    quiet = {"listen": "127.0.0.1:0", "upgrade": upgrade, "log_level": "warning"}
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            Gateway(build_config("server", {**quiet, "upstream": origin_url}))
        )
        upstream = server.url
        if kind == "long-poll":
            relay = FaultProxy("127.0.0.1", server.port)
            relay.refuse_upgrades = True
            await stack.enter_async_context(relay)
            upstream = relay.url
        client = await stack.enter_async_context(
            Gateway(build_config("client", {**quiet, "upstream": upstream}))
        )
        await wait_for_transport(client, "plain" if kind == "plain" else kind)
        yield client.url


async def wait_for_transport(gw: Gateway, transport: str) -> None:
    def on_it() -> bool:
        return [u.transport for u in gw.stats.upstreams.values()] == [transport]

    await until(on_it, f"the hop on {transport}", timeout=30)


async def measure(url: str, requests: int, concurrency: int) -> float:
    """Requests per second for ``requests`` small GETs, ``concurrency`` at a time."""
    async with aiohttp.ClientSession() as http:
        queue = iter(range(requests))

        async def worker() -> None:
            for i in queue:
                async with http.get(f"{url}/poll?since={i}") as resp:
                    assert resp.status == 200
                    await resp.read()

        await worker_pool(worker, 2)  # warm up connections
        queue = iter(range(requests))
        start = time.perf_counter()
        await worker_pool(worker, concurrency)
        return requests / (time.perf_counter() - start)


async def worker_pool(worker: Callable[[], Awaitable[None]], n: int) -> None:
    await asyncio.gather(*(worker() for _ in range(n)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    runner, origin_url = await origin()
    results: dict[str, dict[int, float]] = {}
    try:
        for kind in ("direct", "plain", "websocket", "long-poll"):
            async with path(kind, origin_url) as url:
                results[kind] = {
                    c: await measure(url, args.requests, c) for c in (1, args.concurrency)
                }
    finally:
        await runner.cleanup()
    base = results["direct"]
    c = args.concurrency
    print(f"{'path':<10} {'1 at a time':>16} {'x base':>7} {f'{c} at a time':>16} {'x base':>7}")
    for kind, by_c in results.items():
        one, many = by_c[1], by_c[c]
        print(
            f"{kind:<10} {one:>12.0f} r/s {one / base[1]:>7.2f} "
            f"{many:>12.0f} r/s {many / base[c]:>7.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
