// Entry of the classic-script builds (dist/hopgate.iife.js): a page without
// `import` gets `window.HopSocket`. The ES module entry (index.js) writes no
// globals, so bundlers may treat it as free of side effects.
import { HopSocket } from "./hopsocket.js";

if (typeof window !== "undefined" && window.HopSocket === undefined) window.HopSocket = HopSocket;
