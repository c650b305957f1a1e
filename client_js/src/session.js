// ---------------------------------------------------------------------------
// 2. The hop session (docs/protocol.md; reference: gateway/core/session/machine.py)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { MsgpackError, utf8Encoder, strictUtf8, encode, SESSION_LIMITS, MsgpackReader, concatBytes, utf8Length, Deque } from "./msgpack.js";

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
  if (!(c.fragmentSize >= 1 && c.fragmentSize <= MAX_FRAGMENT_SIZE)) throw new RangeError(d`fragmentSize out of range`);
  if (c.maxBufferBytes < c.fragmentSize + DATA_OVERHEAD) throw new RangeError(d`maxBufferBytes must hold a fragment`);
  if (c.maxBufferFrames < 1 || c.maxBatchBytes < 1) throw new RangeError(d`buffer and batch limits must be >= 1`);
  for (const k of ["retransmitTimeout", "heartbeatInterval", "stallTimeout", "resumeGrace", "closeTimeout"]) {
    if (!(c[k] > 0)) throw new RangeError(d`${k} must be > 0`);
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
 * number of transports. Sans-I/O; see gateway/core/session/machine.py, whose
 * behaviour this follows call for call.
 *
 * Events (plain frozen objects, pulled with eventsReceived()):
 *   {type: "hello", lastReceived, first}     {type: "message", data}
 *   {type: "window-opened"}                   {type: "stalled", since}
 *   {type: "probe-answered", nonce, rtt}      {type: "closed", code, reason, byPeer}
 *   {type: "goaway", lastStreamId, reason}    (docs/protocol.md §6a)
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
      throw new LocalProtocolError(d`sessionId must be 1-128 ASCII characters`);
    }
    if (!(token instanceof Uint8Array) || token.length < 1 || token.length > MAX_TOKEN_LENGTH) {
      throw new LocalProtocolError(d`token must be 1-${MAX_TOKEN_LENGTH} bytes`);
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
    this._goAway = null; // the lowest last_stream_id of the peer's GOAWAYs
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

  /** Use a new heartbeat interval (seconds) from now on: the path's idle limit was learned. */
  setHeartbeat(seconds) {
    this.config = sessionConfig({ ...this.config, heartbeatInterval: seconds });
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
      case FrameType.GOAWAY: return this._onGoAway(frame);
      default: throw new LocalProtocolError("unreachable");
    }
  }

  _onData(frame) {
    this._ackPending = true;
    if (frame.seq !== this._received + 1) return; // duplicate or gap: go-back-N replays it
    if (this._peerClosed) throw new RemoteProtocolError(d`DATA after CLOSE`);
    this._received = frame.seq;
    const parts = this._rxParts;
    if (parts.length) {
      if (frame.text !== this._rxText) throw new RemoteProtocolError(d`fragments of one message mix text and binary`);
    } else this._rxText = frame.text;
    const size = this._rxSize + frame.payload.length;
    if (size > this.config.maxMessageSize) {
      throw new RemoteProtocolError(d`message exceeds maxMessageSize (${this.config.maxMessageSize} bytes)`, CloseCode.MESSAGE_TOO_BIG);
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
      throw new RemoteProtocolError(d`text message is not valid UTF-8`, CloseCode.INVALID_DATA);
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
    if (this._peerClosed) throw new RemoteProtocolError(d`second CLOSE`);
    if (this._rxParts.length) throw new RemoteProtocolError(d`CLOSE in the middle of a fragmented message`);
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

  /** docs/protocol.md §6a: reported the first time and when the id goes down; repeats are ignored. */
  _onGoAway(frame) {
    if (this._goAway !== null && frame.lastStreamId >= this._goAway) return;
    this._goAway = frame.lastStreamId;
    this._emit({ type: "goaway", lastStreamId: frame.lastStreamId, reason: frame.reason });
  }

  _checkHello(frame) {
    if (frame.version !== PROTOCOL_VERSION) {
      throw new RemoteProtocolError(d`unsupported protocol version ${frame.version}`, CloseCode.UNSUPPORTED_VERSION);
    }
    if (!constantTimeEqual(utf8Encoder.encode(frame.sessionId), this._sidBytes)) {
      throw new RemoteProtocolError(d`HELLO names another session`, CloseCode.UNKNOWN_SESSION);
    }
    if (!this.isClient && (frame.token === null || !constantTimeEqual(frame.token, this._token))) {
      throw new RemoteProtocolError(d`bad resume token`, CloseCode.AUTH_FAILED);
    }
  }

  _ack(upto, now) {
    if (upto <= this._acked) return; // stale
    if (upto > this._highSent) throw new RemoteProtocolError(d`ack of seq ${upto} but only ${this._highSent} were sent`);
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
    if (this._state !== S_OPEN) throw new LocalProtocolError(d`cannot send a message in state ${this._state}`);
    const text = typeof data === "string";
    const payload = text ? utf8Encoder.encode(data) : data;
    if (!(payload instanceof Uint8Array)) throw new LocalProtocolError(d`a message is a string or a Uint8Array`);
    const c = this.config;
    if (payload.length > c.maxMessageSize) {
      throw new LocalProtocolError(d`message of ${payload.length} bytes exceeds maxMessageSize (${c.maxMessageSize})`);
    }
    if (!this.writable) throw new BufferFull(d`replay buffer full (${this._buf.length} frames, ${this._bufBytes} bytes)`);
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
      if (!isUint(peerReceived)) throw new LocalProtocolError(d`peerReceived must be a non-negative integer`);
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
    if (!isCloseCode(code)) throw new LocalProtocolError(d`close code ${code} outside [1000, 4999]`);
    if (typeof reason !== "string" || utf8Length(reason) > MAX_REASON_BYTES) {
      throw new LocalProtocolError(d`close reason longer than ${MAX_REASON_BYTES} bytes`);
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
    if (next === undefined) throw new LocalProtocolError(d`'${event}' is not allowed in state ${this._state}`);
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
      this._terminate(CloseCode.SESSION_EXPIRED, d`expired: no transport for ${c.resumeGrace} s`, false, true);
      return;
    }
    if (this._state === S_CLOSING && now >= this._closeDeadline) {
      const { code, reason } = this._closeInfo;
      this._terminate(CloseCode.CLOSE_TIMEOUT, d`close handshake timed out (${code} ${reason})`, false, false);
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
    if (this._state === S_CLOSED) throw new LocalProtocolError(d`cannot probe a CLOSED session`);
    const nonce = ++this._nonce;
    if (this._probes.size >= MAX_PROBES) this._probes.delete(this._probes.keys().next().value);
    this._probes.set(nonce, now);
    return { nonce, batch: concatBytes([this._encodeHello(), sessionFrames.ping(nonce)]) };
  }

  /** Answer a probe (server side) with HELLO+PONG; a bad probe throws and leaves the session as it was. */
  probeReply(batch, now) {
    if (this._state === S_CLOSED) throw new LocalProtocolError(d`cannot answer a probe on a CLOSED session`);
    const { hello, nonces } = this._parseProbe(batch, FrameType.PING);
    if (hello === null || !nonces.length) throw new RemoteProtocolError(d`a probe needs a HELLO and a PING`);
    return concatBytes([this._encodeHello(), ...nonces.map((n) => sessionFrames.pong(n))]);
  }

  /** Check the reply to probeRequest: {nonce, rtt}, or null if it answers no live probe. */
  probeCheck(batch, now) {
    const { hello, nonces } = this._parseProbe(batch, FrameType.PONG);
    if (hello === null) throw new RemoteProtocolError(d`a probe reply needs a HELLO`);
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
      else throw new RemoteProtocolError(d`unexpected frame type ${frame.type} in a probe`);
    });
    return { hello, nonces };
  }
}

export { LocalProtocolError, BufferFull, RemoteProtocolError, CloseCode, PROTOCOL_VERSION, MAX_REASON_BYTES, DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, FrameType, sessionFrames, isCloseCode, isReason, DEFAULT_SESSION_CONFIG, SessionState, clipReason, Session };
