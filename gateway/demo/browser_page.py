"""The page of ``hopgate demo --browser``: HopSocket, the transport live, a WebSocket switch.

The page sends a numbered message every 100 ms to an echo endpoint and checks
every echo: the counters show anything lost, duplicated or out of order
(nothing, whatever the switch does). ``window.demo.state()`` returns the
same figures for tests.
"""

from __future__ import annotations

__all__ = ["PAGE", "SUBPROTOCOL"]

SUBPROTOCOL = "demo.v1"

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>hopgate demo: HopSocket</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; }
  .transport { font-size: 1.6rem; font-weight: bold; padding: .1rem .6rem; border-radius: .3rem; }
  .websocket { background: #cfe8cf; } .long-poll { background: #f6e3b4; }
  .none { background: #eee; }
  .bad { color: #b00; font-weight: bold; }
  button { font-size: 1rem; margin-right: .5rem; }
  ol { font: 13px/1.4 ui-monospace, monospace; max-height: 20rem; overflow: auto; }
</style>
<h1>HopSocket through a hopgate gateway</h1>
<p>This page uses <code>new HopSocket("/ws")</code> where it would use
<code>new WebSocket("/ws")</code>. Block WebSocket on the path (as a proxy or an
antivirus would) and watch the session move to long-polling and back, with
nothing lost, duplicated or reordered.</p>
<p>Transport: <span id="transport" class="transport none">none</span>
  <span id="why"></span></p>
<p><button id="block">Block WebSocket on the path</button>
  <button id="unblock">Unblock</button> path: <b id="path">WebSocket passes</b></p>
<p>sent <b id="sent">0</b> · echoed <b id="got">0</b> · missing <b id="missing">0</b> ·
  duplicated <b id="dup">0</b> · out of order <b id="ooo">0</b></p>
<ol id="log"></ol>
<script type="module">
import { HopSocket } from "/hopgate.min.mjs";
const $ = (id) => document.getElementById(id);
const log = (text) => {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
};
const ws = new HopSocket("/ws", ["SUBPROTOCOL"], { reprobeInitial: 1000, reprobeMax: 4000 });
let sent = 0, next = 1, highest = 0, dup = 0, ooo = 0;
const seen = new Set();
const reasons = [];
const show = () => {
  $("sent").textContent = sent;
  $("got").textContent = seen.size;
  $("missing").textContent = highest - seen.size;
  $("dup").textContent = dup;
  $("ooo").textContent = ooo;
  for (const id of ["missing", "dup", "ooo"]) {
    $(id).className = $(id).textContent === "0" ? "" : "bad";
  }
};
ws.addEventListener("transport", (e) => {
  $("transport").textContent = e.transport;
  $("transport").className = `transport ${e.transport}`;
  $("why").textContent = `(${e.reason}${e.detail ? `: ${e.detail}` : ""})`;
  reasons.push(e.reason);
  log(`transport ${e.previous} -> ${e.transport}: ${e.reason} ${e.detail}`);
});
ws.addEventListener("reconnecting", (e) => log(`reconnecting: ${e.reason} ${e.detail}`));
ws.addEventListener("resumed", (e) => log(`resumed on ${e.transport} after ${e.downtime} ms`));
ws.addEventListener("close", (e) => log(`closed ${e.code} ${e.reason}`));
ws.onopen = () => {
  log(`open (${ws.protocol})`);
  setInterval(() => { ws.send(String(++sent)); show(); }, 100);
};
ws.onmessage = (e) => {
  const n = Number(e.data);
  if (seen.has(n)) dup++;
  else {
    seen.add(n);
    if (n !== next) ooo++;
    next = n + 1;
    highest = Math.max(highest, n);
  }
  show();
};
const path = async (action) => {
  const init = { method: action ? "POST" : "GET", body: action, cache: "no-store" };
  const res = await fetch("/.demo/websocket", init);
  const state = await res.json();
  $("path").textContent = state.blocked ? "WebSocket blocked" : "WebSocket passes";
  return state;
};
$("block").onclick = () => path("block");
$("unblock").onclick = () => path("unblock");
window.demo = {
  state: () => ({ transport: ws.transport, readyState: ws.readyState, sent, got: seen.size,
    missing: highest - seen.size, dup, ooo, reasons: [...reasons] }),
};
</script>
""".replace('"SUBPROTOCOL"', f'"{SUBPROTOCOL}"')
