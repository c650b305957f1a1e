// The events beyond the WebSocket API (transport, reconnecting, resumed),
// HopSocket.supported, and auth for the gateway's requests: HopSocket against
// the in-memory gateway (fake_gateway.mjs), long-poll, no network.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HopSocket } from "../src/index.js";
import { FakeGateway } from "./fake_gateway.mjs";

const TIMEOUT = { timeout: 15000 };
const EVENTS = ["open", "message", "error", "close", "transport", "reconnecting", "resumed"];

/** Every event of `ws`, in order, as plain objects of the fields that matter. */
function record(ws) {
  const log = [];
  for (const type of EVENTS) {
    ws.addEventListener(type, (e) => {
      const entry = { type };
      for (const k of ["transport", "previous", "reason", "data", "code"]) if (k in e && e[k] !== undefined) entry[k] = e[k];
      if (type === "resumed") entry.downtimeIsNumber = Number.isInteger(e.downtime) && e.downtime >= 0;
      if (type === "message" || type === "close") delete entry.reason;
      log.push(entry);
    });
  }
  return log;
}

const next = (target, type) => new Promise((resolve) => target.addEventListener(type, resolve, { once: true }));

test("events in order: transport before open, reconnecting/transport/resumed around a lost POST, none after close", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = new HopSocket("ws://app.test/echo", [], { gateway: "http://gw.test", transports: ["long-poll"], fetch: gw.fetch, reconnectInitial: 10 });
  const log = record(ws);
  await next(ws, "open");
  gw.failPosts = 1;
  const resumed = next(ws, "resumed");
  ws.send("one");
  await resumed;
  ws.send("two");
  const deadline = Date.now() + 5000;
  while (log.filter((e) => e.type === "message").length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const closed = next(ws, "close");
  ws.close(1000);
  await closed;
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(log, [
    { type: "transport", transport: "long-poll", previous: "none", reason: "session_opened" },
    { type: "open" },
    { type: "reconnecting", reason: "transport_lost" },
    { type: "transport", transport: "long-poll", previous: "long-poll", reason: "transport_lost" },
    { type: "resumed", transport: "long-poll", downtimeIsNumber: true },
    { type: "message", data: "one" },
    { type: "message", data: "two" },
    { type: "close", code: 1000 },
  ]);
});

/** A WebSocket whose handshake always fails, as behind a proxy that refuses upgrades. */
class RefusedWebSocket {
  constructor() {
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Event("error"));
      this.onclose?.({ code: 1006 });
    }, 1);
  }
  close() {}
}

test("a session that opens on long-poll because the WebSocket failed says so (upgrade_failed, with the detail)", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = new HopSocket("ws://app.test/echo", [], { gateway: "http://gw.test", fetch: gw.fetch, WebSocket: RefusedWebSocket, reprobeInitial: 60000 });
  const first = next(ws, "transport");
  const event = await first;
  assert.equal(event.transport, "long-poll");
  assert.equal(event.previous, "none");
  assert.equal(event.reason, "upgrade_failed");
  assert.match(event.detail, /WebSocket connection failed/);
  assert.equal(ws.transport, "long-poll");
  ws.close();
});

test("HopSocket.supported is a boolean: true where fetch, AbortController, TextEncoder and BigInt DataViews exist", () => {
  assert.equal(HopSocket.supported, true);
  const saved = globalThis.fetch;
  try {
    delete globalThis.fetch;
    assert.equal(HopSocket.supported, false);
  } finally {
    globalThis.fetch = saved;
  }
});

test("auth: a bearer token (asked per request) on every gateway request, in the WebSocket query; sessionHeaders; withCredentials", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const seen = [];
  const fetch = (url, init) => {
    const headers = new Headers(init.headers);
    seen.push({ method: init.method ?? "GET", auth: headers.get("Authorization"), csrf: headers.get("X-Csrf"), credentials: init.credentials });
    return gw.fetch(url, init);
  };
  let calls = 0;
  const urls = [];
  class RecordingWebSocket extends RefusedWebSocket {
    constructor(url) {
      super();
      urls.push(url);
    }
  }
  const ws = new HopSocket("ws://app.test/echo", [], {
    gateway: "http://gw.test",
    fetch,
    WebSocket: RecordingWebSocket,
    auth: async () => `t${++calls}`,
    sessionHeaders: { "X-Csrf": "c" },
    withCredentials: true,
    reprobeInitial: 60000,
  });
  await next(ws, "open");
  const echoed = next(ws, "message");
  ws.send("hi");
  await echoed;
  ws.close();
  assert.ok(seen.length >= 3, JSON.stringify(seen));
  for (const s of seen) {
    assert.match(s.auth, /^Bearer t\d+$/);
    assert.equal(s.csrf, "c");
    assert.equal(s.credentials, "include");
  }
  assert.equal(seen[0].method, "POST");
  assert.ok(new Set(seen.map((s) => s.auth)).size > 1, "the token function is asked again for each request");
  assert.equal(urls.length, 1);
  assert.match(urls[0], /^ws:\/\/gw\.test\/\.hopgate\/session\/[^?]+\?epoch=1&access_token=t\d+$/);
});

test("without auth: no Authorization, no access_token, same-origin credentials", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const seen = [];
  const fetch = (url, init) => {
    seen.push({ auth: new Headers(init.headers).get("Authorization"), credentials: init.credentials });
    return gw.fetch(url, init);
  };
  const ws = new HopSocket("ws://app.test/echo", [], { gateway: "http://gw.test", transports: ["long-poll"], fetch });
  await next(ws, "open");
  ws.close();
  for (const s of seen) assert.deepEqual(s, { auth: null, credentials: "same-origin" });
});
