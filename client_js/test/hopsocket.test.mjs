// HopSocket end to end against the in-memory gateway (fake_gateway.mjs):
// the WebSocket API, the long-poll transport, resume after lost requests.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HopSocket } from "../src/index.js";
import { FakeGateway } from "./fake_gateway.mjs";

const TIMEOUT = { timeout: 15000 };

function connect(gateway, options = {}, protocols = undefined) {
  return new HopSocket("ws://app.test/echo?x=1", protocols, {
    gateway: "http://gw.test",
    transports: ["long-poll"],
    fetch: gateway.fetch,
    ...options,
  });
}

function next(target, type) {
  return new Promise((resolve) => target.addEventListener(type, resolve, { once: true }));
}

function collect(ws, count) {
  const got = [];
  return new Promise((resolve) => {
    ws.addEventListener("message", (e) => {
      got.push(e.data);
      if (got.length === count) resolve(got);
    });
  });
}

async function closeAndWait(ws) {
  const closed = next(ws, "close");
  ws.close();
  return closed;
}

test("opens, echoes text and binary (arraybuffer and Blob), closes cleanly", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = connect(gw, {}, ["chat", "v2"]);
  assert.equal(ws.readyState, HopSocket.CONNECTING);
  assert.equal(ws.url, "ws://app.test/echo?x=1");
  const states = [];
  ws.onopen = () => states.push("open");
  await next(ws, "open");
  assert.deepEqual(states, ["open"]);
  assert.equal(ws.readyState, HopSocket.OPEN);
  assert.equal(ws.protocol, "chat");
  assert.equal(ws.transport, "long-poll");
  const [open] = gw.frames;
  assert.equal(new TextDecoder().decode(open[3]), "/echo?x=1");
  assert.deepEqual(open[5], ["chat", "v2"]);

  ws.binaryType = "arraybuffer";
  let got = collect(ws, 3);
  ws.send("héllo");
  ws.send(Uint8Array.of(1, 2, 3));
  ws.send(new Float32Array([1.5]).buffer);
  const [text, bin, floats] = await got;
  assert.equal(text, "héllo");
  assert.ok(bin instanceof ArrayBuffer);
  assert.deepEqual([...new Uint8Array(bin)], [1, 2, 3]);
  assert.deepEqual([...new Float32Array(floats)], [1.5]);

  ws.binaryType = "bogus"; // ignored, as in browsers
  ws.binaryType = "blob";
  assert.equal(ws.binaryType, "blob");
  got = collect(ws, 2);
  ws.send(new Blob([Uint8Array.of(9, 8)]));
  ws.send("after the blob");
  const [blob, after] = await got;
  assert.ok(blob instanceof Blob);
  assert.deepEqual([...new Uint8Array(await blob.arrayBuffer())], [9, 8]);
  assert.equal(after, "after the blob", "a Blob keeps its place in the queue");

  const closed = next(ws, "close");
  ws.close(4321, "done here");
  assert.equal(ws.readyState, HopSocket.CLOSING);
  const event = await closed;
  assert.deepEqual([event.code, event.reason, event.wasClean], [4321, "done here", true]);
  assert.equal(ws.readyState, HopSocket.CLOSED);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(gw.session.closed?.code, 1000, "the hop session closed gracefully afterwards");
  gw.forget();
});

test("the endpoint closes first: the page sees its code and reason", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = connect(gw);
  await next(ws, "open");
  const closed = next(ws, "close");
  gw.session.closeStream(1, 4001, "kicked");
  const event = await closed;
  assert.deepEqual([event.code, event.reason, event.wasClean], [4001, "kicked", true]);
  for (let i = 0; i < 100 && !gw.frames.some((f) => f[0] === 8); i++) await new Promise((r) => setTimeout(r, 20));
  const echoed = gw.frames.filter((f) => f[0] === 8);
  assert.deepEqual(echoed, [[8, 1, 4001, "kicked"]], "the close was answered with the same code");
  gw.forget();
});

test("WebSocket API errors: constructor, send while CONNECTING, close arguments", TIMEOUT, async () => {
  const gw = new FakeGateway();
  for (const bad of ["ftp://x/", "ws://x/#frag", "::not a url"]) {
    assert.throws(() => new HopSocket(bad, [], { gateway: "http://gw.test", fetch: gw.fetch }), { name: "SyntaxError" });
  }
  assert.throws(() => connect(gw, {}, ["a", "a"]), { name: "SyntaxError" });
  assert.throws(() => connect(gw, {}, ["bad protocol"]), { name: "SyntaxError" });
  const drop = new HopSocket("wss://app.test/a", [], { fetch: gw.fetch, transports: ["long-poll"] });
  assert.equal(drop._link.gateway.href, "https://app.test/", "the default gateway is the endpoint's origin");
  drop.close();
  assert.equal(new HopSocket("https://app.test/a", [], { gateway: "http://gw.test", fetch: gw.fetch, transports: ["long-poll"] }).url, "wss://app.test/a");

  const ws = connect(gw);
  assert.throws(() => ws.send("too early"), { name: "InvalidStateError" });
  for (const code of [0, 999, 1001, 1005, 2999, 5000]) assert.throws(() => ws.close(code), { name: "InvalidAccessError" }, String(code));
  assert.throws(() => ws.close(1000, "x".repeat(124)), { name: "SyntaxError" });
  assert.deepEqual([HopSocket.CONNECTING, HopSocket.OPEN, ws.CLOSING, ws.CLOSED], [0, 1, 2, 3]);
  await next(ws, "open");
  await closeAndWait(ws);
  ws.send("after close"); // discarded, counted, no throw
  assert.ok(ws.bufferedAmount >= 11);
  gw.forget();
});

test("close() while CONNECTING fails the connection: error, then close 1006", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = connect(gw);
  const order = [];
  ws.onerror = () => order.push("error");
  ws.onclose = (e) => order.push(`close ${e.code} ${e.wasClean}`);
  ws.close();
  assert.equal(ws.readyState, HopSocket.CLOSING);
  await next(ws, "close");
  assert.deepEqual(order, ["error", "close 1006 false"]);
  await new Promise((r) => setTimeout(r, 300));
  gw.forget();
});

test("a gateway that refuses the session: error and close 1006", TIMEOUT, async () => {
  const gw = new FakeGateway();
  gw.refuseCreate = 503;
  const ws = connect(gw);
  const error = next(ws, "error");
  const event = await next(ws, "close");
  await error;
  assert.equal(event.code, 1006);
  assert.equal(event.wasClean, false);
  assert.match(event.reason, /503/);
});

test("lost GET answers and failed POSTs lose, duplicate and reorder nothing", TIMEOUT, async () => {
  const gw = new FakeGateway({ holdMs: 100 });
  const ws = connect(gw, { reconnectInitial: 10, reconnectMax: 50 });
  await next(ws, "open");
  const N = 300;
  const got = collect(ws, N);
  let sent = 0;
  const timer = setInterval(() => {
    for (let i = 0; i < 10 && sent < N; i++) ws.send(`msg ${++sent}`);
    if (sent % 50 === 0) {
      gw.loseGetResponses += 1; // the gateway took frames into an answer that never arrives
      gw.failPosts += 1;
      gw.losePostResponses += 1;
    }
    if (sent >= N) clearInterval(timer);
  }, 5);
  const messages = await got;
  assert.deepEqual(messages, Array.from({ length: N }, (_, i) => `msg ${i + 1}`));
  assert.deepEqual(gw.messages, messages, "the endpoint got each message once, in order");
  assert.ok(gw.requests.filter((r) => r.startsWith("GET")).map((r) => /epoch=(\d+)/.exec(r)[1]).some((e) => Number(e) > 1), "resumed on new epochs");
  await closeAndWait(ws);
  gw.forget();
});

test("bufferedAmount counts unacknowledged bytes and drains to 0", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = connect(gw);
  await next(ws, "open");
  ws.send("x".repeat(1000));
  assert.ok(ws.bufferedAmount >= 1000);
  await next(ws, "message");
  for (let i = 0; i < 50 && ws.bufferedAmount > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(ws.bufferedAmount, 0);
  await closeAndWait(ws);
  gw.forget();
});

test("a large message is carried in fragments and chunks, whole", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = connect(gw);
  ws.binaryType = "arraybuffer";
  await next(ws, "open");
  const big = Uint8Array.from({ length: 1 << 20 }, (_, i) => (i * 7) & 0xff);
  const got = next(ws, "message");
  ws.send(big);
  const echoed = new Uint8Array((await got).data);
  assert.equal(echoed.length, big.length);
  assert.ok(echoed.every((b, i) => b === big[i]));
  await closeAndWait(ws);
  gw.forget();
});

test("a session the gateway forgot ends the socket with 1006", TIMEOUT, async () => {
  const gw = new FakeGateway({ holdMs: 50 });
  const ws = connect(gw);
  await next(ws, "open");
  const closed = next(ws, "close");
  gw.forget();
  const event = await closed;
  assert.equal(event.code, 1006);
  assert.equal(event.wasClean, false);
  assert.match(event.reason, /4000|expired/);
});
