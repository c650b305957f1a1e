// ---------------------------------------------------------------------------
// 4. I/O: the hop link (one session, its transports, moving between them);
//    the HTTP requests are in gateway_http.js, the transports in transports.js
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { learnerFor } from "./idle.js";
import { RemoteProtocolError, CloseCode, sessionFrames, clipReason } from "./session_frames.js";
import { SessionState } from "./session_config.js";
import { LiveSession } from "./session_liveness.js";
import { SessionUnavailable, base64urlEncode, GatewayClient } from "./gateway_http.js";
import { WebSocketTransport, LongPollTransport } from "./transports.js";

/** Session creation attempts when the gateway answers 503 (draining, full), Retry-After apart (at most 2 s). */
const CREATE_ATTEMPTS = 3;

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
  heartbeat: 20000, // a PING after this much silence at first; lowered if the path kills idle WebSockets sooner
  auth: null, // a bearer token (or a function giving one, maybe async) for the gateway's requests
  sessionHeaders: {}, // more headers for the gateway's HTTP requests (not the WebSocket: browsers cannot)
  withCredentials: false, // send cookies to a gateway on another origin (it needs --allow-credentials)
});

/*
 * Why the session moved to a transport: the reason tokens of
 * gateway/core/ladder.py (the hop's own), plus transport_lost for a
 * long-poll that failed. The `transport` event of HopSocket carries one.
 */
const OPENED = "session_opened", UPGRADE_FAILED = "upgrade_failed", PROBE_SUCCEEDED = "probe_succeeded";
const STALLED = "stalled", WEBSOCKET_CLOSED = "websocket_closed", TRANSPORT_LOST = "transport_lost";

function monotonicSeconds() {
  return performance.now() / 1000;
}

/**
 * One hop session to a gateway, kept alive over whatever transport works.
 * A reliable, ordered pipe of whole binary messages for the tunnel above.
 */
class HopLink extends GatewayClient {
  /**
   * @param {URL} gateway  base URL of the gateway (http: or https:)
   * @param {object} options  DEFAULT_LINK_OPTIONS overrides, plus `session`
   *   (Session config overrides, seconds), `fetch`, `WebSocket`, `log`
   * @param {{onMessage: Function, onWritable: Function, onClosed: Function}} handlers
   */
  constructor(gateway, options, handlers) {
    super();
    this.gateway = gateway;
    this.options = { ...DEFAULT_LINK_OPTIONS, ...options };
    // The heartbeat option, else session.heartbeatInterval, starts the gateway's learner (idle.js).
    const sessionBeat = options.heartbeat === undefined ? options.session?.heartbeatInterval : undefined;
    this.idle = learnerFor(gateway.href, sessionBeat ?? this.options.heartbeat / 1000);
    this._lastActivity = 0; // when the last batch went either way (a path's idle clock)
    const kinds = this.options.transports;
    this.wsAllowed = kinds.includes("websocket");
    this.lpAllowed = kinds.includes("long-poll");
    this.fetch = this.options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    if (this.wsAllowed && typeof this.WebSocket !== "function") this.wsAllowed = false;
    if (!this.wsAllowed && !this.lpAllowed) throw new TypeError(d`no usable transport (transports: ['websocket', 'long-poll'])`);
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
    this.wsToken = null; // options.auth's token, for the next hop WebSocket's URL
    this._lastKind = "none"; // the transport attached last, for the `transport` event's `previous`
    this._problem = null; // {reason, detail}: the last thing that went wrong (the next move's reason)
    this._outage = null; // {since, reason, detail} from losing the current transport until the next attaches
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

  /** Open the session and attach its first transport; rejects with SessionUnavailable. */
  async open() {
    let created;
    for (let attempt = 1; ; attempt++) {
      try {
        created = await this._create();
        break;
      } catch (err) {
        // A draining instance answers 503 + Retry-After: the next try usually reaches another one.
        if (!(err.retryAfter >= 0) || attempt >= CREATE_ATTEMPTS) throw err;
        await new Promise((resolve) => setTimeout(resolve, err.retryAfter));
      }
    }
    const { sessionId, token } = created;
    this.sessionId = sessionId;
    this.token = token;
    this._tokenText = base64urlEncode(token);
    const session = { ...(this.options.session ?? {}), heartbeatInterval: this.idle.heartbeat };
    this.core = new LiveSession({ sessionId, token, isClient: true, now: this.now(), config: session });
    this.log(d`= session ${sessionId.slice(0, 6)} opened`);
    this._rearm();
    try {
      await this._connectAny(true);
    } catch (err) {
      this.abandon(CloseCode.GOING_AWAY, d`no transport`);
      throw new SessionUnavailable(d`no transport reaches the gateway: ${err.message}`);
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
    this._lastActivity = this.now();
    try {
      this.core.receiveData(batch, this.now());
    } catch (err) {
      if (!(err instanceof RemoteProtocolError)) throw err;
      this.log(d`< protocol error, closing the session: ${err.reason} (${err.code})`);
    }
    this.dispatch();
  }

  take() {
    const batch = this.core.dataToSend(this.now());
    if (batch.length) this._lastActivity = this.now();
    this._rearm();
    return batch;
  }

  /** The current WebSocket closed by itself (not ours): maybe the path's idle timeout. */
  websocketDied(transport) {
    if (transport !== this.current || this.finished) return;
    const lesson = this.idle.websocketDied(this.now() - this._lastActivity);
    if (lesson !== null) {
      this._reprobeDelay = this.options.reprobeInitial; // what killed it is understood now
      this.log(d`= the path closes idle WebSockets after ~${Math.round(lesson.limit)} s; heartbeat now ${lesson.heartbeat} s`);
    }
    // Another HopSocket to this gateway may have learned it first.
    if (this.idle.heartbeat < this.core.config.heartbeatInterval) this.core.setHeartbeat(this.idle.heartbeat);
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
        case "goaway":
          this.log(d`= the gateway is going away (${event.reason}): streams after ${event.lastStreamId} go to a new session`);
          this.handlers.onGoAway?.(event.lastStreamId, event.reason);
          break;
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
    this.log(d`= lost ${transport.kind}: ${reason}`);
    this.current = null;
    if (this.finished) return;
    if (this._outage === null) {
      this._outage = { since: this.now(), reason: transport.kind === "websocket" ? WEBSOCKET_CLOSED : TRANSPORT_LOST, detail: reason };
      this.handlers.onReconnecting?.(this._outage.reason, reason);
    }
    this.core.transportLost(this.now());
    if (transport.kind === "websocket") this._wsLost(this.now() - this._attachedAt);
    this.dispatch();
    this._scheduleReconnect();
  }

  /** A non-200 answer: the gateway forgot us, refused us, or broke. */
  refused(transport, status, body) {
    if (transport !== this.current) transport.abandon();
    else if (status === 404) this.abandon(CloseCode.SESSION_EXPIRED, d`expired: the gateway no longer knows this session`);
    else if (status === 403) this.abandon(CloseCode.AUTH_FAILED, d`the gateway refused our resume token`);
    else {
      if (status === 400 && body.length) this.feed(body); // an ABORT saying why
      this.transportFailed(transport, d`the gateway answered ${status}`);
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
        this.log(d`= WebSocket unusable: ${err.message}`);
        this._problem = { reason: UPGRADE_FAILED, detail: err.message };
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
      this.wsToken = await this._bearer();
      await transport.connect();
    } finally {
      this._probing = false;
    }
    if (transport.abandoned) throw new Error(d`the WebSocket closed right after its probe`);
    if (this.finished) {
      transport.abandon();
      return;
    }
    this._attach(transport);
    this.log(d`= WebSocket attached (epoch ${transport.epoch})`);
  }

  _startLongPoll() {
    const transport = new LongPollTransport(this, ++this._epoch);
    this._attach(transport);
    this.log(d`= long-poll attached (epoch ${transport.epoch})`);
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
    this._announce(transport);
  }

  /** Tell the page what carries the session now and why; after an outage, that it resumed. */
  _announce(transport) {
    const outage = this._outage;
    const previous = this._lastKind;
    let why = this._problem;
    if (previous === "none") why = transport.kind === "long-poll" && why !== null ? why : { reason: OPENED, detail: "" };
    else if (outage !== null) why = outage;
    else if (transport.kind === "websocket") why = { reason: PROBE_SUCCEEDED, detail: "" };
    why ??= { reason: STALLED, detail: "" }; // a long-poll replacing a live WebSocket: a demotion
    this._lastKind = transport.kind;
    this._problem = this._outage = null;
    this.handlers.onTransport?.(transport.kind, previous, why.reason, why.detail ?? "");
    if (outage !== null && !this.finished) this.handlers.onResumed?.(transport.kind, Math.round((this.now() - outage.since) * 1000));
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
    this.log(d`= ${transport.kind} stalled: no progress for ${this.core.config.stallTimeout} s`);
    if (transport.kind === "websocket" && this.lpAllowed) {
      this._problem = { reason: STALLED, detail: d`no progress for ${this.core.config.stallTimeout} s` };
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
      this.log(d`= WebSocket re-probe failed: ${err.message}`);
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
    this.log(d`= session closed (${code} ${reason})`);
    // The current transport flushes the last ACK/ABORT, then closes itself.
    if (this.current !== null) this.kick();
    this.handlers.onClosed(code, reason, byPeer);
  }
}

export { DEFAULT_LINK_OPTIONS, HopLink };
export { SessionUnavailable } from "./gateway_http.js";
