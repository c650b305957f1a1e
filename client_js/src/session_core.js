// ---------------------------------------------------------------------------
// 2c. The hop session's core: transports, receiving, sending, closing
//     (reference: gateway/core/session/machine.py, inbound.py, outbox.py, closing.py)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { utf8Encoder, strictUtf8, concatBytes, utf8Length, Deque } from "./msgpack.js";
import { LocalProtocolError, BufferFull, RemoteProtocolError, CloseCode, PROTOCOL_VERSION, MAX_TOKEN_LENGTH, MAX_REASON_BYTES, DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, MAX_QUEUED_PONGS, FrameType, sessionFrames, isCloseCode, eachSessionFrame, clipReason, constantTimeEqual } from "./session_frames.js";
import { sessionConfig, SESSION_TRANSITIONS, S_OPEN, S_CLOSING, S_CLOSED } from "./session_config.js";

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
class SessionCore {
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
}

export { SessionCore };
