// ---------------------------------------------------------------------------
// 1. msgpack subset
// ---------------------------------------------------------------------------

import { d } from "./debug.js";

/** Bytes that are not a batch of whole, bounded msgpack objects of our subset. */
class MsgpackError extends Error {}

const utf8Encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const TWO_32 = 2 ** 32;

/** A growable byte buffer for the encoder. */
class ByteWriter {
  constructor(size = 64) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
    this.length = 0;
  }

  reserve(n) {
    const need = this.length + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.length));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(b) {
    this.reserve(1);
    this.buf[this.length++] = b;
  }

  typed(tag, n, width) {
    this.reserve(1 + width);
    this.buf[this.length++] = tag;
    if (width === 1) this.view.setUint8(this.length, n);
    else if (width === 2) this.view.setUint16(this.length, n);
    else if (width === 4) this.view.setUint32(this.length, n);
    this.length += width;
  }

  bytes(data) {
    this.reserve(data.length);
    this.buf.set(data, this.length);
    this.length += data.length;
  }

  result() {
    return this.buf.slice(0, this.length);
  }
}

function encodeInt(w, v) {
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v < 0x100) w.typed(0xcc, v, 1);
    else if (v < 0x10000) w.typed(0xcd, v, 2);
    else if (v < TWO_32) w.typed(0xce, v, 4);
    else encodeBig(w, BigInt(v));
  } else if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) w.typed(0xd0, v & 0xff, 1);
  else if (v >= -0x8000) w.typed(0xd1, v & 0xffff, 2);
  else if (v >= -0x80000000) w.typed(0xd2, v >>> 0, 4);
  else encodeBig(w, BigInt(v));
}

function encodeBig(w, v) {
  if (v < -(2n ** 63n) || v >= 2n ** 64n) throw new TypeError(d`integer out of the msgpack range`);
  w.reserve(9);
  w.buf[w.length] = v >= 0n ? 0xcf : 0xd3;
  w.view.setBigUint64(w.length + 1, BigInt.asUintN(64, v));
  w.length += 9;
}

function encodeStr(w, s) {
  const raw = utf8Encoder.encode(s);
  const n = raw.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) w.typed(0xd9, n, 1);
  else if (n < 0x10000) w.typed(0xda, n, 2);
  else w.typed(0xdb, n, 4);
  w.bytes(raw);
}

/** msgpack bin8/16/32 header bytes for an n-byte payload. */
function binHeader(n) {
  if (n < 0x100) return Uint8Array.of(0xc4, n);
  if (n < 0x10000) return Uint8Array.of(0xc5, n >> 8, n & 0xff);
  return Uint8Array.of(0xc6, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}

function encodeValue(w, v) {
  if (v === null || v === undefined) w.u8(0xc0);
  else if (v === true) w.u8(0xc3);
  else if (v === false) w.u8(0xc2);
  else if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw new TypeError(d`not an integer we encode: ${v}`);
    encodeInt(w, v);
  } else if (typeof v === "bigint") encodeBig(w, v);
  else if (typeof v === "string") encodeStr(w, v);
  else if (v instanceof Uint8Array) {
    w.bytes(binHeader(v.length));
    w.bytes(v);
  } else if (Array.isArray(v)) {
    const n = v.length;
    if (n < 16) w.u8(0x90 | n);
    else if (n < 0x10000) w.typed(0xdc, n, 2);
    else w.typed(0xdd, n, 4);
    for (const item of v) encodeValue(w, item);
  } else throw new TypeError(d`cannot encode ${Object.prototype.toString.call(v)}`);
}

/**
 * Encode one value of the subset (null, boolean, safe integer or BigInt,
 * string, Uint8Array, array of those) to a fresh Uint8Array.
 */
function encode(value) {
  const w = new ByteWriter();
  encodeValue(w, value);
  return w.result();
}

/** Decoder limits; the defaults are the session protocol's (docs/protocol.md §7). */
const SESSION_LIMITS = Object.freeze({ maxBin: 1024 * 1024, maxStr: 1024, maxArray: 8, maxDepth: 1 });

/**
 * Reads the msgpack objects of one batch, one at a time, so the frames
 * before a bad one can take effect (as they do in the Python cores).
 * Anything outside the subset or over a limit is a MsgpackError; nothing
 * else escapes, and nothing larger than the batch is ever allocated.
 */
class MsgpackReader {
  constructor(bytes, limits = SESSION_LIMITS) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
    this.limits = limits;
  }

  get done() {
    return this.pos >= this.bytes.length;
  }

  /** The next top-level object. */
  read() {
    return this.value(0);
  }

  need(n) {
    if (this.pos + n > this.bytes.length) throw new MsgpackError(d`ends inside a frame`);
    const at = this.pos;
    this.pos += n;
    return at;
  }

  uint(width) {
    const at = this.need(width);
    const v = this.view;
    if (width === 1) return v.getUint8(at);
    if (width === 2) return v.getUint16(at);
    if (width === 4) return v.getUint32(at);
    const big = v.getBigUint64(at);
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  int(width) {
    const at = this.need(width);
    const v = this.view;
    if (width === 1) return v.getInt8(at);
    if (width === 2) return v.getInt16(at);
    if (width === 4) return v.getInt32(at);
    const big = v.getBigInt64(at);
    const safe = BigInt(Number.MAX_SAFE_INTEGER);
    return big <= safe && big >= -safe ? Number(big) : big;
  }

  str(n) {
    if (n > this.limits.maxStr) throw new MsgpackError(d`str of ${n} bytes over ${this.limits.maxStr}`);
    const at = this.need(n);
    try {
      return strictUtf8.decode(this.bytes.subarray(at, at + n));
    } catch {
      throw new MsgpackError(d`str is not valid UTF-8`);
    }
  }

  bin(n) {
    if (n > this.limits.maxBin) throw new MsgpackError(d`bin of ${n} bytes over ${this.limits.maxBin}`);
    const at = this.need(n);
    return this.bytes.subarray(at, at + n); // a view: batches are never reused
  }

  array(n, depth) {
    if (n > this.limits.maxArray) throw new MsgpackError(d`array of ${n} over ${this.limits.maxArray}`);
    if (depth >= this.limits.maxDepth) throw new MsgpackError(d`arrays nested too deep`);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }

  value(depth) {
    const t = this.bytes[this.need(1)];
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t >= 0xa0 && t <= 0xbf) return this.str(t & 0x1f);
    if (t >= 0x90 && t <= 0x9f) return this.array(t & 0x0f, depth);
    if (t === 0xc0) return null;
    if (t === 0xc2 || t === 0xc3) return t === 0xc3;
    // bin 8/16/32, uint 8..64, int 8..64, str 8/16/32: the width is 1 << (t - the kind's first tag)
    if (t >= 0xc4 && t <= 0xc6) return this.bin(this.uint(1 << (t - 0xc4)));
    if (t >= 0xcc && t <= 0xcf) return this.uint(1 << (t - 0xcc));
    if (t >= 0xd0 && t <= 0xd3) return this.int(1 << (t - 0xd0));
    if (t >= 0xd9 && t <= 0xdb) return this.str(this.uint(1 << (t - 0xd9)));
    if (t === 0xdc || t === 0xdd) return this.array(this.uint(t === 0xdc ? 2 : 4), depth);
    if ((t >= 0x80 && t <= 0x8f) || t === 0xde || t === 0xdf) throw new MsgpackError(d`maps are not allowed`);
    if (t === 0xca || t === 0xcb) throw new MsgpackError(d`floats are not allowed`);
    if (t === 0xc1) throw new MsgpackError(d`0xc1 is never used`);
    throw new MsgpackError(d`ext types are not allowed`);
  }
}

/** Every object of a batch; MsgpackError if any of it is bad. */
function decodeAll(bytes, limits = SESSION_LIMITS) {
  const reader = new MsgpackReader(bytes, limits);
  const out = [];
  while (!reader.done) out.push(reader.read());
  return out;
}

/** Join byte arrays into one (the single copy a batch costs). */
function concatBytes(parts) {
  if (parts.length === 1) return parts[0];
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function utf8Length(s) {
  return utf8Encoder.encode(s).length;
}

/** A queue with O(1) shift and index access (the replay buffer). */
class Deque {
  constructor() {
    this.items = [];
    this.head = 0;
  }

  get length() {
    return this.items.length - this.head;
  }

  push(x) {
    this.items.push(x);
  }

  at(i) {
    return this.items[this.head + i];
  }

  shift() {
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  clear() {
    this.items = [];
    this.head = 0;
  }
}

export { MsgpackError, utf8Encoder, strictUtf8, binHeader, encode, SESSION_LIMITS, MsgpackReader, decodeAll, concatBytes, utf8Length, Deque };
