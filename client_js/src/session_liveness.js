// ---------------------------------------------------------------------------
// 2d. Hop session timers and transport probes
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { concatBytes } from "./msgpack.js";
import { LocalProtocolError, RemoteProtocolError, CloseCode, MAX_PROBES, FrameType, sessionFrames, eachSessionFrame } from "./session_frames.js";
import { S_CLOSING, S_CLOSED } from "./session_config.js";
import { SessionCore } from "./session_core.js";

/**
 * The session a browser runs: the core plus its timers (heartbeat, retransmit,
 * stall watch, resume grace, close timeout) and the probes of candidate
 * transports (reference: gateway/core/session/liveness.py, probes.py).
 */
class LiveSession extends SessionCore {
  // -- timers -----------------------------------------------------------------

  /** When handleTimer must be called next (null: no timer running). */
  nextDeadline() {
    if (this._state === S_CLOSED) return null;
    const c = this.config;
    const deadlines = [];
    if (this._state === S_CLOSING) deadlines.push(this._closeDeadline);
    if (!this._attached) {
      deadlines.push(this._detachedSince + c.resumeGrace);
      return Math.min(...deadlines);
    }
    if (!this._pingDue) deadlines.push(this._lastSentAt + c.heartbeatInterval);
    if (this._dataOutstanding) deadlines.push(this._retxSince + c.retransmitTimeout);
    if (!this._stallReported && this._watching) deadlines.push(this._watchSince + c.stallTimeout);
    return deadlines.length ? Math.min(...deadlines) : null;
  }

  get _watching() {
    const pingInFlight = this._pingNonce !== null && !this._pingDue;
    return pingInFlight || this._dataOutstanding;
  }

  /** Run every timer due at `now`; cheap to call early. */
  handleTimer(now) {
    if (this._state === S_CLOSED) return;
    const c = this.config;
    if (!this._attached && now >= this._detachedSince + c.resumeGrace) {
      this._terminate(CloseCode.SESSION_EXPIRED, d`expired: no transport for ${c.resumeGrace} s`, false, true);
      return;
    }
    if (this._state === S_CLOSING && now >= this._closeDeadline) {
      const { code, reason } = this._closeInfo;
      this._terminate(CloseCode.CLOSE_TIMEOUT, d`close handshake timed out (${code} ${reason})`, false, false);
      return;
    }
    if (!this._attached) return;
    if (this._dataOutstanding && now >= this._retxSince + c.retransmitTimeout) {
      // Nothing acked for a while: a batch was lost inside the transport.
      this._nextSend = this._acked + 1;
      this._helloDue = true;
      this._retxSince = now;
    }
    if (!this._stallReported && this._watching && now >= this._watchSince + c.stallTimeout) {
      this._stallReported = true;
      this._emit({ type: "stalled", since: this._watchSince });
    }
    if (!this._pingDue && now >= this._lastSentAt + c.heartbeatInterval) {
      this._pingNonce = ++this._nonce;
      this._pingDue = true;
    }
  }

  // -- probing candidate transports --------------------------------------------

  /** HELLO+PING to write on a candidate transport: {nonce, batch}. */
  probeRequest(now) {
    if (this._state === S_CLOSED) throw new LocalProtocolError(d`cannot probe a CLOSED session`);
    const nonce = ++this._nonce;
    if (this._probes.size >= MAX_PROBES) this._probes.delete(this._probes.keys().next().value);
    this._probes.set(nonce, now);
    return { nonce, batch: concatBytes([this._encodeHello(), sessionFrames.ping(nonce)]) };
  }

  /** Check the reply to probeRequest: {nonce, rtt}, or null if it answers no live probe. */
  probeCheck(batch, now) {
    const { hello, nonces } = this._parseProbe(batch, FrameType.PONG);
    if (hello === null) throw new RemoteProtocolError(d`a probe reply needs a HELLO`);
    for (const nonce of nonces) {
      if (this._probes.has(nonce)) {
        const rtt = now - this._probes.get(nonce);
        this._probes.delete(nonce);
        return { nonce, rtt };
      }
    }
    return null;
  }

  _parseProbe(batch, kind) {
    let hello = null;
    const nonces = [];
    eachSessionFrame(batch, (frame) => {
      if (frame.type === FrameType.HELLO) {
        this._checkHello(frame);
        hello = frame;
      } else if (frame.type === kind) nonces.push(frame.nonce);
      else throw new RemoteProtocolError(d`unexpected frame type ${frame.type} in a probe`);
    });
    return { hello, nonces };
  }
}

export { LiveSession };
