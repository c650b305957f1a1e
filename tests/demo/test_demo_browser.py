"""``hopgate demo --browser`` in real Chromium: the page's HopSocket switches and loses nothing.

The test plays the person at the page: it waits for the WebSocket, presses
"Block WebSocket on the path", waits for long-poll, presses "Unblock", waits
for the WebSocket again, and reads the page's own counters.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from gateway.demo.browser import browser_demo
from tests.client_js.browser_stack import browser_fixture  # noqa: F401  (the fixture browser)
from tests.client_js.page import dist_file
from tests.helpers import until

pytestmark = pytest.mark.timeout(120)


async def _state(page: Any) -> dict[str, Any]:
    return dict(await page.evaluate("window.demo.state()"))


async def _transport_becomes(page: Any, transport: str) -> None:
    async def there() -> bool:
        return (await _state(page))["transport"] == transport

    await until(there, f"the page on {transport}", timeout=30)


async def test_block_and_unblock_websocket_loses_nothing(browser: Any) -> None:
    dist_file("hopgate.min.mjs")
    async with browser_demo() as (url, switch):
        page = await browser.new_page()
        await page.goto(url, timeout=20_000)
        await page.wait_for_function("window.demo !== undefined", timeout=20_000)
        await _transport_becomes(page, "websocket")
        await asyncio.sleep(0.5)
        await page.click("#block")
        await _transport_becomes(page, "long-poll")
        assert switch.blocked and switch.cut >= 1
        assert await page.text_content("#path") == "WebSocket blocked"
        before = (await _state(page))["got"]

        async def flowing() -> bool:
            return (await _state(page))["got"] >= before + 10

        await until(flowing, "echoes over long-poll", timeout=30)
        await page.click("#unblock")
        await _transport_becomes(page, "websocket")
        await asyncio.sleep(0.5)
        state = await _state(page)
        assert await page.text_content("#transport") == "websocket"
    assert state["dup"] == 0 and state["ooo"] == 0 and state["missing"] == 0, state
    assert state["got"] >= 20, state
    assert state["reasons"][0] == "session_opened", state
    assert "probe_succeeded" in state["reasons"], state


def test_command_line_serves_and_stops(tmp_path: Any) -> None:
    dist_file("hopgate.min.mjs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--browser",
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "open http://127.0.0.1:" in proc.stdout
