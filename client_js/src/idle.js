// ---------------------------------------------------------------------------
// Learning a path's idle timeout from the WebSockets it kills
// ---------------------------------------------------------------------------

import { d } from "./debug.js";

/*
 * The rule of gateway/core/idle.py, ported: a WebSocket that dies by itself
 * (not our close, not a demotion) after `idle` seconds without a byte either
 * way, twice after about the same silence (within 20 % or 1.5 s), shows the
 * path's idle limit. The heartbeat becomes half of it, never below 2 s, and
 * never rises again. A silence under 2 s says nothing (a cut while traffic
 * flows) and is not counted. Pure: no clock, no I/O; seconds.
 *
 * The lesson is kept per gateway for the page's life (`learnerFor`), so the
 * next HopSocket to the same gateway starts from it.
 */

const IDLE_FLOOR = 2; // seconds: the lowest heartbeat learned
const IDLE_RATIO = 0.5; // the heartbeat as a fraction of the limit
const IDLE_TOLERANCE = 0.2; // "about the same": within this fraction of the larger...
const IDLE_SLACK = 1.5; // ...or within this many seconds

class IdleLearner {
  constructor(start) {
    if (!(start > 0)) throw new RangeError(d`the start heartbeat must be > 0`);
    this.heartbeat = start; // seconds of silence before a PING, now
    this.learned = null; // the idle limit learned, seconds
    this._last = null;
  }

  /** A WebSocket died by itself after `idle` s of silence: {limit, heartbeat} when it taught one, else null. */
  websocketDied(idle) {
    if (!(idle > IDLE_FLOOR)) return null;
    const last = this._last;
    this._last = idle;
    if (last === null || Math.abs(last - idle) > Math.max(IDLE_SLACK, IDLE_TOLERANCE * Math.max(last, idle))) return null;
    const limit = Math.min(last, idle);
    const heartbeat = Math.max(IDLE_FLOOR, Math.round(IDLE_RATIO * limit * 10) / 10);
    if (heartbeat >= this.heartbeat) return null;
    this._last = null;
    this.heartbeat = heartbeat;
    this.learned = limit;
    return { limit, heartbeat };
  }
}

const LEARNERS = new Map(); // "gateway href start": IdleLearner, for the page's life

/** The learner of one gateway (and start value), shared by every HopSocket of the page. */
function learnerFor(gateway, start) {
  const key = `${gateway} ${start}`;
  let learner = LEARNERS.get(key);
  if (learner === undefined) {
    if (LEARNERS.size >= 64) LEARNERS.delete(LEARNERS.keys().next().value); // bounded, oldest first
    learner = new IdleLearner(start);
    LEARNERS.set(key, learner);
  }
  return learner;
}

export { IdleLearner, learnerFor };
