/**
 * hopgate: a drop-in, WebSocket-compatible object that reaches a WebSocket
 * server through a hopgate gateway, over a WebSocket where the path allows one
 * and over HTTP long-polling where it does not.
 *
 *     const ws = new HopSocket("/ws", ["chat"], { gateway: "https://gw.example" });
 *     ws.onmessage = (e) => console.log(e.data);
 *
 * Theory of operation
 * ===================
 *
 * Four layers, each a module of src/, bottom to top:
 *
 * 1. msgpack.js: the small subset the protocols use (nil, bool, ints, str,
 *    bin, arrays), with a decoder that is strict and bounded, since every
 *    byte it reads comes from the network.
 * 2. session_*.js: the hop session (docs/protocol.md): a sans-I/O port of
 *    gateway/core/session/ (frames, config, core, liveness; session.js adds
 *    the gateway's side, for tests only). Whole messages are cut into numbered DATA
 *    frames kept in a bounded replay buffer until acknowledged; every new
 *    transport starts with a HELLO stating what we have received, and the
 *    peer replays the rest (go-back-N). No clock, no socket: the I/O layer
 *    passes `now` in and pulls batches and events out.
 * 3. tunnel*.js: the tunnel (docs/tunnel.md): the page's WebSocket is one
 *    stream over the session: OPEN_WS to the target path, ACCEPT (or a refusal),
 *    MESSAGE chunks with per-stream credit (WINDOW), CLOSE with code and
 *    reason, RESET. Also sans-I/O.
 * 4. I/O: `HopLink` (link.js; gateway_http.js, transports.js) opens a session with
 *    `POST /.hopgate/session`, carries it on a WebSocket (`hopgate.v1`, used
 *    only after a probe round trip) or on long-polling (held GET + POST),
 *    demotes a stalled WebSocket, re-probes with backoff and resumes after
 *    any failure. `HopSocket` (hopsocket.js, websocket_api.js) is the WebSocket-shaped object
 *    the page sees.
 *
 * Each HopSocket has its own hop session (one stream on it), so one socket's
 * failure or close never touches another's.
 *
 * Batching: page sends, tunnel frames and session frames are coalesced per
 * microtask, so a burst of `send()` calls in one task becomes one transport
 * write; nothing runs per message on a timer.
 *
 * This module is the main entry: it exports `HopSocket` only. build.mjs
 * bundles it into dist/: an ES module (`import { HopSocket } from
 * "./hopgate.mjs"`), a classic script that sets `window.HopSocket`
 * (classic.js), and their minified versions (see README.md).
 */

export { HopSocket } from "./hopsocket.js";
