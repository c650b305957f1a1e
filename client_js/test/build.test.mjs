// The builds of build.mjs (esbuild), made into a temporary directory: each one
// exports or defines HopSocket and nothing else, carries a working HopSocket
// (an echo through the in-memory gateway), and has a source map pointing at
// src/. Also a size budget for the minified module. Needs `npm ci` (esbuild).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import vm from "node:vm";
import { FakeGateway } from "./fake_gateway.mjs";

const TIMEOUT = { timeout: 15000 };
/**
 * Minified + gzipped ES module, bytes. 17,862 before diagnostics became codes and
 * internal properties were shortened, 15,102 after, 16,212 with the events, auth
 * and GOAWAY, 15,492 with the terser pass, one frame validator and less code; issue 11's
 * target is 12 KB, which needs less code, not shorter words (README "Build and
 * size"). The budget keeps what was won.
 */
const GZIP_BUDGET = 15.5 * 1024;

let outdir;
let sizes;

before(async () => {
  let build;
  try {
    ({ build } = await import("../build.mjs"));
  } catch (err) {
    throw new Error(`cannot load build.mjs (esbuild installed? run: cd client_js && npm ci): ${err.message}`);
  }
  outdir = mkdtempSync(join(tmpdir(), "hopgate-build-"));
  ({ sizes } = await build(outdir));
});

after(() => rmSync(outdir, { recursive: true, force: true }));

/** Open a HopSocket through the in-memory gateway, echo one text message, close. */
async function echoOnce(HopSocket) {
  const gw = new FakeGateway();
  const ws = new HopSocket("ws://app.test/echo", [], { gateway: "http://gw.test", transports: ["long-poll"], fetch: gw.fetch });
  await new Promise((resolve) => ws.addEventListener("open", resolve, { once: true }));
  const got = new Promise((resolve) => ws.addEventListener("message", (e) => resolve(e.data), { once: true }));
  ws.send("built");
  const echo = await got;
  const closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
  ws.close(1000);
  const event = await closed;
  return { echo, code: event.code, wasClean: event.wasClean };
}

for (const file of ["hopgate.mjs", "hopgate.min.mjs"]) {
  test(`${file}: exports HopSocket only, and it works`, TIMEOUT, async () => {
    const module = await import(pathToFileURL(join(outdir, file)).href);
    assert.deepEqual(Object.keys(module), ["HopSocket"]);
    assert.equal(globalThis.HopSocket, undefined, "the ES module sets no global");
    assert.deepEqual(await echoOnce(module.HopSocket), { echo: "built", code: 1000, wasClean: true });
  });
}

for (const file of ["hopgate.iife.js", "hopgate.iife.min.js"]) {
  test(`${file}: a classic script that defines window.HopSocket and nothing else`, () => {
    const code = readFileSync(join(outdir, file), "utf8");
    assert.doesNotMatch(code, /^\s*(export|import)\b/m, "no module syntax in a classic script");
    // Run as a classic script would in a page: `window` is the global object.
    const window = {};
    const context = vm.createContext({ window, EventTarget, Event, TextEncoder, TextDecoder, URL, Blob, DOMException });
    vm.runInContext(code, context, { filename: file });
    assert.deepEqual(Object.keys(window), ["HopSocket"]);
    assert.equal(typeof window.HopSocket, "function");
    assert.deepEqual(Object.keys(context).sort(), ["Blob", "DOMException", "Event", "EventTarget", "TextDecoder", "TextEncoder", "URL", "window"], "no other globals");
    // An existing window.HopSocket is left alone.
    const taken = { HopSocket: "mine" };
    vm.runInContext(code, vm.createContext({ window: taken, EventTarget, Event, TextEncoder, TextDecoder, URL, Blob, DOMException }));
    assert.equal(taken.HopSocket, "mine");
  });
}

for (const file of ["hopgate.iife.js", "hopgate.iife.min.js"]) {
  test(`${file}: its HopSocket works (run in this realm)`, TIMEOUT, async () => {
    const code = readFileSync(join(outdir, file), "utf8");
    const window = {};
    new Function("window", code)(window);
    assert.deepEqual(await echoOnce(window.HopSocket), { echo: "built", code: 1000, wasClean: true });
  });
}

for (const file of ["hopgate.min.mjs", "hopgate.iife.min.js"]) {
  test(`${file}: has a source map of the src/ modules`, () => {
    const code = readFileSync(join(outdir, file), "utf8");
    assert.match(code, new RegExp(`//# sourceMappingURL=${file.replaceAll(".", "\\.")}\\.map\\s*$`));
    const map = JSON.parse(readFileSync(join(outdir, `${file}.map`), "utf8"));
    const modules = ["msgpack", "session_frames", "session_core", "session_liveness", "tunnel_frames", "tunnel_stream", "tunnel", "gateway_http", "transports", "link", "hopsocket"];
    assert.ok(!map.sources.some((s) => s.endsWith("src/session.js")), "the gateway side of the session (session.js) stays out of the browser builds");
    for (const name of modules) assert.ok(map.sources.some((s) => s.endsWith(`src/${name}.js`)), `${name}.js in ${map.sources}`);
    assert.equal(map.sourcesContent.length, map.sources.length);
  });
}

test("size: the minified module, gzipped, stays within its budget", () => {
  const min = sizes.find((s) => s.file === "hopgate.min.mjs");
  console.log(sizes.map((s) => `${s.file} ${s.bytes} B, gzip ${s.gzip} B`).join("; "));
  assert.ok(min.gzip <= GZIP_BUDGET, `hopgate.min.mjs is ${min.gzip} B gzipped, over the ${GZIP_BUDGET} B budget`);
});
