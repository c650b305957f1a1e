// ---------------------------------------------------------------------------
// 3. The tunnel (docs/tunnel.md; gateway/core/tunnel/streams.py); also tunnel_*.js
// ---------------------------------------------------------------------------

import { DEBUG, d } from "./debug.js";
import { MsgpackError, utf8Encoder, strictUtf8, MsgpackReader, concatBytes, Deque } from "./msgpack.js";
import { LocalProtocolError, RemoteProtocolError, MAX_REASON_BYTES, DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, isCloseCode, isReason, clipReason } from "./session_frames.js";
import { TunnelFrame, ResetCode, BASE_WINDOW, MAX_WINDOW, MIN_MESSAGE, MIN_SPLIT, FLOW_CONTROL_ERROR, TUNNEL_LIMITS, isProtocol, isResetCode, tunnelMalformed, checkTunnelFrame, tunnelFrames, parity, pairs } from "./tunnel_frames.js";
import { DEFAULT_TUNNEL_CONFIG, STATE_NAMES, IN_HEAD_BODY, INPUT_NAMES, TUNNEL_TRANSITIONS, TunnelStream, WS, DONE, IN_HEAD_EMPTY, IN_ACCEPT, IN_REFUSED, IN_DATA, IN_END, IN_MESSAGE, IN_CLOSE } from "./tunnel_stream.js";

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
      throw new RangeError(d`initialWindow out of range`);
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
    if (s === undefined) throw new LocalProtocolError(d`stream ${sid} is not open`);
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
      throw new LocalProtocolError(d`target must be an origin-form path, not ${String(target).slice(0, 60)}`);
    }
    if (protocols.length > 32 || !protocols.every(isProtocol)) throw new LocalProtocolError(d`bad subprotocol list`);
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
      throw new LocalProtocolError(d`WebSocket message of ${bytes.length} bytes over maxWsMessage`);
    }
    if (!stream.writable) throw new LocalProtocolError(d`stream ${sid} is not writable: wait for "writable"`);
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
    if (!isCloseCode(code)) throw new LocalProtocolError(d`bad close code ${code}`);
    if (!isReason(reason)) throw new LocalProtocolError(d`reason must be a string of at most ${MAX_REASON_BYTES} bytes`);
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
    if (!isResetCode(code)) throw new LocalProtocolError(d`bad reset code ${code}`);
    if (stream.openSent) this._control.push(tunnelFrames.reset(sid, code, clipReason(reason)));
    this._forget(stream);
  }

  /** The page took `n` received bytes: grant them back to the sender (batched). */
  consumed(sid, n) {
    const stream = this._streams.get(sid);
    if (stream === undefined) return;
    if (!Number.isInteger(n) || n < 0 || n > stream.unconsumed) {
      throw new LocalProtocolError(d`consumed(${n}) on stream ${sid} with ${stream.unconsumed} unconsumed`);
    }
    stream.unconsumed -= n;
    const prepaid = Math.min(stream.prepaid, n);
    stream.prepaid -= prepaid;
    this._credit(stream, n - prepaid);
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
  closeAll(reason = d`session closed`) {
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
    if (maxBytes < MIN_MESSAGE) throw new LocalProtocolError(d`maxBytes must be at least ${MIN_MESSAGE}`);
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
    const [header, payload] = stream.takeChunk(n);
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
      if (typeof message === "string") throw new RemoteProtocolError(d`tunnel messages are binary, got a text message`);
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
      if (err instanceof RemoteProtocolError) this.closeAll(d`tunnel protocol error: ${err.reason}`);
      throw err;
    }
  }

  _handle(raw) {
    const type = raw[0];
    if (type === TunnelFrame.OPEN_HTTP || type === TunnelFrame.OPEN_WS) return this._onOpen(raw[1]);
    const stream = this._lookup(raw[1]);
    if (stream === null) return undefined; // a late frame of a stream we forgot
    switch (type) {
      case TunnelFrame.RESPONSE: return this._onResponse(stream, raw);
      case TunnelFrame.ACCEPT: return this._onAccept(stream, raw);
      case TunnelFrame.DATA: return this._onData(stream, raw);
      case TunnelFrame.END: return this._onEnd(stream);
      case TunnelFrame.MESSAGE: return this._onMessage(stream, raw);
      case TunnelFrame.CLOSE: return this._onClose(stream, raw);
      case TunnelFrame.WINDOW: return this._onWindow(stream, raw);
      case TunnelFrame.RESET: return this._onReset(stream, raw);
      default: throw new LocalProtocolError("unreachable");
    }
  }

  _onOpen(sid) {
    if (parity(sid) === 1) throw new RemoteProtocolError(d`OPEN for stream ${sid}: that id is ours to allocate`);
    if (sid <= this._highestPeerId) throw new RemoteProtocolError(d`OPEN for stream ${sid}, not above ${this._highestPeerId}`);
    this._highestPeerId = sid;
    this._control.push(tunnelFrames.reset(sid, ResetCode.REFUSED, d`a browser takes no streams`));
  }

  _onResponse(stream, raw) {
    const [, sid, status, reason, headers, hasBody] = raw;
    this._recvStep(stream, hasBody ? IN_HEAD_BODY : IN_HEAD_EMPTY);
    if (stream.ws) {
      stream.sendState = this._step(stream, stream.sendState, IN_REFUSED, false);
      stream.ws = false; // the refusal's body comes as DATA
    }
    this._emit({ type: "refused", sid, status, reason, headers: pairs(headers), hasBody });
    this._maybeForget(stream);
  }

  _onAccept(stream, raw) {
    const [, sid, window, protocol, headers] = raw;
    if (!stream.ws) throw new RemoteProtocolError(d`ACCEPT on a non-WebSocket stream ${sid}`);
    this._recvStep(stream, IN_ACCEPT);
    stream.sendState = this._step(stream, stream.sendState, IN_ACCEPT, false);
    stream.sendCredit = window;
    this._emit({ type: "accepted", sid, protocol, headers: pairs(headers) });
    this._schedule(stream);
  }

  _onData(stream, raw) {
    const [, sid, payload] = raw;
    this._recvStep(stream, IN_DATA);
    this._takeCredit(stream, payload.length);
    stream.unconsumed += payload.length;
    this._emit({ type: "data", sid, data: payload });
  }

  _onEnd(stream) {
    this._recvStep(stream, IN_END);
    this._emit({ type: "ended", sid: stream.id });
    this._maybeForget(stream);
  }

  _onMessage(stream, raw) {
    const [, sid, flags, payload] = raw;
    this._recvStep(stream, IN_MESSAGE);
    const n = payload.length;
    this._takeCredit(stream, n);
    const text = Boolean(flags & FLAG_TEXT);
    if (stream.msgParts.length) {
      if (text !== stream.msgText) throw new RemoteProtocolError(d`MESSAGE on stream ${sid} changes type mid-message`);
    } else stream.msgText = text;
    stream.msgSize += n;
    if (stream.msgSize > this.config.maxWsMessage) {
      this._resetLocally(stream, ResetCode.TOO_LARGE, d`WebSocket message too large`);
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
        this._resetLocally(stream, ResetCode.PROTOCOL, d`text message is not UTF-8`);
        return;
      }
    }
    // `size` is the whole message, as in the Python core; its fragments were credited on arrival.
    stream.unconsumed += whole.length;
    stream.prepaid += whole.length - n;
    this._emit({ type: "message", sid, data, size: whole.length });
  }

  _onClose(stream, raw) {
    const [, sid, code, reason] = raw;
    this._recvStep(stream, IN_CLOSE);
    if (stream.msgParts.length) throw new RemoteProtocolError(d`CLOSE inside a fragmented message on stream ${sid}`);
    this._emit({ type: "closed", sid, code, reason });
    this._maybeForget(stream);
  }

  _onWindow(stream, raw) {
    const [, sid, increment] = raw;
    stream.sendCredit += increment;
    if (stream.sendCredit > MAX_WINDOW) {
      throw new RemoteProtocolError(d`WINDOW overflows the credit of stream ${sid}`, FLOW_CONTROL_ERROR);
    }
    this._schedule(stream);
  }

  _onReset(stream, raw) {
    const [, sid, code, reason] = raw;
    const known = code <= ResetCode.SESSION_LOST ? code : ResetCode.INTERNAL;
    this._forget(stream);
    this._emit({ type: "reset", sid, code: known, reason, remote: true, retrySafe: known === ResetCode.REFUSED });
  }

  _takeCredit(stream, n) {
    if (n > stream.recvWindow) {
      throw new RemoteProtocolError(d`stream ${stream.id} sent ${n} bytes with a window of ${stream.recvWindow}`, FLOW_CONTROL_ERROR);
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
    const what = DEBUG ? INPUT_NAMES[input] : input;
    const now = DEBUG ? STATE_NAMES[state] : state;
    if (local) throw new LocalProtocolError(d`cannot send ${what} on stream ${stream.id} whose send side is ${now}`);
    throw new RemoteProtocolError(d`received ${what} on stream ${stream.id} whose receive side is ${now}`);
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
      throw new LocalProtocolError(d`stream ${sid} was never opened`);
    }
    return null;
  }

  /** The stream a received frame is for; null for a late frame of a closed one. */
  _lookup(sid) {
    const stream = this._streams.get(sid);
    if (stream !== undefined) return stream;
    const allocated = parity(sid) === 1 ? sid < this._nextId : sid <= this._highestPeerId;
    if (!allocated) throw new RemoteProtocolError(d`frame for stream ${sid}, which was never opened`);
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
    if (this._closed) throw new LocalProtocolError(d`the tunnel is closed`);
  }
}

export { DEFAULT_TUNNEL_CONFIG, Tunnel };
export { TunnelFrame, ResetCode, RESET_CLOSE_CODES, TUNNEL_LIMITS, tunnelFrames } from "./tunnel_frames.js";
