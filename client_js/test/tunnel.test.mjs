// The tunnel's opener end (one WebSocket stream per page socket), driven by
// hand-built gateway frames. No session, no network.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encode } from "../src/msgpack.js";
import { RemoteProtocolError, LocalProtocolError } from "../src/session.js";
import { Tunnel, ResetCode, tunnelFrames } from "../src/tunnel.js";

const utf8 = (s) => new TextEncoder().encode(s);
const cat = (...frames) => new Uint8Array(frames.flatMap((f) => [...encode(f)]));
const accept = (sid, window = 65536, protocol = null) => [4, sid, window, protocol, []];
const message = (sid, flags, payload) => [7, sid, flags, typeof payload === "string" ? utf8(payload) : payload];

function opened(config = {}, window = 65536, protocol = null) {
  const t = new Tunnel(config);
  const sid = t.openWebSocket("/ws?room=1", [["Origin", "http://page.test"]], ["chat"]);
  const [open] = tunnelFrames.decode(t.nextMessage());
  t.receiveMessage(cat(accept(sid, window, protocol)));
  const events = t.eventsReceived();
  return { t, sid, open, events };
}

/** All frames the tunnel would send now. */
function drain(t, maxBytes) {
  const frames = [];
  for (let m = t.nextMessage(maxBytes); m !== null; m = t.nextMessage(maxBytes)) frames.push(...tunnelFrames.decode(m));
  return frames;
}

test("OPEN_WS carries the target, headers, protocols and our receive window; ids are odd", () => {
  const { open, sid, events } = opened({ initialWindow: 300_000 });
  assert.equal(sid, 1);
  assert.equal(open[0], 2);
  assert.equal(open[2], 300_000);
  assert.equal(new TextDecoder().decode(open[3]), "/ws?room=1");
  assert.deepEqual(open[4].map((b) => new TextDecoder().decode(b)), ["Origin", "http://page.test"]);
  assert.deepEqual(open[5], ["chat"]);
  assert.deepEqual(events, [{ type: "accepted", sid: 1, protocol: null, headers: [] }]);
  const t = new Tunnel();
  assert.equal(t.openWebSocket("/a"), 1);
  assert.equal(t.openWebSocket("/b"), 3);
  assert.throws(() => t.openWebSocket("http://evil/"), LocalProtocolError);
  assert.throws(() => t.openWebSocket("//evil/"), LocalProtocolError);
});

test("messages cannot be sent before ACCEPT", () => {
  const t = new Tunnel();
  const sid = t.openWebSocket("/ws");
  assert.equal(t.isWritable(sid), false);
  assert.throws(() => t.sendWsMessage(sid, "early"), LocalProtocolError);
});

test("a message is chunked by maxChunk, flagged TEXT on every chunk and FIN on the last", () => {
  const { t, sid } = opened({ maxChunk: 1000 });
  t.sendWsMessage(sid, "x".repeat(2500));
  t.sendWsMessage(sid, Uint8Array.of(1, 2));
  t.sendWsMessage(sid, "");
  const frames = drain(t);
  assert.deepEqual(frames.map((f) => [f[0], f[2], f[3].length]), [
    [7, 2, 1000], [7, 2, 1000], [7, 3, 500], [7, 1, 2], [7, 3, 0],
  ]);
});

test("sending respects the peer's credit and resumes on WINDOW", () => {
  const { t, sid } = opened({ maxChunk: 16384 }, 1000);
  t.sendWsMessage(sid, new Uint8Array(2500));
  let frames = drain(t);
  assert.equal(frames.reduce((n, f) => n + f[3].length, 0), 1000);
  assert.equal(t.hasPending(), false, "blocked on credit");
  assert.equal(t.queuedBytes(sid), 1500);
  t.receiveMessage(cat([9, sid, 5000]));
  frames = drain(t);
  assert.equal(frames.reduce((n, f) => n + f[3].length, 0), 1500);
  assert.equal(frames.at(-1)[2], 1, "FIN on the last chunk");
});

test("writable goes false at maxPending and back with a 'writable' event", () => {
  const { t, sid } = opened({ maxPending: 1000 }, 1 << 20);
  assert.equal(t.sendWsMessage(sid, new Uint8Array(600)), true);
  assert.equal(t.sendWsMessage(sid, new Uint8Array(600)), false);
  assert.throws(() => t.sendWsMessage(sid, "x"), LocalProtocolError, "the bound is enforced");
  drain(t);
  assert.deepEqual(t.eventsReceived(), [{ type: "writable", sid }]);
  assert.equal(t.isWritable(sid), true);
});

test("received chunks are reassembled; credit comes back in WINDOW frames of half a window", () => {
  const { t, sid } = opened({ initialWindow: 65536 });
  t.receiveMessage(cat(message(sid, 2, "hel"), message(sid, 3, "lo")));
  const [msg] = t.eventsReceived();
  assert.deepEqual(msg, { type: "message", sid, data: "hello", size: 5 }); // the whole message, as in the Python core
  t.consumed(sid, msg.size);
  assert.equal(t.nextMessage(), null, "too little owed for a WINDOW yet");
  const big = new Uint8Array(40000);
  t.receiveMessage(cat(message(sid, 1, big)));
  const [binary] = t.eventsReceived();
  assert.equal(binary.data.length, 40000);
  t.consumed(sid, binary.size);
  assert.deepEqual(drain(t), [[9, sid, 40005]]);
});

test("a message larger than the window does not deadlock: partial chunks are credited on arrival", () => {
  const { t, sid } = opened({ initialWindow: 65536 });
  let got = null;
  for (let i = 0; i < 8; i++) {
    const fin = i === 7 ? 1 : 0;
    t.receiveMessage(cat(message(sid, fin, new Uint8Array(32768).fill(i))));
    for (const e of t.eventsReceived()) if (e.type === "message") got = e;
    for (const f of drain(t)) assert.equal(f[0], 9);
  }
  assert.equal(got.data.length, 8 * 32768);
  assert.equal(got.data[8 * 32768 - 1], 7);
});

test("sending past our window is a flow-control error (1008)", () => {
  const { t, sid } = opened({ initialWindow: 65536 });
  assert.throws(() => t.receiveMessage(cat(message(sid, 1, new Uint8Array(65537)))), (e) => e instanceof RemoteProtocolError && e.code === 1008);
  assert.equal(t.closed, true);
  assert.equal(t.eventsReceived().at(-1).code, ResetCode.SESSION_LOST);
});

test("over maxWsMessage resets just the stream with TOO_LARGE", () => {
  const { t, sid } = opened({ maxWsMessage: 10 });
  t.receiveMessage(cat(message(sid, 1, new Uint8Array(11))));
  assert.deepEqual(t.eventsReceived().map((e) => [e.type, e.code]), [["reset", ResetCode.TOO_LARGE]]);
  assert.deepEqual(drain(t).map((f) => [f[0], f[2]]), [[10, ResetCode.TOO_LARGE]]);
  assert.equal(t.closed, false);
});

test("invalid UTF-8 in a text message resets the stream with PROTOCOL", () => {
  const { t, sid } = opened();
  t.receiveMessage(cat(message(sid, 3, Uint8Array.of(0xc3, 0x28))));
  assert.equal(t.eventsReceived()[0].code, ResetCode.PROTOCOL);
});

test("close handshake: our CLOSE goes after queued messages; the peer's CLOSE forgets the stream", () => {
  const { t, sid } = opened();
  t.sendWsMessage(sid, "bye");
  t.closeWebSocket(sid, 4000, "done");
  assert.deepEqual(drain(t).map((f) => f[0]), [7, 8]);
  assert.throws(() => t.sendWsMessage(sid, "after"), LocalProtocolError);
  t.receiveMessage(cat([8, sid, 4000, "done"]));
  assert.deepEqual(t.eventsReceived(), [{ type: "closed", sid, code: 4000, reason: "done" }]);
  assert.equal(t.streamCount, 0);
  t.receiveMessage(cat([9, sid, 10])); // late frames of a finished stream are ignored
  assert.equal(t.eventsReceived().length, 0);
});

test("a refusal (RESPONSE) with a body ends the stream", () => {
  const t = new Tunnel();
  const sid = t.openWebSocket("/ws");
  t.nextMessage();
  t.receiveMessage(cat([3, sid, 403, utf8("Forbidden"), [], true], [5, sid, utf8("no")], [6, sid]));
  assert.deepEqual(t.eventsReceived().map((e) => e.type), ["refused", "data", "ended"]);
  t.consumed(sid, 2);
  assert.equal(t.streamCount, 0);
});

test("a RESET from the gateway; a reset before the OPEN left vanishes", () => {
  const { t, sid } = opened();
  t.receiveMessage(cat([10, sid, 2, "origin unreachable"]));
  assert.deepEqual(t.eventsReceived(), [{ type: "reset", sid, code: 2, reason: "origin unreachable", remote: true, retrySafe: false }]);
  const sid2 = t.openWebSocket("/ws");
  t.reset(sid2, ResetCode.CANCEL, "page closed");
  assert.equal(t.nextMessage(), null, "nothing at all is sent");
});

test("streams the gateway opens are refused; bad ids are protocol errors", () => {
  const { t, sid } = opened();
  t.receiveMessage(cat([2, 2, 0, utf8("/x"), [], []]));
  assert.deepEqual(drain(t), [[10, 2, ResetCode.REFUSED, "a browser takes no streams"]]);
  t.receiveMessage(cat([9, 2, 5])); // late frame for the refused stream: ignored
  assert.throws(() => t.receiveMessage(cat([2, 2, 0, utf8("/x"), [], []])), /not above/);
  const t2 = opened().t;
  assert.throws(() => t2.receiveMessage(cat([2, 3, 0, utf8("/x"), [], []])), /ours to allocate/);
  const t3 = opened().t;
  assert.throws(() => t3.receiveMessage(cat([9, 99, 5])), /never opened/);
  const t4 = opened().t;
  assert.throws(() => t4.receiveMessage(cat(accept(sid))), /an accept on stream 1 whose receive side is WS/);
});

test("closeAll resets every stream locally; retrySafe only if the OPEN never left", () => {
  const t = new Tunnel();
  const a = t.openWebSocket("/a");
  t.nextMessage();
  const b = t.openWebSocket("/b");
  t.closeAll("session lost");
  assert.deepEqual(t.eventsReceived().map((e) => [e.sid, e.code, e.retrySafe]), [[a, 7, false], [b, 7, true]]);
  assert.throws(() => t.openWebSocket("/c"), LocalProtocolError);
});

test("many small messages share one session message (batching)", () => {
  const { t, sid } = opened({}, 1 << 20);
  for (let i = 0; i < 100; i++) t.sendWsMessage(sid, `m${i}`);
  const batch = t.nextMessage();
  assert.equal(tunnelFrames.decode(batch).length, 100);
  assert.equal(t.nextMessage(), null);
});
