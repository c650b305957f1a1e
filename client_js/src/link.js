// ---------------------------------------------------------------------------
// 4. I/O: the hop link (session transports)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { concatBytes } from "./msgpack.js";
import { learnerFor } from "./idle.js";
import { RemoteProtocolError, CloseCode, PROTOCOL_VERSION, FrameType, sessionFrames, SessionState, clipReason, Session } from "./session.js";

/*
 * Wire format (gateway/transports/endpoint.py):
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
  if (declared > limit) throw new Error(d`body of ${declared} bytes exceeds ${limit}`);
  if (!response.body || typeof response.body.getReader !== "function") {
    const whole = new Uint8Array(await response.arrayBuffer());
    if (whole.length > limit) throw new Error(d`body exceeds ${limit} bytes`);
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
      throw new Error(d`body exceeds ${limit} bytes`);
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
        // A browser cannot set headers on a WebSocket: a token goes in the query, as SignalR's does.
        const auth = link.wsToken === null ? "" : `&access_token=${encodeURIComponent(link.wsToken)}`;
        ws = this.ws = new link.WebSocket(link.url(`/${encodeURIComponent(link.sessionId)}?epoch=${this.epoch}${auth}`, true), [SUBPROTOCOL]);
      } catch (err) {
        reject(err);
        return;
      }
      ws.binaryType = "arraybuffer";
      arm(link.options.connectTimeout, d`WebSocket handshake timed out`);
      ws.onopen = () => {
        if (ws.protocol !== SUBPROTOCOL) return fail(d`the 101 did not select ${SUBPROTOCOL}`);
        let probe;
        try {
          probe = link.core.probeRequest(link.now());
        } catch (err) {
          return fail(d`cannot probe: ${err.message}`);
        }
        nonce = probe.nonce;
        ws.send(probe.batch);
        arm(link.options.probeTimeout, d`no answer to the probe (a proxy may be holding WebSocket frames)`);
        return undefined;
      };
      ws.onmessage = (event) => {
        if (nonce === null || !(event.data instanceof ArrayBuffer)) return fail(d`the gateway did not answer the probe with a HELLO`);
        let answered;
        try {
          answered = link.core.probeCheck(new Uint8Array(event.data), link.now());
        } catch (err) {
          return fail(d`bad probe reply: ${err.message}`);
        }
        if (answered === null || answered.nonce !== nonce) return fail(d`the probe reply answered no probe of ours`);
        clearTimeout(timer);
        ws.onmessage = (e) => this._received(e);
        ws.onclose = (e) => {
          link.websocketDied(this);
          link.transportFailed(this, d`WebSocket closed (${e.code})`);
        };
        ws.onerror = null; // a close always follows
        resolve();
        return undefined;
      };
      ws.onerror = () => fail(d`WebSocket connection failed`);
      ws.onclose = (e) => fail(d`WebSocket closed during the handshake (${e.code})`);
    });
  }

  _received(event) {
    if (!(event.data instanceof ArrayBuffer)) {
      this.link.abandon(CloseCode.PROTOCOL_ERROR, d`text message on a hop WebSocket`);
      return;
    }
    if (event.data.byteLength > this.link.options.maxBatchBytes) {
      this.link.abandon(CloseCode.MESSAGE_TOO_BIG, d`hop WebSocket message over maxBatchBytes`);
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
      link.transportFailed(this, d`poll failed: ${err.message || err}`);
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
      link.transportFailed(this, d`post failed: ${err.message || err}`);
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

  url(tail, websocket = false) {
    const base = new URL(this.gateway.href);
    base.pathname = base.pathname.replace(/\/+$/, "") + SESSION_PATH;
    let href = base.href.replace(/[?#].*$/, "") + tail;
    if (websocket) href = href.replace(/^http/, "ws");
    return href;
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
    this.core = new Session({ sessionId, token, isClient: true, now: this.now(), config: session });
    this.log(d`= session ${sessionId.slice(0, 6)} opened`);
    this._rearm();
    try {
      await this._connectAny(true);
    } catch (err) {
      this.abandon(CloseCode.GOING_AWAY, d`no transport`);
      throw new SessionUnavailable(d`no transport reaches the gateway: ${err.message}`);
    }
  }

  async _create() {
    let status, body, headers;
    try {
      const res = await this._fetchWithin(this.url(""), { method: "POST", headers: await this._authHeaders() }, this.options.connectTimeout);
      status = res.status;
      headers = res.headers;
      body = await readLimited(res, 4096);
    } catch (err) {
      const page = globalThis.location?.origin;
      if (page && page !== "null" && page !== this.gateway.origin) {
        // A refusal without CORS headers is opaque: fetch fails as if the gateway were down.
        // Kept short, the fix first: a close reason holds 123 bytes.
        // Full text in every build: the issue asks that the reason names the fix.
        throw new SessionUnavailable(`gateway refused this page's origin or is unreachable; `
          + `start it with --allowed-origin ${page}`);
      }
      throw new SessionUnavailable(d`cannot reach the gateway at ${this.gateway.origin}: ${err.message || err}`);
    }
    if (status !== 200) {
      const text = new TextDecoder().decode(body).trim().slice(0, 200);
      const err = new SessionUnavailable(d`the gateway refused a hop session (${status}): ${text}`);
      if (status === 503) err.retryAfter = Math.min(Number(headers.get("Retry-After")) || 1, 2) * 1000;
      throw err;
    }
    const sessionId = headers.get(SESSION_HEADER);
    const token = base64urlDecode(headers.get(TOKEN_HEADER));
    if (!sessionId || token === null) {
      throw new SessionUnavailable(d`not a hopgate gateway: no session headers (a cross-origin gateway needs CORS)`);
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
    if (!valid) throw new SessionUnavailable(d`not a hopgate gateway: the answer is not a session HELLO`);
    return { sessionId, token };
  }

  async _fetchWithin(url, init, timeoutMs, signal = null) {
    const controller = new AbortController();
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort);
    const timer = setTimeout(abort, timeoutMs);
    try {
      return await this.fetch(url, { cache: "no-store", credentials: this._credentials, redirect: "error", ...init, signal: controller.signal });
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
      const headers = { ...(await this._authHeaders()), [TOKEN_HEADER]: this._tokenText };
      if (body !== null) headers["Content-Type"] = "application/octet-stream";
      const res = await this.fetch(this.url(`/${encodeURIComponent(this.sessionId)}${query}`), {
        method, headers, body, cache: "no-store", credentials: this._credentials, redirect: "error", signal: controller.signal, keepalive,
      });
      return { status: res.status, body: await readLimited(res, this.options.maxBatchBytes) };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
  }

  get _credentials() {
    return this.options.withCredentials ? "include" : "same-origin";
  }

  /** options.sessionHeaders, and options.auth as a bearer token (asked again for each request: it may be refreshed). */
  async _authHeaders() {
    const headers = { ...this.options.sessionHeaders };
    const token = await this._bearer();
    if (token !== null) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async _bearer() {
    const auth = this.options.auth;
    const token = typeof auth === "function" ? await auth() : auth;
    return token ? String(token) : null;
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

export { DEFAULT_LINK_OPTIONS, SessionUnavailable, HopLink };
