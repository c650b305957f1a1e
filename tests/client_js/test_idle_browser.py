"""The browser shim learns a path's idle timeout too: real Chromium through real HAProxy.

HAProxy's recipe with ``timeout tunnel 3s`` sits between the page and the
gateway; the page's HopSocket starts with ``heartbeat: 8000`` (ms), sees two
idle WebSockets closed after about 3 s, and goes on with the 2 s floor
(``client_js/src/idle.js``, the rule of ``gateway/core/idle.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.client_js.browser_stack import (  # noqa: F401  (the fixtures browser and stack)
    Stack,
    browser_fixture,
    stack_fixture,
)
from tests.client_js.page import open_page, run
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)

HAPROXY_3S = (("timeout tunnel 1h", "timeout tunnel 3s"),)

OPEN = """() => new Promise((resolve, reject) => {
  window.lost = 0;
  const log = (line) => { if (line.startsWith("= lost websocket")) window.lost += 1; };
  const ws = window.sock = new HopSocket("/ws", [SUBPROTOCOL], { heartbeat: 8000, log });
  ws.onopen = () => resolve([ws.heartbeat, ws.heartbeatLearned]);
  ws.onerror = () => reject(new Error("error before open"));
})"""

ECHO = """() => new Promise((resolve) => {
  window.sock.onmessage = (e) => resolve(e.data);
  window.sock.send("still here");
})"""


async def test_the_shim_learns_a_3s_idle_timeout_and_stops_flapping(
    stack: Stack,
    browser: Any,
    proxies: Proxies,  # noqa: F811
) -> None:
    haproxy = proxies.haproxy(stack.gateway, HAPROXY_3S)
    page = await open_page(browser, haproxy.url + "/?build=hopgate.iife.js")
    assert await run(page, OPEN) == [8000, None]

    async def learned() -> bool:
        return await page.evaluate("window.sock.heartbeatLearned") is not None

    assert await eventually(learned, 30), f"nothing learned: {page.console[-10:]}"
    assert await page.evaluate("window.sock.heartbeat") == 2000
    limit = await page.evaluate("window.sock.heartbeatLearned")
    assert 2500 <= limit <= 3800, limit

    async def on_websocket() -> bool:
        return await page.evaluate("window.sock.transport") == "websocket"

    assert await eventually(on_websocket, 15), page.console[-10:]
    lost = await page.evaluate("window.lost")
    await asyncio.sleep(9.0)  # three times the path's limit, idle
    assert await page.evaluate("[window.sock.transport, window.lost]") == ["websocket", lost]
    assert await run(page, ECHO) == "still here"
