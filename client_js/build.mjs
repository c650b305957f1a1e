// Builds dist/ from src/ with esbuild: the ES module and the classic script
// (which sets window.HopSocket), each plain and minified (with a source map).
// The plain builds are the development ones, with every diagnostic as written
// (src/debug.js); the minified builds are the production ones: each tagged
// diagnostic becomes its code and values ("H7k2q 403"), DEBUG is false, and the
// properties named _like_this are shortened.
//
//   node build.mjs             build into dist/ and print the sizes
//   node build.mjs --analyze   also print what takes the bytes of the minified module, per source module
//   node build.mjs --no-terser without the second minifying pass (to compare)
//   node build.mjs --messages  write the table of codes, docs/howto/browser-errors.md
//
// test/build.test.mjs calls build() into a temporary directory.
import * as esbuild from "esbuild";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

const HERE = dirname(fileURLToPath(import.meta.url));
/** Where `--messages` writes the table of codes. */
export const MESSAGES_PAGE = join(HERE, "..", "docs", "howto", "browser-errors.md");
const { version, license } = JSON.parse(readFileSync(join(HERE, "package.json"), "utf8"));

/** Syntax the sources use (BigInt, `??`, `?.`) and nothing newer: esbuild fails on anything past it. */
const TARGET = "es2020";

/** [output file, entry, format, minify]: the ES module and the classic script, plain and minified. */
const OUTPUTS = [
  ["hopgate.mjs", "src/index.js", "esm", false],
  ["hopgate.min.mjs", "src/index.js", "esm", true],
  ["hopgate.iife.js", "src/classic.js", "iife", false],
  ["hopgate.iife.min.js", "src/classic.js", "iife", true],
];

/**
 * Properties the minified builds shorten: every _private one, and these of
 * the internal classes (Session, Tunnel, HopLink, the transports, the msgpack
 * reader and writer) and of the frames and events between them. A name here
 * must never be one the code reads from the platform (a fetch Response, an
 * Event, a Map) or one a page passes in (the options) or reads (HopSocket's
 * API): esbuild renames it everywhere. Tests load the minified builds
 * (test/build.test.mjs, tests/client_js) to keep this honest.
 */
const INTERNAL_PROPS = `abandon abandoned array attached bin buf bufferedBytes bufferedFrames byPeer bytes closeAll
  closeCode closeWebSocket closed config connect consumed core current dataToSend dead dispatch epoch
  eventsReceived feed fin finished first handleTimer handlers hasBody hasPayloadToSend hasPending head id idle
  initialWindow int isClient isWritable items kick kind lastReceived learned limits link lpAllowed maxArray
  maxBin maxChunk maxDepth maxMessage maxPending maxStr maxWsMessage msgParts msgSize msgText need
  nextDeadline nextMessage nonce offset open openFrame openSent openWebSocket options payload polls pos
  posting prefix prepaid retryAfter probeCheck probeReply probeRequest queue queued queuedBytes ready receiveData
  receiveMessage received recvState recvWindow refused remote request reserve reset retrySafe rewind rtt
  scheduled sendCredit sendMessage sendState sendWsMessage seq sessionId setHeartbeat sid since start state
  str streamCount take toGrant token trailer transportAttached transportFailed transportLost typed u8 uint
  unconsumed verifyToken version wantsWrite websocketDied writable write wsAllowed wsToken lastStreamId
  takeChunk onMessage onWritable onClosed onGoAway onTransport onReconnecting onResumed
  NORMAL GOING_AWAY PROTOCOL_ERROR INVALID_DATA MESSAGE_TOO_BIG INTERNAL_ERROR SESSION_EXPIRED AUTH_FAILED
  UNKNOWN_SESSION UNSUPPORTED_VERSION CLOSE_TIMEOUT HELLO DATA ACK PING PONG CLOSE ABORT OPEN_HTTP OPEN_WS
  RESPONSE ACCEPT END MESSAGE WINDOW RESET CANCEL REFUSED CONNECT_FAILED TIMEOUT TOO_LARGE PROTOCOL GOAWAY
  INTERNAL SESSION_LOST`.split(/\s+/);
const MANGLED = new RegExp(`^(_.+|${INTERNAL_PROPS.join("|")})$`);

/** The code of a diagnostic: a hash of its template as written, so it changes only with the text. */
export function messageCode(template) {
  const n = createHash("sha1").update(template).digest().readUInt32BE(0) % 36 ** 4;
  return `H${n.toString(36).padStart(4, "0")}`;
}

/** End of the `${...}` expression starting at `i` (just past `${`): skips nested braces, strings, templates. */
function expressionEnd(text, i) {
  let depth = 0;
  for (; i < text.length; i++) {
    const c = text[i];
    if (c === "{") depth++;
    else if (c === "}" && depth-- === 0) return i;
    else if (c === '"' || c === "'" || c === "`") i = literalEnd(text, i + 1, c);
  }
  throw new Error("unterminated ${ in a diagnostic");
}

function literalEnd(text, i, quote) {
  for (; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === quote) return i;
    else if (quote === "`" && text.startsWith("${", i)) i = expressionEnd(text, i + 2);
  }
  throw new Error("unterminated literal in a diagnostic");
}

/**
 * Every tagged diagnostic of a module's source: [{start, end, template, expressions}],
 * `template` the text between the backticks as written.
 */
export function diagnostics(source) {
  const found = [];
  for (const m of source.matchAll(/(?<![\w$.`])d`/g)) {
    const open = m.index + 1;
    const close = literalEnd(source, open + 1, "`");
    const template = source.slice(open + 1, close);
    if (template.includes("\n")) throw new Error(`a diagnostic spans lines (or the tag is in a comment): d\`${template.slice(0, 60)}`);
    const expressions = [];
    for (let i = 0; i < template.length; i++) {
      if (template[i] === "\\") i++;
      else if (template.startsWith("${", i)) {
        const end = expressionEnd(template, i + 2);
        expressions.push(template.slice(i + 2, end));
        i = end;
      }
    }
    found.push({ start: m.index, end: close + 1, template, expressions });
  }
  return found;
}

/** The source with each diagnostic replaced by its code and values (the sentence kept in a comment for the source map). */
export function withCodes(source) {
  let out = "";
  let at = 0;
  for (const { start, end, template, expressions } of diagnostics(source)) {
    const code = messageCode(template);
    const values = expressions.map((e) => ` \${${e}}`).join("");
    out += source.slice(at, start) + `/* ${template.replaceAll("*/", "* /")} */\`${code}${values}\``;
    at = end;
  }
  return out + source.slice(at);
}

/** code -> template of every diagnostic in src/; throws if two texts share a code. */
export function messageTable() {
  const table = new Map();
  for (const file of readdirSync(join(HERE, "src")).filter((f) => f.endsWith(".js")).sort()) {
    for (const { template } of diagnostics(readFileSync(join(HERE, "src", file), "utf8"))) {
      const code = messageCode(template);
      if (table.has(code) && table.get(code) !== template) throw new Error(`${code}: two diagnostics share it; reword one`);
      table.set(code, template);
    }
  }
  return table;
}

/** docs/howto/browser-errors.md: the page that turns a code from a minified build back into its sentence. */
export function messagesPage() {
  const rows = [...messageTable()].sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([code, template]) => `| \`${code}\` | ${template.replaceAll("|", "\\|")} |`);
  return `# Browser shim diagnostics: codes of the minified builds

The minified builds of the browser shim (\`hopgate.min.mjs\`,
\`hopgate.iife.min.js\`) carry a short code instead of each diagnostic
sentence, to stay small; the values follow the code. A close event whose
\`reason\` reads \`Hntac 403 origin not allowed\` is the sentence of
\`Hntac\` below with \`\${status}\` = 403 and \`\${text}\` = the rest. The plain
builds (\`hopgate.mjs\`, \`hopgate.iife.js\`) and the sources print the sentences
themselves: load one of them while developing.

A code is a hash of its sentence as written in \`client_js/src/\`, so it stays
the same from release to release until the sentence changes. This page is
generated: \`cd client_js && node build.mjs --messages\` rewrites it, and
\`client_js/test/messages.test.mjs\` fails when it is out of date.

| code | sentence |
|---|---|
${rows.join("\n")}
`;
}

/** The production transform of the minified builds: codes for sentences, DEBUG false. */
export const productionPlugin = {
  name: "hopgate-production",
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/][\w]+\.js$/ }, (args) => {
      let text = readFileSync(args.path, "utf8");
      if (args.path.endsWith("debug.js")) text = text.replace("export const DEBUG = true;", "export const DEBUG = false;");
      return { contents: withCodes(text), loader: "js" };
    });
  },
};

/**
 * The second pass over esbuild's minified output (esbuild stays the bundler):
 * terser's compressor, run three times, finds what one pass of esbuild's
 * leaves (inlined single-use functions, folded branches, arrows). Measured on
 * hopgate.min.mjs it saves about 3 % gzipped; `node build.mjs --no-terser`
 * builds without it, to compare.
 */
const TERSER = {
  compress: { passes: 3, unsafe_arrows: true, toplevel: true },
  mangle: { toplevel: true },
  format: { comments: /^!/ },
};

async function terserPass(outdir, file, format) {
  const { minify } = await import("terser");
  const path = join(outdir, file);
  const code = readFileSync(path, "utf8").replace(/\n\/\/# sourceMappingURL=.*\s*$/, "\n");
  const result = await minify(code, {
    ...TERSER,
    module: format === "esm",
    sourceMap: { content: readFileSync(`${path}.map`, "utf8"), url: `${file}.map`, includeSources: true },
  });
  writeFileSync(path, result.code);
  writeFileSync(`${path}.map`, result.map);
}

/** Build every output into `outdir`; returns [{file, bytes, gzip}] and, minified, the esbuild metafile. */
export async function build(outdir = join(HERE, "dist"), { terser = true } = {}) {
  const sizes = [];
  let metafile = null;
  for (const [file, entry, format, minify] of OUTPUTS) {
    const result = await esbuild.build({
      absWorkingDir: HERE,
      entryPoints: [entry],
      outfile: join(outdir, file),
      bundle: true,
      format,
      minify,
      sourcemap: minify,
      target: TARGET,
      banner: { js: `/*! hopgate ${version} | ${license} */` },
      metafile: minify && format === "esm",
      plugins: minify ? [productionPlugin] : [],
      mangleProps: minify ? MANGLED : undefined,
      logLevel: "warning",
    });
    if (result.metafile) metafile = result.metafile;
    if (minify && terser) await terserPass(outdir, file, format);
    const bytes = readFileSync(join(outdir, file));
    sizes.push({ file, bytes: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length });
  }
  return { sizes, metafile };
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** The fields of one source map segment (base64 VLQ). */
function vlqDecode(segment) {
  const out = [];
  let value = 0;
  let shift = 0;
  for (const ch of segment) {
    const digit = B64.indexOf(ch);
    value += (digit & 31) << shift;
    if (digit & 32) shift += 5;
    else {
      out.push(value & 1 ? -(value >> 1) : value >> 1);
      value = shift = 0;
    }
  }
  return out;
}

/**
 * What each source module takes of a built file, by its source map: the
 * minified bytes mapped to it, and those bytes gzipped on their own (a
 * module's share of the whole compresses a little better than that).
 */
export function moduleSizes(code, map) {
  const text = new Map();
  let source = 0;
  code.split("\n").forEach((line, row) => {
    const segments = (map.mappings.split(";")[row] ?? "").split(",").filter(Boolean);
    let column = 0;
    const starts = [];
    for (const s of segments) {
      const [dc, ds] = vlqDecode(s);
      column += dc;
      if (ds !== undefined) source += ds;
      starts.push([column, source]);
    }
    starts.forEach(([at, src], i) => {
      const name = map.sources[src];
      text.set(name, (text.get(name) ?? "") + line.slice(at, i + 1 < starts.length ? starts[i + 1][0] : undefined));
    });
  });
  return [...text].map(([name, t]) => ({ module: name.replace(/^.*src\//, ""), bytes: t.length, gzip: gzipSync(t, { level: 9 }).length }))
    .sort((a, b) => b.bytes - a.bytes);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { sizes, metafile } = await build(undefined, { terser: !process.argv.includes("--no-terser") });
  for (const { file, bytes, gzip } of sizes) {
    console.log(`dist/${file.padEnd(20)} ${String(bytes).padStart(7)} B   gzip ${String(gzip).padStart(6)} B`);
  }
  if (process.argv.includes("--analyze")) {
    console.log(await esbuild.analyzeMetafile(metafile));
    const path = join(HERE, "dist", "hopgate.min.mjs");
    const rows = moduleSizes(readFileSync(path, "utf8"), JSON.parse(readFileSync(`${path}.map`, "utf8")));
    console.log("dist/hopgate.min.mjs by module (as shipped):   bytes   gzip alone");
    for (const { module, bytes, gzip } of rows) console.log(`  ${module.padEnd(24)} ${String(bytes).padStart(15)} ${String(gzip).padStart(12)}`);
  }
  if (process.argv.includes("--messages")) {
    writeFileSync(MESSAGES_PAGE, messagesPage());
    console.log(`wrote ${MESSAGES_PAGE}`);
  }
}
