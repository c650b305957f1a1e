// ---------------------------------------------------------------------------
// 2. The hop session (docs/protocol.md; reference: gateway/core/session/)
//    split into session_frames.js, session_config.js, session_core.js,
//    session_liveness.js; this module adds the gateway's side and gathers
//    the names the tests use.
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { concatBytes } from "./msgpack.js";
import { LocalProtocolError, RemoteProtocolError, FrameType, sessionFrames, isUint, constantTimeEqual } from "./session_frames.js";
import { S_CLOSED } from "./session_config.js";
import { LiveSession } from "./session_liveness.js";

/**
 * A hop session with the gateway's side as well: answering probes, rewinding
 * for a long-poll GET, checking a token presented out of band. The browser
 * builds never import this module (the shim runs LiveSession); the tests and
 * the in-memory gateway of test/ do.
 */
class Session extends LiveSession {
  /** Constant-time check of a token presented out of band. */
  verifyToken(token) {
    return constantTimeEqual(token, this._token);
  }

  /** Resend from peerReceived + 1 (default: from the last ack). */
  rewind(now, peerReceived = null) {
    if (this._state === S_CLOSED) return;
    if (peerReceived !== null) {
      if (!isUint(peerReceived)) throw new LocalProtocolError(d`peerReceived must be a non-negative integer`);
      try {
        this._ack(peerReceived, now);
      } catch (err) {
        if (err instanceof RemoteProtocolError) this._terminate(err.code, err.reason, false, true);
        throw err;
      }
    }
    this._nextSend = this._acked + 1;
  }

  /** Answer a probe (server side) with HELLO+PONG; a bad probe throws and leaves the session as it was. */
  probeReply(batch, now) {
    if (this._state === S_CLOSED) throw new LocalProtocolError(d`cannot answer a probe on a CLOSED session`);
    const { hello, nonces } = this._parseProbe(batch, FrameType.PING);
    if (hello === null || !nonces.length) throw new RemoteProtocolError(d`a probe needs a HELLO and a PING`);
    return concatBytes([this._encodeHello(), ...nonces.map((n) => sessionFrames.pong(n))]);
  }
}

export { Session };

export { LocalProtocolError, BufferFull, RemoteProtocolError, CloseCode, PROTOCOL_VERSION, MAX_REASON_BYTES, DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, FrameType, sessionFrames, isCloseCode, isReason, clipReason } from "./session_frames.js";
export { DEFAULT_SESSION_CONFIG, SessionState } from "./session_config.js";
export { LiveSession } from "./session_liveness.js";
