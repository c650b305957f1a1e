// Builds dist/ from src/ with esbuild: the ES module and the classic script
// (which sets window.HopSocket), each plain and minified (with a source map).
//
//   node build.mjs            build into dist/ and print the sizes
//   node build.mjs --analyze  also print what takes the bytes of the minified module
//
// test/build.test.mjs calls build() into a temporary directory.
import * as esbuild from "esbuild";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

const HERE = dirname(fileURLToPath(import.meta.url));
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

/** Build every output into `outdir`; returns [{file, bytes, gzip}] and, minified, the esbuild metafile. */
export async function build(outdir = join(HERE, "dist")) {
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
      logLevel: "warning",
    });
    if (result.metafile) metafile = result.metafile;
    const bytes = readFileSync(join(outdir, file));
    sizes.push({ file, bytes: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length });
  }
  return { sizes, metafile };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { sizes, metafile } = await build();
  for (const { file, bytes, gzip } of sizes) {
    console.log(`dist/${file.padEnd(20)} ${String(bytes).padStart(7)} B   gzip ${String(gzip).padStart(6)} B`);
  }
  if (process.argv.includes("--analyze")) console.log(await esbuild.analyzeMetafile(metafile));
}
