// ---------------------------------------------------------------------------
// 4a. I/O: the gateway's HTTP requests (reference: gateway/transports/endpoint.py)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { concatBytes } from "./msgpack.js";
import { PROTOCOL_VERSION, FrameType, sessionFrames } from "./session_frames.js";

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
const TOKEN_HEADER = "X-Hopgate-Token";
const SESSION_HEADER = "X-Hopgate-Session";

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

/**
 * The gateway's HTTP side as HopLink uses it: the URLs, creating a session,
 * one long-poll request, the auth headers. HopLink's base class.
 */
class GatewayClient {
  url(tail, websocket = false) {
    const base = new URL(this.gateway.href);
    base.pathname = base.pathname.replace(/\/+$/, "") + SESSION_PATH;
    let href = base.href.replace(/[?#].*$/, "") + tail;
    if (websocket) href = href.replace(/^http/, "ws");
    return href;
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
}

export { SessionUnavailable, base64urlEncode, GatewayClient };
