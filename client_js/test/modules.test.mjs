// The shape of src/: the main entry exports HopSocket only, modules import
// only names they use, the import graph has no cycle, and the hand-written
// hopgate.d.ts declares what the runtime has (members, options).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import * as main from "../src/index.js";
import { HopSocket, DEFAULT_SOCKET_OPTIONS } from "../src/hopsocket.js";
import { DEFAULT_LINK_OPTIONS } from "../src/link.js";
import { DEFAULT_SESSION_CONFIG } from "../src/session.js";

const SRC = new URL("../src/", import.meta.url);
const source = (name) => readFileSync(new URL(name, SRC), "utf8");
/** Comments and string literals out, so a name in either does not count as a use. */
const code = (text) => text.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/(^|[^:\\])\/\/.*$/gm, "$1").replace(/"(?:[^"\\\n]|\\.)*"/g, '""');

function imports(text) {
  return [...text.matchAll(/^import \{([^}]*)\} from "\.\/([\w]+\.js)";$/gm)].map(([line, names, from]) => ({
    line,
    from,
    names: names.split(",").map((n) => n.trim()).filter(Boolean),
  }));
}

test("the main entry exports HopSocket only", () => {
  assert.deepEqual(Object.keys(main), ["HopSocket"]);
  assert.equal(main.HopSocket, HopSocket);
});

test("every module imports only names it uses, from a sibling module", () => {
  const modules = readdirSync(SRC).filter((f) => f.endsWith(".js"));
  assert.ok(modules.length >= 6, modules.join(" "));
  for (const name of modules) {
    const text = source(name);
    const importLines = text.split("\n").filter((l) => /^import\b/.test(l));
    assert.equal(importLines.length, imports(text).length, `${name}: every import is a named import of ./x.js`);
    let body = text;
    for (const { line } of imports(text)) body = body.replace(line, "");
    body = code(body);
    for (const { from, names } of imports(text)) {
      assert.ok(modules.includes(from), `${name} imports ${from}`);
      for (const n of names) assert.match(body, new RegExp(`(?<![\\w.$])${n.replace("$", "\\$")}(?![\\w$])`), `${name} imports ${n} from ${from} and never uses it`);
    }
  }
});

test("the import graph has no cycle", () => {
  const modules = readdirSync(SRC).filter((f) => f.endsWith(".js"));
  const edges = new Map(modules.map((m) => [m, imports(source(m)).map((i) => i.from)]));
  const reexports = (m) => [...source(m).matchAll(/^export \{[^}]*\} from "\.\/([\w]+\.js)";$/gm)].map((x) => x[1]);
  for (const m of modules) edges.get(m).push(...reexports(m));
  const done = new Set();
  const visit = (m, path) => {
    assert.ok(!path.includes(m), `import cycle: ${[...path, m].join(" -> ")}`);
    if (done.has(m)) return;
    for (const next of edges.get(m)) visit(next, [...path, m]);
    done.add(m);
  };
  for (const m of modules) visit(m, []);
  assert.deepEqual(edges.get("debug.js"), [], "debug.js is the bottom layer");
  assert.deepEqual(edges.get("msgpack.js"), ["debug.js"], "msgpack.js is the lowest protocol layer");
});

/** The member names declared in the body of `header { ... }` of hopgate.d.ts (one level deep). */
function declared(header) {
  const dts = readFileSync(new URL("../hopgate.d.ts", import.meta.url), "utf8");
  const start = dts.indexOf(header);
  assert.ok(start >= 0, header);
  const body = dts.slice(start, dts.indexOf("\n}\n", start));
  return new Set([...body.matchAll(/^ {2}(?:static )?(?:readonly )?(\w+)\??[(:<]/gm)].map((m) => m[1]));
}

test("hopgate.d.ts declares the HopSocket members the runtime has, and no others", () => {
  const members = declared("export declare class HopSocket");
  const runtime = new Set(["constructor"]);
  for (const n of Object.getOwnPropertyNames(HopSocket.prototype)) if (!n.startsWith("_")) runtime.add(n);
  for (const n of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) assert.ok(Object.hasOwn(HopSocket, n), n);
  assert.equal(typeof HopSocket.supported, "boolean");
  runtime.add("supported"); // static only
  for (const n of ["addEventListener", "removeEventListener"]) runtime.add(n); // from EventTarget
  assert.deepEqual([...members].sort(), [...runtime].sort());
});

test("hopgate.d.ts declares every option, and only those", () => {
  const runtime = [...Object.keys(DEFAULT_LINK_OPTIONS), ...Object.keys(DEFAULT_SOCKET_OPTIONS), "gateway", "session", "log", "fetch", "WebSocket"];
  assert.deepEqual([...declared("export interface HopSocketOptions")].sort(), [...new Set(runtime)].sort());
  assert.deepEqual([...declared("export interface HopSessionOptions")].sort(), Object.keys(DEFAULT_SESSION_CONFIG).sort());
});
