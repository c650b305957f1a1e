/**
 * hopgate.js: a drop-in, WebSocket-compatible object that reaches a WebSocket
 * server through a hopgate gateway, over a WebSocket where the path allows one
 * and over HTTP long-polling where it does not.
 *
 *     const ws = new HopSocket("/ws", ["chat"], { gateway: "https://gw.example" });
 *     ws.onmessage = (e) => console.log(e.data);
 *
 * Theory of operation
 * ===================
 *
 * Four layers, each a section of this file, bottom to top:
 *
 * 1. msgpack: the small subset the protocols use (nil, bool, ints, str,
 *    bin, arrays), with a decoder that is strict and bounded, since every
 *    byte it reads comes from the network.
 * 2. The hop session (docs/protocol.md): a sans-I/O port of
 *    gateway/session/core.py. Whole messages are cut into numbered DATA
 *    frames kept in a bounded replay buffer until acknowledged; every new
 *    transport starts with a HELLO stating what we have received, and the
 *    peer replays the rest (go-back-N). No clock, no socket: the I/O layer
 *    passes `now` in and pulls batches and events out.
 * 3. The tunnel (docs/tunnel.md): the page's WebSocket is one stream over
 *    the session: OPEN_WS to the target path, ACCEPT (or a refusal),
 *    MESSAGE chunks with per-stream credit (WINDOW), CLOSE with code and
 *    reason, RESET. Also sans-I/O.
 * 4. I/O: `HopLink` opens a session with `POST /.hopgate/session`, carries it
 *    on a WebSocket (`hopgate.v1`, used only after a probe round trip) or on
 *    long-polling (held GET + POST), demotes a stalled WebSocket, re-probes
 *    with backoff and resumes after any failure. `HopSocket` is the
 *    WebSocket-shaped object the page sees.
 *
 * Each HopSocket has its own hop session (one stream on it), so one socket's
 * failure or close never touches another's.
 *
 * Batching: page sends, tunnel frames and session frames are coalesced per
 * microtask, so a burst of `send()` calls in one task becomes one transport
 * write; nothing runs per message on a timer.
 *
 * Usable as an ES module (`import { HopSocket } from "./hopgate.js"`) and,
 * loaded with <script type="module">, it also sets `window.HopSocket`. The
 * only `export` is the last line, so a classic-script copy is this file
 * without it (see README.md).
 */

// ---------------------------------------------------------------------------
// 1. msgpack subset
// ---------------------------------------------------------------------------

/** Bytes that are not a batch of whole, bounded msgpack objects of our subset. */
class MsgpackError extends Error {}

const utf8Encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const TWO_32 = 2 ** 32;

/** A growable byte buffer for the encoder. */
class ByteWriter {
  constructor(size = 64) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
    this.length = 0;
  }

  reserve(n) {
    const need = this.length + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.length));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(b) {
    this.reserve(1);
    this.buf[this.length++] = b;
  }

  typed(tag, n, width) {
    this.reserve(1 + width);
    this.buf[this.length++] = tag;
    if (width === 1) this.view.setUint8(this.length, n);
    else if (width === 2) this.view.setUint16(this.length, n);
    else if (width === 4) this.view.setUint32(this.length, n);
    this.length += width;
  }

  bytes(data) {
    this.reserve(data.length);
    this.buf.set(data, this.length);
    this.length += data.length;
  }

  result() {
    return this.buf.slice(0, this.length);
  }
}

function encodeInt(w, v) {
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v < 0x100) w.typed(0xcc, v, 1);
    else if (v < 0x10000) w.typed(0xcd, v, 2);
    else if (v < TWO_32) w.typed(0xce, v, 4);
    else encodeBig(w, BigInt(v));
  } else if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) w.typed(0xd0, v & 0xff, 1);
  else if (v >= -0x8000) w.typed(0xd1, v & 0xffff, 2);
  else if (v >= -0x80000000) w.typed(0xd2, v >>> 0, 4);
  else encodeBig(w, BigInt(v));
}

function encodeBig(w, v) {
  if (v < -(2n ** 63n) || v >= 2n ** 64n) throw new TypeError("integer out of the msgpack range");
  w.reserve(9);
  w.buf[w.length] = v >= 0n ? 0xcf : 0xd3;
  w.view.setBigUint64(w.length + 1, BigInt.asUintN(64, v));
  w.length += 9;
}

function encodeStr(w, s) {
  const raw = utf8Encoder.encode(s);
  const n = raw.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) w.typed(0xd9, n, 1);
  else if (n < 0x10000) w.typed(0xda, n, 2);
  else w.typed(0xdb, n, 4);
  w.bytes(raw);
}

/** msgpack bin8/16/32 header bytes for an n-byte payload. */
function binHeader(n) {
  if (n < 0x100) return Uint8Array.of(0xc4, n);
  if (n < 0x10000) return Uint8Array.of(0xc5, n >> 8, n & 0xff);
  return Uint8Array.of(0xc6, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}

function encodeValue(w, v) {
  if (v === null || v === undefined) w.u8(0xc0);
  else if (v === true) w.u8(0xc3);
  else if (v === false) w.u8(0xc2);
  else if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw new TypeError(`not an integer we encode: ${v}`);
    encodeInt(w, v);
  } else if (typeof v === "bigint") encodeBig(w, v);
  else if (typeof v === "string") encodeStr(w, v);
  else if (v instanceof Uint8Array) {
    w.bytes(binHeader(v.length));
    w.bytes(v);
  } else if (Array.isArray(v)) {
    const n = v.length;
    if (n < 16) w.u8(0x90 | n);
    else if (n < 0x10000) w.typed(0xdc, n, 2);
    else w.typed(0xdd, n, 4);
    for (const item of v) encodeValue(w, item);
  } else throw new TypeError(`cannot encode ${Object.prototype.toString.call(v)}`);
}

/**
 * Encode one value of the subset (null, boolean, safe integer or BigInt,
 * string, Uint8Array, array of those) to a fresh Uint8Array.
 */
function encode(value) {
  const w = new ByteWriter();
  encodeValue(w, value);
  return w.result();
}

/** Decoder limits; the defaults are the session protocol's (docs/protocol.md §7). */
const SESSION_LIMITS = Object.freeze({ maxBin: 1024 * 1024, maxStr: 1024, maxArray: 8, maxDepth: 1 });

/**
 * Reads the msgpack objects of one batch, one at a time, so the frames
 * before a bad one can take effect (as they do in the Python cores).
 * Anything outside the subset or over a limit is a MsgpackError; nothing
 * else escapes, and nothing larger than the batch is ever allocated.
 */
class MsgpackReader {
  constructor(bytes, limits = SESSION_LIMITS) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
    this.limits = limits;
  }

  get done() {
    return this.pos >= this.bytes.length;
  }

  /** The next top-level object. */
  read() {
    return this.value(0);
  }

  need(n) {
    if (this.pos + n > this.bytes.length) throw new MsgpackError("ends inside a frame");
    const at = this.pos;
    this.pos += n;
    return at;
  }

  uint(width) {
    const at = this.need(width);
    const v = this.view;
    if (width === 1) return v.getUint8(at);
    if (width === 2) return v.getUint16(at);
    if (width === 4) return v.getUint32(at);
    const big = v.getBigUint64(at);
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  int(width) {
    const at = this.need(width);
    const v = this.view;
    if (width === 1) return v.getInt8(at);
    if (width === 2) return v.getInt16(at);
    if (width === 4) return v.getInt32(at);
    const big = v.getBigInt64(at);
    const safe = BigInt(Number.MAX_SAFE_INTEGER);
    return big <= safe && big >= -safe ? Number(big) : big;
  }

  str(n) {
    if (n > this.limits.maxStr) throw new MsgpackError(`str of ${n} bytes over ${this.limits.maxStr}`);
    const at = this.need(n);
    try {
      return strictUtf8.decode(this.bytes.subarray(at, at + n));
    } catch {
      throw new MsgpackError("str is not valid UTF-8");
    }
  }

  bin(n) {
    if (n > this.limits.maxBin) throw new MsgpackError(`bin of ${n} bytes over ${this.limits.maxBin}`);
    const at = this.need(n);
    return this.bytes.subarray(at, at + n); // a view: batches are never reused
  }

  array(n, depth) {
    if (n > this.limits.maxArray) throw new MsgpackError(`array of ${n} over ${this.limits.maxArray}`);
    if (depth >= this.limits.maxDepth) throw new MsgpackError("arrays nested too deep");
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }

  value(depth) {
    const t = this.bytes[this.need(1)];
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t >= 0xa0 && t <= 0xbf) return this.str(t & 0x1f);
    if (t >= 0x90 && t <= 0x9f) return this.array(t & 0x0f, depth);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.uint(1));
      case 0xc5: return this.bin(this.uint(2));
      case 0xc6: return this.bin(this.uint(4));
      case 0xcc: return this.uint(1);
      case 0xcd: return this.uint(2);
      case 0xce: return this.uint(4);
      case 0xcf: return this.uint(8);
      case 0xd0: return this.int(1);
      case 0xd1: return this.int(2);
      case 0xd2: return this.int(4);
      case 0xd3: return this.int(8);
      case 0xd9: return this.str(this.uint(1));
      case 0xda: return this.str(this.uint(2));
      case 0xdb: return this.str(this.uint(4));
      case 0xdc: return this.array(this.uint(2), depth);
      case 0xdd: return this.array(this.uint(4), depth);
      default: break;
    }
    if ((t >= 0x80 && t <= 0x8f) || t === 0xde || t === 0xdf) throw new MsgpackError("maps are not allowed");
    if (t === 0xca || t === 0xcb) throw new MsgpackError("floats are not allowed");
    if (t === 0xc1) throw new MsgpackError("0xc1 is never used");
    throw new MsgpackError("ext types are not allowed");
  }
}

/** Every object of a batch; MsgpackError if any of it is bad. */
function decodeAll(bytes, limits = SESSION_LIMITS) {
  const reader = new MsgpackReader(bytes, limits);
  const out = [];
  while (!reader.done) out.push(reader.read());
  return out;
}

/** Join byte arrays into one (the single copy a batch costs). */
function concatBytes(parts) {
  if (parts.length === 1) return parts[0];
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function utf8Length(s) {
  return utf8Encoder.encode(s).length;
}

/** A queue with O(1) shift and index access (the replay buffer). */
class Deque {
  constructor() {
    this.items = [];
    this.head = 0;
  }

  get length() {
    return this.items.length - this.head;
  }

  push(x) {
    this.items.push(x);
  }

  at(i) {
    return this.items[this.head + i];
  }

  shift() {
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  clear() {
    this.items = [];
    this.head = 0;
  }
}

// ---------------------------------------------------------------------------
// 2. The hop session (docs/protocol.md; reference: gateway/session/core.py)
// ---------------------------------------------------------------------------

/*
 * Errors say who is at fault, as in gateway/session/errors.py:
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

const FrameType = Object.freeze({ HELLO: 1, DATA: 2, ACK: 3, PING: 4, PONG: 5, CLOSE: 6, ABORT: 7 });

const sessionFrames = Object.freeze({
  hello: (version, sessionId, lastReceived, token) =>
    encode([FrameType.HELLO, version, sessionId, lastReceived, token ?? null]),
  data: (seq, flags, payload) => encode([FrameType.DATA, seq, flags, payload]),
  ack: (received) => encode([FrameType.ACK, received]),
  ping: (nonce) => encode([FrameType.PING, nonce]),
  pong: (nonce) => encode([FrameType.PONG, nonce]),
  close: (seq, code, reason) => encode([FrameType.CLOSE, seq, code, reason]),
  abort: (code, reason) => encode([FrameType.ABORT, code, reason]),
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
  return new RemoteProtocolError(`malformed frame: ${what}`, CloseCode.PROTOCOL_ERROR);
}

/** A uint64 (Number, or BigInt past 2^53); booleans are not numbers here. */
function isUint(v, low = 0) {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= low;
  return typeof v === "bigint" && v >= BigInt(low) && v <= MAX_UINT64;
}

function uintField(v, what, low = 0) {
  if (!isUint(v, low)) throw malformed(`${what} must be an integer in [${low}, 2**64-1]`);
  return v;
}

function isCloseCode(v) {
  return Number.isInteger(v) && v >= 1000 && v <= 4999;
}

function isReason(v) {
  return typeof v === "string" && v.length <= MAX_REASON_BYTES * 3 && utf8Length(v) <= MAX_REASON_BYTES;
}

function arity(raw, n, name) {
  if (raw.length !== n) throw malformed(`${name} has ${raw.length} fields, expected ${n}`);
}

const SESSION_PARSERS = {
  [FrameType.HELLO](raw) {
    arity(raw, 5, "HELLO");
    const [, version, sessionId, lastReceived, token] = raw;
    if (typeof sessionId !== "string" || sessionId.length < 1 || sessionId.length > MAX_SESSION_ID_LENGTH) {
      throw malformed("HELLO session id must be a non-empty short string");
    }
    if (token !== null && !(token instanceof Uint8Array && token.length <= MAX_TOKEN_LENGTH)) {
      throw malformed("HELLO token must be nil or a short bin");
    }
    return {
      type: FrameType.HELLO,
      version: uintField(version, "HELLO version"),
      sessionId,
      lastReceived: uintField(lastReceived, "HELLO last_received"),
      token,
    };
  },
  [FrameType.DATA](raw) {
    arity(raw, 4, "DATA");
    const [, seq, flags, payload] = raw;
    uintField(seq, "DATA seq", 1);
    if (!Number.isInteger(flags) || flags < 0 || flags > (FLAG_FIN | FLAG_TEXT)) {
      throw malformed("DATA flags must be an integer using only bits 0x03");
    }
    if (!(payload instanceof Uint8Array)) throw malformed("DATA payload must be bin");
    return { type: FrameType.DATA, seq, fin: Boolean(flags & FLAG_FIN), text: Boolean(flags & FLAG_TEXT), payload };
  },
  [FrameType.ACK](raw) {
    arity(raw, 2, "ACK");
    return { type: FrameType.ACK, received: uintField(raw[1], "ACK received") };
  },
  [FrameType.PING](raw) {
    arity(raw, 2, "PING");
    return { type: FrameType.PING, nonce: uintField(raw[1], "PING nonce") };
  },
  [FrameType.PONG](raw) {
    arity(raw, 2, "PONG");
    return { type: FrameType.PONG, nonce: uintField(raw[1], "PONG nonce") };
  },
  [FrameType.CLOSE](raw) {
    arity(raw, 4, "CLOSE");
    if (!isCloseCode(raw[2])) throw malformed("close code must be an integer in [1000, 4999]");
    if (!isReason(raw[3])) throw malformed(`close reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
    return { type: FrameType.CLOSE, seq: uintField(raw[1], "CLOSE seq", 1), code: raw[2], reason: raw[3] };
  },
  [FrameType.ABORT](raw) {
    arity(raw, 3, "ABORT");
    if (!isCloseCode(raw[1])) throw malformed("close code must be an integer in [1000, 4999]");
    if (!isReason(raw[2])) throw malformed(`close reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
    return { type: FrameType.ABORT, code: raw[1], reason: raw[2] };
  },
};

/** Validate one decoded msgpack object as a session frame. */
function parseSessionFrame(raw) {
  if (!Array.isArray(raw) || raw.length === 0) throw malformed("a frame must be a non-empty array");
  const parser = typeof raw[0] === "number" ? SESSION_PARSERS[raw[0]] : undefined;
  if (parser === undefined) throw malformed(`unknown frame type ${String(raw[0]).slice(0, 20)}`);
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

/** Session limits and timers; times in seconds, sizes in bytes (protocol.md §7). */
const DEFAULT_SESSION_CONFIG = Object.freeze({
  maxMessageSize: 16 * 1024 * 1024,
  fragmentSize: 64 * 1024,
  maxBufferBytes: 4 * 1024 * 1024,
  maxBufferFrames: 4096,
  maxBatchBytes: 1024 * 1024,
  retransmitTimeout: 10,
  heartbeatInterval: 20,
  stallTimeout: 15,
  resumeGrace: 60,
  closeTimeout: 10,
});

function sessionConfig(overrides) {
  const c = { ...DEFAULT_SESSION_CONFIG, ...overrides };
  if (!(c.fragmentSize >= 1 && c.fragmentSize <= MAX_FRAGMENT_SIZE)) throw new RangeError("fragmentSize out of range");
  if (c.maxBufferBytes < c.fragmentSize + DATA_OVERHEAD) throw new RangeError("maxBufferBytes must hold a fragment");
  if (c.maxBufferFrames < 1 || c.maxBatchBytes < 1) throw new RangeError("buffer and batch limits must be >= 1");
  for (const k of ["retransmitTimeout", "heartbeatInterval", "stallTimeout", "resumeGrace", "closeTimeout"]) {
    if (!(c[k] > 0)) throw new RangeError(`${k} must be > 0`);
  }
  return Object.freeze(c);
}

const SessionState = Object.freeze({ OPEN: "open", CLOSING: "closing", CLOSED: "closed" });
const { OPEN: S_OPEN, CLOSING: S_CLOSING, CLOSED: S_CLOSED } = SessionState;

/** The only place session states change: (state, event) -> state. */
const SESSION_TRANSITIONS = new Map([
  [`${S_OPEN}:close`, S_CLOSING],
  [`${S_OPEN}:peer_close`, S_CLOSING],
  [`${S_CLOSING}:peer_close`, S_CLOSING],
  [`${S_CLOSING}:close_done`, S_CLOSED],
  [`${S_OPEN}:abort`, S_CLOSED],
  [`${S_CLOSING}:abort`, S_CLOSED],
]);

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

/**
 * One end of a hop session: reliable, ordered whole messages over any
 * number of transports. Sans-I/O; see gateway/session/core.py, whose
 * behaviour this follows call for call.
 *
 * Events (plain frozen objects, pulled with eventsReceived()):
 *   {type: "hello", lastReceived, first}     {type: "message", data}
 *   {type: "window-opened"}                   {type: "stalled", since}
 *   {type: "probe-answered", nonce, rtt}      {type: "closed", code, reason, byPeer}
 */
class Session {
  /**
   * @param {object} o
   * @param {string} o.sessionId  1-128 ASCII characters
   * @param {Uint8Array} o.token  the resume token (1-64 bytes)
   * @param {boolean} o.isClient  the client sends the token in its HELLO
   * @param {number} o.now        seconds on a monotonic clock
   * @param {object} [o.config]   overrides of DEFAULT_SESSION_CONFIG
   */
  constructor({ sessionId, token, isClient, now, config = {} }) {
    if (typeof sessionId !== "string" || !/^[\x00-\x7f]{1,128}$/.test(sessionId)) {
      throw new LocalProtocolError("sessionId must be 1-128 ASCII characters");
    }
    if (!(token instanceof Uint8Array) || token.length < 1 || token.length > MAX_TOKEN_LENGTH) {
      throw new LocalProtocolError(`token must be 1-${MAX_TOKEN_LENGTH} bytes`);
    }
    this.config = sessionConfig(config);
    this.sessionId = sessionId;
    this.isClient = isClient;
    this._sidBytes = utf8Encoder.encode(sessionId);
    this._token = token.slice();
    this._state = S_OPEN;
    this._events = [];
    // transport
    this._attached = false;
    this._detachedSince = now;
    // send side: _buf.at(i) holds seq _acked + 1 + i
    this._buf = new Deque();
    this._bufBytes = 0;
    this._acked = 0;
    this._nextSeq = 1;
    this._nextSend = 1;
    this._highSent = 0;
    this._pending = null; // {bytes, offset, text}: a message larger than the free space
    this._closeRequest = null;
    this._closeSeq = null;
    // control frames queued for the next batch
    this._helloDue = false;
    this._ackPending = false;
    this._pongs = [];
    this._pingNonce = null;
    this._pingDue = false;
    this._abortFrame = null;
    this._abortDue = false;
    this._nonce = 0;
    this._probes = new Map();
    // receive side
    this._received = 0;
    this._rxParts = [];
    this._rxSize = 0;
    this._rxText = false;
    this._helloSeen = false;
    this._peerClosed = false;
    // timers (timestamps from the caller's clock)
    this._lastSentAt = now;
    this._retxSince = now;
    this._watchSince = now;
    this._stallReported = false;
    this._closeDeadline = 0;
    this._closeInfo = null;
  }

  // -- introspection ------------------------------------------------------

  get state() { return this._state; }
  get attached() { return this._attached; }
  /** Highest seq received in order; a long-poll GET carries it. */
  get lastReceived() { return this._received; }
  get bufferedFrames() { return this._buf.length; }
  /** Encoded bytes in the replay buffer (sent or not, not yet acknowledged). */
  get bufferedBytes() { return this._bufBytes + (this._pending ? this._pending.bytes.length - this._pending.offset : 0); }

  /** Would sendMessage accept a message now? */
  get writable() {
    const c = this.config;
    return this._state === S_OPEN && this._pending === null && this._buf.length < c.maxBufferFrames && this._bufBytes < c.maxBufferBytes;
  }

  /** Would dataToSend return something now? (A bare ACK counts.) */
  get wantsWrite() {
    return this._attached && (this._ackPending || this.hasPayloadToSend);
  }

  /** Like wantsWrite, but a bare ACK does not count (long-poll POSTs only for this). */
  get hasPayloadToSend() {
    if (!this._attached) return false;
    if (this._abortDue) return true;
    if (this._state === S_CLOSED) return false;
    return this._helloDue || this._pongs.length > 0 || this._pingDue || this._nextSend - this._acked - 1 < this._buf.length;
  }

  /** Constant-time check of a token presented out of band. */
  verifyToken(token) {
    return constantTimeEqual(token, this._token);
  }

  // -- transport changes ----------------------------------------------------

  /** A transport is ready: it starts with our HELLO and replays everything unacked. */
  transportAttached(now) {
    this._attached = true;
    this._detachedSince = null;
    this._pongs = [];
    this._pingNonce = null;
    this._pingDue = false;
    if (this._state === S_CLOSED) {
      this._abortDue = this._abortFrame !== null; // tell the peer why we gave up
      return;
    }
    this._helloDue = true;
    this._nextSend = this._acked + 1; // go-back-N
    this._lastSentAt = this._retxSince = this._watchSince = now;
    this._stallReported = false;
  }

  /** The current transport is gone; the resumeGrace clock starts. */
  transportLost(now) {
    if (!this._attached) return;
    this._attached = false;
    this._detachedSince = now;
    this._helloDue = this._pingDue = this._abortDue = false;
    this._pongs = [];
    this._pingNonce = null;
  }

  // -- receiving ------------------------------------------------------------

  /**
   * Feed one transport batch. Throws RemoteProtocolError if the peer broke
   * the protocol; the session is then CLOSED and an ABORT is ready to send.
   */
  receiveData(batch, now) {
    if (this._state === S_CLOSED) {
      if (this._abortFrame !== null) this._abortDue = this._attached;
      else if (batch.length) this._ackPending = true;
      return;
    }
    try {
      eachSessionFrame(batch, (frame) => {
        this._handle(frame, now);
        return this._state !== S_CLOSED;
      });
    } catch (err) {
      if (err instanceof RemoteProtocolError) this._terminate(err.code, err.reason, false, true);
      throw err;
    }
  }

  /** Events since the last call, oldest first. */
  eventsReceived() {
    const events = this._events;
    this._events = [];
    return events;
  }

  _emit(event) {
    this._events.push(Object.freeze(event));
  }

  _handle(frame, now) {
    switch (frame.type) {
      case FrameType.DATA: return this._onData(frame);
      case FrameType.ACK: return this._ack(frame.received, now);
      case FrameType.HELLO: return this._onHello(frame, now);
      case FrameType.PING:
        if (this._pongs.length < MAX_QUEUED_PONGS) this._pongs.push(frame.nonce);
        return undefined;
      case FrameType.PONG: return this._onPong(frame, now);
      case FrameType.CLOSE: return this._onClose(frame, now);
      case FrameType.ABORT: return this._terminate(frame.code, frame.reason, true, false);
      default: throw new LocalProtocolError("unreachable");
    }
  }

  _onData(frame) {
    this._ackPending = true;
    if (frame.seq !== this._received + 1) return; // duplicate or gap: go-back-N replays it
    if (this._peerClosed) throw new RemoteProtocolError("DATA after CLOSE");
    this._received = frame.seq;
    const parts = this._rxParts;
    if (parts.length) {
      if (frame.text !== this._rxText) throw new RemoteProtocolError("fragments of one message mix text and binary");
    } else this._rxText = frame.text;
    const size = this._rxSize + frame.payload.length;
    if (size > this.config.maxMessageSize) {
      throw new RemoteProtocolError(`message exceeds maxMessageSize (${this.config.maxMessageSize} bytes)`, CloseCode.MESSAGE_TOO_BIG);
    }
    if (!frame.fin) {
      parts.push(frame.payload);
      this._rxSize = size;
      return;
    }
    let payload = frame.payload;
    if (parts.length) {
      parts.push(payload);
      payload = concatBytes(parts);
      this._rxParts = [];
      this._rxSize = 0;
    }
    if (!frame.text) {
      this._emit({ type: "message", data: payload });
      return;
    }
    let text;
    try {
      text = strictUtf8.decode(payload);
    } catch {
      throw new RemoteProtocolError("text message is not valid UTF-8", CloseCode.INVALID_DATA);
    }
    this._emit({ type: "message", data: text });
  }

  _onHello(frame, now) {
    this._checkHello(frame);
    this._ack(frame.lastReceived, now);
    const first = !this._helloSeen;
    this._helloSeen = true;
    this._emit({ type: "hello", lastReceived: frame.lastReceived, first });
  }

  _onPong(frame, now) {
    const nonce = frame.nonce;
    if (nonce === this._pingNonce && !this._pingDue) {
      this._pingNonce = null;
      this._progress(now);
    } else if (this._probes.has(nonce)) {
      this._progress(now);
      const sentAt = this._probes.get(nonce);
      this._probes.delete(nonce);
      this._emit({ type: "probe-answered", nonce, rtt: now - sentAt });
    }
  }

  _onClose(frame, now) {
    this._ackPending = true;
    if (frame.seq !== this._received + 1) return;
    if (this._peerClosed) throw new RemoteProtocolError("second CLOSE");
    if (this._rxParts.length) throw new RemoteProtocolError("CLOSE in the middle of a fragmented message");
    this._received = frame.seq;
    this._peerClosed = true;
    if (this._state === S_OPEN) {
      this._closeInfo = { code: frame.code, reason: frame.reason, byPeer: true };
      this._closeDeadline = now + this.config.closeTimeout;
      this._requestClose(frame.code, frame.reason);
    }
    this._transition("peer_close");
    this._maybeFinishClose();
  }

  _checkHello(frame) {
    if (frame.version !== PROTOCOL_VERSION) {
      throw new RemoteProtocolError(`unsupported protocol version ${frame.version}`, CloseCode.UNSUPPORTED_VERSION);
    }
    if (!constantTimeEqual(utf8Encoder.encode(frame.sessionId), this._sidBytes)) {
      throw new RemoteProtocolError("HELLO names another session", CloseCode.UNKNOWN_SESSION);
    }
    if (!this.isClient && (frame.token === null || !constantTimeEqual(frame.token, this._token))) {
      throw new RemoteProtocolError("bad resume token", CloseCode.AUTH_FAILED);
    }
  }

  _ack(upto, now) {
    if (upto <= this._acked) return; // stale
    if (upto > this._highSent) throw new RemoteProtocolError(`ack of seq ${upto} but only ${this._highSent} were sent`);
    const wasWritable = this.writable;
    let freed = 0;
    for (let n = upto - this._acked; n > 0; n--) freed += this._buf.shift().length;
    this._bufBytes -= freed;
    this._acked = upto;
    if (this._nextSend <= upto) this._nextSend = upto + 1;
    this._retxSince = now;
    this._progress(now);
    if (this._pending !== null) this._admitPending();
    if (this._closeSeq !== null && upto >= this._closeSeq) this._maybeFinishClose();
    if (!wasWritable && this.writable) this._emit({ type: "window-opened" });
  }

  _progress(now) {
    this._watchSince = now;
    this._stallReported = false;
  }

  // -- sending ----------------------------------------------------------------

  /**
   * Queue one whole message: a string travels as text, a Uint8Array as
   * binary. BufferFull (nothing queued) when not writable.
   */
  sendMessage(data) {
    if (this._state !== S_OPEN) throw new LocalProtocolError(`cannot send a message in state ${this._state}`);
    const text = typeof data === "string";
    const payload = text ? utf8Encoder.encode(data) : data;
    if (!(payload instanceof Uint8Array)) throw new LocalProtocolError("a message is a string or a Uint8Array");
    const c = this.config;
    if (payload.length > c.maxMessageSize) {
      throw new LocalProtocolError(`message of ${payload.length} bytes exceeds maxMessageSize (${c.maxMessageSize})`);
    }
    if (!this.writable) throw new BufferFull(`replay buffer full (${this._buf.length} frames, ${this._bufBytes} bytes)`);
    if (payload.length <= c.fragmentSize && this._bufBytes + payload.length + DATA_OVERHEAD <= c.maxBufferBytes) {
      // Fast path: one frame, encoded (copied) once.
      this._append(sessionFrames.data(this._nextSeq, text ? FLAG_FIN | FLAG_TEXT : FLAG_FIN, payload));
      return;
    }
    // Copy when keeping a view: the caller may reuse its buffer.
    this._pending = { bytes: text ? payload : payload.slice(), offset: 0, text };
    this._admitPending();
  }

  /** Move as much of the pending message into the replay buffer as the limits allow. */
  _admitPending() {
    const p = this._pending;
    const c = this.config;
    const total = p.bytes.length;
    const textFlag = p.text ? FLAG_TEXT : 0;
    while (this._buf.length < c.maxBufferFrames) {
      const end = Math.min(p.offset + c.fragmentSize, total);
      if (this._bufBytes + (end - p.offset) + DATA_OVERHEAD > c.maxBufferBytes) break;
      const flags = textFlag | (end === total ? FLAG_FIN : 0);
      this._append(sessionFrames.data(this._nextSeq, flags, p.bytes.subarray(p.offset, end)));
      p.offset = end;
      if (end === total) {
        this._pending = null;
        if (this._closeRequest !== null) this._enqueueClose(this._closeRequest.code, this._closeRequest.reason);
        return;
      }
    }
  }

  _append(frame) {
    this._buf.push(frame);
    this._bufBytes += frame.length;
    this._nextSeq += 1;
  }

  _requestClose(code, reason) {
    if (this._pending === null) this._enqueueClose(code, reason);
    else this._closeRequest = { code, reason };
  }

  _enqueueClose(code, reason) {
    // May exceed the buffer limits by this one frame: a close must not block.
    this._closeRequest = null;
    this._closeSeq = this._nextSeq;
    this._append(sessionFrames.close(this._nextSeq, code, reason));
  }

  /**
   * The next batch for the current transport (empty if nothing). Control
   * frames first, then DATA/CLOSE from the send pointer up to maxBytes.
   * With includeData false only control frames (a long-poll POST answer).
   */
  dataToSend(now, maxBytes = null, { includeData = true } = {}) {
    if (!this._attached) return new Uint8Array(0);
    const parts = [];
    if (this._abortDue) {
      parts.push(this._abortFrame);
      this._abortDue = false;
    }
    if (this._state !== S_CLOSED) this._controlFrames(parts, now);
    if (this._ackPending) {
      parts.push(sessionFrames.ack(this._received));
      this._ackPending = false;
    }
    if (includeData && this._state !== S_CLOSED) {
      const start = this._nextSend - this._acked - 1;
      if (start < this._buf.length) this._takeFrames(parts, start, maxBytes || this.config.maxBatchBytes, now);
    }
    if (!parts.length) return new Uint8Array(0);
    this._lastSentAt = now;
    return concatBytes(parts);
  }

  _controlFrames(parts, now) {
    if (this._helloDue) {
      parts.push(this._encodeHello());
      this._helloDue = false;
    }
    for (const nonce of this._pongs) parts.push(sessionFrames.pong(nonce));
    this._pongs = [];
    if (this._pingDue) {
      if (!this._dataOutstanding) this._progress(now); // the stall watch starts with this ping
      parts.push(sessionFrames.ping(this._pingNonce));
      this._pingDue = false;
    }
  }

  _takeFrames(parts, start, limit, now) {
    let size = 0;
    for (const p of parts) size += p.length;
    let taken = 0;
    for (let i = start; i < this._buf.length; i++) {
      const frame = this._buf.at(i);
      if (taken && size + frame.length > limit) break;
      parts.push(frame);
      size += frame.length;
      taken += 1;
    }
    if (!this._dataOutstanding) {
      this._retxSince = now;
      if (this._pingNonce === null) this._progress(now);
    }
    this._nextSend += taken;
    if (this._nextSend - 1 > this._highSent) this._highSent = this._nextSend - 1;
  }

  get _dataOutstanding() {
    return this._highSent > this._acked;
  }

  _encodeHello() {
    return sessionFrames.hello(PROTOCOL_VERSION, this.sessionId, this._received, this.isClient ? this._token : null);
  }

  /** Resend from peerReceived + 1 (default: from the last ack). */
  rewind(now, peerReceived = null) {
    if (this._state === S_CLOSED) return;
    if (peerReceived !== null) {
      if (!isUint(peerReceived)) throw new LocalProtocolError("peerReceived must be a non-negative integer");
      try {
        this._ack(peerReceived, now);
      } catch (err) {
        if (err instanceof RemoteProtocolError) this._terminate(err.code, err.reason, false, true);
        throw err;
      }
    }
    this._nextSend = this._acked + 1;
  }

  // -- closing ----------------------------------------------------------------

  /** Start a graceful close: CLOSE goes after everything already queued. */
  close(code = CloseCode.NORMAL, reason = "", now) {
    if (!isCloseCode(code)) throw new LocalProtocolError(`close code ${code} outside [1000, 4999]`);
    if (typeof reason !== "string" || utf8Length(reason) > MAX_REASON_BYTES) {
      throw new LocalProtocolError(`close reason longer than ${MAX_REASON_BYTES} bytes`);
    }
    if (this._state !== S_OPEN) return;
    this._transition("close");
    this._closeInfo = { code, reason, byPeer: false };
    this._closeDeadline = now + this.config.closeTimeout;
    this._requestClose(code, reason);
  }

  _maybeFinishClose() {
    if (this._state === S_CLOSING && this._peerClosed && this._closeSeq !== null && this._acked >= this._closeSeq) {
      this._transition("close_done");
      const { code, reason, byPeer } = this._closeInfo;
      this._emit({ type: "closed", code, reason, byPeer });
      this._release();
    }
  }

  /** Close without handshake; `abort` queues an ABORT telling the peer why. */
  _terminate(code, reason, byPeer, abort) {
    if (this._state === S_CLOSED) return;
    reason = clipReason(reason);
    this._transition("abort");
    if (abort) {
      this._abortFrame = sessionFrames.abort(code, reason);
      this._abortDue = this._attached;
    }
    this._emit({ type: "closed", code, reason, byPeer });
    this._release();
  }

  _release() {
    this._buf.clear();
    this._bufBytes = 0;
    this._pending = null;
    this._rxParts = [];
    this._helloDue = this._pingDue = false;
    this._pongs = [];
    this._probes.clear();
  }

  _transition(event) {
    const next = SESSION_TRANSITIONS.get(`${this._state}:${event}`);
    if (next === undefined) throw new LocalProtocolError(`'${event}' is not allowed in state ${this._state}`);
    this._state = next;
  }

  // -- timers -----------------------------------------------------------------

  /** When handleTimer must be called next (null: no timer running). */
  nextDeadline() {
    if (this._state === S_CLOSED) return null;
    const c = this.config;
    const deadlines = [];
    if (this._state === S_CLOSING) deadlines.push(this._closeDeadline);
    if (!this._attached) {
      deadlines.push(this._detachedSince + c.resumeGrace);
      return Math.min(...deadlines);
    }
    if (!this._pingDue) deadlines.push(this._lastSentAt + c.heartbeatInterval);
    if (this._dataOutstanding) deadlines.push(this._retxSince + c.retransmitTimeout);
    if (!this._stallReported && this._watching) deadlines.push(this._watchSince + c.stallTimeout);
    return deadlines.length ? Math.min(...deadlines) : null;
  }

  get _watching() {
    const pingInFlight = this._pingNonce !== null && !this._pingDue;
    return pingInFlight || this._dataOutstanding;
  }

  /** Run every timer due at `now`; cheap to call early. */
  handleTimer(now) {
    if (this._state === S_CLOSED) return;
    const c = this.config;
    if (!this._attached && now >= this._detachedSince + c.resumeGrace) {
      this._terminate(CloseCode.SESSION_EXPIRED, `expired: no transport for ${c.resumeGrace} s`, false, true);
      return;
    }
    if (this._state === S_CLOSING && now >= this._closeDeadline) {
      const { code, reason } = this._closeInfo;
      this._terminate(CloseCode.CLOSE_TIMEOUT, `close handshake timed out (${code} ${reason})`, false, false);
      return;
    }
    if (!this._attached) return;
    if (this._dataOutstanding && now >= this._retxSince + c.retransmitTimeout) {
      // Nothing acked for a while: a batch was lost inside the transport.
      this._nextSend = this._acked + 1;
      this._helloDue = true;
      this._retxSince = now;
    }
    if (!this._stallReported && this._watching && now >= this._watchSince + c.stallTimeout) {
      this._stallReported = true;
      this._emit({ type: "stalled", since: this._watchSince });
    }
    if (!this._pingDue && now >= this._lastSentAt + c.heartbeatInterval) {
      this._pingNonce = ++this._nonce;
      this._pingDue = true;
    }
  }

  // -- probing candidate transports --------------------------------------------

  /** HELLO+PING to write on a candidate transport: {nonce, batch}. */
  probeRequest(now) {
    if (this._state === S_CLOSED) throw new LocalProtocolError("cannot probe a CLOSED session");
    const nonce = ++this._nonce;
    if (this._probes.size >= MAX_PROBES) this._probes.delete(this._probes.keys().next().value);
    this._probes.set(nonce, now);
    return { nonce, batch: concatBytes([this._encodeHello(), sessionFrames.ping(nonce)]) };
  }

  /** Answer a probe (server side) with HELLO+PONG; a bad probe throws and leaves the session as it was. */
  probeReply(batch, now) {
    if (this._state === S_CLOSED) throw new LocalProtocolError("cannot answer a probe on a CLOSED session");
    const { hello, nonces } = this._parseProbe(batch, FrameType.PING);
    if (hello === null || !nonces.length) throw new RemoteProtocolError("a probe needs a HELLO and a PING");
    return concatBytes([this._encodeHello(), ...nonces.map((n) => sessionFrames.pong(n))]);
  }

  /** Check the reply to probeRequest: {nonce, rtt}, or null if it answers no live probe. */
  probeCheck(batch, now) {
    const { hello, nonces } = this._parseProbe(batch, FrameType.PONG);
    if (hello === null) throw new RemoteProtocolError("a probe reply needs a HELLO");
    for (const nonce of nonces) {
      if (this._probes.has(nonce)) {
        const rtt = now - this._probes.get(nonce);
        this._probes.delete(nonce);
        return { nonce, rtt };
      }
    }
    return null;
  }

  _parseProbe(batch, kind) {
    let hello = null;
    const nonces = [];
    eachSessionFrame(batch, (frame) => {
      if (frame.type === FrameType.HELLO) {
        this._checkHello(frame);
        hello = frame;
      } else if (frame.type === kind) nonces.push(frame.nonce);
      else throw new RemoteProtocolError(`unexpected frame type ${frame.type} in a probe`);
    });
    return { hello, nonces };
  }
}

// ---------------------------------------------------------------------------
// 3. The tunnel (docs/tunnel.md; reference: gateway/tunnel/streams.py)
// ---------------------------------------------------------------------------

/*
 * The shim is always the side that opened the hop session (odd stream ids)
 * and only ever opens WebSocket streams. A stream the gateway opens towards
 * us is refused with RESET REFUSED, as gateway/tunnel/bridge.py does on a
 * downstream gateway. Everything received is still validated against the
 * full frame table, as hostile input.
 */

const TunnelFrame = Object.freeze({
  OPEN_HTTP: 1, OPEN_WS: 2, RESPONSE: 3, ACCEPT: 4, DATA: 5, END: 6, MESSAGE: 7, CLOSE: 8, WINDOW: 9, RESET: 10,
});

/** RESET codes (docs/tunnel.md "Reset codes"). */
const ResetCode = Object.freeze({
  CANCEL: 0, REFUSED: 1, CONNECT_FAILED: 2, TIMEOUT: 3, TOO_LARGE: 4, PROTOCOL: 5, INTERNAL: 6, SESSION_LOST: 7,
});
/** The WebSocket close code each RESET code stands for (unknown codes read as INTERNAL). */
const RESET_CLOSE_CODES = Object.freeze([1001, 1013, 1011, 1011, 1009, 1007, 1011, 1001]);

const BASE_WINDOW = 64 * 1024;
const MAX_WINDOW = 2 ** 31 - 1;
const MAX_STREAM_ID = 2n ** 62n;
const MIN_MESSAGE = 1024;
const MIN_SPLIT = 512;
const FLOW_CONTROL_ERROR = 1008;
const TUNNEL_LIMITS = Object.freeze({ maxBin: 1024 * 1024, maxStr: 1024, maxArray: 512, maxDepth: 2 });

const isSid = (v) =>
  (typeof v === "number" && Number.isSafeInteger(v) && v > 0) || (typeof v === "bigint" && v > 0n && v <= MAX_STREAM_ID);
const isWindow = (v) => Number.isInteger(v) && v >= 0 && v <= MAX_WINDOW;
const isIncrement = (v) => Number.isInteger(v) && v > 0 && v <= MAX_WINDOW;
const isBool = (v) => typeof v === "boolean";
const isBin = (v) => v instanceof Uint8Array;
const isMethod = (v) => typeof v === "string" && /^[\x00-\x7f]{1,32}$/.test(v);
const isHeaders = (v) => Array.isArray(v) && v.length % 2 === 0 && v.length <= 512 && v.every(isBin);
const isProtocol = (v) => typeof v === "string" && v.length > 0 && [...v].length <= 255;
const isProtocols = (v) => Array.isArray(v) && v.length <= 32 && v.every(isProtocol);
const isStatus = (v) => Number.isInteger(v) && v >= 100 && v <= 999;
const isFlags = (v) => Number.isInteger(v) && v >= 0 && v <= (FLAG_FIN | FLAG_TEXT);
const isResetCode = (v) => Number.isInteger(v) && v >= 0 && v <= 255;

const SID = ["stream id", isSid];
const HEADERS = ["headers", isHeaders];

/** Frame type -> [name, fields after the type]: the executable layout table. */
const TUNNEL_LAYOUTS = Object.freeze({
  [TunnelFrame.OPEN_HTTP]: ["OPEN_HTTP", [SID, ["window", isWindow], ["method", isMethod], ["target", isBin], HEADERS, ["has_body", isBool]]],
  [TunnelFrame.OPEN_WS]: ["OPEN_WS", [SID, ["window", isWindow], ["target", isBin], HEADERS, ["protocols", isProtocols]]],
  [TunnelFrame.RESPONSE]: ["RESPONSE", [SID, ["status", isStatus], ["reason", isBin], HEADERS, ["has_body", isBool]]],
  [TunnelFrame.ACCEPT]: ["ACCEPT", [SID, ["window", isWindow], ["protocol", (v) => v === null || isProtocol(v)], HEADERS]],
  [TunnelFrame.DATA]: ["DATA", [SID, ["payload", isBin]]],
  [TunnelFrame.END]: ["END", [SID]],
  [TunnelFrame.MESSAGE]: ["MESSAGE", [SID, ["flags", isFlags], ["payload", isBin]]],
  [TunnelFrame.CLOSE]: ["CLOSE", [SID, ["code", isCloseCode], ["reason", isReason]]],
  [TunnelFrame.WINDOW]: ["WINDOW", [SID, ["increment", isIncrement]]],
  [TunnelFrame.RESET]: ["RESET", [SID, ["code", isResetCode], ["reason", isReason]]],
});

function tunnelMalformed(what) {
  return new RemoteProtocolError(`malformed tunnel frame: ${what}`);
}

/** Validate one decoded msgpack object against TUNNEL_LAYOUTS; returns it unchanged. */
function checkTunnelFrame(raw) {
  if (!Array.isArray(raw) || raw.length === 0) throw tunnelMalformed("a frame must be a non-empty array");
  const layout = typeof raw[0] === "number" ? TUNNEL_LAYOUTS[raw[0]] : undefined;
  if (layout === undefined) throw tunnelMalformed(`unknown frame type ${String(raw[0]).slice(0, 20)}`);
  const [name, fields] = layout;
  if (raw.length !== fields.length + 1) throw tunnelMalformed(`${name} has ${raw.length} fields, expected ${fields.length + 1}`);
  fields.forEach(([field, valid], i) => {
    if (!valid(raw[i + 1])) throw tunnelMalformed(`${name} ${field} is invalid`);
  });
  return raw;
}

const tunnelFrames = Object.freeze({
  openWs: (sid, window, target, headers, protocols) => encode([TunnelFrame.OPEN_WS, sid, window, target, headers, protocols]),
  message: (sid, flags, payload) => encode([TunnelFrame.MESSAGE, sid, flags, payload]),
  close: (sid, code, reason) => encode([TunnelFrame.CLOSE, sid, code, reason]),
  window: (sid, increment) => encode([TunnelFrame.WINDOW, sid, increment]),
  reset: (sid, code, reason) => encode([TunnelFrame.RESET, sid, code, reason]),
  check: checkTunnelFrame,
  /** Every frame of a message, checked; RemoteProtocolError if any is bad. */
  decode(message) {
    try {
      return decodeAll(message, TUNNEL_LIMITS).map(checkTunnelFrame);
    } catch (err) {
      throw err instanceof MsgpackError ? tunnelMalformed(err.message) : err;
    }
  },
});

// Half-stream states and inputs; TUNNEL_TRANSITIONS is the only place they change.
const HEAD = 0, BODY = 1, WS = 2, DONE = 3;
const STATE_NAMES = ["HEAD", "BODY", "WS", "DONE"];
const IN_HEAD_BODY = 0, IN_HEAD_EMPTY = 1, IN_ACCEPT = 2, IN_REFUSED = 3, IN_DATA = 4, IN_END = 5, IN_MESSAGE = 6, IN_CLOSE = 7;
const INPUT_NAMES = ["a head with a body", "a head without a body", "an accept", "a refusal", "DATA", "END", "a MESSAGE", "CLOSE"];
const TUNNEL_TRANSITIONS = new Map([
  [`${HEAD}:${IN_HEAD_BODY}`, BODY],
  [`${HEAD}:${IN_HEAD_EMPTY}`, DONE],
  [`${HEAD}:${IN_ACCEPT}`, WS],
  [`${HEAD}:${IN_REFUSED}`, DONE],
  [`${BODY}:${IN_DATA}`, BODY],
  [`${BODY}:${IN_END}`, DONE],
  [`${WS}:${IN_MESSAGE}`, WS],
  [`${WS}:${IN_CLOSE}`, DONE],
]);

/** Tunnel limits (bytes); the gateway's own may differ. */
const DEFAULT_TUNNEL_CONFIG = Object.freeze({
  initialWindow: 256 * 1024, // receive window per stream, announced in OPEN_WS
  maxChunk: 16 * 1024, // largest MESSAGE payload we send
  maxPending: 64 * 1024, // queued bytes at which a stream stops being writable
  maxMessage: 64 * 1024, // default budget of one session message
  maxWsMessage: 16 * 1024 * 1024, // largest WebSocket message, each way
});

class TunnelStream {
  constructor(id, recvWindow) {
    this.id = id;
    this.sendState = HEAD;
    this.recvState = HEAD;
    this.sendCredit = 0; // until ACCEPT carries the peer's window
    this.recvWindow = recvWindow;
    this.unconsumed = 0; // delivered, not yet consumed()
    this.toGrant = 0; // consumed, not yet granted back in a WINDOW
    this.queue = new Deque(); // {bytes, text}: whole messages
    this.offset = 0; // bytes of queue.at(0) already sent
    this.queued = 0;
    this.trailer = null; // CLOSE to send after the queue
    this.writable = true;
    this.scheduled = false;
    this.dead = false;
    this.ws = true;
    this.openFrame = null;
    this.openSent = false;
    this.msgParts = [];
    this.msgSize = 0;
    this.msgText = false;
    this.prefix = concatBytes([Uint8Array.of(0x94, TunnelFrame.MESSAGE), encode(id)]);
  }

  /** Has a chunk it may send now (an empty message needs no credit). */
  ready() {
    return this.queue.length > 0 && (this.sendCredit > 0 || this.queue.at(0).bytes.length === this.offset);
  }
}

/**
 * The opener's end of the stream layer, for WebSocket streams. Sans-I/O:
 * receiveMessage() in, eventsReceived() and nextMessage() out.
 *
 * Events (frozen objects, all with `sid`):
 *   accepted {protocol, headers}   refused {status, reason, headers, hasBody}
 *   data {data}  ended  (a refusal's body)   message {data, size}
 *   closed {code, reason}   reset {code, reason, remote, retrySafe}   writable
 */
class Tunnel {
  constructor(config = {}) {
    this.config = Object.freeze({ ...DEFAULT_TUNNEL_CONFIG, ...config });
    if (this.config.initialWindow < BASE_WINDOW || this.config.initialWindow > MAX_WINDOW) {
      throw new RangeError("initialWindow out of range");
    }
    this._streams = new Map();
    this._nextId = 1;
    this._highestPeerId = 0;
    this._opens = [];
    this._control = [];
    this._ring = new Deque();
    this._events = [];
    this._closed = false;
    this._grantThreshold = Math.floor(this.config.initialWindow / 2);
  }

  get closed() { return this._closed; }
  get streamCount() { return this._streams.size; }

  isWritable(sid) {
    const s = this._streams.get(sid);
    return s !== undefined && s.writable && s.sendState === WS;
  }

  openSent(sid) {
    const s = this._streams.get(sid);
    if (s === undefined) throw new LocalProtocolError(`stream ${sid} is not open`);
    return s.openSent;
  }

  /** Payload bytes queued on a stream and not yet handed to the session. */
  queuedBytes(sid) {
    const s = this._streams.get(sid);
    return s === undefined ? 0 : s.queued;
  }

  eventsReceived() {
    const events = this._events;
    this._events = [];
    return events;
  }

  _emit(event) {
    this._events.push(Object.freeze(event));
  }

  /**
   * Ask the gateway for an endpoint WebSocket at `target` (origin-form path).
   * @param {string} target
   * @param {Array<[string, string]>} headers
   * @param {string[]} protocols
   * @returns {number} the stream id
   */
  openWebSocket(target, headers = [], protocols = []) {
    this._checkUsable();
    if (typeof target !== "string" || !target.startsWith("/") || target.startsWith("//")) {
      throw new LocalProtocolError(`target must be an origin-form path, not ${String(target).slice(0, 60)}`);
    }
    if (protocols.length > 32 || !protocols.every(isProtocol)) throw new LocalProtocolError("bad subprotocol list");
    const flat = [];
    for (const [name, value] of headers) flat.push(utf8Encoder.encode(name), utf8Encoder.encode(value));
    const sid = this._nextId;
    this._nextId += 2;
    const stream = new TunnelStream(sid, this.config.initialWindow);
    stream.openFrame = tunnelFrames.openWs(sid, stream.recvWindow, utf8Encoder.encode(target), flat, protocols);
    this._streams.set(sid, stream);
    this._opens.push(stream);
    return sid;
  }

  /**
   * Queue one whole message (a string, or bytes with `text` saying how to
   * flag them); returns false once the stream holds maxPending bytes.
   */
  sendWsMessage(sid, data, text = typeof data === "string") {
    const stream = this._live(sid);
    if (stream === null) return false;
    this._sendStep(stream, IN_MESSAGE);
    const bytes = typeof data === "string" ? utf8Encoder.encode(data) : data;
    if (bytes.length > this.config.maxWsMessage) {
      throw new LocalProtocolError(`WebSocket message of ${bytes.length} bytes over maxWsMessage`);
    }
    if (!stream.writable) throw new LocalProtocolError(`stream ${sid} is not writable: wait for "writable"`);
    stream.queue.push({ bytes, text });
    stream.queued += bytes.length;
    this._schedule(stream);
    if (stream.queued >= this.config.maxPending) stream.writable = false;
    return stream.writable;
  }

  /** Close our side; CLOSE follows the queued messages. */
  closeWebSocket(sid, code = 1000, reason = "") {
    const stream = this._live(sid);
    if (stream === null) return;
    if (!isCloseCode(code)) throw new LocalProtocolError(`bad close code ${code}`);
    if (!isReason(reason)) throw new LocalProtocolError(`reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
    this._sendStep(stream, IN_CLOSE);
    const frame = tunnelFrames.close(sid, code, reason);
    if (stream.queue.length || !stream.openSent) stream.trailer = frame;
    else {
      this._control.push(frame);
      this._maybeForget(stream);
    }
  }

  /** Abort a stream both ways; one whose OPEN never left vanishes without a trace. */
  reset(sid, code = ResetCode.CANCEL, reason = "") {
    const stream = this._live(sid);
    if (stream === null) return;
    if (!isResetCode(code)) throw new LocalProtocolError(`bad reset code ${code}`);
    if (stream.openSent) this._control.push(tunnelFrames.reset(sid, code, clipReason(reason)));
    this._forget(stream);
  }

  /** The page took `n` received bytes: grant them back to the sender (batched). */
  consumed(sid, n) {
    const stream = this._streams.get(sid);
    if (stream === undefined) return;
    if (!Number.isInteger(n) || n < 0 || n > stream.unconsumed) {
      throw new LocalProtocolError(`consumed(${n}) on stream ${sid} with ${stream.unconsumed} unconsumed`);
    }
    stream.unconsumed -= n;
    this._credit(stream, n);
  }

  _credit(stream, n) {
    stream.toGrant += n;
    if (stream.toGrant >= this._grantThreshold && stream.recvState !== DONE) {
      this._control.push(tunnelFrames.window(stream.id, stream.toGrant));
      stream.recvWindow += stream.toGrant;
      stream.toGrant = 0;
    }
  }

  /** The session died: every live stream gets a local reset; the tunnel is closed. */
  closeAll(reason = "session closed") {
    for (const stream of this._streams.values()) {
      stream.dead = true;
      this._emit({ type: "reset", sid: stream.id, code: ResetCode.SESSION_LOST, reason, remote: false, retrySafe: !stream.openSent });
    }
    this._streams.clear();
    this._opens = [];
    this._control = [];
    this._ring.clear();
    this._closed = true;
  }

  // -- the scheduler --------------------------------------------------------

  /** Would nextMessage return a message? */
  hasPending() {
    return this._opens.some((s) => !s.dead) || this._control.length > 0 || this._pick() !== null;
  }

  /**
   * The next session message (a batch of whole frames, at most maxBytes
   * unless one frame is larger), or null. Call only when the session can
   * take it: a returned message counts as handed over.
   */
  nextMessage(maxBytes = this.config.maxMessage) {
    if (maxBytes < MIN_MESSAGE) throw new LocalProtocolError(`maxBytes must be at least ${MIN_MESSAGE}`);
    const parts = [];
    let size = 0;
    while (this._opens.length) {
      const stream = this._opens[0];
      if (stream.dead) {
        this._opens.shift();
        continue;
      }
      if (parts.length && size + stream.openFrame.length > maxBytes) return concatBytes(parts);
      this._opens.shift();
      parts.push(stream.openFrame);
      size += stream.openFrame.length;
      stream.openFrame = null;
      stream.openSent = true;
      if (stream.trailer !== null && !stream.queue.length) {
        this._control.push(stream.trailer);
        stream.trailer = null;
      }
    }
    while (this._control.length) {
      const frame = this._control[0];
      if (parts.length && size + frame.length > maxBytes) return concatBytes(parts);
      this._control.shift();
      parts.push(frame);
      size += frame.length;
    }
    for (;;) {
      const room = maxBytes - size - DATA_OVERHEAD;
      if (room <= 0) break;
      const stream = this._pick();
      if (stream === null) break;
      const remaining = stream.queue.at(0).bytes.length - stream.offset;
      const n = Math.min(remaining, stream.sendCredit, this.config.maxChunk, room);
      if (n === room && room < remaining && room < MIN_SPLIT && parts.length) break;
      this._ring.shift();
      stream.scheduled = false;
      size += this._emitChunk(stream, n, parts, maxBytes - size);
      this._schedule(stream);
    }
    return parts.length ? concatBytes(parts) : null;
  }

  _pick() {
    const ring = this._ring;
    while (ring.length) {
      const stream = ring.at(0);
      if (!stream.dead && stream.ready()) return stream;
      ring.shift();
      stream.scheduled = false;
    }
    return null;
  }

  _schedule(stream) {
    if (stream.scheduled || stream.dead || !stream.ready()) return;
    stream.scheduled = true;
    this._ring.push(stream);
  }

  _emitChunk(stream, n, parts, room) {
    const item = stream.queue.at(0);
    const payload = item.bytes.subarray(stream.offset, stream.offset + n);
    const last = stream.offset + n === item.bytes.length;
    if (last) {
      stream.queue.shift();
      stream.offset = 0;
    } else stream.offset += n;
    stream.sendCredit -= n;
    stream.queued -= n;
    const flags = (item.text ? FLAG_TEXT : 0) | (last ? FLAG_FIN : 0);
    const header = concatBytes([stream.prefix, Uint8Array.of(flags), binHeader(n)]);
    parts.push(header, payload);
    let added = header.length + n;
    if (!stream.writable && stream.queued < this.config.maxPending) {
      stream.writable = true;
      this._emit({ type: "writable", sid: stream.id });
    }
    if (stream.trailer !== null && !stream.queue.length) {
      const trailer = stream.trailer;
      stream.trailer = null;
      if (trailer.length <= room - added) {
        parts.push(trailer);
        added += trailer.length;
      } else this._control.push(trailer);
      this._maybeForget(stream);
    }
    return added;
  }

  // -- receiving --------------------------------------------------------------

  /**
   * Process one session message from the peer. On RemoteProtocolError every
   * stream has been reset locally (events queued) and the tunnel is closed:
   * close the session with err.code.
   */
  receiveMessage(message) {
    this._checkUsable();
    try {
      if (typeof message === "string") throw new RemoteProtocolError("tunnel messages are binary, got a text message");
      const reader = new MsgpackReader(message, TUNNEL_LIMITS);
      while (!reader.done) {
        let raw;
        try {
          raw = reader.read();
        } catch (err) {
          if (err instanceof MsgpackError) throw tunnelMalformed(err.message);
          throw err;
        }
        this._handle(checkTunnelFrame(raw));
      }
    } catch (err) {
      if (err instanceof RemoteProtocolError) this.closeAll(`tunnel protocol error: ${err.reason}`);
      throw err;
    }
  }

  _handle(raw) {
    switch (raw[0]) {
      case TunnelFrame.OPEN_HTTP:
      case TunnelFrame.OPEN_WS: return this._onOpen(raw[1]);
      case TunnelFrame.RESPONSE: return this._onResponse(raw);
      case TunnelFrame.ACCEPT: return this._onAccept(raw);
      case TunnelFrame.DATA: return this._onData(raw);
      case TunnelFrame.END: return this._onEnd(raw);
      case TunnelFrame.MESSAGE: return this._onMessage(raw);
      case TunnelFrame.CLOSE: return this._onClose(raw);
      case TunnelFrame.WINDOW: return this._onWindow(raw);
      case TunnelFrame.RESET: return this._onReset(raw);
      default: throw new LocalProtocolError("unreachable");
    }
  }

  _onOpen(sid) {
    if (parity(sid) === 1) throw new RemoteProtocolError(`OPEN for stream ${sid}: that id is ours to allocate`);
    if (sid <= this._highestPeerId) throw new RemoteProtocolError(`OPEN for stream ${sid}, not above ${this._highestPeerId}`);
    this._highestPeerId = sid;
    this._control.push(tunnelFrames.reset(sid, ResetCode.REFUSED, "a browser takes no streams"));
  }

  _onResponse(raw) {
    const [, sid, status, reason, headers, hasBody] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    this._recvStep(stream, hasBody ? IN_HEAD_BODY : IN_HEAD_EMPTY);
    if (stream.ws) {
      stream.sendState = this._step(stream, stream.sendState, IN_REFUSED, false);
      stream.ws = false; // the refusal's body comes as DATA
    }
    this._emit({ type: "refused", sid, status, reason, headers: pairs(headers), hasBody });
    this._maybeForget(stream);
  }

  _onAccept(raw) {
    const [, sid, window, protocol, headers] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    if (!stream.ws) throw new RemoteProtocolError(`ACCEPT on a non-WebSocket stream ${sid}`);
    this._recvStep(stream, IN_ACCEPT);
    stream.sendState = this._step(stream, stream.sendState, IN_ACCEPT, false);
    stream.sendCredit = window;
    this._emit({ type: "accepted", sid, protocol, headers: pairs(headers) });
    this._schedule(stream);
  }

  _onData(raw) {
    const [, sid, payload] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    this._recvStep(stream, IN_DATA);
    this._takeCredit(stream, payload.length);
    stream.unconsumed += payload.length;
    this._emit({ type: "data", sid, data: payload });
  }

  _onEnd(raw) {
    const stream = this._lookup(raw[1]);
    if (stream === null) return;
    this._recvStep(stream, IN_END);
    this._emit({ type: "ended", sid: stream.id });
    this._maybeForget(stream);
  }

  _onMessage(raw) {
    const [, sid, flags, payload] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    this._recvStep(stream, IN_MESSAGE);
    const n = payload.length;
    this._takeCredit(stream, n);
    const text = Boolean(flags & FLAG_TEXT);
    if (stream.msgParts.length) {
      if (text !== stream.msgText) throw new RemoteProtocolError(`MESSAGE on stream ${sid} changes type mid-message`);
    } else stream.msgText = text;
    stream.msgSize += n;
    if (stream.msgSize > this.config.maxWsMessage) {
      this._resetLocally(stream, ResetCode.TOO_LARGE, "WebSocket message too large");
      return;
    }
    if (!(flags & FLAG_FIN)) {
      stream.msgParts.push(payload);
      this._credit(stream, n); // reassembly is bounded by maxWsMessage
      return;
    }
    const whole = stream.msgParts.length ? concatBytes([...stream.msgParts, payload]) : payload;
    stream.msgParts = [];
    stream.msgSize = 0;
    let data = whole;
    if (text) {
      try {
        data = strictUtf8.decode(whole);
      } catch {
        this._resetLocally(stream, ResetCode.PROTOCOL, "text message is not UTF-8");
        return;
      }
    }
    stream.unconsumed += n;
    this._emit({ type: "message", sid, data, size: n });
  }

  _onClose(raw) {
    const [, sid, code, reason] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    this._recvStep(stream, IN_CLOSE);
    if (stream.msgParts.length) throw new RemoteProtocolError(`CLOSE inside a fragmented message on stream ${sid}`);
    this._emit({ type: "closed", sid, code, reason });
    this._maybeForget(stream);
  }

  _onWindow(raw) {
    const [, sid, increment] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    stream.sendCredit += increment;
    if (stream.sendCredit > MAX_WINDOW) {
      throw new RemoteProtocolError(`WINDOW overflows the credit of stream ${sid}`, FLOW_CONTROL_ERROR);
    }
    this._schedule(stream);
  }

  _onReset(raw) {
    const [, sid, code, reason] = raw;
    const stream = this._lookup(sid);
    if (stream === null) return;
    const known = code <= ResetCode.SESSION_LOST ? code : ResetCode.INTERNAL;
    this._forget(stream);
    this._emit({ type: "reset", sid, code: known, reason, remote: true, retrySafe: known === ResetCode.REFUSED });
  }

  _takeCredit(stream, n) {
    if (n > stream.recvWindow) {
      throw new RemoteProtocolError(`stream ${stream.id} sent ${n} bytes with a window of ${stream.recvWindow}`, FLOW_CONTROL_ERROR);
    }
    stream.recvWindow -= n;
  }

  /** A received frame broke one of our limits: reset just this stream, both ends. */
  _resetLocally(stream, code, reason) {
    this._control.push(tunnelFrames.reset(stream.id, code, reason));
    this._forget(stream);
    this._emit({ type: "reset", sid: stream.id, code, reason, remote: false, retrySafe: false });
  }

  // -- stream table and state steps ---------------------------------------------

  _step(stream, state, input, local) {
    const next = TUNNEL_TRANSITIONS.get(`${state}:${input}`);
    if (next !== undefined) return next;
    const half = local ? "send" : "receive";
    const message = `${INPUT_NAMES[input]} on stream ${stream.id} whose ${half} side is ${STATE_NAMES[state]}`;
    if (local) throw new LocalProtocolError(`cannot send ${message}`);
    throw new RemoteProtocolError(`received ${message}`);
  }

  _sendStep(stream, input) {
    stream.sendState = this._step(stream, stream.sendState, input, true);
  }

  _recvStep(stream, input) {
    stream.recvState = this._step(stream, stream.recvState, input, false);
  }

  /** A stream the API may act on; null if it was closed (a race, not a bug). */
  _live(sid) {
    const stream = this._streams.get(sid);
    if (stream !== undefined) return stream;
    if (!Number.isInteger(sid) || sid <= 0 || parity(sid) !== 1 || sid >= this._nextId) {
      throw new LocalProtocolError(`stream ${sid} was never opened`);
    }
    return null;
  }

  /** The stream a received frame is for; null for a late frame of a closed one. */
  _lookup(sid) {
    const stream = this._streams.get(sid);
    if (stream !== undefined) return stream;
    const allocated = parity(sid) === 1 ? sid < this._nextId : sid <= this._highestPeerId;
    if (!allocated) throw new RemoteProtocolError(`frame for stream ${sid}, which was never opened`);
    return null;
  }

  _maybeForget(stream) {
    if (stream.sendState === DONE && stream.recvState === DONE && !stream.queue.length && stream.trailer === null) {
      this._forget(stream);
    }
  }

  _forget(stream) {
    if (stream.dead) return;
    stream.dead = true;
    this._streams.delete(stream.id);
    stream.queue.clear();
    stream.queued = 0;
    stream.msgParts = [];
  }

  _checkUsable() {
    if (this._closed) throw new LocalProtocolError("the tunnel is closed");
  }
}

function parity(sid) {
  return typeof sid === "bigint" ? Number(sid & 1n) : sid % 2;
}

function pairs(flat) {
  const out = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
}

// ---------------------------------------------------------------------------
// 4. I/O: the hop link (session transports) and HopSocket
// ---------------------------------------------------------------------------

/*
 * Wire format (gateway/session/endpoint.py):
 *
 *   POST {gateway}/.hopgate/session            -> 200, X-Hopgate-Session: id,
 *                                                 X-Hopgate-Token: base64url token,
 *                                                 body = the server's HELLO
 *   GET  .../session/{id}?epoch=E  (WebSocket, subprotocol hopgate.v1; a browser
 *                                   cannot set headers, so the token travels in
 *                                   the probe HELLO)
 *   GET  .../session/{id}?last=N&epoch=E       held poll, body = batch
 *   POST .../session/{id}?epoch=E              body = batch, answer = ACK/PONG/HELLO
 *
 * Long-poll requests carry the token in X-Hopgate-Token (never in the URL).
 * Every transport gets a new, larger epoch, so the gateway can tell a late
 * request of an abandoned transport from a new one.
 *
 * HopLink owns one Session and at most one current transport. A transport
 * that is not current may still feed what it receives (the sequence rules
 * make a late batch harmless) but never writes. Writes are coalesced: any
 * change schedules one microtask that writes whatever accumulated as one
 * batch. One timer follows the core's nextDeadline.
 */

const SESSION_PATH = "/.hopgate/session";
const SUBPROTOCOL = "hopgate.v1";
const TOKEN_HEADER = "X-Hopgate-Token";
const SESSION_HEADER = "X-Hopgate-Session";
/** Don't queue more on the hop WebSocket while it holds this much unsent. */
const WS_HIGH_WATER = 1024 * 1024;
const WS_DRAIN_POLL_MS = 10;

/** Transport timings in milliseconds, sizes in bytes. */
const DEFAULT_LINK_OPTIONS = Object.freeze({
  transports: ["websocket", "long-poll"],
  connectTimeout: 10000, // session creation, WebSocket handshake, a POST
  probeTimeout: 5000, // a WebSocket candidate must answer the probe within this
  pollTimeout: 45000, // a held GET longer than this is a dead path (gateway holds 25 s)
  reprobeInitial: 2000, // first WebSocket re-probe after a failure/demotion, doubling...
  reprobeMax: 60000, // ...up to this; a WebSocket that lived this long resets it
  reconnectInitial: 100, // resume retries after a lost transport, doubling...
  reconnectMax: 5000,
  maxBatchBytes: 8 * 1024 * 1024, // largest batch we accept
});

/** No hop session could be opened: the gateway is unreachable, refuses, or is not a gateway. */
class SessionUnavailable extends Error {}

function base64urlDecode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]{1,128}$/.test(text.trim())) return null;
  const b64 = text.trim().replace(/-/g, "+").replace(/_/g, "/");
  try {
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function base64urlEncode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function monotonicSeconds() {
  return performance.now() / 1000;
}

/** The whole body of a fetch Response, or an Error past `limit` bytes. */
async function readLimited(response, limit) {
  const declared = Number(response.headers.get("Content-Length"));
  if (declared > limit) throw new Error(`body of ${declared} bytes exceeds ${limit}`);
  if (!response.body || typeof response.body.getReader !== "function") {
    const whole = new Uint8Array(await response.arrayBuffer());
    if (whole.length > limit) throw new Error(`body exceeds ${limit} bytes`);
    return whole;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      reader.cancel().catch(() => {});
      throw new Error(`body exceeds ${limit} bytes`);
    }
    chunks.push(value);
  }
  return chunks.length ? concatBytes(chunks) : new Uint8Array(0);
}

/** A WebSocket carrying the session, used only once a probe came back over it. */
class WebSocketTransport {
  constructor(link, epoch) {
    this.kind = "websocket";
    this.link = link;
    this.epoch = epoch;
    this.ws = null;
    this.abandoned = false;
    this._drainTimer = null;
  }

  /** Handshake and probe; resolves when the probe came back, rejects with the reason. */
  connect() {
    const link = this.link;
    return new Promise((resolve, reject) => {
      let timer = null;
      let nonce = null;
      const fail = (reason) => {
        clearTimeout(timer);
        this.abandon();
        reject(new Error(reason));
      };
      const arm = (ms, what) => {
        clearTimeout(timer);
        timer = setTimeout(() => fail(what), ms);
      };
      let ws;
      try {
        ws = this.ws = new link.WebSocket(link.url(`/${encodeURIComponent(link.sessionId)}?epoch=${this.epoch}`, true), [SUBPROTOCOL]);
      } catch (err) {
        reject(err);
        return;
      }
      ws.binaryType = "arraybuffer";
      arm(link.options.connectTimeout, "WebSocket handshake timed out");
      ws.onopen = () => {
        if (ws.protocol !== SUBPROTOCOL) return fail(`the 101 did not select ${SUBPROTOCOL}`);
        let probe;
        try {
          probe = link.core.probeRequest(link.now());
        } catch (err) {
          return fail(`cannot probe: ${err.message}`);
        }
        nonce = probe.nonce;
        ws.send(probe.batch);
        arm(link.options.probeTimeout, "no answer to the probe (a proxy may be holding WebSocket frames)");
        return undefined;
      };
      ws.onmessage = (event) => {
        if (nonce === null || !(event.data instanceof ArrayBuffer)) return fail("the gateway did not answer the probe with a HELLO");
        let answered;
        try {
          answered = link.core.probeCheck(new Uint8Array(event.data), link.now());
        } catch (err) {
          return fail(`bad probe reply: ${err.message}`);
        }
        if (answered === null || answered.nonce !== nonce) return fail("the probe reply answered no probe of ours");
        clearTimeout(timer);
        ws.onmessage = (e) => this._received(e);
        ws.onclose = (e) => link.transportFailed(this, `WebSocket closed (${e.code})`);
        ws.onerror = null; // a close always follows
        resolve();
        return undefined;
      };
      ws.onerror = () => fail("WebSocket connection failed");
      ws.onclose = (e) => fail(`WebSocket closed during the handshake (${e.code})`);
    });
  }

  _received(event) {
    if (!(event.data instanceof ArrayBuffer)) {
      this.link.abandon(CloseCode.PROTOCOL_ERROR, "text message on a hop WebSocket");
      return;
    }
    if (event.data.byteLength > this.link.options.maxBatchBytes) {
      this.link.abandon(CloseCode.MESSAGE_TOO_BIG, "hop WebSocket message over maxBatchBytes");
      return;
    }
    this.link.feed(new Uint8Array(event.data));
  }

  /** Write what the session has, one batch per WebSocket message. */
  write() {
    const { link, ws } = this;
    if (this.abandoned || ws.readyState !== 1) return;
    while (link.core.wantsWrite) {
      if (ws.bufferedAmount > WS_HIGH_WATER) {
        // Browsers have no drain event: look again shortly; the core keeps the data.
        if (this._drainTimer === null) {
          this._drainTimer = setTimeout(() => {
            this._drainTimer = null;
            link.kick();
          }, WS_DRAIN_POLL_MS);
        }
        return;
      }
      ws.send(link.take());
    }
    if (link.finished) this.abandon(link.closeCode);
  }

  abandon(code = 1000) {
    if (this.abandoned) return;
    this.abandoned = true;
    clearTimeout(this._drainTimer);
    const ws = this.ws;
    if (ws === null) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000);
    } catch {
      // already closed
    }
  }
}

/** HTTP long-poll: one held GET at a time to receive, one POST at a time to send. */
class LongPollTransport {
  constructor(link, epoch) {
    this.kind = "long-poll";
    this.link = link;
    this.epoch = epoch;
    this.abandoned = false;
    this.posting = false;
    this.polls = new AbortController(); // aborts the held GET when we move on
  }

  start() {
    this._pollLoop();
  }

  async _pollLoop() {
    const link = this.link;
    try {
      while (!this.abandoned && !link.finished) {
        const query = `?last=${link.core.lastReceived}&epoch=${this.epoch}`;
        const { status, body } = await link.request("GET", query, null, link.options.pollTimeout, this.polls.signal);
        if (this.abandoned) return;
        if (status !== 200) {
          link.refused(this, status, body);
          return;
        }
        if (body.length) link.feed(body);
      }
    } catch (err) {
      link.transportFailed(this, `poll failed: ${err.message || err}`);
    }
  }

  /** POST what the session has (a bare ACK waits: the next GET's `last` carries it). */
  write() {
    const link = this.link;
    if (this.posting || this.abandoned) return;
    const core = link.core;
    if (core.hasPayloadToSend || (link.finished && core.wantsWrite)) {
      this.posting = true;
      this._post(link.take());
    } else if (link.finished) this.abandon();
  }

  async _post(batch) {
    const link = this.link;
    try {
      // Not aborted when we move on: its answer may carry acks, and an aborted
      // POST could have arrived anyway (the sequence rules make that harmless).
      const query = `?epoch=${this.epoch}`;
      const { status, body } = await link.request("POST", query, batch, link.options.connectTimeout, null);
      if (status !== 200) {
        link.refused(this, status, body);
        return;
      }
      if (body.length) link.feed(body);
    } catch (err) {
      // The POST may or may not have arrived: the next transport replays from the ack.
      link.transportFailed(this, `post failed: ${err.message || err}`);
    } finally {
      this.posting = false;
    }
    link.kick();
  }

  abandon() {
    if (this.abandoned) return;
    this.abandoned = true;
    this.polls.abort();
  }
}

/**
 * One hop session to a gateway, kept alive over whatever transport works.
 * A reliable, ordered pipe of whole binary messages for the tunnel above.
 */
class HopLink {
  /**
   * @param {URL} gateway  base URL of the gateway (http: or https:)
   * @param {object} options  DEFAULT_LINK_OPTIONS overrides, plus `session`
   *   (Session config overrides, seconds), `fetch`, `WebSocket`, `log`
   * @param {{onMessage: Function, onWritable: Function, onClosed: Function}} handlers
   */
  constructor(gateway, options, handlers) {
    this.gateway = gateway;
    this.options = { ...DEFAULT_LINK_OPTIONS, ...options };
    const kinds = this.options.transports;
    this.wsAllowed = kinds.includes("websocket");
    this.lpAllowed = kinds.includes("long-poll");
    this.fetch = this.options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    if (this.wsAllowed && typeof this.WebSocket !== "function") this.wsAllowed = false;
    if (!this.wsAllowed && !this.lpAllowed) throw new TypeError("no usable transport (transports: ['websocket', 'long-poll'])");
    this.handlers = handlers;
    this.log = this.options.log ?? (() => {});
    this.core = null;
    this.sessionId = null;
    this.token = null;
    this._tokenText = null; // base64url, for X-Hopgate-Token
    this.current = null;
    this.finished = false;
    this.closeCode = 1000;
    this._epoch = 0;
    this._timer = null;
    this._timerAt = Infinity;
    this._writeQueued = false;
    this._probing = false;
    this._reprobeTimer = null;
    this._reprobeDelay = this.options.reprobeInitial;
    this._wsRetryAt = 0;
    this._reconnectTimer = null;
    this._reconnectDelay = this.options.reconnectInitial;
    this._attachedAt = 0;
  }

  now() {
    return monotonicSeconds();
  }

  /** "websocket", "long-poll" or "none". */
  get transport() {
    return this.current === null || this.finished ? "none" : this.current.kind;
  }

  get writable() {
    return this.core !== null && !this.finished && this.core.writable;
  }

  get bufferedBytes() {
    return this.core === null || this.finished ? 0 : this.core.bufferedBytes;
  }

  url(tail, websocket = false) {
    const base = new URL(this.gateway.href);
    base.pathname = base.pathname.replace(/\/+$/, "") + SESSION_PATH;
    let href = base.href.replace(/[?#].*$/, "") + tail;
    if (websocket) href = href.replace(/^http/, "ws");
    return href;
  }

  /** Open the session and attach its first transport; rejects with SessionUnavailable. */
  async open() {
    const { sessionId, token } = await this._create();
    this.sessionId = sessionId;
    this.token = token;
    this._tokenText = base64urlEncode(token);
    const session = { ...(this.options.session ?? {}) };
    this.core = new Session({ sessionId, token, isClient: true, now: this.now(), config: session });
    this.log(`= session ${sessionId.slice(0, 6)} opened`);
    this._rearm();
    try {
      await this._connectAny(true);
    } catch (err) {
      this.abandon(CloseCode.GOING_AWAY, "no transport");
      throw new SessionUnavailable(`no transport reaches the gateway: ${err.message}`);
    }
  }

  async _create() {
    let status, body, headers;
    try {
      const res = await this._fetchWithin(this.url(""), { method: "POST" }, this.options.connectTimeout);
      status = res.status;
      headers = res.headers;
      body = await readLimited(res, 4096);
    } catch (err) {
      throw new SessionUnavailable(`cannot reach the gateway at ${this.gateway.origin}: ${err.message || err}`);
    }
    if (status !== 200) {
      const text = new TextDecoder().decode(body).trim().slice(0, 200);
      throw new SessionUnavailable(`the gateway refused a hop session (${status}${text ? `: ${text}` : ""})`);
    }
    const sessionId = headers.get(SESSION_HEADER);
    const token = base64urlDecode(headers.get(TOKEN_HEADER));
    if (!sessionId || token === null) {
      throw new SessionUnavailable("not a hopgate gateway: no session headers (a cross-origin gateway needs CORS)");
    }
    let frames;
    try {
      frames = sessionFrames.decode(body);
    } catch {
      frames = [];
    }
    const hello = frames[0];
    const valid = frames.length === 1 && hello.type === FrameType.HELLO && hello.version === PROTOCOL_VERSION
      && hello.sessionId === sessionId && hello.lastReceived === 0 && hello.token === null;
    if (!valid) throw new SessionUnavailable("not a hopgate gateway: the answer is not a session HELLO");
    return { sessionId, token };
  }

  async _fetchWithin(url, init, timeoutMs, signal = null) {
    const controller = new AbortController();
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort);
    const timer = setTimeout(abort, timeoutMs);
    try {
      return await this.fetch(url, { cache: "no-store", credentials: "same-origin", redirect: "error", ...init, signal: controller.signal });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
  }

  /**
   * One long-poll request: {status, body}; throws on network failure or timeout.
   * `keepalive` lets it outlive the page (the ABORT sent on pagehide).
   */
  async request(method, query, body, timeoutMs, signal, keepalive = false) {
    const controller = new AbortController();
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort);
    const timer = setTimeout(abort, timeoutMs); // covers the body too
    try {
      const headers = { [TOKEN_HEADER]: this._tokenText };
      if (body !== null) headers["Content-Type"] = "application/octet-stream";
      const res = await this.fetch(this.url(`/${encodeURIComponent(this.sessionId)}${query}`), {
        method, headers, body, cache: "no-store", credentials: "same-origin", redirect: "error", signal: controller.signal, keepalive,
      });
      return { status: res.status, body: await readLimited(res, this.options.maxBatchBytes) };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
  }

  // -- the session's pipe, for the tunnel ----------------------------------------

  /** Queue one message; false (nothing queued) when the session cannot take it now. */
  send(message) {
    if (!this.writable) return false;
    this.core.sendMessage(message);
    this.kick();
    this._rearm();
    return true;
  }

  /** Graceful close: the session ends once the gateway confirmed (or closeTimeout). */
  close(code = CloseCode.NORMAL, reason = "") {
    if (this.core === null || this.finished) return;
    this.core.close(code, clipReason(reason), this.now());
    this.dispatch();
  }

  /** End now without the handshake; the gateway gets a best-effort ABORT. */
  abandon(code, reason) {
    if (this.finished) return;
    const t = this.current;
    if (t !== null) {
      const abort = sessionFrames.abort(code, clipReason(reason));
      if (t.kind === "websocket" && t.ws.readyState === 1) t.ws.send(abort);
      else if (t.kind === "long-poll") {
        const ignore = () => {};
        this.request("POST", `?epoch=${t.epoch}`, abort, this.options.connectTimeout, null, true).catch(ignore);
      }
      this.current = null;
      t.abandon(code);
    }
    this._finish(code, reason, false);
  }

  // -- for transports ------------------------------------------------------------

  feed(batch) {
    if (this.finished && this.core.state !== SessionState.CLOSED) return;
    try {
      this.core.receiveData(batch, this.now());
    } catch (err) {
      if (!(err instanceof RemoteProtocolError)) throw err;
      this.log(`< protocol error, closing the session: ${err.reason} (${err.code})`);
    }
    this.dispatch();
  }

  take() {
    const batch = this.core.dataToSend(this.now());
    this._rearm();
    return batch;
  }

  /** Schedule one write of whatever accumulated (coalesces a burst into one batch). */
  kick() {
    if (this._writeQueued) return;
    this._writeQueued = true;
    queueMicrotask(() => {
      this._writeQueued = false;
      this.current?.write();
    });
  }

  dispatch() {
    for (const event of this.core.eventsReceived()) {
      switch (event.type) {
        case "message": this.handlers.onMessage(event.data); break;
        case "window-opened": this.handlers.onWritable(); break;
        case "stalled": this._onStalled(); break;
        case "closed": this._finish(event.code, event.reason, event.byPeer); break;
        default: break;
      }
    }
    this.kick();
    this._rearm();
  }

  /** A transport died; if it was current, resume on another one. */
  transportFailed(transport, reason) {
    transport.abandon();
    if (transport !== this.current) return;
    this.log(`= lost ${transport.kind}: ${reason}`);
    this.current = null;
    if (this.finished) return;
    this.core.transportLost(this.now());
    if (transport.kind === "websocket") this._wsLost(this.now() - this._attachedAt);
    this.dispatch();
    this._scheduleReconnect();
  }

  /** A non-200 answer: the gateway forgot us, refused us, or broke. */
  refused(transport, status, body) {
    if (transport !== this.current) transport.abandon();
    else if (status === 404) this.abandon(CloseCode.SESSION_EXPIRED, "expired: the gateway no longer knows this session");
    else if (status === 403) this.abandon(CloseCode.AUTH_FAILED, "the gateway refused our resume token");
    else {
      if (status === 400 && body.length) this.feed(body); // an ABORT saying why
      this.transportFailed(transport, `the gateway answered ${status}`);
    }
  }

  // -- transport choice ------------------------------------------------------------

  async _connectAny(first = false) {
    const wsDue = this.wsAllowed && (first || !this.lpAllowed || this.now() * 1000 >= this._wsRetryAt);
    if (wsDue) {
      try {
        await this._upgrade();
        return;
      } catch (err) {
        this.log(`= WebSocket unusable: ${err.message}`);
        this._wsFailed();
        if (!this.lpAllowed) throw err;
      }
    }
    if (this.finished) return;
    this._startLongPoll();
  }

  async _upgrade() {
    this._probing = true;
    const transport = new WebSocketTransport(this, ++this._epoch);
    try {
      await transport.connect();
    } finally {
      this._probing = false;
    }
    if (transport.abandoned) throw new Error("the WebSocket closed right after its probe");
    if (this.finished) {
      transport.abandon();
      return;
    }
    this._attach(transport);
    this.log(`= WebSocket attached (epoch ${transport.epoch})`);
  }

  _startLongPoll() {
    const transport = new LongPollTransport(this, ++this._epoch);
    this._attach(transport);
    this.log(`= long-poll attached (epoch ${transport.epoch})`);
    transport.start();
    this._scheduleReprobe();
  }

  _attach(transport) {
    const old = this.current;
    this.current = transport;
    if (old !== null) old.abandon();
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._attachedAt = this.now();
    this.core.transportAttached(this.now()); // HELLO + go-back-N replay on the new one
    this.dispatch();
  }

  /**
   * A WebSocket that carried the session for `lived` seconds is gone. One that
   * dies soon after its probe (a proxy killing upgraded connections) counts as
   * a failure: resume on long-poll, probe again later. One that lived long is
   * tried again first (a network blip says nothing against WebSockets).
   */
  _wsLost(lived) {
    if (lived * 1000 >= this.options.reprobeMax) this._reprobeDelay = this.options.reprobeInitial;
    if (lived < this.core.config.stallTimeout) this._wsFailed();
  }

  /** Back off WebSocket attempts: the next one waits the current delay, which doubles. */
  _wsFailed() {
    this._wsRetryAt = this.now() * 1000 + this._reprobeDelay;
    this._reprobeDelay = Math.min(this._reprobeDelay * 2, this.options.reprobeMax);
  }

  _onStalled() {
    const transport = this.current;
    if (transport === null) return;
    this.log(`= ${transport.kind} stalled: no progress for ${this.core.config.stallTimeout} s`);
    if (transport.kind === "websocket" && this.lpAllowed) {
      this._wsFailed();
      this._startLongPoll(); // nothing is lost: attaching replays everything unacked
    } else this.transportFailed(transport, "stalled");
  }

  _scheduleReconnect() {
    if (this.finished || this._reconnectTimer !== null) return;
    const delay = this._reconnectDelay;
    this._reconnectDelay = Math.min(delay * 2, this.options.reconnectMax);
    this._reconnectTimer = setTimeout(async () => {
      this._reconnectTimer = null;
      if (this.finished || this.current !== null) return;
      if (this._probing) {
        this._scheduleReconnect(); // a re-probe is under way: see how it ends
        return;
      }
      try {
        await this._connectAny();
        this._reconnectDelay = this.options.reconnectInitial;
      } catch {
        this._scheduleReconnect();
      }
    }, delay);
  }

  _scheduleReprobe() {
    if (!this.wsAllowed || this.finished) return;
    clearTimeout(this._reprobeTimer);
    const delay = Math.max(0, this._wsRetryAt - this.now() * 1000) || this._reprobeDelay;
    this._reprobeTimer = setTimeout(() => this._reprobe(), delay);
  }

  async _reprobe() {
    this._reprobeTimer = null;
    if (this.finished || this._probing || this.current?.kind !== "long-poll") return;
    try {
      await this._upgrade();
    } catch (err) {
      this.log(`= WebSocket re-probe failed: ${err.message}`);
      this._wsFailed();
      if (this.current?.kind === "long-poll") this._scheduleReprobe();
      else if (this.current === null) this._scheduleReconnect();
    }
  }

  // -- timers and the end ------------------------------------------------------------

  /** Keep one timer on the core's next deadline (moved only when it gets earlier). */
  _rearm() {
    if (this.finished || this.core === null) return;
    const deadline = this.core.nextDeadline();
    if (deadline === null || deadline >= this._timerAt) return;
    clearTimeout(this._timer);
    this._timerAt = deadline;
    const delay = Math.max(0, (deadline - this.now()) * 1000) + 1;
    this._timer = setTimeout(() => {
      this._timer = null;
      this._timerAt = Infinity;
      if (this.finished) return;
      this.core.handleTimer(this.now());
      this.dispatch();
    }, delay);
  }

  _finish(code, reason, byPeer) {
    if (this.finished) return;
    this.finished = true;
    this.closeCode = code;
    clearTimeout(this._timer);
    clearTimeout(this._reprobeTimer);
    clearTimeout(this._reconnectTimer);
    this._timer = this._reprobeTimer = this._reconnectTimer = null;
    this.log(`= session closed (${code} ${reason})`);
    // The current transport flushes the last ACK/ABORT, then closes itself.
    if (this.current !== null) this.kick();
    this.handlers.onClosed(code, reason, byPeer);
  }
}

/** RFC 7230 token: what a subprotocol name may be. */
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
const READY_STATES = { CONNECTING, OPEN, CLOSING, CLOSED };

/** Defaults of HopSocket options besides the transport ones (DEFAULT_LINK_OPTIONS). */
const DEFAULT_SOCKET_OPTIONS = Object.freeze({
  maxMessageSize: 16 * 1024 * 1024, // largest message each way; the gateway has its own limit
  maxBufferedAmount: 64 * 1024 * 1024, // a page that queues more than this fails the socket
  closeTimeout: 10000, // our close() gets the endpoint's answer within this, or closes 1006
  headers: [], // extra handshake headers for the endpoint, e.g. [["Authorization", "..."]]
});

function domError(message, name) {
  return typeof DOMException === "function" ? new DOMException(message, name) : Object.assign(new Error(message), { name });
}

function messageEvent(data, origin) {
  if (typeof MessageEvent === "function") return new MessageEvent("message", { data, origin });
  const event = new Event("message");
  Object.defineProperties(event, { data: { value: data }, origin: { value: origin }, lastEventId: { value: "" } });
  return event;
}

function closeEvent(code, reason, wasClean) {
  if (typeof CloseEvent === "function") return new CloseEvent("close", { code, reason, wasClean });
  const event = new Event("close");
  Object.defineProperties(event, { code: { value: code }, reason: { value: reason }, wasClean: { value: wasClean } });
  return event;
}

/** Parse and check the URL the way the WebSocket constructor does; returns a ws:/wss: URL. */
function endpointUrl(url) {
  let parsed;
  try {
    parsed = new URL(String(url), globalThis.location?.href);
  } catch {
    throw domError(`The URL '${url}' is invalid.`, "SyntaxError");
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw domError(`The URL's scheme must be either 'ws' or 'wss'. '${parsed.protocol}' is not allowed.`, "SyntaxError");
  }
  if (parsed.hash) throw domError("The URL contains a fragment identifier. Fragment identifiers are not allowed in WebSocket URLs.", "SyntaxError");
  return parsed;
}

function subprotocolList(protocols) {
  const list = protocols === undefined ? [] : typeof protocols === "string" ? [protocols] : Array.from(protocols, String);
  const seen = new Set();
  for (const p of list) {
    if (!TOKEN_RE.test(p)) throw domError(`The subprotocol '${p}' is invalid.`, "SyntaxError");
    if (seen.has(p)) throw domError(`The subprotocol '${p}' is duplicated.`, "SyntaxError");
    seen.add(p);
  }
  return list;
}

function gatewayUrl(option) {
  const text = option ?? globalThis.location?.origin;
  if (!text) throw new TypeError("HopSocket needs options.gateway outside a web page");
  const url = new URL(String(text), globalThis.location?.href);
  if (url.protocol === "ws:") url.protocol = "http:";
  else if (url.protocol === "wss:") url.protocol = "https:";
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new TypeError(`gateway must be an http(s) URL, not ${text}`);
  return url;
}

/**
 * A WebSocket-compatible object whose connection goes through a hopgate
 * gateway: a WebSocket to the gateway where the path allows one, HTTP
 * long-polling where it does not, switching invisibly (nothing lost,
 * duplicated or reordered).
 *
 * Differences from WebSocket: `extensions` is always ""; the close event of
 * an abnormal closure carries a diagnostic `reason`; `transport` (extra)
 * says what carries the session now.
 *
 * @extends EventTarget
 */
class HopSocket extends EventTarget {
  /**
   * @param {string|URL} url  the endpoint (ws:, wss:, http:, https: or relative);
   *   its path and query are asked of the gateway's upstream
   * @param {string|string[]} [protocols]  subprotocols to offer the endpoint
   * @param {object} [options]
   * @param {string} [options.gateway]  base URL of the gateway (default: this page's origin)
   * @param {string[]} [options.transports]  ["websocket", "long-poll"] (default), or one of them
   * @param {number} [options.connectTimeout]  ms, default 10000
   * @param {number} [options.probeTimeout]  ms, default 5000
   * @param {number} [options.pollTimeout]  ms, default 45000
   * @param {number} [options.reprobeInitial]  ms, default 2000
   * @param {number} [options.reprobeMax]  ms, default 60000
   * @param {number} [options.maxMessageSize]  bytes, default 16 MiB
   * @param {number} [options.maxBufferedAmount]  bytes, default 64 MiB
   * @param {Array<[string,string]>} [options.headers]  extra handshake headers for the endpoint
   * @param {object} [options.session]  hop session timers (seconds) and limits, see DEFAULT_SESSION_CONFIG
   * @param {Function} [options.log]  e.g. console.debug
   */
  constructor(url, protocols = undefined, options = {}) {
    super();
    const endpoint = endpointUrl(url);
    this._url = endpoint.href;
    this._origin = endpoint.origin;
    this._offered = subprotocolList(protocols);
    this._options = { ...DEFAULT_SOCKET_OPTIONS, ...options };
    this._readyState = CONNECTING;
    this._protocol = "";
    this._binaryType = "blob";
    this._handlers = {};
    this._outbox = new Deque(); // {bytes, text, size}: page messages not yet in the tunnel
    this._outboxBytes = 0;
    this._discarded = 0; // bytes sent after close(), counted as browsers do
    this._closeRequest = null;
    this._closeSent = false;
    this._closeTimer = null;
    this._pumpQueued = false;
    this._sid = null;
    this._tunnel = new Tunnel({ maxWsMessage: this._options.maxMessageSize });
    this._link = new HopLink(gatewayUrl(this._options.gateway), this._options, {
      onMessage: (message) => this._onSessionMessage(message),
      onWritable: () => this._schedulePump(),
      onClosed: (code, reason) => this._onSessionClosed(code, reason),
    });
    this._unwatchPageHide = () => {};
    this._watchPageHide();
    this._start(`${endpoint.pathname}${endpoint.search}`, endpoint.host);
  }

  get url() { return this._url; }
  get readyState() { return this._readyState; }
  get protocol() { return this._protocol; }
  get extensions() { return ""; }
  /** "websocket", "long-poll" or "none": what carries the hop session now (not in WebSocket). */
  get transport() { return this._link.transport; }

  get binaryType() { return this._binaryType; }
  set binaryType(value) {
    if (value === "blob" || value === "arraybuffer") this._binaryType = value; // others are ignored, as in browsers
  }

  /** Bytes given to send() and not yet acknowledged by the gateway. */
  get bufferedAmount() {
    const queued = this._sid === null ? 0 : this._tunnel.queuedBytes(this._sid);
    return this._outboxBytes + queued + this._link.bufferedBytes + this._discarded;
  }

  /**
   * Send a text (string) or binary (ArrayBuffer, ArrayBufferView, Blob) message.
   * @throws {DOMException} InvalidStateError while CONNECTING
   */
  send(data) {
    if (this._readyState === CONNECTING) throw domError("Still in CONNECTING state.", "InvalidStateError");
    const item = this._outgoing(data);
    if (this._readyState !== OPEN || this._closeRequest !== null) {
      this._discarded += item.size;
      return;
    }
    if (item.size > this._options.maxMessageSize || this.bufferedAmount + item.size > this._options.maxBufferedAmount) {
      this._abort(1009, `message too big or too much buffered (${item.size} bytes)`);
      return;
    }
    this._outbox.push(item);
    this._outboxBytes += item.size;
    this._schedulePump();
  }

  /**
   * Close the connection; messages sent before still go first.
   * @param {number} [code]  1000 or 3000-4999
   * @param {string} [reason]  at most 123 UTF-8 bytes
   * @throws {DOMException} InvalidAccessError (code), SyntaxError (reason)
   */
  close(code = undefined, reason = undefined) {
    if (code !== undefined) {
      code = Math.min(Math.max(Math.round(Number(code)) || 0, 0), 65535); // WebIDL [Clamp] unsigned short
      if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
        throw domError(`The code must be either 1000, or between 3000 and 4999. ${code} is neither.`, "InvalidAccessError");
      }
    }
    reason = reason === undefined ? "" : String(reason);
    if (utf8Length(reason) > MAX_REASON_BYTES) throw domError("The close reason must not be greater than 123 UTF-8 bytes.", "SyntaxError");
    if (this._readyState === CLOSING || this._readyState === CLOSED) return;
    if (this._readyState === CONNECTING) {
      this._readyState = CLOSING;
      setTimeout(() => this._fail("WebSocket is closed before the connection is established."), 0);
      return;
    }
    this._readyState = CLOSING;
    this._closeRequest = { code: code ?? 1005, reason }; // 1005: "no code", as a browser's empty close frame
    this._closeTimer = setTimeout(() => this._closed(1006, "the endpoint did not answer the close", false, true), this._options.closeTimeout);
    this._schedulePump();
  }

  // -- connecting -------------------------------------------------------------------

  /**
   * A leaving page ends the session at once with an ABORT (1001), so the
   * gateway closes the endpoint's WebSocket now, as a browser's own
   * WebSocket would, rather than after the session's resume grace.
   */
  _watchPageHide() {
    const page = globalThis.window;
    if (page === undefined || typeof page.addEventListener !== "function") return;
    const onPageHide = () => this._link.abandon(CloseCode.GOING_AWAY, "page unloaded");
    page.addEventListener("pagehide", onPageHide);
    this._unwatchPageHide = () => page.removeEventListener("pagehide", onPageHide);
  }

  async _start(target, host) {
    try {
      await this._link.open();
    } catch (err) {
      this._fail(err.message);
      return;
    }
    if (this._readyState !== CONNECTING) {
      this._link.close(CloseCode.NORMAL, "closed before the connection was established");
      return;
    }
    const headers = [["Host", host]];
    if (globalThis.location?.origin && globalThis.location.origin !== "null") headers.push(["Origin", globalThis.location.origin]);
    headers.push(...this._options.headers);
    try {
      this._sid = this._tunnel.openWebSocket(target, headers, this._offered);
    } catch (err) {
      this._fail(`cannot open the stream: ${err.message}`);
      return;
    }
    this._schedulePump();
  }

  // -- sending ------------------------------------------------------------------------

  _outgoing(data) {
    if (typeof data === "string") {
      const bytes = utf8Encoder.encode(data);
      return { bytes, text: true, size: bytes.length };
    }
    if (data instanceof ArrayBuffer) return { bytes: new Uint8Array(data.slice(0)), text: false, size: data.byteLength };
    if (ArrayBuffer.isView(data)) {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
      return { bytes, text: false, size: bytes.length };
    }
    if (typeof Blob === "function" && data instanceof Blob) {
      // Read asynchronously; the item keeps its place in the queue until then.
      const item = { bytes: null, text: false, size: data.size };
      data.arrayBuffer().then(
        (buffer) => {
          item.bytes = new Uint8Array(buffer);
          this._schedulePump();
        },
        () => this._abort(1011, "could not read a Blob to send"),
      );
      return item;
    }
    return this._outgoing(String(data));
  }

  _schedulePump() {
    if (this._pumpQueued) return;
    this._pumpQueued = true;
    queueMicrotask(() => this._pump());
  }

  /** Page queue -> tunnel -> session, as far as each can take; then the close, if asked. */
  _pump() {
    this._pumpQueued = false;
    const tunnel = this._tunnel;
    const sid = this._sid;
    if (sid !== null && !tunnel.closed) {
      while (this._outbox.length && tunnel.isWritable(sid)) {
        const item = this._outbox.at(0);
        if (item.bytes === null) break; // a Blob still being read
        this._outbox.shift();
        this._outboxBytes -= item.size;
        tunnel.sendWsMessage(sid, item.bytes, item.text);
      }
      if (this._closeRequest !== null && !this._closeSent && !this._outbox.length && this._readyState === CLOSING) {
        this._closeSent = true;
        tunnel.closeWebSocket(sid, this._closeRequest.code, this._closeRequest.reason);
      }
    }
    this._flushTunnel();
  }

  _flushTunnel() {
    const tunnel = this._tunnel;
    if (tunnel.closed) return;
    while (this._link.writable) {
      const message = tunnel.nextMessage();
      if (message === null) break;
      this._link.send(message);
    }
    // The session closes only after the last tunnel frame (our CLOSE) is in it.
    if (this._readyState === CLOSED && !tunnel.hasPending()) this._link.close();
  }

  // -- receiving ----------------------------------------------------------------------

  _onSessionMessage(message) {
    try {
      this._tunnel.receiveMessage(message);
    } catch (err) {
      if (!(err instanceof RemoteProtocolError)) throw err;
      this._link.close(err.code, err.reason);
    }
    for (const event of this._tunnel.eventsReceived()) this._onTunnelEvent(event);
    this._schedulePump();
  }

  _onTunnelEvent(event) {
    switch (event.type) {
      case "accepted": return this._onAccepted(event);
      case "refused": return this._fail(`the endpoint refused the WebSocket (${event.status})`);
      case "data": return this._tunnel.consumed(event.sid, event.data.length); // a refusal's body
      case "message": return this._onMessage(event);
      case "closed": return this._onPeerClose(event);
      case "reset": return this._onReset(event);
      default: return undefined; // "writable", "ended": the pump runs after every batch
    }
  }

  _onAccepted(event) {
    if (this._readyState !== CONNECTING) return;
    const protocol = event.protocol ?? "";
    if (protocol && !this._offered.includes(protocol)) {
      this._tunnel.reset(event.sid, ResetCode.PROTOCOL, "subprotocol not offered");
      this._fail(`the endpoint chose the subprotocol '${protocol}', which was not offered`);
      return;
    }
    this._protocol = protocol;
    this._readyState = OPEN;
    this.dispatchEvent(new Event("open"));
  }

  _onMessage(event) {
    if (this._readyState === OPEN) {
      let data = event.data;
      if (typeof data !== "string") {
        const copy = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? data.buffer : data.slice().buffer;
        data = this._binaryType === "blob" && typeof Blob === "function" ? new Blob([copy]) : copy;
      }
      this.dispatchEvent(messageEvent(data, this._origin));
    }
    this._tunnel.consumed(event.sid, event.size);
  }

  _onPeerClose(event) {
    if (!this._closeSent) {
      // Answer with the same code, as a browser does; our queued messages are dropped.
      this._closeSent = true;
      this._outbox.clear();
      this._outboxBytes = 0;
      this._tunnel.closeWebSocket(event.sid, event.code, event.reason);
    }
    this._closed(event.code, event.reason, true);
  }

  _onReset(event) {
    if (this._readyState === CONNECTING || this._readyState === CLOSED) {
      this._fail(`the gateway could not open the WebSocket: ${event.reason}`);
      return;
    }
    const code = event.code === ResetCode.SESSION_LOST ? 1006 : RESET_CLOSE_CODES[event.code] ?? 1011;
    this._closed(code, event.reason, false, true);
  }

  _onSessionClosed(code, reason) {
    this._unwatchPageHide();
    if (!this._tunnel.closed) {
      this._tunnel.closeAll(`hop session closed (${code} ${reason})`);
      for (const event of this._tunnel.eventsReceived()) this._onTunnelEvent(event);
    }
    if (this._readyState !== CLOSED) this._fail(`hop session closed (${code} ${reason})`);
  }

  // -- the end ------------------------------------------------------------------------

  /** Fail the connection (WebSocket spec): error, then close 1006. */
  _fail(reason) {
    if (this._sid !== null) this._tunnel.reset(this._sid, ResetCode.CANCEL, "closed by the page");
    this._closed(1006, reason, false, true);
  }

  /** A limit of ours was broken: tell the endpoint with `code`, and fail. */
  _abort(code, reason) {
    if (this._sid !== null) this._tunnel.reset(this._sid, code === 1009 ? ResetCode.TOO_LARGE : ResetCode.INTERNAL, reason);
    this._closed(code, reason, false, true);
  }

  _closed(code, reason, wasClean, error = false) {
    if (this._readyState === CLOSED) return;
    this._readyState = CLOSED;
    clearTimeout(this._closeTimer);
    this._outbox.clear();
    this._outboxBytes = 0;
    this._schedulePump(); // flushes our CLOSE/RESET, then closes the session
    if (error) this.dispatchEvent(new Event("error"));
    this.dispatchEvent(closeEvent(code, clipReason(reason), wasClean));
  }
}

for (const [name, value] of Object.entries(READY_STATES)) {
  Object.defineProperty(HopSocket, name, { value, enumerable: true });
  Object.defineProperty(HopSocket.prototype, name, { value, enumerable: true });
}

for (const type of ["open", "message", "error", "close"]) {
  Object.defineProperty(HopSocket.prototype, `on${type}`, {
    configurable: true,
    enumerable: true,
    get() {
      return this._handlers[type] ?? null;
    },
    set(handler) {
      if (!(type in this._handlers)) {
        // One listener, added on first assignment, calls whatever handler is current.
        this.addEventListener(type, (event) => {
          const current = this._handlers[type];
          if (typeof current === "function") current.call(this, event);
        });
      }
      this._handlers[type] = typeof handler === "function" ? handler : null;
    },
  });
}

if (typeof window !== "undefined" && window.HopSocket === undefined) window.HopSocket = HopSocket;

export { HopSocket, HopLink, SessionUnavailable, Session, SessionState, Tunnel, CloseCode, ResetCode, LocalProtocolError, RemoteProtocolError, BufferFull, MsgpackError, FrameType, TunnelFrame, DEFAULT_SESSION_CONFIG, DEFAULT_TUNNEL_CONFIG, DEFAULT_LINK_OPTIONS, encode, decodeAll, sessionFrames, tunnelFrames, SESSION_LIMITS, TUNNEL_LIMITS };
