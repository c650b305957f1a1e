"""The JS shim in a real headless Chromium, through a real gateway, to a real endpoint.

Stack: an aiohttp origin (the test page, the shim's builds from
``client_js/dist/`` (``make js`` makes them) and a WebSocket echo at
``/ws``) behind an in-process ``hopgate server`` gateway (fixtures in
``browser_stack.py``, the test page in ``page.py``).
The page is loaded *from the gateway* (so the hop session is same-origin) and
its ``HopSocket("/ws")`` opens a hop session to the gateway, which replays
the tunnelled WebSocket stream to the origin's ``/ws``. Where a test needs a
broken path, ``tests/faultproxy.py`` sits between the browser and the gateway.

Chromium is Debian's (``make test`` installs it); Playwright only drives it
and never downloads a browser. Every page-side step has its own deadline, so
a hang fails with a message saying which step.
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
from tests.client_js.page import CLASSIC_BUILDS, SUBPROTOCOL, open_page, run, wait_progress
from tests.waiting import eventually

MiB = 1 << 20
#: Under the gateway's 1 MiB WebSocket message limit (see test_exactly_one_mib_message).
BIG = MiB - 1024  # one page.evaluate; the page's own deadlines are shorter

pytestmark = pytest.mark.timeout(150)


TRANSPORTS = {
    "websocket": (["websocket", "long-poll"], "websocket"),
    "long-poll": (["long-poll"], "long-poll"),
}


@pytest.mark.parametrize("kind", list(TRANSPORTS))
async def test_echo_text_binary_blob_and_big_messages(
    stack: Stack, browser: Any, kind: str
) -> None:
    transports, expected = TRANSPORTS[kind]
    page = await open_page(browser, stack.gateway + "/")
    out = await run(page, "([o, size]) => hop.echoAll(o, size)", {"transports": transports}, BIG)
    assert out["transport"] == expected
    assert out["transportAtEnd"] == expected
    assert out["protocol"] == SUBPROTOCOL
    assert out["extensions"] == ""
    assert out["url"].startswith("ws://127.0.0.1:") and out["url"].endswith("/ws")
    assert out["text"] == "héllo ☃"
    assert out["arraybuffer"] == {"isArrayBuffer": True, "bytes": [0, 1, 2, 255]}
    assert out["blob"] == {"isBlob": True, "bytes": [7, 8, 9]}
    assert out["big"] == {"length": BIG, "same": True, "buffered": out["bufferedWhileSending"]}
    assert out["bufferedWhileSending"] >= BIG
    assert out["bigTextSame"] is True
    assert out["readyStateAfterClose"] == 2
    assert out["readyState"] == 3
    assert out["close"]["wasClean"] is True
    # The endpoint saw the page's code and reason, as it would from a browser.
    await eventually(lambda: bool(stack.log.closes), timeout=2.5, interval=0.05)
    assert stack.log.closes == [(4000, "bye")]
    assert stack.log.connections == 1


async def test_exactly_one_mib_message(stack: Stack, browser: Any) -> None:
    page = await open_page(browser, stack.gateway + "/")
    out = await run(page, "([o, size]) => hop.oneBig(o, size)", {}, MiB)
    assert out == {"length": MiB, "same": True}


@pytest.mark.parametrize("how", ["page", "endpoint"])
async def test_close_code_and_reason_match_a_native_websocket(
    stack: Stack, browser: Any, how: str
) -> None:
    page = await open_page(browser, stack.gateway + "/")
    out = await run(page, "([o, u, h]) => hop.closeBoth(o, u, h)", {}, stack.native_ws, how)
    assert out["hop"] == out["native"]
    if how == "endpoint":
        assert out["hop"] == {"code": 4001, "reason": "endpoint says bye", "wasClean": True}
    assert stack.log.closes[0] == stack.log.closes[1]  # same close seen by the endpoint


async def test_api_errors_match_a_native_websocket(stack: Stack, browser: Any) -> None:
    page = await open_page(browser, stack.gateway + "/")
    out = await run(page, "([u]) => hop.apiParity(u)", stack.native_ws)
    assert out["hop"] == out["native"]
    assert out["hop"]["sendWhileConnecting"] == "InvalidStateError"


@pytest.mark.parametrize("build", CLASSIC_BUILDS)
async def test_classic_script_sets_window_hopsocket(stack: Stack, browser: Any, build: str) -> None:
    page = await open_page(browser, f"{stack.gateway}/?build={build}")
    assert await page.evaluate("typeof window.HopSocket") == "function"
    out = await run(page, "([o, size]) => hop.echoAll(o, size)", {}, BIG)
    assert out["text"] == "héllo ☃"
    assert out["big"]["same"] is True


async def test_minified_module_works_and_sets_no_global(stack: Stack, browser: Any) -> None:
    page = await open_page(browser, f"{stack.gateway}/?build=hopgate.min.mjs")
    # The ES module writes no globals (package.json says sideEffects: false).
    assert await page.evaluate("typeof window.HopSocket") == "undefined"
    out = await run(page, "([o, size]) => hop.echoAll(o, size)", {}, BIG)
    assert out["text"] == "héllo ☃"
    assert out["big"]["same"] is True
    assert out["close"]["wasClean"] is True


async def test_websocket_refused_on_the_path_falls_back_to_long_poll(
    stack: Stack, browser: Any
) -> None:
    async with faultproxy_to(stack.gateway) as proxy:
        proxy.refuse_upgrades = True
        page = await open_page(browser, proxy.url + "/")
        out = await run(page, "([o, n, i]) => hop.numbered(o, n, i)", {}, 100, 2)
        assert proxy.upgrades_refused >= 1
    assert out["transports"] == ["long-poll"]
    assert out["count"] == 100 and out["inOrder"] and out["unique"] == 100


async def test_websocket_black_holed_after_101_falls_back_to_long_poll(
    stack: Stack, browser: Any
) -> None:
    async with faultproxy_to(stack.gateway) as proxy:
        proxy.blackhole_after_101 = True
        page = await open_page(browser, proxy.url + "/")
        out = await run(page, "([o, n, i]) => hop.numbered(o, n, i)", {"probeTimeout": 1000}, 50, 2)
    assert out["transports"] == ["long-poll"]
    assert out["count"] == 50 and out["inOrder"]


@pytest.mark.parametrize("kind", list(TRANSPORTS))
async def test_transport_cut_mid_stream_loses_nothing(
    stack: Stack, browser: Any, kind: str
) -> None:
    transports, expected = TRANSPORTS[kind]
    n = 300
    async with faultproxy_to(stack.gateway) as proxy:
        page = await open_page(browser, proxy.url + "/")
        task = asyncio.create_task(
            run(
                page,
                "([o, n, i, end]) => hop.numbered(o, n, i, end)",
                {"transports": transports, "reprobeInitial": 300},
                n,
                10,
                expected,
            )
        )
        cuts = []
        try:
            for at in (n // 3, 2 * n // 3):
                await wait_progress(page, task, at)
                cuts.append(proxy.cut())
            out = await task
        finally:
            task.cancel()
    assert all(cut >= 1 for cut in cuts), cuts
    assert out["count"] == n
    assert out["inOrder"], out
    assert out["unique"] == n
    assert out["transportAtEnd"] == expected
    # The endpoint got every message exactly once, on one connection: the hop
    # session resumed under it instead of reconnecting to the origin.
    assert stack.log.received == [f"n:{k}" for k in range(1, n + 1)]
    assert stack.log.connections == 1
