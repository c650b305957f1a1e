// ---------------------------------------------------------------------------
// 2b. Hop session limits, timers and states (reference: gateway/core/session/config.py)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { MAX_FRAGMENT_SIZE, DATA_OVERHEAD } from "./session_frames.js";

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

export { DEFAULT_SESSION_CONFIG, SessionState, sessionConfig, SESSION_TRANSITIONS, S_OPEN, S_CLOSING, S_CLOSED };
