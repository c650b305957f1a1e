// GOAWAY (docs/protocol.md §6a) as the shim honours it, against the in-memory
// gateway (fake_gateway.mjs): a stream the gateway got finishes on its
// session; one it did not (or not yet opened) moves to a new session.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HopSocket } from "../src/index.js";
import { FakeGateway } from "./fake_gateway.mjs";

const TIMEOUT = { timeout: 15000 };
const next = (target, type) => new Promise((resolve) => target.addEventListener(type, resolve, { once: true }));
const connect = (gw, options = {}) =>
  new HopSocket("ws://app.test/echo", [], { gateway: "http://gw.test", transports: ["long-poll"], fetch: gw.fetch, ...options });

async function echo(ws, text) {
  const got = next(ws, "message");
  ws.send(text);
  return (await got).data;
}

test("a stream the gateway got finishes on its session; the session's end reads as the gateway going away (1001)", TIMEOUT, async () => {
  const gw = new FakeGateway();
  const ws = connect(gw);
  await next(ws, "open");
  assert.equal(await echo(ws, "before"), "before");
  gw.session.sayGoAway("instance draining");
  assert.equal(await echo(ws, "after"), "after", "still served on the same session");
  assert.equal(await echo(ws, "again"), "again");
  assert.equal(gw.sessions.size, 1, "no new session for a stream the gateway serves");
  const closed = next(ws, "close");
  gw.session.core.close(1001, "shutdown grace over", performance.now() / 1000);
  gw.session.wake();
  const event = await closed;
  assert.equal(event.code, 1001);
  assert.match(event.reason, /went away \(instance draining/);
  assert.equal(event.wasClean, false);
});

test("a GOAWAY before the stream was served: the OPEN is refused, the socket opens on a new session (transport reason goaway)", TIMEOUT, async () => {
  const gw = new FakeGateway();
  gw.goAwayOnCreate = 1; // the first session says GOAWAY(0); the next (another instance, in life) does not
  const ws = connect(gw);
  const transports = [];
  ws.addEventListener("transport", (e) => transports.push(e.reason));
  await next(ws, "open");
  assert.equal(gw.sessions.size, 2);
  assert.equal(await echo(ws, "moved"), "moved");
  assert.deepEqual(transports, ["session_opened", "goaway"]);
  const refused = gw.frames.filter((f) => f[0] === 2).length;
  assert.ok(refused >= 1);
  const closed = next(ws, "close");
  ws.close(1000);
  assert.equal((await closed).code, 1000);
});

test("a gateway that keeps going away: after 3 new sessions the socket fails (1006) instead of looping", TIMEOUT, async () => {
  const gw = new FakeGateway();
  gw.goAwayOnCreate = Infinity;
  const ws = connect(gw);
  const event = await next(ws, "close");
  assert.equal(event.code, 1006);
  assert.equal(gw.sessions.size, 4);
});

test("a draining gateway's 503 + Retry-After on session creation is tried again", TIMEOUT, async () => {
  const gw = new FakeGateway();
  gw.refuseCreate = 503;
  gw.refuseCreateTimes = 1;
  gw.retryAfter = 0;
  const ws = connect(gw);
  await next(ws, "open");
  assert.equal(await echo(ws, "retried"), "retried");
  ws.close();
});
