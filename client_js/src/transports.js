// ---------------------------------------------------------------------------
// 4b. I/O: the two transports of a hop session, WebSocket and long-poll
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { CloseCode } from "./session_frames.js";

const SUBPROTOCOL = "hopgate.v1";
/** Don't queue more on the hop WebSocket while it holds this much unsent. */
const WS_HIGH_WATER = 1024 * 1024;
const WS_DRAIN_POLL_MS = 10;

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

export { WebSocketTransport, LongPollTransport };
