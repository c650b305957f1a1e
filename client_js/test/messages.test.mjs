// Diagnostics (src/debug.js): the sources keep every sentence, the minified
// builds carry codes instead, and docs/howto/browser-errors.md maps each code
// back to its sentence. Needs `npm ci` (esbuild) for the build half.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as esbuild from "esbuild";
import { MESSAGES_PAGE, diagnostics, messageCode, messageTable, messagesPage, productionPlugin, withCodes } from "../build.mjs";
import { sessionFrames, RemoteProtocolError } from "../src/session.js";
import { encode } from "../src/msgpack.js";

test("every diagnostic has its own code, and the docs page lists them all", () => {
  const table = messageTable(); // throws if two sentences share a code
  assert.ok(table.size >= 100, `only ${table.size} diagnostics found`);
  assert.equal(readFileSync(MESSAGES_PAGE, "utf8"), messagesPage(), "run: cd client_js && node build.mjs --messages");
});

test("a diagnostic becomes its code and values; nested templates and braces are skipped over", () => {
  const source = "throw new E(d`bad ${a.b} in ${f({ x: `y${z}` })} (${n})`);";
  const [found] = diagnostics(source);
  assert.deepEqual(found.expressions, ["a.b", "f({ x: `y${z}` })", "n"]);
  const code = messageCode("bad ${a.b} in ${f({ x: `y${z}` })} (${n})");
  assert.match(code, /^H[0-9a-z]{4}$/);
  const out = withCodes(source);
  assert.ok(out.endsWith(`\`${code} \${a.b} \${f({ x: \`y\${z}\` })} \${n}\`);`), out);
  assert.throws(() => diagnostics("// d`x\n y`"), /spans lines/);
});

test("the sources speak in sentences", () => {
  assert.throws(() => sessionFrames.decode(encode([2, 0, 1, new Uint8Array(0)])), (err) => {
    assert.ok(err instanceof RemoteProtocolError);
    assert.equal(err.message, "malformed frame: DATA seq is invalid");
    return true;
  });
});

test("the production transform leaves codes, not sentences", async () => {
  const result = await esbuild.build({
    absWorkingDir: new URL("..", import.meta.url).pathname,
    entryPoints: ["src/session.js"],
    bundle: true,
    format: "esm",
    write: false,
    plugins: [productionPlugin],
  });
  const code = result.outputFiles[0].text.replace(/\/\*[\s\S]*?\*\//g, "");
  assert.doesNotMatch(code, /malformed frame|is invalid/);
  assert.match(code, new RegExp(messageCode("${name} ${field} is invalid")));
  const { sessionFrames: prodFrames } = await import(`data:text/javascript,${encodeURIComponent(result.outputFiles[0].text)}`);
  // malformed(checkFrame's message("DATA", "seq")): two codes and the values.
  const codes = ["malformed frame: ${what}", "${name} ${field} is invalid"].map(messageCode);
  assert.throws(() => prodFrames.decode(encode([2, 0, 1, new Uint8Array(0)])), { message: `${codes[0]} ${codes[1]} DATA seq` });
});
