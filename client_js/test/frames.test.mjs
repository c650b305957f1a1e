// Session and tunnel frames: byte-exact against gateway/core/session/frames.py and
// gateway/core/tunnel/frames.py (hex produced by the Python encoders), and the
// validation every received frame goes through.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encode } from "../src/msgpack.js";
import { sessionFrames, RemoteProtocolError, FrameType } from "../src/session.js";
import { tunnelFrames } from "../src/tunnel.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h, "hex"));

test("session frames encode exactly as the Python reference", () => {
  assert.equal(hex(sessionFrames.hello(1, "abc", 7, Uint8Array.of(1, 2))), "950101a361626307c4020102");
  assert.equal(
    hex(sessionFrames.hello(1, "s".repeat(40), 70000, null)),
    "950101d928" + "73".repeat(40) + "ce00011170c0",
  );
  // docs/protocol.md: the text message "hi" as the 4th frame.
  assert.equal(hex(sessionFrames.data(4, 3, new TextEncoder().encode("hi"))), "94020403c4026869");
  assert.equal(hex(sessionFrames.data(2 ** 32 + 5, 1, new Uint8Array(300).fill(0x78))).slice(0, 40), "9402cf000000010000000501c5012c7878787878");
  assert.equal(hex(sessionFrames.ack(2 ** 40)), "9203cf0000010000000000");
  assert.equal(hex(sessionFrames.close(9, 1000, "bye")), "940609cd03e8a3627965");
  assert.equal(hex(sessionFrames.abort(4000, "expired")), "9307cd0fa0a765787069726564");
});

test("session frames decode into checked objects", () => {
  const [hello, data, ack] = sessionFrames.decode(bytes("950101a361626307c4020102" + "94020403c4026869" + "9203cf0000010000000000"));
  assert.deepEqual({ ...hello, token: [...hello.token] }, { type: FrameType.HELLO, version: 1, sessionId: "abc", lastReceived: 7, token: [1, 2] });
  assert.equal(data.seq, 4);
  assert.equal(data.fin, true);
  assert.equal(data.text, true);
  assert.equal(new TextDecoder().decode(data.payload), "hi");
  assert.equal(ack.received, 2 ** 40);
});

test("malformed session frames are protocol errors (1002)", () => {
  const bad = [
    [2, 1, 1], // DATA arity
    [2, 0, 1, new Uint8Array(0)], // seq 0
    [2, 1, 4, new Uint8Array(0)], // unknown flag bit
    [2, 1, 1, "text"], // payload not bin
    [2, true, 1, new Uint8Array(0)], // bool is not an integer
    [3, -1], // negative ack
    [1, 1, "", 0, null], // empty session id
    [1, 1, "x".repeat(129), 0, null],
    [1, 1, "x", 0, new Uint8Array(65)], // token too long
    [6, 1, 999, ""], // close code out of range
    [6, 1, 1000, "é".repeat(62)], // reason of 124 bytes
    [7, 5000, ""],
    [8, 1], // unknown type
    [true, 1],
    [],
  ];
  for (const frame of bad) {
    assert.throws(() => sessionFrames.decode(encode(frame)), (err) => err instanceof RemoteProtocolError && err.code === 1002, JSON.stringify(frame));
  }
  assert.throws(() => sessionFrames.decode(encode(5)), RemoteProtocolError);
  assert.throws(() => sessionFrames.decode(bytes("92")), RemoteProtocolError);
});

test("tunnel frames encode exactly as the Python reference", () => {
  const utf8 = (s) => new TextEncoder().encode(s);
  assert.equal(
    hex(tunnelFrames.openWs(1, 262144, utf8("/ws?x=1"), [utf8("Host"), utf8("h")], ["chat", "v2"])),
    "960201ce00040000c4072f77733f783d3192c404486f7374c4016892a463686174a27632",
  );
  assert.equal(hex(tunnelFrames.message(3, 3, utf8("hey"))), "94070303c403686579");
  assert.equal(hex(tunnelFrames.window(1, 131072)), "930901ce00020000");
  assert.equal(hex(tunnelFrames.reset(1, 4, "too large")), "940a0104a9746f6f206c61726765");
  assert.equal(hex(tunnelFrames.close(1, 1000, "")), "940801cd03e8a0");
});

test("tunnel frames from the Python encoders pass validation", () => {
  const frames = tunnelFrames.decode(bytes("950401ce00040000c090" + "960301cd0193c409466f7262696464656e90c3"));
  assert.deepEqual(frames[0], [4, 1, 262144, null, []]);
  assert.equal(frames[1][2], 403);
  assert.equal(frames[1][5], true);
});

test("malformed tunnel frames are protocol errors", () => {
  const bad = [
    [4, 1, -1, null, []], // negative window
    [4, 1, 2 ** 31, null, []], // window too big
    [4, 0, 0, null, []], // stream id 0
    [4, 1, 0, "", []], // empty protocol
    [4, 1, 0, null, [new Uint8Array(1)]], // odd header list
    [4, 1, 0, null, ["str"]], // header not bin
    [3, 1, 99, new Uint8Array(0), [], true], // status
    [3, 1, 200, new Uint8Array(0), [], 1], // has_body must be bool
    [7, 1, 4, new Uint8Array(0)], // flags
    [8, 1, 1000], // arity
    [9, 1, 0], // zero increment
    [10, 1, 256, ""], // reset code
    [11, 1],
  ];
  for (const frame of bad) assert.throws(() => tunnelFrames.decode(encode(frame)), RemoteProtocolError, JSON.stringify(frame, (k, v) => (v instanceof Uint8Array ? [...v] : v)));
});
