// A hopgate gateway in memory, behind a fake `fetch`: the long-poll wire
// format of gateway/transports/endpoint.py, a server-side Session core, and a
// tunnel answerer that accepts WebSocket streams and echoes every message
// (the endpoint). Failures are injected on command. No sockets.
import { encode } from "../src/msgpack.js";
import { Session, RemoteProtocolError, sessionFrames } from "../src/session.js";
import { tunnelFrames } from "../src/tunnel.js";

const now = () => performance.now() / 1000;
const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const octets = (body, status = 200, headers = {}) =>
  new Response(body, { status, headers: { "Content-Type": "application/octet-stream", "Cache-Control": "no-store", ...headers } });

class FakeSession {
  constructor(id, token, gateway) {
    this.id = id;
    this.token = token;
    this.gateway = gateway;
    this.core = new Session({ sessionId: id, token, isClient: false, now: now() });
    this.epoch = 0;
    this.waiters = new Set();
    this.streams = new Map();
    this.closed = null;
    this.goAway = null; // [8, last_stream_id, reason] once this session was told to go away
  }

  /** Say GOAWAY (docs/protocol.md §6a): streams above the highest opened so far are refused from now on. */
  sayGoAway(reason = "instance draining") {
    const last = Math.max(0, ...this.streams.keys());
    this.goAway = [8, last, reason];
    this.wake();
  }

  /** The GOAWAY goes once on each transport (here: each epoch), after the HELLO. */
  goAwayDue() {
    return this.goAway !== null && this.goAwaySentOn !== this.epoch;
  }

  withGoAway(batch) {
    if (!this.goAwayDue()) return batch;
    this.goAwaySentOn = this.epoch;
    return new Uint8Array([...batch, ...encode(this.goAway)]);
  }

  wake() {
    for (const wake of this.waiters) wake();
    this.waiters.clear();
  }

  changed(signal, ms) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(done, ms);
      const onAbort = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        reject(new DOMException("aborted", "AbortError"));
      };
      function done() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }
      this.waiters.add(done);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Attach on a newer epoch; false for a stale request. */
  epochOf(epoch) {
    if (epoch > this.epoch) {
      this.epoch = epoch;
      this.core.transportAttached(now());
      return true;
    }
    return epoch === this.epoch;
  }

  feed(batch) {
    let ok = true;
    try {
      this.core.receiveData(batch, now());
    } catch (err) {
      if (!(err instanceof RemoteProtocolError)) throw err;
      ok = false;
    }
    for (const event of this.core.eventsReceived()) {
      if (event.type === "message") this.onTunnelMessage(event.data);
      if (event.type === "closed") this.closed = event;
    }
    this.flushStreams();
    this.wake();
    return ok;
  }

  onTunnelMessage(message) {
    for (const frame of tunnelFrames.decode(message)) {
      const [type, sid] = frame;
      this.gateway.frames.push(frame);
      if (type === 2 && this.goAway !== null && sid > this.goAway[1]) {
        this.send([[10, sid, 1, "going away"]]); // not processed: the client may open it again elsewhere
      } else if (type === 2) {
        const protocol = this.gateway.chooseProtocol(frame[5]);
        this.streams.set(sid, { credit: frame[2], parts: [], out: [], closed: false });
        this.send([[4, sid, 256 * 1024, protocol, []]]);
      } else if (type === 7) this.onMessage(sid, frame[2], frame[3]);
      else if (type === 8) {
        const stream = this.streams.get(sid);
        if (stream && !stream.closed) this.closeStream(sid, frame[2], frame[3]);
      } else if (type === 9) {
        const stream = this.streams.get(sid);
        if (stream) stream.credit += frame[2];
      }
    }
  }

  onMessage(sid, flags, payload) {
    const stream = this.streams.get(sid);
    stream.parts.push(payload.slice());
    this.send([[9, sid, payload.length]].filter(() => payload.length > 0)); // give the credit back at once
    if (!(flags & 1)) return;
    const whole = Buffer.concat(stream.parts);
    stream.parts = [];
    this.gateway.messages.push(flags & 2 ? whole.toString("utf8") : new Uint8Array(whole));
    if (this.gateway.echo) stream.out.push({ bytes: new Uint8Array(whole), text: Boolean(flags & 2) });
  }

  /** The endpoint sends `data` (string: text). */
  endpointSend(sid, data) {
    const text = typeof data === "string";
    this.streams.get(sid).out.push({ bytes: text ? new TextEncoder().encode(data) : data, text });
    this.flushStreams();
    this.wake();
  }

  closeStream(sid, code, reason) {
    const stream = this.streams.get(sid);
    stream.closed = true;
    stream.out.push({ close: [8, sid, code, reason] });
    this.flushStreams();
    this.wake();
  }

  /** Echo queued messages as far as the client's credit goes, 16 KiB chunks. */
  flushStreams() {
    const frames = [];
    for (const [sid, stream] of this.streams) {
      while (stream.out.length) {
        const item = stream.out[0];
        if (item.close) {
          frames.push(item.close);
          stream.out.shift();
          continue;
        }
        const offset = item.offset ?? 0;
        const n = Math.min(16384, item.bytes.length - offset, stream.credit);
        if (n <= 0 && item.bytes.length > offset) break;
        const last = offset + n === item.bytes.length;
        frames.push([7, sid, (item.text ? 2 : 0) | (last ? 1 : 0), item.bytes.subarray(offset, offset + n)]);
        stream.credit -= n;
        item.offset = offset + n;
        if (last) stream.out.shift();
      }
    }
    this.send(frames);
  }

  send(frames) {
    if (!frames.length || this.core.state !== "open") return;
    this.core.sendMessage(new Uint8Array(frames.flatMap((f) => [...encode(f)])));
  }
}

export class FakeGateway {
  constructor({ holdMs = 200, echo = true } = {}) {
    this.holdMs = holdMs;
    this.echo = echo;
    this.sessions = new Map();
    this.frames = []; // every tunnel frame the client sent
    this.messages = []; // every whole WebSocket message the client sent
    this.requests = [];
    this.refuseCreate = null; // status to answer session creation with
    this.goAwayOnCreate = 0; // the next this many sessions say GOAWAY before any stream (a draining instance)
    this.retryAfter = null; // with refuseCreate: its Retry-After
    this.loseGetResponses = 0; // GETs whose answer (with data taken) never arrives
    this.failPosts = 0; // POSTs that fail before reaching the gateway
    this.losePostResponses = 0; // POSTs that arrive but whose answer is lost
    this.chooseProtocol = (offered) => offered[0] ?? null;
    this.fetch = (url, init) => this.handle(new URL(url), init ?? {});
  }

  get session() {
    return [...this.sessions.values()].at(-1);
  }

  /** Forget every session (like a gateway restart without a store). */
  forget() {
    for (const s of this.sessions.values()) s.wake();
    this.sessions.clear();
  }

  async handle(url, init) {
    const method = init.method ?? "GET";
    this.requests.push(`${method} ${url.pathname}${url.search}`);
    await Promise.resolve(); // a network hop: never answer synchronously
    if (url.pathname === "/.hopgate/session") return this.create();
    const id = url.pathname.split("/").at(-1);
    const s = this.sessions.get(id);
    if (s === undefined || s.closed) return new Response("no such hop session\n", { status: 404 });
    const token = new Headers(init.headers).get("X-Hopgate-Token");
    if (token !== b64url(s.token)) return new Response("wrong resume token\n", { status: 403 });
    const epoch = Number(url.searchParams.get("epoch"));
    if (method === "POST") return this.post(s, epoch, init);
    return this.get(s, epoch, Number(url.searchParams.get("last")), init.signal);
  }

  create() {
    if (this.refuseCreate) {
      const headers = this.retryAfter === null ? {} : { "Retry-After": String(this.retryAfter) };
      if (this.refuseCreateTimes !== undefined && --this.refuseCreateTimes <= 0) this.refuseCreate = null;
      return new Response("full\n", { status: this.refuseCreate ?? 503, headers });
    }
    const id = `fake${this.sessions.size + 1}-${Math.random().toString(36).slice(2)}`;
    const token = crypto.getRandomValues(new Uint8Array(32));
    const s = new FakeSession(id, token, this);
    this.sessions.set(id, s);
    if (this.goAwayOnCreate > 0) {
      s.goAway = [8, 0, "instance draining"];
      this.goAwayOnCreate -= 1;
    }
    return octets(sessionFrames.hello(1, id, 0, null), 200, { "X-Hopgate-Session": id, "X-Hopgate-Token": b64url(token) });
  }

  async get(s, epoch, last, signal) {
    if (!s.epochOf(epoch)) return octets(new Uint8Array(0));
    try {
      s.core.rewind(now(), last);
    } catch {
      return octets(s.core.dataToSend(now()), 400);
    }
    const deadline = Date.now() + this.holdMs;
    while (!s.core.hasPayloadToSend && !s.goAwayDue() && !s.closed && Date.now() < deadline && this.sessions.has(s.id)) {
      await s.changed(signal, deadline - Date.now());
    }
    if (!this.sessions.has(s.id)) return new Response("gone\n", { status: 404 });
    const body = s.withGoAway(s.core.dataToSend(now()));
    if (this.loseGetResponses > 0 && body.length) {
      this.loseGetResponses -= 1;
      throw new TypeError("fake network: GET response lost");
    }
    return octets(body);
  }

  async post(s, epoch, init) {
    if (this.failPosts > 0) {
      this.failPosts -= 1;
      throw new TypeError("fake network: POST failed");
    }
    const body = new Uint8Array(init.body);
    const current = s.epochOf(epoch);
    const ok = s.feed(body);
    const reply = current ? s.core.dataToSend(now(), null, { includeData: false }) : new Uint8Array(0);
    if (this.losePostResponses > 0) {
      this.losePostResponses -= 1;
      throw new TypeError("fake network: POST response lost");
    }
    return octets(reply, ok ? 200 : 400);
  }
}
