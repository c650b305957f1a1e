"""``hopgate demo --browser``: the browser shim in a real browser, WebSocket blockable on its path.

Everything runs in this process on loopback::

    browser --> path switch --> hopgate server --> echo endpoint (WebSocket /ws)

The endpoint's origin serves the page (``gateway.demo.browser_page``) and
the shim's minified build from ``client_js/dist/`` (``make js`` makes it);
the gateway forwards them like any request and carries the page's
``HopSocket("/ws")`` as a hop session. The path switch
(``gateway.demo.switch``) is what the person plays with: the page's buttons
block and unblock WebSocket on it, and the page shows the transport change
live while its numbered echoes keep arriving, none lost, duplicated or out
of order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSMsgType, web

from gateway.config import build_config
from gateway.demo.browser_page import PAGE, SUBPROTOCOL
from gateway.demo.stack import SHUTDOWN_GRACE
from gateway.demo.switch import PathSwitch
from gateway.server import Gateway

__all__ = ["SHIM", "browser_demo", "main"]

#: The production build of the shim, as ``make js`` leaves it in a checkout.
SHIM = Path(__file__).resolve().parents[2] / "client_js" / "dist" / "hopgate.min.mjs"


def _origin_app(shim: Path) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def script(request: web.Request) -> web.Response:
        return web.Response(body=shim.read_bytes(), content_type="text/javascript")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/hopgate.min.mjs", script)
    app.router.add_get("/ws", echo)
    return app


@contextlib.asynccontextmanager
async def browser_demo(
    host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[str, PathSwitch]]:
    """Start endpoint, gateway and path switch; yields the page's URL and the switch."""
    if not SHIM.exists():
        raise FileNotFoundError(f"{SHIM} is missing: build the browser shim first (make js)")
    runner = web.AppRunner(_origin_app(SHIM), shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        config = build_config(
            "server",
            {"listen": "127.0.0.1:0", "upstream": origin, "shutdown_grace": SHUTDOWN_GRACE},
        )
        async with Gateway(config) as gateway:
            switch = PathSwitch(gateway.url)
            async with switch.serving(host, port) as url:
                yield url + "/", switch
    finally:
        await runner.cleanup()


async def _run(host: str, port: int, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with browser_demo(host, port) as (url, _switch):
        print(f"hopgate demo --browser: open {url} in a browser (Ctrl-C stops)", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)


def main(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C (or ``--duration``)."""
    host, _, port = (args.listen or "127.0.0.1:8480").rpartition(":")
    if not port.isdigit():
        print("hopgate demo: error: --listen takes HOST:PORT (port 0: a free one)", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(host or "127.0.0.1", int(port), args.duration))
    except (OSError, FileNotFoundError) as exc:
        print(f"hopgate demo: error: {exc}", file=sys.stderr)
        return 1
    return 0
