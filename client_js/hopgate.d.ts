// Types of hopgate's public API: HopSocket, a drop-in WebSocket whose
// connection goes through a hopgate gateway (see README.md). Hand-written;
// test/types.test.mjs checks it against the runtime object.

/** What carries the hop session right now ("none" between two transports). */
export type HopTransport = "websocket" | "long-poll" | "none";

/** Hop session timers in **seconds**, sizes in bytes (docs/protocol.md §7). */
export interface HopSessionOptions {
  /** Largest whole message on the session. Default 16 MiB. */
  maxMessageSize?: number;
  /** DATA fragment size. Default 64 KiB. */
  fragmentSize?: number;
  /** Replay buffer: bytes sent and not yet acknowledged. Default 4 MiB. */
  maxBufferBytes?: number;
  /** Replay buffer: frames sent and not yet acknowledged. Default 4096. */
  maxBufferFrames?: number;
  /** Largest batch of frames accepted in one read. Default 1 MiB. */
  maxBatchBytes?: number;
  /** Resend from the last ack if it does not advance within this. Default 10. */
  retransmitTimeout?: number;
  /** PING after this long without sending. Default 20. */
  heartbeatInterval?: number;
  /** A transport without progress this long is reported stalled (and demoted). Default 15. */
  stallTimeout?: number;
  /** The session expires after this long without a transport. Default 60. */
  resumeGrace?: number;
  /** How long a session close waits for the peer's answer. Default 10. */
  closeTimeout?: number;
}

/** The third argument of `new HopSocket(url, protocols, options)`; times in milliseconds. */
export interface HopSocketOptions {
  /** Base URL of the gateway (`https://gw.example`; a path prefix is kept). Default: the origin of `url` (ws: -> http:, wss: -> https:). */
  gateway?: string | URL;
  /** Allowed transports, in order of preference. Default `["websocket", "long-poll"]`. */
  transports?: ReadonlyArray<"websocket" | "long-poll">;
  /** Opening the session, a WebSocket handshake, one POST. Default 10000. */
  connectTimeout?: number;
  /** A new WebSocket must answer a probe round trip within this, or it is not used. Default 5000. */
  probeTimeout?: number;
  /** A held GET longer than this counts as a dead path. Default 45000. */
  pollTimeout?: number;
  /** While on long-poll, try the WebSocket again after this, doubling on each failure. Default 2000. */
  reprobeInitial?: number;
  /** Upper bound of the re-probe delay. Default 60000. */
  reprobeMax?: number;
  /** First retry delay after a lost transport, doubling. Default 100. */
  reconnectInitial?: number;
  /** Upper bound of the retry delay. Default 5000. */
  reconnectMax?: number;
  /** Largest batch accepted from the gateway, bytes. Default 8 MiB. */
  maxBatchBytes?: number;
  /**
   * A hop session PING after this much silence, at first. Default 20000 (or
   * `session.heartbeatInterval`). Two WebSockets closed by the path after
   * about the same idle time lower it to half that time (at least 2000), for
   * every HopSocket of the page to the same gateway: see `heartbeatLearned`.
   */
  heartbeat?: number;
  /** Largest message either way, bytes. Default 16 MiB. */
  maxMessageSize?: number;
  /** Queueing more than this fails the socket with close code 1009. Default 64 MiB. */
  maxBufferedAmount?: number;
  /** After `close()`, the endpoint's answer must come within this, else close 1006. Default 10000. */
  closeTimeout?: number;
  /** Extra handshake headers for the endpoint, e.g. `[["Authorization", "Bearer …"]]`. */
  headers?: ReadonlyArray<readonly [string, string]>;
  /** Hop session timers (seconds) and limits. */
  session?: HopSessionOptions;
  /**
   * A bearer token for the gateway, or a function giving one (it may return a
   * Promise; it is asked again for each request, so a refreshed token is
   * used). Sent as `Authorization: Bearer <token>` on the gateway's HTTP
   * requests and, since a browser cannot set headers on a WebSocket, as
   * `access_token=<token>` in the hop WebSocket's query (which access logs may
   * keep: prefer short-lived tokens). For a proxy in front
   * of the gateway that checks it; the endpoint's own auth goes in `headers`.
   */
  auth?: string | null | (() => string | null | Promise<string | null>);
  /** More headers for the gateway's HTTP requests (not its WebSocket). Across origins only `Authorization` passes its CORS. */
  sessionHeaders?: Record<string, string>;
  /** Send cookies to a gateway on another origin (it needs `--allow-credentials`). Default false. */
  withCredentials?: boolean;
  /** One line per transport change (`=`) and protocol error (`<`), e.g. `console.debug`. */
  log?: (line: string) => void;
  /** For tests and non-browser hosts. Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** For tests and non-browser hosts. Default: the global `WebSocket`. */
  WebSocket?: typeof WebSocket;
}

/**
 * Why the session moved to a transport: `session_opened`, `upgrade_failed`
 * (opened on long-poll, the WebSocket did not work), `probe_succeeded`
 * (long-poll -> websocket), `stalled` (websocket -> long-poll: no progress),
 * `websocket_closed`, `transport_lost` (resumed after losing it).
 */
export type HopTransportReason =
  | "session_opened" | "upgrade_failed" | "probe_succeeded" | "stalled" | "websocket_closed" | "transport_lost";

/** `transport`: the session is now carried by `transport` (fired before `open` for the first one). */
export interface HopTransportEvent extends Event {
  readonly transport: "websocket" | "long-poll";
  /** The transport before, or "none" for the first. */
  readonly previous: HopTransport;
  readonly reason: HopTransportReason;
  /** A sentence for people (a code in the minified builds), or "". */
  readonly detail: string;
}

/** `reconnecting`: the transport was lost; messages wait (nothing is lost) until `resumed`. */
export interface HopReconnectingEvent extends Event {
  readonly reason: "websocket_closed" | "transport_lost";
  readonly detail: string;
}

/** `resumed`: a transport carries the session again after `reconnecting`. */
export interface HopResumedEvent extends Event {
  readonly transport: "websocket" | "long-poll";
  /** Milliseconds since `reconnecting`. */
  readonly downtime: number;
}

export interface HopSocketEventMap {
  open: Event;
  message: MessageEvent;
  error: Event;
  close: CloseEvent;
  /** Beyond WebSocket: what carries the session changed. */
  transport: HopTransportEvent;
  /** Beyond WebSocket: the transport was lost, the session is resuming. */
  reconnecting: HopReconnectingEvent;
  /** Beyond WebSocket: the session resumed. */
  resumed: HopResumedEvent;
}

/**
 * A WebSocket-compatible object whose connection goes through a hopgate
 * gateway: over a WebSocket where the path allows one, over HTTP
 * long-polling where it does not, switching without losing, duplicating or
 * reordering anything.
 *
 * Differences from WebSocket: `extensions` is always `""`; an abnormal close
 * event (1006) carries a diagnostic `reason`; `transport` is extra.
 */
export declare class HopSocket extends EventTarget {
  /**
   * @param url  the endpoint (ws:, wss:, http:, https: or relative); its path
   *   and query are asked of the gateway's upstream, its host is sent as `Host`
   * @param protocols  subprotocols to offer the endpoint
   * @throws {DOMException} SyntaxError for a bad URL or subprotocol list, as `WebSocket`
   * @throws {TypeError} for a bad `options.gateway`
   */
  constructor(url: string | URL, protocols?: string | string[], options?: HopSocketOptions);

  /** Whether this platform has what HopSocket needs (fetch, AbortController, TextEncoder, BigInt in DataView, EventTarget). */
  static readonly supported: boolean;
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /** The endpoint URL, as a ws: or wss: URL. */
  readonly url: string;
  readonly readyState: 0 | 1 | 2 | 3;
  /** The subprotocol the endpoint picked, or `""`. */
  readonly protocol: string;
  /** Always `""`. */
  readonly extensions: string;
  /** Bytes given to `send()` and not yet acknowledged by the gateway. */
  readonly bufferedAmount: number;
  /** How binary messages are delivered; other values are ignored, as in browsers. Default `"blob"`. */
  binaryType: BinaryType;
  /** What carries the hop session right now (not in WebSocket). */
  readonly transport: HopTransport;
  /** Milliseconds of silence before a hop PING now: `options.heartbeat`, or lower once learned (not in WebSocket). */
  readonly heartbeat: number;
  /** The idle limit (ms) the path was seen to close WebSockets at, or `null` (not in WebSocket). */
  readonly heartbeatLearned: number | null;

  onopen: ((this: HopSocket, ev: Event) => any) | null;
  onmessage: ((this: HopSocket, ev: MessageEvent) => any) | null;
  onerror: ((this: HopSocket, ev: Event) => any) | null;
  onclose: ((this: HopSocket, ev: CloseEvent) => any) | null;

  /**
   * Send a text or binary message.
   * @throws {DOMException} InvalidStateError while CONNECTING
   */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void;

  /**
   * Close the connection; messages sent before still go first.
   * @param code  1000 or 3000-4999
   * @param reason  at most 123 UTF-8 bytes
   * @throws {DOMException} InvalidAccessError (code), SyntaxError (reason)
   */
  close(code?: number, reason?: string): void;

  addEventListener<K extends keyof HopSocketEventMap>(
    type: K,
    listener: (this: HopSocket, ev: HopSocketEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof HopSocketEventMap>(
    type: K,
    listener: (this: HopSocket, ev: HopSocketEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

declare global {
  interface Window {
    /** Set by the classic-script build (dist/hopgate.iife.js). */
    HopSocket: typeof HopSocket;
  }
}
