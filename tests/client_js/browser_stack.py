"""The stack of the browser tests: an echo origin behind a gateway, and a headless Chromium.

Import the fixtures into the test module (``stack_fixture`` and
``browser_fixture``, named ``stack`` and ``browser``). The origin
serves the test page (``page.py``), the shim's builds from
``client_js/dist/`` and a WebSocket echo at ``/ws``; ``EchoLog`` is what the
echo saw. Chromium is Debian's; Playwright only drives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import WSMsgType, web

from tests.client_js.page import (
    CLASSIC_BUILDS,
    DIST,
    MODULE_BUILDS,
    SUBPROTOCOL,
    classic_page,
    dist_file,
    module_page,
)
from tests.conftest import MakeGateway, MakeOrigin
from tests.faultproxy import FaultProxy

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class EchoLog:
    """What the endpoint saw."""

    connections: int = 0
    received: list[str | bytes] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)


def origin_app(log: EchoLog) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        build = request.query.get("build", MODULE_BUILDS[0])
        if build in MODULE_BUILDS:
            return web.Response(text=module_page(build), content_type="text/html")
        if build in CLASSIC_BUILDS:
            return web.Response(text=classic_page(build), content_type="text/html")
        raise web.HTTPNotFound()

    async def shim(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in MODULE_BUILDS + CLASSIC_BUILDS:
            raise web.HTTPNotFound()
        text = (DIST / name).read_text(encoding="utf-8")
        return web.Response(text=text, content_type="text/javascript")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        log.connections += 1
        reason = ""
        while True:  # not `async for`: it hides the CLOSE message, and its reason
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                log.received.append(msg.data)
                if msg.data.startswith("close-me "):
                    _, code, text = msg.data.split(" ", 2)
                    await ws.close(code=int(code), message=text.encode())
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                log.received.append(msg.data)
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                reason = msg.extra or ""
                break
            else:  # CLOSING, CLOSED, ERROR
                break
        log.closes.append((ws.close_code, reason))
        return ws

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/{name:hopgate[.a-z]+js}", shim)
    app.router.add_get("/ws", echo)
    return app


@dataclass
class Stack:
    origin: str
    gateway: str
    log: EchoLog

    @property
    def native_ws(self) -> str:
        """The echo endpoint reached directly, for comparing with a browser WebSocket."""
        return self.origin.replace("http://", "ws://") + "/ws"


@pytest.fixture(name="stack")
async def stack_fixture(make_origin: MakeOrigin, make_gateway: MakeGateway) -> Stack:
    for name in MODULE_BUILDS + CLASSIC_BUILDS:
        dist_file(name)  # fails here, saying what to run, rather than as a page that did not load
    log = EchoLog()
    origin = await make_origin(origin_app(log))
    gateway = await make_gateway("server", {"upstream": origin, "hold_time": 5.0})
    return Stack(origin=origin, gateway=gateway.url, log=log)


@pytest.fixture(name="browser")
async def browser_fixture(tmp_path: Path) -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: run make test (installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            await context.close()


@contextlib.asynccontextmanager
async def faultproxy_to(url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    async with FaultProxy(parts.hostname, parts.port) as proxy:
        yield proxy
