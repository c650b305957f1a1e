"""The test page of the browser tests: its script, its two forms, and driving it.

``PAGE_SCRIPT`` defines ``window.hop``: helpers that each return plain data
describing what happened, so a failure shows up as a readable assertion diff
on the Python side. ``module_page`` / ``classic_page`` load it with the ES
module or the classic-script build; ``open_page`` / ``run`` /
``wait_progress`` drive it, each step with its own deadline.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.helpers import until

CLIENT_JS = Path(__file__).resolve().parents[2] / "client_js"
DIST = CLIENT_JS / "dist"
#: The builds of client_js/build.mjs the pages load: ES modules and classic scripts.
MODULE_BUILDS = ("hopgate.mjs", "hopgate.min.mjs")
CLASSIC_BUILDS = ("hopgate.iife.js", "hopgate.iife.min.js")
STEP_TIMEOUT = 90.0
SUBPROTOCOL = "echo.v1"

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
  /** Every event of `ws` in order: "transport:<transport>:<reason>", else the type. */
  record(ws) {
    const log = [];
    const name = (e) => (e.type === "transport" ? `transport:${e.transport}:${e.reason}` : e.type);
    for (const type of ["transport", "reconnecting", "resumed", "open", "error", "close"]) {
      ws.addEventListener(type, (e) => log.push(name(e)));
    }
    return log;
  },

  async eventsEcho(opts) {
    const ws = new HopSocket("/ws", [SUBPROTOCOL], opts);
    const log = this.record(ws);
    await within(opened(ws), 20000, "open");
    ws.send("x");
    await within(nextMessage(ws), 10000, "echo");
    log.push("message");
    const done = closed(ws);
    ws.close(1000);
    const close = await within(done, 15000, "close");
    await new Promise((r) => setTimeout(r, 200)); // nothing may follow the close
    return { log, close, supported: HopSocket.supported };
  },

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
    const events = this.record(ws);
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
    await new Promise((r) => setTimeout(r, 200)); // nothing may follow the close
    out.events = events;
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
