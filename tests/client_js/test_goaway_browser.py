"""A ``hopgate server`` sent SIGTERM while a page's HopSocket is open, in real Chromium.

The gateway drains (``docs/protocol.md`` §6a): it says GOAWAY on the page's
hop session and keeps serving the stream it already has, so the socket goes
on echoing after the SIGTERM; when the shutdown grace is over it ends the
session, and the page sees what a native WebSocket sees of a server going
away: ``close`` 1001. The production build (classic, minified) is loaded,
as a site would ship it.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.client_js.browser_stack import (  # noqa: F401  (the fixture browser)
    EchoLog,
    browser_fixture,
    origin_app,
)
from tests.client_js.page import CLASSIC_BUILDS, SUBPROTOCOL, dist_file, open_page, run
from tests.processes import running_gateway_process

pytestmark = pytest.mark.timeout(120)

GRACE = 3.0
OPEN = """async ([protocol]) => {
  const ws = window.drained = new HopSocket("/ws", [protocol]);
  window.closeEvent = new Promise((resolve) => ws.addEventListener("close",
    (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean }), { once: true }));
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    const fail = (e) => reject(new Error(`closed: ${e.code} ${e.reason}`));
    ws.addEventListener("close", fail, { once: true });
  });
  return ws.transport;
}"""
ECHO = """async ([text]) => {
  const ws = window.drained;
  const got = new Promise((resolve) => ws.addEventListener("message",
    (e) => resolve(e.data), { once: true }));
  ws.send(text);
  return await got;
}"""


async def test_sigterm_serves_the_open_socket_then_it_closes_1001(
    make_origin: Any, browser: Any
) -> None:
    build = CLASSIC_BUILDS[1]
    dist_file(build)
    log = EchoLog()
    origin = await make_origin(origin_app(log))
    args = ("--upstream", origin, "--shutdown-grace", str(GRACE), "--hold-time", "5")
    with running_gateway_process("server", *args) as gw:
        page = await open_page(browser, f"{gw.url}/?build={build}")
        assert await run(page, OPEN, SUBPROTOCOL) == "websocket"
        assert await run(page, ECHO, "before") == "before"
        sent_at = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert await run(page, ECHO, "after SIGTERM") == "after SIGTERM"
        close = await run(page, "() => window.closeEvent")
        waited = time.monotonic() - sent_at
        assert gw.proc.wait(timeout=30) == 0
    assert close["code"] == 1001, close
    assert "instance draining" in close["reason"], close
    assert close["wasClean"] is False
    assert waited >= GRACE - 0.5, f"closed {waited:.1f} s after SIGTERM, before the grace"
    assert log.received == ["before", "after SIGTERM"]
    assert log.connections == 1
