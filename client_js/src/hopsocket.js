// ---------------------------------------------------------------------------
// 5. HopSocket: the WebSocket-shaped object the page sees
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { utf8Encoder, utf8Length, Deque } from "./msgpack.js";
import { RemoteProtocolError, CloseCode, MAX_REASON_BYTES, clipReason } from "./session_frames.js";
import { ResetCode, RESET_CLOSE_CODES, Tunnel } from "./tunnel.js";
import { HopLink } from "./link.js";
import { domError, messageEvent, extraEvent, closeEvent, endpointUrl, subprotocolList, gatewayUrl } from "./websocket_api.js";

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
const READY_STATES = { CONNECTING, OPEN, CLOSING, CLOSED };
/** New sessions a GOAWAY may send one HopSocket to before it gives up (a gateway that keeps going away). */
const MAX_MOVES = 3;

/** Defaults of HopSocket options besides the transport ones (DEFAULT_LINK_OPTIONS). */
const DEFAULT_SOCKET_OPTIONS = Object.freeze({
  maxMessageSize: 16 * 1024 * 1024, // largest message each way; the gateway has its own limit
  maxBufferedAmount: 64 * 1024 * 1024, // a page that queues more than this fails the socket
  closeTimeout: 10000, // our close() gets the endpoint's answer within this, or closes 1006
  headers: [], // extra handshake headers for the endpoint, e.g. [["Authorization", "..."]]
});

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
   * @param {number} [options.heartbeat]  ms of silence before a hop PING at first, default 20000
   *   (lowered when the path is seen to close idle WebSockets sooner)
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
    this._gateway = gatewayUrl(this._options.gateway, endpoint);
    this._target = `${endpoint.pathname}${endpoint.search}`;
    this._host = endpoint.host;
    this._goAway = null; // the reason of a GOAWAY that let our stream finish on its session
    this._moves = 0; // sessions opened again because of a GOAWAY
    this._unwatchPageHide = () => {};
    this._watchPageHide();
    this._connect(null);
  }

  /** A new hop session (and tunnel) for the stream; `why` is the reason of its first `transport` event. */
  _connect(why) {
    this._sid = null;
    this._tunnel = new Tunnel({ maxWsMessage: this._options.maxMessageSize });
    const link = new HopLink(this._gateway, this._options, {
      onMessage: (message) => link === this._link && this._onSessionMessage(message),
      onWritable: () => link === this._link && this._schedulePump(),
      onClosed: (code, reason) => link === this._link && this._onSessionClosed(code, reason),
      onGoAway: (lastStreamId, reason) => link === this._link && this._onGoAway(lastStreamId, reason),
      onTransport: (transport, previous, reason, detail) => link === this._link
        && this._extra("transport", { transport, previous, reason: previous === "none" ? why ?? reason : reason, detail }),
      onReconnecting: (reason, detail) => link === this._link && this._extra("reconnecting", { reason, detail }),
      onResumed: (transport, downtime) => link === this._link && this._extra("resumed", { transport, downtime }),
    });
    this._link = link;
    this._start(link);
  }

  /**
   * Can HopSocket work here? The platform features it needs (fetch with
   * AbortController, TextEncoder/TextDecoder, BigInt in DataView, EventTarget).
   */
  static get supported() {
    const g = globalThis;
    return typeof g.fetch === "function" && typeof g.AbortController === "function" && typeof g.TextEncoder === "function"
      && typeof g.TextDecoder === "function" && typeof g.EventTarget === "function" && typeof g.queueMicrotask === "function"
      && typeof g.DataView?.prototype.getBigUint64 === "function";
  }

  get url() { return this._url; }
  get readyState() { return this._readyState; }
  get protocol() { return this._protocol; }
  get extensions() { return ""; }
  /** "websocket", "long-poll" or "none": what carries the hop session now (not in WebSocket). */
  get transport() { return this._link.transport; }
  /** Milliseconds of silence before the hop session's PING: the heartbeat option, or what the path taught. */
  get heartbeat() { return Math.round(this._link.idle.heartbeat * 1000); }
  /** The idle limit (ms) this page saw the path close WebSockets at, or null (not in WebSocket). */
  get heartbeatLearned() {
    const learned = this._link.idle.learned;
    return learned === null ? null : Math.round(learned * 1000);
  }

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
    if (this._readyState === CONNECTING) throw domError(d`Still in CONNECTING state.`, "InvalidStateError");
    const item = this._outgoing(data);
    if (this._readyState !== OPEN || this._closeRequest !== null) {
      this._discarded += item.size;
      return;
    }
    if (item.size > this._options.maxMessageSize || this.bufferedAmount + item.size > this._options.maxBufferedAmount) {
      this._abort(1009, d`message too big or too much buffered (${item.size} bytes)`);
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
        throw domError(d`The code must be either 1000, or between 3000 and 4999. ${code} is neither.`, "InvalidAccessError");
      }
    }
    reason = reason === undefined ? "" : String(reason);
    if (utf8Length(reason) > MAX_REASON_BYTES) throw domError(d`The close reason must not be greater than 123 UTF-8 bytes.`, "SyntaxError");
    if (this._readyState === CLOSING || this._readyState === CLOSED) return;
    if (this._readyState === CONNECTING) {
      this._readyState = CLOSING;
      setTimeout(() => this._fail(d`WebSocket is closed before the connection is established.`), 0);
      return;
    }
    this._readyState = CLOSING;
    this._closeRequest = { code: code ?? 1005, reason }; // 1005: "no code", as a browser's empty close frame
    this._closeTimer = setTimeout(() => this._closed(1006, d`the endpoint did not answer the close`, false, true), this._options.closeTimeout);
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
    const onPageHide = () => this._link.abandon(CloseCode.GOING_AWAY, d`page unloaded`);
    page.addEventListener("pagehide", onPageHide);
    this._unwatchPageHide = () => page.removeEventListener("pagehide", onPageHide);
  }

  async _start(link) {
    try {
      await link.open();
    } catch (err) {
      if (link === this._link) this._fail(err.message);
      return;
    }
    if (link !== this._link) return; // moved on (a GOAWAY) while it opened
    if (this._readyState !== CONNECTING) {
      this._link.close(CloseCode.NORMAL, d`closed before the connection was established`);
      return;
    }
    const headers = [["Host", this._host]];
    if (globalThis.location?.origin && globalThis.location.origin !== "null") headers.push(["Origin", globalThis.location.origin]);
    headers.push(...this._options.headers);
    try {
      this._sid = this._tunnel.openWebSocket(this._target, headers, this._offered);
    } catch (err) {
      this._fail(d`cannot open the stream: ${err.message}`);
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
        () => this._abort(1011, d`could not read a Blob to send`),
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
      case "refused": return this._fail(d`the endpoint refused the WebSocket (${event.status})`);
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
      this._tunnel.reset(event.sid, ResetCode.PROTOCOL, d`subprotocol not offered`);
      this._fail(d`the endpoint chose the subprotocol '${protocol}', which was not offered`);
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
    // An OPEN that crossed the gateway's GOAWAY was not processed: open it again on a new session.
    if (this._readyState === CONNECTING && event.remote && event.retrySafe && this._moveSession()) return;
    if (this._readyState === CONNECTING || this._readyState === CLOSED) {
      this._fail(d`the gateway could not open the WebSocket: ${event.reason}`);
      return;
    }
    const code = event.code === ResetCode.SESSION_LOST ? 1006 : RESET_CLOSE_CODES[event.code] ?? 1011;
    this._closed(code, event.reason, false, true);
  }

  /**
   * The gateway is going away (docs/protocol.md §6a). A stream it got
   * (id <= lastStreamId) finishes on this session; one it did not, or not
   * yet opened, moves to a new session (through the load balancer,
   * usually another instance).
   */
  _onGoAway(lastStreamId, reason) {
    const sid = this._sid;
    if (this._readyState === CONNECTING && (sid === null || !this._tunnel.openSent(sid) || sid > lastStreamId)) {
      if (this._moveSession()) return;
    }
    this._goAway = reason;
  }

  /** Leave this session (closed normally once its frames are out) for a new one; false past MAX_MOVES. */
  _moveSession() {
    if (this._moves >= MAX_MOVES) return false;
    this._moves += 1;
    const old = this._link;
    if (this._sid !== null) this._tunnel.reset(this._sid, ResetCode.CANCEL, d`moved to another session`);
    for (let message; (message = this._tunnel.nextMessage()) !== null && old.writable;) old.send(message);
    old.close(CloseCode.NORMAL, d`going away: moved to another session`);
    this._connect("goaway");
    return true;
  }

  _onSessionClosed(code, reason) {
    this._unwatchPageHide();
    if (this._readyState === OPEN && this._goAway !== null) {
      // The gateway said GOAWAY and has now ended the session (its grace is over): like a server going away.
      this._closed(CloseCode.GOING_AWAY, d`the gateway went away (${this._goAway}; ${code} ${reason})`, false, true);
    }
    if (!this._tunnel.closed) {
      this._tunnel.closeAll(d`hop session closed (${code} ${reason})`);
      for (const event of this._tunnel.eventsReceived()) this._onTunnelEvent(event);
    }
    if (this._readyState !== CLOSED) this._fail(d`hop session closed (${code} ${reason})`);
  }

  /** The events beyond the WebSocket API; none once the page saw `close`. */
  _extra(type, fields) {
    if (this._readyState !== CLOSED) this.dispatchEvent(extraEvent(type, fields));
  }

  // -- the end ------------------------------------------------------------------------

  /** Fail the connection (WebSocket spec): error, then close 1006. */
  _fail(reason) {
    if (this._sid !== null) this._tunnel.reset(this._sid, ResetCode.CANCEL, d`closed by the page`);
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

export { DEFAULT_SOCKET_OPTIONS, HopSocket };
