"""Each build of ``client_js/dist/`` in Chromium as shipped; the events beyond WebSocket.

The ES module and the classic script, plain (development: sentences) and
minified (production: codes, shortened names), each open a socket through a
real ``hopgate server`` and fire ``transport``, ``open``, ``message`` and
``close`` in that order. Around a cut WebSocket (``tests/faultproxy.py``) the
production build fires ``reconnecting``, ``transport`` and ``resumed`` in
that order, and nothing after ``close``; behind a path refusing upgrades the
first ``transport`` says ``upgrade_failed``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.client_js.browser_stack import (  # noqa: F401  (the fixtures browser and stack)
    Stack,
    browser_fixture,
    faultproxy_to,
    stack_fixture,
)
from tests.client_js.page import CLASSIC_BUILDS, MODULE_BUILDS, open_page, run, wait_progress

pytestmark = pytest.mark.timeout(150)

PRODUCTION = "hopgate.min.mjs"


@pytest.mark.parametrize("build", MODULE_BUILDS + CLASSIC_BUILDS)
async def test_each_build_as_shipped_fires_events_in_order(
    stack: Stack, browser: Any, build: str
) -> None:
    page = await open_page(browser, f"{stack.gateway}/?build={build}")
    is_classic = build in CLASSIC_BUILDS
    assert await page.evaluate("typeof window.HopSocket") == (
        "function" if is_classic else "undefined"
    )
    out = await run(page, "([o]) => hop.eventsEcho(o)", {})
    assert out["supported"] is True
    assert out["log"] == ["transport:websocket:session_opened", "open", "message", "close"], out
    assert out["close"] == {"code": 1000, "reason": "", "wasClean": True}


async def test_cut_websocket_fires_reconnecting_transport_resumed(
    stack: Stack, browser: Any
) -> None:
    n = 120
    async with faultproxy_to(stack.gateway) as proxy:
        page = await open_page(browser, f"{proxy.url}/?build={PRODUCTION}")
        opts = {"reprobeInitial": 300}
        script = "([o, n, i, end]) => hop.numbered(o, n, i, end)"
        running = asyncio.create_task(run(page, script, opts, n, 10, "websocket"))
        try:
            await wait_progress(page, running, n // 2)
            assert proxy.cut() >= 1
            out = await running
        finally:
            running.cancel()
    assert out["count"] == n and out["inOrder"], out
    events = out["events"]
    assert events[:2] == ["transport:websocket:session_opened", "open"], events
    assert events[-1] == "close", events
    cut = events.index("reconnecting")
    after = events[cut:-1]
    assert after[0] == "reconnecting" and after[1].startswith("transport:"), events
    assert after[1].endswith(":websocket_closed"), events
    assert after[2] == "resumed", events
    # Back on a WebSocket by a re-probe if it resumed on long-poll first.
    assert all(e.startswith("transport:") for e in after[3:]), events
    assert "error" not in events


async def test_refused_upgrade_opens_on_long_poll_saying_why(stack: Stack, browser: Any) -> None:
    async with faultproxy_to(stack.gateway) as proxy:
        proxy.refuse_upgrades = True
        page = await open_page(browser, f"{proxy.url}/?build={PRODUCTION}")
        out = await run(page, "([o]) => hop.eventsEcho(o)", {"reprobeInitial": 60000})
    assert out["log"] == ["transport:long-poll:upgrade_failed", "open", "message", "close"], out
