"""The JS shim in a real headless Chromium, through a real gateway, to a real endpoint.

Stack: an aiohttp origin (the test page, the shim's builds from
``client_js/dist/`` (``make js`` makes them) and a WebSocket echo at
``/ws``) behind an in-process ``hopgate server`` gateway.
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
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import WSMsgType, web

from tests.conftest import MakeGateway, MakeOrigin
from tests.faultproxy import FaultProxy
from tests.helpers import until

CHROMIUM = Path("/usr/bin/chromium")
CLIENT_JS = Path(__file__).resolve().parents[2] / "client_js"
DIST = CLIENT_JS / "dist"
#: The builds of client_js/build.mjs the pages load: ES modules and classic scripts.
MODULE_BUILDS = ("hopgate.mjs", "hopgate.min.mjs")
CLASSIC_BUILDS = ("hopgate.iife.js", "hopgate.iife.min.js")
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
STEP_TIMEOUT = 90.0
MiB = 1 << 20
#: Under the gateway's 1 MiB WebSocket message limit (see test_exactly_one_mib_message).
BIG = MiB - 1024  # one page.evaluate; the page's own deadlines are shorter
SUBPROTOCOL = "echo.v1"

pytestmark = pytest.mark.timeout(150)

# The page's helpers: each returns plain data describing what happened, so a
# failure shows up as a readable assertion diff on the Python side.
PAGE_SCRIPT = r"""
const within = (promise, ms, what) => Promise.race([
  promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)),
]);
const opened = (ws) => new Promise((resolve, reject) => {
  ws.addEventListener("open", () => resolve(ws), { once: true });
  const fail = (e) => reject(new Error(`closed before open: ${e.code} ${e.reason}`));
  ws.addEventListener("close", fail, { once: true });
});
const nextMessage = (ws) => new Promise((resolve, reject) => {
  const fail = (e) => reject(new Error(`closed: ${e.code} ${e.reason}`));
  const got = (e) => { ws.removeEventListener("close", fail); resolve(e.data); };
  ws.addEventListener("message", got, { once: true });
  ws.addEventListener("close", fail, { once: true });
});
const closed = (ws) => new Promise((resolve) => ws.addEventListener(
  "close",
  (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean }),
  { once: true },
));
const bytesOf = async (d) => new Uint8Array(d instanceof Blob ? await d.arrayBuffer() : d);
const checksum = (u8) => {
  let h = 0;
  for (const b of u8) h = (Math.imul(h, 31) + b) >>> 0;
  return h;
};

window.hop = {
  async echoAll(opts, bigSize) {
    const ws = new HopSocket("/ws", [SUBPROTOCOL], opts);
    await within(opened(ws), 20000, "open");
    const out = { protocol: ws.protocol, transport: ws.transport, url: ws.url };
    out.extensions = ws.extensions;
    ws.send("héllo ☃");
    out.text = await within(nextMessage(ws), 10000, "text echo");
    ws.binaryType = "arraybuffer";
    ws.send(Uint8Array.of(0, 1, 2, 255));
    const ab = await within(nextMessage(ws), 10000, "arraybuffer echo");
    out.arraybuffer = { isArrayBuffer: ab instanceof ArrayBuffer, bytes: [...new Uint8Array(ab)] };
    ws.binaryType = "blob";
    ws.send(new Blob([Uint8Array.of(7, 8, 9)]));
    const blob = await within(nextMessage(ws), 10000, "blob echo");
    out.blob = { isBlob: blob instanceof Blob, bytes: [...await bytesOf(blob)] };
    ws.binaryType = "arraybuffer";
    out.big = await this.bigEcho(ws, bigSize);
    out.bufferedWhileSending = out.big.buffered;
    const bigText = "é".repeat(300000);
    ws.send(bigText);
    out.bigTextSame = (await within(nextMessage(ws), 30000, "big text echo")) === bigText;
    out.transportAtEnd = ws.transport;
    const done = closed(ws);
    ws.close(4000, "bye");
    out.readyStateAfterClose = ws.readyState;
    out.close = await within(done, 15000, "close");
    out.readyState = ws.readyState;
    return out;
  },

  async bigEcho(ws, size) {
    const big = new Uint8Array(size);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 11)) & 255;
    ws.send(big.buffer);
    const buffered = ws.bufferedAmount;
    const echo = new Uint8Array(await within(nextMessage(ws), 30000, `echo of ${size} bytes`));
    const same = echo.length === big.length && checksum(echo) === checksum(big);
    return { length: echo.length, same, buffered };
  },

  async oneBig(opts, size) {
    const ws = new HopSocket("/ws", [SUBPROTOCOL], opts);
    ws.binaryType = "arraybuffer";
    await within(opened(ws), 20000, "open");
    const out = await this.bigEcho(ws, size);
    delete out.buffered;
    ws.close();
    return out;
  },

  async closeBoth(opts, nativeUrl, how) {
    const run = async (ws) => {
      await within(opened(ws), 20000, "open");
      const done = closed(ws);
      if (how === "page") ws.close(4000, "bye from the page");
      else ws.send("close-me 4001 endpoint says bye");
      return within(done, 15000, "close");
    };
    return {
      hop: await run(new HopSocket("/ws", [SUBPROTOCOL], opts)),
      native: await run(new WebSocket(nativeUrl, [SUBPROTOCOL])),
    };
  },

  async numbered(opts, n, intervalMs, endTransport) {
    const ws = new HopSocket("/ws", [], opts);
    await within(opened(ws), 20000, "open");
    window.progress = 0;
    const got = [];
    const transports = new Set([ws.transport]);
    const done = new Promise((resolve, reject) => {
      ws.onmessage = (e) => {
        got.push(e.data);
        window.progress = got.length;
        transports.add(ws.transport);
        if (got.length === n) resolve();
      };
      ws.onclose = (e) => reject(new Error(`closed: ${e.code} ${e.reason}`));
    });
    let sent = 0;
    // Paced, so a cut is always mid-stream: the page keeps sending while it resumes.
    const timer = setInterval(() => {
      if (sent < n) ws.send(`n:${++sent}`);
      if (sent >= n) clearInterval(timer);
    }, intervalMs);
    try {
      await within(done, 60000, `numbered echo (${got.length}/${n} back)`);
    } finally {
      clearInterval(timer);
    }
    if (endTransport) {
      // Demoted or resumed on long-poll after a cut, the session must come back to its transport.
      const back = new Promise((resolve) => {
        const check = setInterval(() => {
          if (ws.transport === endTransport) resolve(clearInterval(check));
        }, 20);
      });
      await within(back, 20000, `back on ${endTransport} (now ${ws.transport})`);
    }
    const expected = Array.from({ length: n }, (_, k) => `n:${k + 1}`);
    const out = {
      count: got.length,
      inOrder: got.length === n && got.every((m, k) => m === expected[k]),
      unique: new Set(got).size,
      transports: [...transports],
      transportAtEnd: ws.transport,
    };
    ws.onclose = null;
    const end = closed(ws);
    ws.close(1000);
    out.close = await within(end, 15000, "close");
    return out;
  },

  async apiParity(nativeUrl) {
    const attempt = (f) => { try { f(); return "ok"; } catch (e) { return e.name; } };
    const probe = (ws) => ({
      sendWhileConnecting: attempt(() => ws.send("x")),
      close1001: attempt(() => ws.close(1001)),
      close5000: attempt(() => ws.close(5000)),
      longReason: attempt(() => ws.close(1000, "x".repeat(124))),
      constants: [ws.CONNECTING, ws.OPEN, ws.CLOSING, ws.CLOSED, ws.readyState],
      binaryType: ws.binaryType,
    });
    const hop = new HopSocket("/ws");
    const native = new WebSocket(nativeUrl);
    const out = { hop: probe(hop), native: probe(native) };
    const badUrl = (Ctor) => attempt(() => new Ctor("ftp://x/"));
    const dupProtocols = (Ctor) => attempt(() => new Ctor(nativeUrl, ["a", "a"]));
    out.hop.badUrl = badUrl(HopSocket);
    out.native.badUrl = badUrl(WebSocket);
    out.hop.dupProtocols = dupProtocols(HopSocket);
    out.native.dupProtocols = dupProtocols(WebSocket);
    await Promise.all([
      within(opened(hop), 20000, "hop open"),
      within(opened(native), 20000, "native open"),
    ]);
    hop.close();
    native.close();
    return out;
  },
};
window.hopReady = true;
"""


def module_page(build: str) -> str:
    """The page importing HopSocket from the ES module build ``build``."""
    return f"""<!doctype html>
<meta charset="utf-8"><title>hopgate shim test ({build})</title>
<script type="module">
import {{ HopSocket }} from "/{build}";
const SUBPROTOCOL = {json.dumps(SUBPROTOCOL)};
{PAGE_SCRIPT}
</script>
"""


def classic_page(build: str) -> str:
    """The page using ``window.HopSocket`` from the classic-script build ``build``."""
    return f"""<!doctype html>
<meta charset="utf-8"><title>hopgate shim test ({build}, classic script)</title>
<script src="/{build}"></script>
<script>
const SUBPROTOCOL = {json.dumps(SUBPROTOCOL)};
{PAGE_SCRIPT}
</script>
"""


def dist_file(name: str) -> Path:
    """A build output, checked to be newer than every source it is built from."""
    path = DIST / name
    build = "make js (or: cd client_js && npm ci && npm run build)"
    assert path.exists(), f"{path} is missing: run {build}"
    sources = [*CLIENT_JS.glob("src/*.js"), CLIENT_JS / "build.mjs", CLIENT_JS / "package.json"]
    stale = [s.name for s in sources if s.stat().st_mtime > path.stat().st_mtime]
    assert not stale, f"{path} is older than {stale}: run {build}"
    return path


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


@pytest.fixture
async def stack(make_origin: MakeOrigin, make_gateway: MakeGateway) -> Stack:
    for name in MODULE_BUILDS + CLASSIC_BUILDS:
        dist_file(name)  # fails here, saying what to run, rather than as a page that did not load
    log = EchoLog()
    origin = await make_origin(origin_app(log))
    gateway = await make_gateway("server", {"upstream": origin, "hold_time": 5.0})
    return Stack(origin=origin, gateway=gateway.url, log=log)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
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


async def open_page(context: Any, url: str) -> Any:
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    page.console = console  # for failure messages
    await page.goto(url, timeout=20_000)
    try:
        await page.wait_for_function("window.hopReady === true", timeout=20_000)
    except Exception as exc:
        raise AssertionError(f"the test page did not load: {console}") from exc
    return page


async def run(page: Any, expression: str, *args: Any) -> Any:
    """``page.evaluate`` with a deadline and the page's console in the failure."""
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            return await page.evaluate(expression, list(args))
    except Exception as exc:
        raise AssertionError(f"{expression} failed: {exc}\nconsole: {page.console[-20:]}") from exc


async def wait_progress(page: Any, task: asyncio.Task[Any], at_least: int) -> None:
    async def reached() -> bool:
        if task.done():
            task.result()  # raises the page's error
            raise AssertionError(f"finished before reaching {at_least} messages")
        return bool(await page.evaluate("window.progress || 0") >= at_least)

    await until(reached, f"{at_least} messages in the page", timeout=30)


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
    for _ in range(50):
        if stack.log.closes:
            break
        await asyncio.sleep(0.05)
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
