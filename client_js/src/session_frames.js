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

function uintField(v, what, low = 0) {
  if (!isUint(v, low)) throw malformed(d`${what} must be an integer in [${low}, 2**64-1]`);
  return v;
}

function isCloseCode(v) {
  return Number.isInteger(v) && v >= 1000 && v <= 4999;
}

function isReason(v) {
  return typeof v === "string" && v.length <= MAX_REASON_BYTES * 3 && utf8Length(v) <= MAX_REASON_BYTES;
}

function arity(raw, n, name) {
  if (raw.length !== n) throw malformed(d`${name} has ${raw.length} fields, expected ${n}`);
}

const SESSION_PARSERS = {
  [FrameType.HELLO](raw) {
    arity(raw, 5, "HELLO");
    const [, version, sessionId, lastReceived, token] = raw;
    if (typeof sessionId !== "string" || sessionId.length < 1 || sessionId.length > MAX_SESSION_ID_LENGTH) {
      throw malformed(d`HELLO session id must be a non-empty short string`);
    }
    if (token !== null && !(token instanceof Uint8Array && token.length <= MAX_TOKEN_LENGTH)) {
      throw malformed(d`HELLO token must be nil or a short bin`);
    }
    return {
      type: FrameType.HELLO,
      version: uintField(version, d`HELLO version`),
      sessionId,
      lastReceived: uintField(lastReceived, d`HELLO last_received`),
      token,
    };
  },
  [FrameType.DATA](raw) {
    arity(raw, 4, "DATA");
    const [, seq, flags, payload] = raw;
    uintField(seq, "DATA seq", 1);
    if (!Number.isInteger(flags) || flags < 0 || flags > (FLAG_FIN | FLAG_TEXT)) {
      throw malformed(d`DATA flags must be an integer using only bits 0x03`);
    }
    if (!(payload instanceof Uint8Array)) throw malformed(d`DATA payload must be bin`);
    return { type: FrameType.DATA, seq, fin: Boolean(flags & FLAG_FIN), text: Boolean(flags & FLAG_TEXT), payload };
  },
  [FrameType.ACK](raw) {
    arity(raw, 2, "ACK");
    return { type: FrameType.ACK, received: uintField(raw[1], d`ACK received`) };
  },
  [FrameType.PING](raw) {
    arity(raw, 2, "PING");
    return { type: FrameType.PING, nonce: uintField(raw[1], d`PING nonce`) };
  },
  [FrameType.PONG](raw) {
    arity(raw, 2, "PONG");
    return { type: FrameType.PONG, nonce: uintField(raw[1], d`PONG nonce`) };
  },
  [FrameType.CLOSE](raw) {
    arity(raw, 4, "CLOSE");
    if (!isCloseCode(raw[2])) throw malformed(d`close code must be an integer in [1000, 4999]`);
    if (!isReason(raw[3])) throw malformed(d`close reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
    return { type: FrameType.CLOSE, seq: uintField(raw[1], "CLOSE seq", 1), code: raw[2], reason: raw[3] };
  },
  [FrameType.ABORT](raw) {
    arity(raw, 3, "ABORT");
    if (!isCloseCode(raw[1])) throw malformed(d`close code must be an integer in [1000, 4999]`);
    if (!isReason(raw[2])) throw malformed(d`close reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
    return { type: FrameType.ABORT, code: raw[1], reason: raw[2] };
  },
  [FrameType.GOAWAY](raw) {
    arity(raw, 3, "GOAWAY");
    if (!isReason(raw[2])) throw malformed(d`close reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
    return { type: FrameType.GOAWAY, lastStreamId: uintField(raw[1], "GOAWAY last_stream_id"), reason: raw[2] };
  },
};

/** Validate one decoded msgpack object as a session frame. */
function parseSessionFrame(raw) {
  if (!Array.isArray(raw) || raw.length === 0) throw malformed(d`a frame must be a non-empty array`);
  const parser = typeof raw[0] === "number" ? SESSION_PARSERS[raw[0]] : undefined;
  if (parser === undefined) throw malformed(d`unknown frame type ${String(raw[0]).slice(0, 20)}`);
  return parser(raw);
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

export { LocalProtocolError, BufferFull, RemoteProtocolError, CloseCode, PROTOCOL_VERSION, MAX_FRAGMENT_SIZE, MAX_TOKEN_LENGTH, MAX_REASON_BYTES, DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, MAX_QUEUED_PONGS, MAX_PROBES, FrameType, sessionFrames, isUint, isCloseCode, isReason, eachSessionFrame, clipReason, constantTimeEqual };
