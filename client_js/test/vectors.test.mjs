// The shared protocol vectors (tests/vectors/*.json) against the shim's
// JavaScript cores. tests/core/test_vectors.py runs the same files against
// the Python cores, so a change to one side the other does not follow fails
// a test on one of them. tests/vectors/README.md describes the format.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { encode, decodeAll } from "../src/msgpack.js";
import { Session, sessionFrames, RemoteProtocolError, FrameType } from "../src/session.js";
import { Tunnel, tunnelFrames } from "../src/tunnel.js";

const VECTORS = new URL("../../tests/vectors/", import.meta.url);
const load = (name) => JSON.parse(readFileSync(new URL(name, VECTORS), "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytes = (text) => new Uint8Array(Buffer.from(text, "hex"));
/** Generous limits for reading what a core wrote (the cores check what they read themselves). */
const READ = { maxBin: 16 * 1024 * 1024, maxStr: 1024 * 1024, maxArray: 1024, maxDepth: 3 };

/** JSON form -> msgpack value: {"bin": hex} is bytes. */
const toJs = (v) => (v === null ? null : Array.isArray(v) ? v.map(toJs) : typeof v === "object" ? bytes(v.bin) : v);
/** msgpack value -> JSON form. */
const toJson = (v) => (v instanceof Uint8Array ? { bin: hex(v) } : Array.isArray(v) ? v.map(toJson) : typeof v === "bigint" ? Number(v) : v);
const pack = (frames) => Buffer.concat(frames.map((f) => encode(toJs(f))));
const unpack = (batch) => decodeAll(batch, READ).map(toJson);
const camel = (o) => Object.fromEntries(Object.entries(o ?? {}).map(([k, v]) => [k.replace(/_(\w)/g, (_, c) => c.toUpperCase()), v]));

/** "*" matches anything; an expected object (an event) only its own keys. */
function matches(expected, actual) {
  if (expected === "*") return true;
  if (Array.isArray(expected)) return Array.isArray(actual) && expected.length === actual.length && expected.every((e, i) => matches(e, actual[i]));
  if (expected !== null && typeof expected === "object") {
    return actual !== null && typeof actual === "object" && Object.entries(expected).every(([k, v]) => k in actual && matches(v, actual[k]));
  }
  return expected === actual;
}

function check(expected, actual, what) {
  assert.ok(matches(expected, actual), `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

/** A decoded session frame back to its msgpack array (what the vector lists). */
function sessionArray(f) {
  switch (f.type) {
    case FrameType.HELLO: return [1, f.version, f.sessionId, f.lastReceived, f.token === null ? null : { bin: hex(f.token) }];
    case FrameType.DATA: return [2, f.seq, (f.fin ? 1 : 0) | (f.text ? 2 : 0), { bin: hex(f.payload) }];
    case FrameType.ACK: return [3, f.received];
    case FrameType.PING: return [4, f.nonce];
    case FrameType.PONG: return [5, f.nonce];
    case FrameType.CLOSE: return [6, f.seq, f.code, f.reason];
    case FrameType.ABORT: return [7, f.code, f.reason];
    case FrameType.GOAWAY: return [8, f.lastStreamId, f.reason];
    default: throw new Error(`unknown frame type ${f.type}`);
  }
}

/** Each encoder of sessionFrames, by frame type: the shim's own way to write each frame. */
const SESSION_ENCODERS = {
  1: ([, v, id, last, token]) => sessionFrames.hello(v, id, last, token),
  2: ([, seq, flags, payload]) => sessionFrames.data(seq, flags, payload),
  3: ([, n]) => sessionFrames.ack(n),
  4: ([, n]) => sessionFrames.ping(n),
  5: ([, n]) => sessionFrames.pong(n),
  6: ([, seq, code, reason]) => sessionFrames.close(seq, code, reason),
  7: ([, code, reason]) => sessionFrames.abort(code, reason),
  8: ([, id, reason]) => sessionFrames.goaway(id, reason),
};

for (const v of load("session_frames.json").valid) {
  test(`session frame: ${v.name}`, () => {
    const frames = sessionFrames.decode(bytes(v.hex));
    assert.equal(frames.length, 1);
    assert.deepEqual(sessionArray(frames[0]), v.frame);
    assert.equal(hex(SESSION_ENCODERS[v.frame[0]](toJs(v.frame))), v.hex);
  });
}

for (const v of load("session_frames.json").invalid) {
  test(`session frame refused: ${v.name}`, () => {
    assert.throws(() => sessionFrames.decode(bytes(v.hex)), (err) => err instanceof RemoteProtocolError && err.code === v.close_code);
  });
}

for (const v of load("tunnel_frames.json").valid) {
  test(`tunnel frame: ${v.name}`, () => {
    assert.deepEqual(tunnelFrames.decode(bytes(v.hex)).map(toJson), [v.frame]);
    assert.equal(hex(encode(toJs(v.frame))), v.hex);
  });
}

for (const v of load("tunnel_frames.json").invalid) {
  test(`tunnel frame refused: ${v.name}`, () => {
    assert.throws(() => tunnelFrames.decode(bytes(v.hex)), (err) => err instanceof RemoteProtocolError && err.code === v.close_code);
  });
}

// -- conversations ---------------------------------------------------------------

const payload = (data) => (typeof data === "string" ? { text: data } : { bin: hex(data) });

function sessionEvent(e) {
  switch (e.type) {
    case "hello": return { type: "hello", last_received: e.lastReceived, first: e.first };
    case "message": return { type: "message", ...payload(e.data) };
    case "window-opened": return { type: "window_opened" };
    case "closed": return { type: "closed", code: e.code, reason: e.reason, by_peer: e.byPeer };
    case "goaway": return { type: "goaway", last_stream_id: e.lastStreamId, reason: e.reason };
    case "probe-answered": return { type: "probe_answered", nonce: e.nonce };
    case "stalled": return { type: "stalled" };
    default: throw new Error(`unknown event ${e.type}`);
  }
}

function expectRefusal(fn, code) {
  assert.throws(fn, (err) => err instanceof RemoteProtocolError && err.code === code, `a protocol error with code ${code}`);
}

function sessionStep(s, step) {
  const now = step.now ?? 0;
  switch (step.do) {
    case "attach": return s.transportAttached(now);
    case "lose": return s.transportLost(now);
    case "send": return s.sendMessage(step.text ?? bytes(step.bin));
    case "timer": return s.handleTimer(now);
    case "close": return s.close(step.code, step.reason, now);
    case "receive":
      if ("close_code" in step) return expectRefusal(() => s.receiveData(pack(step.frames), now), step.close_code);
      return s.receiveData(pack(step.frames), now);
    case "out": return check(step.frames, unpack(s.dataToSend(now)), "out");
    case "events": return check(step.events, s.eventsReceived().map(sessionEvent), "events");
    case "expect": {
      const got = { state: s.state, writable: s.writable, last_received: s.lastReceived };
      for (const [k, v] of Object.entries(step)) if (k !== "do") assert.equal(got[k], v, k);
      return undefined;
    }
    default: throw new Error(`unknown step ${step.do}`);
  }
}

for (const script of load("session_conversations.json").scripts) {
  test(`session conversation: ${script.name}`, () => {
    const o = script.session;
    const s = new Session({ sessionId: o.session_id, token: bytes(o.token), isClient: o.is_client, now: 0, config: camel(o.config) });
    script.steps.forEach((step, i) => {
      try {
        sessionStep(s, step);
      } catch (err) {
        err.message = `step ${i} ${JSON.stringify(step)}: ${err.message}`;
        throw err;
      }
    });
  });
}

function tunnelEvent(e) {
  const heads = (pairs) => pairs.map(([k, v]) => [hex(k), hex(v)]);
  switch (e.type) {
    case "accepted": return { type: "accepted", sid: e.sid, protocol: e.protocol, headers: heads(e.headers) };
    case "refused": return { type: "refused", sid: e.sid, status: e.status, has_body: e.hasBody };
    case "data": return { type: "data", sid: e.sid, bin: hex(e.data) };
    case "ended": return { type: "ended", sid: e.sid };
    case "message": return { type: "message", sid: e.sid, ...payload(e.data), size: e.size };
    case "closed": return { type: "closed", sid: e.sid, code: e.code, reason: e.reason };
    case "reset": return { type: "reset", sid: e.sid, code: e.code, remote: e.remote, retry_safe: e.retrySafe };
    case "writable": return { type: "writable", sid: e.sid };
    default: throw new Error(`unknown event ${e.type}`);
  }
}

function tunnelStep(t, step) {
  switch (step.do) {
    case "open_ws": return assert.equal(t.openWebSocket(step.target, step.headers, step.protocols), step.sid);
    case "send_ws": return assert.equal(t.sendWsMessage(step.sid, step.text ?? bytes(step.bin)), step.writable);
    case "close_ws": return t.closeWebSocket(step.sid, step.code, step.reason);
    case "reset": return t.reset(step.sid, step.code, step.reason);
    case "consumed": return t.consumed(step.sid, step.n);
    case "receive":
      if ("close_code" in step) return expectRefusal(() => t.receiveMessage(pack(step.frames)), step.close_code);
      return t.receiveMessage(pack(step.frames));
    case "out": {
      const frames = [];
      for (let message; (message = t.nextMessage(step.max_bytes)) !== null;) frames.push(...unpack(message));
      return check(step.frames, frames, "out");
    }
    case "events": return check(step.events, t.eventsReceived().map(tunnelEvent), "events");
    default: throw new Error(`unknown step ${step.do}`);
  }
}

for (const script of load("tunnel_conversations.json").scripts) {
  test(`tunnel conversation: ${script.name}`, () => {
    const t = new Tunnel(camel(script.tunnel));
    script.steps.forEach((step, i) => {
      try {
        tunnelStep(t, step);
      } catch (err) {
        err.message = `step ${i} ${JSON.stringify(step)}: ${err.message}`;
        throw err;
      }
    });
  });
}
