// ---------------------------------------------------------------------------
// 5a. What the WebSocket API specifies around the object: its errors, its
//     events, the URL and subprotocol checks of its constructor
// ---------------------------------------------------------------------------

import { d } from "./debug.js";

/** RFC 7230 token: what a subprotocol name may be. */
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function domError(message, name) {
  return typeof DOMException === "function" ? new DOMException(message, name) : Object.assign(new Error(message), { name });
}

function messageEvent(data, origin) {
  if (typeof MessageEvent === "function") return new MessageEvent("message", { data, origin });
  const event = new Event("message");
  Object.defineProperties(event, { data: { value: data }, origin: { value: origin }, lastEventId: { value: "" } });
  return event;
}

/** An event beyond the WebSocket API (transport, reconnecting, resumed), its fields as read-only properties. */
function extraEvent(type, fields) {
  const event = new Event(type);
  for (const [name, value] of Object.entries(fields)) Object.defineProperty(event, name, { value, enumerable: true });
  return event;
}

function closeEvent(code, reason, wasClean) {
  if (typeof CloseEvent === "function") return new CloseEvent("close", { code, reason, wasClean });
  const event = new Event("close");
  Object.defineProperties(event, { code: { value: code }, reason: { value: reason }, wasClean: { value: wasClean } });
  return event;
}

/** Parse and check the URL the way the WebSocket constructor does; returns a ws:/wss: URL. */
function endpointUrl(url) {
  let parsed;
  try {
    parsed = new URL(String(url), globalThis.location?.href);
  } catch {
    throw domError(d`The URL '${url}' is invalid.`, "SyntaxError");
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw domError(d`The URL's scheme must be either 'ws' or 'wss'. '${parsed.protocol}' is not allowed.`, "SyntaxError");
  }
  if (parsed.hash) throw domError(d`The URL contains a fragment identifier. Fragment identifiers are not allowed in WebSocket URLs.`, "SyntaxError");
  return parsed;
}

function subprotocolList(protocols) {
  const list = protocols === undefined ? [] : typeof protocols === "string" ? [protocols] : Array.from(protocols, String);
  const seen = new Set();
  for (const p of list) {
    if (!TOKEN_RE.test(p)) throw domError(d`The subprotocol '${p}' is invalid.`, "SyntaxError");
    if (seen.has(p)) throw domError(d`The subprotocol '${p}' is duplicated.`, "SyntaxError");
    seen.add(p);
  }
  return list;
}

/** Where the hop session opens: `options.gateway`, else the endpoint's own origin (a drop-in goes where `url` says). */
function gatewayUrl(option, endpoint) {
  const text = option ?? endpoint.origin;
  const url = new URL(String(text), globalThis.location?.href);
  if (url.protocol === "ws:") url.protocol = "http:";
  else if (url.protocol === "wss:") url.protocol = "https:";
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new TypeError(d`gateway must be an http(s) URL, not ${text}`);
  return url;
}

export { domError, messageEvent, extraEvent, closeEvent, endpointUrl, subprotocolList, gatewayUrl };
