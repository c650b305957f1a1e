// ---------------------------------------------------------------------------
// Diagnostics: sentences in the development builds, short codes in the minified ones
// ---------------------------------------------------------------------------

/*
 * Every diagnostic (an error's message, a close reason, a log line) is a
 * template literal tagged with `d`. The sources and the plain builds
 * (dist/hopgate.mjs, dist/hopgate.iife.js) keep the sentence. The minified
 * builds are the production ones and are measured in gzipped bytes, of which
 * the sentences were a third: build.mjs rewrites each tagged template there
 * into its code and the interpolated values ("H7k2q 403").
 * docs/howto/browser-errors.md lists every code with its sentence
 * (`node build.mjs --messages` prints the table; test/messages.test.mjs keeps
 * the page in step). The tag is never written in a comment: the build would
 * take it for a diagnostic.
 *
 * DEBUG is true here and false in the minified builds, so code that exists
 * only to word a message (names of states, of fields) goes with the messages.
 */

export const DEBUG = true;

/** The tag of diagnostics: the template as written (the values stringified). */
export const d = (strings, ...values) => strings.reduce((out, s, i) => out + String(values[i - 1]) + s);
