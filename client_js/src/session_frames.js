// ---------------------------------------------------------------------------
// 2a. Hop session frames: encoding, validation, errors, close codes
//     (docs/protocol.md; reference: gateway/core/session/frames.py, errors.py)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { MsgpackError, utf8Encoder, encode, SESSION_LIMITS, MsgpackReader, utf8Length } from "./msgpack.js";

/*
 * Errors say who is at fault, as in gateway/core/session/errors.py:
 *
 *     LocalProtocolError    we misused the API; the session is unchanged
 *     BufferFull            backpressure: wait for a "window-opened" event
 *     RemoteProtocolError   the peer broke the protocol; carries the close
 *                           code; the session is already CLOSED, ABORT queued
 */

class LocalProtocolError extends Error {}

class BufferFull extends Error {}

class RemoteProtocolError extends Error {
  constructor(reason, code = 1002) {
    super(reason);
    this.reason = reason;
    this.code = code;
  }
}

/** Close codes of CLOSE/ABORT frames (1xxx as in RFC 6455). */
const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  INVALID_DATA: 1007,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SESSION_EXPIRED: 4000,
  AUTH_FAILED: 4001,
  UNKNOWN_SESSION: 4002,
  UNSUPPORTED_VERSION: 4003,
  CLOSE_TIMEOUT: 4004,
});

const PROTOCOL_VERSION = 1;
const MAX_FRAGMENT_SIZE = 1024 * 1024;
const MAX_SESSION_ID_LENGTH = 128;
const MAX_TOKEN_LENGTH = 64;
const MAX_REASON_BYTES = 123;
const MAX_UINT64 = 2n ** 64n - 1n;
/** Upper bound of a DATA frame's size minus its payload. */
const DATA_OVERHEAD = 17;
const FLAG_FIN = 0x01;
const FLAG_TEXT = 0x02;
const MAX_QUEUED_PONGS = 16;
const MAX_PROBES = 8;

const FrameType = Object.freeze({ HELLO: 1, DATA: 2, ACK: 3, PING: 4, PONG: 5, CLOSE: 6, ABORT: 7, GOAWAY: 8 });

const sessionFrames = Object.freeze({
  hello: (version, sessionId, lastReceived, token) =>
    encode([FrameType.HELLO, version, sessionId, lastReceived, token ?? null]),
  data: (seq, flags, payload) => encode([FrameType.DATA, seq, flags, payload]),
  ack: (received) => encode([FrameType.ACK, received]),
  ping: (nonce) => encode([FrameType.PING, nonce]),
  pong: (nonce) => encode([FrameType.PONG, nonce]),
  close: (seq, code, reason) => encode([FrameType.CLOSE, seq, code, reason]),
  abort: (code, reason) => encode([FrameType.ABORT, code, reason]),
  goaway: (lastStreamId, reason) => encode([FrameType.GOAWAY, lastStreamId, reason]),
  parse: parseSessionFrame,
  /** Every frame of a batch, checked; RemoteProtocolError if any is bad. */
  decode(batch) {
    const frames = [];
    eachSessionFrame(batch, (frame) => {
      frames.push(frame);
    });
    return frames;
  },
});

function malformed(what) {
  return new RemoteProtocolError(d`malformed frame: ${what}`, CloseCode.PROTOCOL_ERROR);
}

/** A uint64 (Number, or BigInt past 2^53); booleans are not numbers here. */
function isUint(v, low = 0) {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= low;
  return typeof v === "bigint" && v >= BigInt(low) && v <= MAX_UINT64;
}

function isCloseCode(v) {
  return Number.isInteger(v) && v >= 1000 && v <= 4999;
}

function isReason(v) {
  return typeof v === "string" && v.length <= MAX_REASON_BYTES * 3 && utf8Length(v) <= MAX_REASON_BYTES;
}

/**
 * The one frame validator, of the session's frames and of the tunnel's:
 * `raw` (a decoded msgpack object) against a table of frame type ->
 * [name, [[field, valid], ...], ...]. Returns the frame type's entry;
 * `fail(what)` makes the error to throw.
 */
function checkFrame(raw, layouts, fail) {
  if (!Array.isArray(raw) || raw.length === 0) throw fail(d`a frame must be a non-empty array`);
  const layout = typeof raw[0] === "number" ? layouts[raw[0]] : undefined;
  if (layout === undefined) throw fail(d`unknown frame type ${String(raw[0]).slice(0, 20)}`);
  const [name, fields] = layout;
  if (raw.length !== fields.length + 1) throw fail(d`${name} has ${raw.length} fields, expected ${fields.length + 1}`);
  fields.forEach(([field, valid], i) => {
    if (!valid(raw[i + 1])) throw fail(d`${name} ${field} is invalid`);
  });
  return layout;
}

const SEQ = ["seq", (v) => isUint(v, 1)];
const CODE = ["close code", isCloseCode];
const REASON = ["reason", isReason];
const NONCE = ["nonce", isUint];
const nonceFrame = ([type, nonce]) => ({ type, nonce });

/** Frame type -> [name, fields after the type, the frame object of a valid one]. */
const SESSION_LAYOUTS = {
  [FrameType.HELLO]: ["HELLO", [
    ["version", isUint],
    ["session id", (v) => typeof v === "string" && v.length > 0 && v.length <= MAX_SESSION_ID_LENGTH],
    ["last_received", isUint],
    ["token", (v) => v === null || (v instanceof Uint8Array && v.length <= MAX_TOKEN_LENGTH)],
  ], ([type, version, sessionId, lastReceived, token]) => ({ type, version, sessionId, lastReceived, token })],
  [FrameType.DATA]: ["DATA", [
    SEQ,
    ["flags", (v) => Number.isInteger(v) && v >= 0 && v <= (FLAG_FIN | FLAG_TEXT)],
    ["payload", (v) => v instanceof Uint8Array],
  ], ([type, seq, flags, payload]) => ({ type, seq, fin: Boolean(flags & FLAG_FIN), text: Boolean(flags & FLAG_TEXT), payload })],
  [FrameType.ACK]: ["ACK", [["received", isUint]], ([type, received]) => ({ type, received })],
  [FrameType.PING]: ["PING", [NONCE], nonceFrame],
  [FrameType.PONG]: ["PONG", [NONCE], nonceFrame],
  [FrameType.CLOSE]: ["CLOSE", [SEQ, CODE, REASON], ([type, seq, code, reason]) => ({ type, seq, code, reason })],
  [FrameType.ABORT]: ["ABORT", [CODE, REASON], ([type, code, reason]) => ({ type, code, reason })],
  [FrameType.GOAWAY]: ["GOAWAY", [["last_stream_id", isUint], REASON], ([type, lastStreamId, reason]) => ({ type, lastStreamId, reason })],
};

/** Validate one decoded msgpack object as a session frame; returns the frame object. */
function parseSessionFrame(raw) {
  return checkFrame(raw, SESSION_LAYOUTS, malformed)[2](raw);
}

/** Calls `handle(frame)` for each frame of `batch`, in order; frames before a bad one count. */
function eachSessionFrame(batch, handle) {
  const reader = new MsgpackReader(batch, SESSION_LIMITS);
  try {
    while (!reader.done) {
      if (handle(parseSessionFrame(reader.read())) === false) return;
    }
  } catch (err) {
    if (err instanceof MsgpackError) throw malformed(err.message);
    throw err;
  }
}

function clipReason(reason) {
  const raw = utf8Encoder.encode(reason);
  if (raw.length <= MAX_REASON_BYTES) return reason;
  return new TextDecoder().decode(raw.subarray(0, MAX_REASON_BYTES)).replace(/\uFFFD+$/, "");
}

function constantTimeEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export { LocalProtocolError, BufferFull, RemoteProtocolError, CloseCode, PROTOCOL_VERSION, MAX_FRAGMENT_SIZE, MAX_TOKEN_LENGTH, MAX_REASON_BYTES, DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, MAX_QUEUED_PONGS, MAX_PROBES, FrameType, sessionFrames, isUint, isCloseCode, isReason, checkFrame, eachSessionFrame, clipReason, constantTimeEqual };
