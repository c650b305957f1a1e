"""A page on one origin using a gateway on another, in real Chromium (CORS).

The page is served by the origin itself (``127.0.0.1:P1``, not through the
gateway) and writes ``new HopSocket("ws://127.0.0.1:P2/ws")``: the shim opens
its hop session at P2, the gateway, by default. The browser enforces CORS,
so this is the only test that shows the gateway's answers are enough.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.client_js.browser_stack import (  # noqa: F401  (the fixture browser)
    EchoLog,
    browser_fixture,
    origin_app,
)
from tests.client_js.page import CLASSIC_BUILDS, SUBPROTOCOL, dist_file, open_page, run

pytestmark = pytest.mark.timeout(150)

#: Open a HopSocket to ``url``, echo one message, close; or report how it closed.
ECHO_ONCE = """async ([url, transports, protocol]) => {
  const ws = new HopSocket(url, [protocol], { transports });
  const closed = new Promise((resolve) => ws.addEventListener("close",
    (e) => resolve({ code: e.code, reason: e.reason }), { once: true }));
  const opened = new Promise((resolve) => ws.addEventListener("open", resolve, { once: true }));
  const first = await Promise.race([opened.then(() => "open"), closed.then(() => "closed")]);
  if (first === "closed") return { refused: await closed };
  const echoed = new Promise((resolve) => ws.addEventListener("message",
    (e) => resolve(e.data), { once: true }));
  ws.send("cross-origin héllo");
  const out = { echo: await echoed, transport: ws.transport };
  ws.close(1000, "done");
  out.close = await closed;
  return out;
}"""


async def _page_and_gateway(
    make_origin: Any, make_gateway: Any, browser: Any, settings: dict[str, Any]
) -> tuple[Any, str, str]:
    build = CLASSIC_BUILDS[0]  # defines window.HopSocket, so page.evaluate can use it
    dist_file(build)
    origin = await make_origin(origin_app(EchoLog()))
    allowed = [origin] if settings.pop("allow_page", False) else []
    gateway = await make_gateway(
        "server", {"upstream": origin, "hold_time": 5.0, "allowed_origins": allowed, **settings}
    )
    assert origin.split(":")[-1] != str(gateway.port)  # two origins
    page = await open_page(browser, f"{origin}/?build={build}")
    endpoint = gateway.url.replace("http://", "ws://") + "/ws"
    return page, origin, endpoint


@pytest.mark.parametrize("transports", [["websocket", "long-poll"], ["long-poll"]])
async def test_allowed_page_of_another_origin_echoes(
    make_origin: Any, make_gateway: Any, browser: Any, transports: list[str]
) -> None:
    page, _, endpoint = await _page_and_gateway(
        make_origin, make_gateway, browser, {"allow_page": True}
    )
    out = await run(page, ECHO_ONCE, endpoint, transports, SUBPROTOCOL)
    assert "refused" not in out, out
    assert out["echo"] == "cross-origin héllo"
    assert out["transport"] == transports[0]
    assert out["close"]["code"] == 1000


async def test_refused_page_is_told_to_use_allowed_origin(
    make_origin: Any, make_gateway: Any, browser: Any
) -> None:
    page, origin, endpoint = await _page_and_gateway(make_origin, make_gateway, browser, {})
    out = await run(page, ECHO_ONCE, endpoint, ["websocket", "long-poll"], SUBPROTOCOL)
    assert out["refused"]["code"] == 1006, out
    assert f"--allowed-origin {origin}" in out["refused"]["reason"], out
