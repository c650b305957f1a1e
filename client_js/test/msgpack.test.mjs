// The msgpack subset: exact bytes (as Python's msgpack packs them) and a
// strict, bounded decoder.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encode, decodeAll, MsgpackError, SESSION_LIMITS } from "../src/msgpack.js";
import { TUNNEL_LIMITS } from "../src/tunnel.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h.replace(/\s+/g, ""), "hex"));
const LOOSE = { maxBin: 1 << 20, maxStr: 1 << 20, maxArray: 1 << 16, maxDepth: 4 };

test("integers use the smallest encoding", () => {
  const cases = [
    [0, "00"], [127, "7f"], [128, "cc80"], [255, "ccff"], [256, "cd0100"], [65535, "cdffff"],
    [65536, "ce00010000"], [2 ** 32 - 1, "ceffffffff"], [2 ** 32, "cf0000000100000000"],
    [-1, "ff"], [-32, "e0"], [-33, "d0df"], [-128, "d080"], [-129, "d1ff7f"], [-32769, "d2ffff7fff"],
    [2n ** 64n - 1n, "cfffffffffffffffff"],
  ];
  for (const [value, expected] of cases) assert.equal(hex(encode(value)), expected, String(value));
});

test("nil, bool, str, bin, arrays", () => {
  assert.equal(hex(encode(null)), "c0");
  assert.equal(hex(encode(true)), "c3");
  assert.equal(hex(encode(false)), "c2");
  assert.equal(hex(encode("hi")), "a26869");
  assert.equal(hex(encode("é")), "a2c3a9");
  assert.equal(hex(encode("x".repeat(32))).slice(0, 4), "d920");
  assert.equal(hex(encode("x".repeat(256))).slice(0, 6), "da0100");
  assert.equal(hex(encode(Uint8Array.of(1, 2))), "c4020102");
  assert.equal(hex(encode(new Uint8Array(256))).slice(0, 6), "c50100");
  assert.equal(hex(encode(new Uint8Array(65536))).slice(0, 10), "c600010000");
  assert.equal(hex(encode([])), "90");
  assert.equal(hex(encode(new Array(16).fill(0))).slice(0, 6), "dc0010");
  assert.equal(hex(encode([1, [2, "a"]])), "920192 02a161".replace(/ /g, ""));
});

test("the encoder refuses what is outside the subset", () => {
  for (const bad of [1.5, NaN, 2 ** 53, {}, new Map(), Symbol("x"), 2n ** 64n]) {
    assert.throws(() => encode(bad), TypeError);
  }
});

test("round trip", () => {
  const value = [0, 1, -1, 300, 70000, 2 ** 40, "héllo", Uint8Array.of(9, 8, 7), null, true, false, [1, [2]]];
  assert.deepEqual(decodeAll(encode(value), LOOSE), [value]);
});

test("big uint64 decodes as BigInt, safe ones as numbers", () => {
  assert.deepEqual(decodeAll(bytes("cf0000000000000005"), LOOSE), [5]);
  assert.deepEqual(decodeAll(bytes("cfffffffffffffffff"), LOOSE), [2n ** 64n - 1n]);
  assert.deepEqual(decodeAll(bytes("d3ffffffffffffffff"), LOOSE), [-1]);
});

test("a batch is several objects back to back", () => {
  assert.deepEqual(decodeAll(bytes("9203 05 9203 06"), SESSION_LIMITS), [[3, 5], [3, 6]]);
  assert.deepEqual(decodeAll(new Uint8Array(0)), []);
});

test("bin decodes as a view of the batch (no copy)", () => {
  const batch = bytes("c403616263");
  const [bin] = decodeAll(batch, LOOSE);
  assert.equal(bin.buffer, batch.buffer);
  assert.deepEqual([...bin], [0x61, 0x62, 0x63]);
});

test("strict: maps, floats, ext, 0xc1 are errors", () => {
  const bad = ["80", "81a16101", "de0000", "df00000000", "ca00000000", "cb0000000000000000",
    "c1", "d40100", "d5010000", "c70100", "c8000100", "c9000000010000"];
  for (const h of bad) assert.throws(() => decodeAll(bytes(h), LOOSE), MsgpackError, h);
});

test("strict: truncated objects are errors, never partial results", () => {
  for (const h of ["92", "9201", "c4", "c405616263", "a3616263".slice(0, 6), "cd01", "cf000000", "dc00", "d9"]) {
    assert.throws(() => decodeAll(bytes(h), LOOSE), MsgpackError, h);
  }
});

test("strict: str must be valid UTF-8", () => {
  assert.throws(() => decodeAll(bytes("a2c328"), LOOSE), MsgpackError);
  assert.throws(() => decodeAll(bytes("a3eda080"), LOOSE), MsgpackError); // a lone surrogate
});

test("bounded: bin, str, array lengths and nesting depth", () => {
  const limits = { maxBin: 4, maxStr: 3, maxArray: 2, maxDepth: 2 };
  assert.throws(() => decodeAll(bytes("c40500000000 00"), limits), /bin of 5/);
  assert.throws(() => decodeAll(bytes("a461626364"), limits), /str of 4/);
  assert.throws(() => decodeAll(bytes("93010203"), limits), /array of 3/);
  assert.throws(() => decodeAll(bytes("91919101"), limits), /nested/);
  assert.deepEqual(decodeAll(bytes("929101a3616263"), limits), [[[1], "abc"]]);
  // A length claim far beyond the batch allocates nothing: it is refused first.
  assert.throws(() => decodeAll(bytes("dd7fffffff"), LOOSE), /array of/);
  assert.throws(() => decodeAll(bytes("c67fffffff"), LOOSE), /bin of/);
  assert.throws(() => decodeAll(bytes("c600001000"), LOOSE), /ends inside/);
});

test("session limits: flat frames of at most 8 fields, 1 MiB payloads", () => {
  assert.throws(() => decodeAll(bytes("99" + "00".repeat(9)), SESSION_LIMITS), /array of 9/);
  assert.throws(() => decodeAll(bytes("9291 00"), SESSION_LIMITS), /nested/);
  assert.equal(TUNNEL_LIMITS.maxDepth, 2);
  const big = new Uint8Array(5 + (1 << 20) + 1);
  big.set([0xc6, 0x00, 0x10, 0x00, 0x01]);
  assert.throws(() => decodeAll(big, SESSION_LIMITS), /bin of 1048577/);
});

test("fuzz: random bytes only ever raise MsgpackError", () => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) & 0xff;
  for (let i = 0; i < 20000; i++) {
    const batch = Uint8Array.from({ length: 1 + (rand() % 24) }, rand);
    try {
      decodeAll(batch, TUNNEL_LIMITS);
    } catch (err) {
      assert.ok(err instanceof MsgpackError, `${err} for ${hex(batch)}`);
    }
  }
});
