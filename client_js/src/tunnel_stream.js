// ---------------------------------------------------------------------------
// 3b. One tunnel stream: its half-stream states and what it has queued
// ---------------------------------------------------------------------------

import { DEBUG } from "./debug.js";
import { binHeader, encode, concatBytes, Deque } from "./msgpack.js";
import { FLAG_FIN, FLAG_TEXT } from "./session_frames.js";
import { TunnelFrame } from "./tunnel_frames.js";

// Half-stream states and inputs; TUNNEL_TRANSITIONS is the only place they change.
const HEAD = 0, BODY = 1, WS = 2, DONE = 3;
const STATE_NAMES = DEBUG && ["HEAD", "BODY", "WS", "DONE"];
const IN_HEAD_BODY = 0, IN_HEAD_EMPTY = 1, IN_ACCEPT = 2, IN_REFUSED = 3, IN_DATA = 4, IN_END = 5, IN_MESSAGE = 6, IN_CLOSE = 7;
const INPUT_NAMES = DEBUG && ["a head with a body", "a head without a body", "an accept", "a refusal", "DATA", "END", "a MESSAGE", "CLOSE"];
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
    this.prepaid = 0; // of those, bytes already credited back (fragments of a message, on arrival)
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

  /** The next `n` bytes of the first queued message, as a MESSAGE frame's [header, payload]. */
  takeChunk(n) {
    const item = this.queue.at(0);
    const payload = item.bytes.subarray(this.offset, this.offset + n);
    const last = this.offset + n === item.bytes.length;
    if (last) {
      this.queue.shift();
      this.offset = 0;
    } else this.offset += n;
    this.sendCredit -= n;
    this.queued -= n;
    const flags = (item.text ? FLAG_TEXT : 0) | (last ? FLAG_FIN : 0);
    return [concatBytes([this.prefix, Uint8Array.of(flags), binHeader(n)]), payload];
  }

  /** Has a chunk it may send now (an empty message needs no credit). */
  ready() {
    return this.queue.length > 0 && (this.sendCredit > 0 || this.queue.at(0).bytes.length === this.offset);
  }
}

export { DEFAULT_TUNNEL_CONFIG, STATE_NAMES, IN_HEAD_BODY, INPUT_NAMES, TUNNEL_TRANSITIONS, TunnelStream, WS, DONE, IN_HEAD_EMPTY, IN_ACCEPT, IN_REFUSED, IN_DATA, IN_END, IN_MESSAGE, IN_CLOSE };
