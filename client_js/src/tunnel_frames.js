// ---------------------------------------------------------------------------
// 3a. Tunnel frames: codes, the frame table, validation
//     (docs/tunnel.md; reference: gateway/core/tunnel/framing.py)
// ---------------------------------------------------------------------------

import { d } from "./debug.js";
import { MsgpackError, encode, decodeAll } from "./msgpack.js";
import { RemoteProtocolError, FLAG_FIN, FLAG_TEXT, isCloseCode, isReason, checkFrame } from "./session_frames.js";

/*
 * The shim is always the side that opened the hop session (odd stream ids)
 * and only ever opens WebSocket streams. A stream the gateway opens towards
 * us is refused with RESET REFUSED, as gateway/glue/driver.py does on a
 * downstream gateway. Everything received is still validated against the
 * full frame table, as hostile input.
 */

const TunnelFrame = Object.freeze({
  OPEN_HTTP: 1, OPEN_WS: 2, RESPONSE: 3, ACCEPT: 4, DATA: 5, END: 6, MESSAGE: 7, CLOSE: 8, WINDOW: 9, RESET: 10,
});

/** RESET codes (docs/tunnel.md "Reset codes"). */
const ResetCode = Object.freeze({
  CANCEL: 0, REFUSED: 1, CONNECT_FAILED: 2, TIMEOUT: 3, TOO_LARGE: 4, PROTOCOL: 5, INTERNAL: 6, SESSION_LOST: 7,
});
/** The WebSocket close code each RESET code stands for (unknown codes read as INTERNAL). */
const RESET_CLOSE_CODES = Object.freeze([1001, 1013, 1011, 1011, 1009, 1007, 1011, 1001]);

const BASE_WINDOW = 64 * 1024;
const MAX_WINDOW = 2 ** 31 - 1;
const MAX_STREAM_ID = 2n ** 62n;
const MIN_MESSAGE = 1024;
const MIN_SPLIT = 512;
const FLOW_CONTROL_ERROR = 1008;
const TUNNEL_LIMITS = Object.freeze({ maxBin: 1024 * 1024, maxStr: 1024, maxArray: 512, maxDepth: 2 });

const isSid = (v) =>
  (typeof v === "number" && Number.isSafeInteger(v) && v > 0) || (typeof v === "bigint" && v > 0n && v <= MAX_STREAM_ID);
const isWindow = (v) => Number.isInteger(v) && v >= 0 && v <= MAX_WINDOW;
const isIncrement = (v) => Number.isInteger(v) && v > 0 && v <= MAX_WINDOW;
const isBool = (v) => typeof v === "boolean";
const isBin = (v) => v instanceof Uint8Array;
const isMethod = (v) => typeof v === "string" && /^[\x00-\x7f]{1,32}$/.test(v);
const isHeaders = (v) => Array.isArray(v) && v.length % 2 === 0 && v.length <= 512 && v.every(isBin);
const isProtocol = (v) => typeof v === "string" && v.length > 0 && [...v].length <= 255;
const isProtocols = (v) => Array.isArray(v) && v.length <= 32 && v.every(isProtocol);
const isStatus = (v) => Number.isInteger(v) && v >= 100 && v <= 999;
const isFlags = (v) => Number.isInteger(v) && v >= 0 && v <= (FLAG_FIN | FLAG_TEXT);
const isResetCode = (v) => Number.isInteger(v) && v >= 0 && v <= 255;

const SID = ["stream id", isSid];
const HEADERS = ["headers", isHeaders];

/** Frame type -> [name, fields after the type]: the executable layout table. */
const TUNNEL_LAYOUTS = Object.freeze({
  [TunnelFrame.OPEN_HTTP]: ["OPEN_HTTP", [SID, ["window", isWindow], ["method", isMethod], ["target", isBin], HEADERS, ["has_body", isBool]]],
  [TunnelFrame.OPEN_WS]: ["OPEN_WS", [SID, ["window", isWindow], ["target", isBin], HEADERS, ["protocols", isProtocols]]],
  [TunnelFrame.RESPONSE]: ["RESPONSE", [SID, ["status", isStatus], ["reason", isBin], HEADERS, ["has_body", isBool]]],
  [TunnelFrame.ACCEPT]: ["ACCEPT", [SID, ["window", isWindow], ["protocol", (v) => v === null || isProtocol(v)], HEADERS]],
  [TunnelFrame.DATA]: ["DATA", [SID, ["payload", isBin]]],
  [TunnelFrame.END]: ["END", [SID]],
  [TunnelFrame.MESSAGE]: ["MESSAGE", [SID, ["flags", isFlags], ["payload", isBin]]],
  [TunnelFrame.CLOSE]: ["CLOSE", [SID, ["code", isCloseCode], ["reason", isReason]]],
  [TunnelFrame.WINDOW]: ["WINDOW", [SID, ["increment", isIncrement]]],
  [TunnelFrame.RESET]: ["RESET", [SID, ["code", isResetCode], ["reason", isReason]]],
});

function tunnelMalformed(what) {
  return new RemoteProtocolError(d`malformed tunnel frame: ${what}`);
}

/** Validate one decoded msgpack object against TUNNEL_LAYOUTS; returns it unchanged. */
function checkTunnelFrame(raw) {
  checkFrame(raw, TUNNEL_LAYOUTS, tunnelMalformed);
  return raw;
}

const tunnelFrames = Object.freeze({
  openWs: (sid, window, target, headers, protocols) => encode([TunnelFrame.OPEN_WS, sid, window, target, headers, protocols]),
  message: (sid, flags, payload) => encode([TunnelFrame.MESSAGE, sid, flags, payload]),
  close: (sid, code, reason) => encode([TunnelFrame.CLOSE, sid, code, reason]),
  window: (sid, increment) => encode([TunnelFrame.WINDOW, sid, increment]),
  reset: (sid, code, reason) => encode([TunnelFrame.RESET, sid, code, reason]),
  check: checkTunnelFrame,
  /** Every frame of a message, checked; RemoteProtocolError if any is bad. */
  decode(message) {
    try {
      return decodeAll(message, TUNNEL_LIMITS).map(checkTunnelFrame);
    } catch (err) {
      throw err instanceof MsgpackError ? tunnelMalformed(err.message) : err;
    }
  },
});

function parity(sid) {
  return typeof sid === "bigint" ? Number(sid & 1n) : sid % 2;
}

function pairs(flat) {
  const out = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
}

export { TunnelFrame, ResetCode, RESET_CLOSE_CODES, BASE_WINDOW, MAX_WINDOW, MIN_MESSAGE, MIN_SPLIT, FLOW_CONTROL_ERROR, TUNNEL_LIMITS, isProtocol, isResetCode, tunnelMalformed, checkTunnelFrame, tunnelFrames, parity, pairs };
