"""TunnelLink: asyncio glue carrying HTTP exchanges and endpoint WebSockets over a hop session.

This is the I/O side of ``docs/tunnel.md``: one :class:`TunnelLink` owns one
:class:`~gateway.core.tunnel.Tunnel` core and drives it over one live
:class:`~gateway.transports.hopsession.HopSession`. Unlike the rest of
``gateway/tunnel/`` it does I/O (asyncio, aiohttp); the core stays pure.

Theory of operation
===================

Roles. The gateway that opened the hop session (``opener=True``, the
downstream one) opens streams: :meth:`TunnelLink.forward` for an HTTP
exchange, :meth:`TunnelLink.forward_websocket` for an endpoint WebSocket, each
run by the aiohttp handler task of the request it carries. The other end
(``opener=False``) answers them: it replays each stream as HTTP to its
configured ``upstream`` through the :class:`~gateway.edges.forward.Forwarder`
(one task per exchange), or, when ``next_hop()`` gives a live link, relays it
frame by frame onto that link (``gateway.glue.relay``; no task at all).
Streams only flow downstream -> upstream: a stream the upstream peer opens
towards the opener is refused, so a server gateway can never make a client
gateway issue requests.

No task per message. The session calls ``on_message`` for each tunnel message
(one batch of frames): the link feeds it to the core and routes the events
synchronously to per-stream *sinks* (a mailbox an exchange awaits, or a relay
half). Output is pulled by one coalescing *flush* (``loop.call_soon``, so every
frame queued in one loop turn leaves in one session message) that moves
``next_message()`` into ``hop.send()`` while the session is writable;
``on_writable`` flushes again when the replay buffer frees up.

Flow control is tied to the real consumers. Request body bytes are
``consumed()`` when the origin connection took them (the body generator is
resumed by aiohttp after the previous chunk was written), response bytes when
``await response.write()`` returned downstream, WebSocket messages when the
endpoint's send returned, relayed bytes when the next tunnel queued them. A
slow reader therefore only stalls its own stream; the core's scheduler keeps
the others moving.

Headers: which side adds what. The tunnel stream stands in for the plain
HTTP/1.1 connection between two gateways, and each gateway applies exactly
the rules it applies on a plain hop:

* the downstream gateway sends, in OPEN, the head it would have sent the next
  gateway over plain HTTP (``Forwarder.outgoing_headers``: hop-by-hop fields
  stripped, ``Expect`` answered locally, its own ``Via``, ``X-Forwarded-For``
  with its client's address, ``-Proto``, ``-Host``, ``Host`` rewritten to the
  next hop's unless ``preserve_host``) and a target as the next hop would get
  it (:func:`tunnel_target`);
* the upstream gateway treats that head as a request received over HTTP/1.1
  from the downstream gateway (``Forwarder.replay_headers``): strips hop-by-hop
  fields again, adds its own ``Via`` and the downstream gateway's address
  (``peer_ip``) to ``X-Forwarded-For``, and rewrites ``Host`` to its
  upstream's unless ``preserve_host``;
* responses likewise: the upstream side passes the origin's head through
  ``Forwarder.downstream_headers`` (its ``Via``), the downstream side through
  ``response_headers_for_downstream`` once more (its own ``Via``).

So the origin sees what it would see on a plain path through the same
gateways (``X-Forwarded-For`` lacks the downstream gateway's address only if
the link was built without ``peer_ip``).

Framing is ours, never the peer's (``framing.py``). A stream delimits its
body itself, so a head's ``Content-Length``/``Transfer-Encoding`` are claims:
the answering side refuses an OPEN whose claim is invalid or contradicts the
stream (``PROTOCOL``, nothing sent), counts a declared length as the DATA
arrive (``_route``: one byte too many or an END that comes short resets the
stream before any of it is passed on) and sends the origin only the length
it checked, or a chunked body. A request body that does not end cleanly
raises in the body generator, so aiohttp sends no end of body and closes
that origin connection instead of pooling it. The opening side checks the
RESPONSE head the same way and cuts its client's connection rather than
let a body pass or fall short of its length; a relay checks both.

Origin connections. The answering side runs at most ``session_connections``
origin exchanges (HTTP and WebSocket) per session; further streams wait for
a slot in order (their OPEN is not refused; a reset takes them out of the
queue). The gateway's total is the aiohttp connector's ``--max-connections``.

Never an open proxy. The answering side accepts only origin-form targets
(``/``, not ``//``, no control characters: absolute-form, authority-form and
``*`` are refused), no ``CONNECT``, header fields without CR/LF/NUL, and
builds the URL under its own ``upstream`` (checked again after parsing);
anything else is reset with ``PROTOCOL`` and logged. ``Host`` cannot steer
the connection: it always goes to ``upstream``.

Exactly once. :meth:`TunnelLink.forward` raises :class:`NotSent` only while
the OPEN has provably not been handed to the session (``Tunnel.open_sent``);
from then on every failure is an HTTP answer: session loss -> 502 "not
retried", a peer RESET -> its code's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config
from gateway.core import headers as hdr
from gateway.core.targets import BadTarget, join_upstream
from gateway.core.tunnel.errors import RemoteProtocolError, ResetCode
from gateway.core.tunnel.events import (
    DataReceived,
    Event,
    Headers,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
    WebSocketAccepted,
    WebSocketClosed,
    WebSocketMessage,
    WebSocketRequested,
)
from gateway.core.tunnel.frames import MAX_REASON_BYTES
from gateway.core.tunnel.framing import (
    BodyCounter,
    Framing,
    FramingError,
    request_framing,
    response_framing,
)
from gateway.core.tunnel.streams import Tunnel, TunnelConfig
from gateway.edges.forward import Forwarder
from gateway.transports.aiohttp_internals import RelayedResponse, limit_reads
from gateway.transports.hopsession import SessionClosedError
from gateway.transports.http import (
    CLOSE_TIMEOUT,
    MAX_REFUSAL_BODY,
    OriginRefused,
    Peer,
    aiohttp_limit,
    close_peer,
    connect_origin,
    offered_protocols,
    refusal_headers,
    request_body,
    run_shielded,
    sendable,
    strip_handshake,
    text_error,
)

if TYPE_CHECKING:
    from gateway.transports.hopsession import HopSession

__all__ = ["NotSent", "TunnelLink", "answering_config", "check_request", "tunnel_target"]

log = logging.getLogger("hopgate.tunnel")

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET: Final = re.compile(rb"[\x00-\x20\x7f]")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]")
#: The tunnel core's ceiling for one WebSocket message (TunnelConfig refuses more).
_MAX_TUNNEL_WS_MESSAGE: Final = 256 * 1024 * 1024
# Bytes one receive from an origin connection may return (see limit_reads).
_ORIGIN_READ: Final = 16 * 1024
# Receive windows beyond BASE_WINDOW one session may hold (TunnelConfig.session_window).
_SESSION_WINDOW: Final = 8 * 1024 * 1024
# Undelivered events one stream's Mailbox may hold, and all of a link's
# Mailboxes together. Windows count payload bytes only, so a peer sending
# tiny or empty messages to an endpoint that does not read could otherwise
# queue ~100 bytes of event per message without end; beyond either bound the
# stream is reset TOO_LARGE. The session total is summed every
# _BACKLOG_CHECK events of a stream's backlog (cheap, and exact: only live
# Mailboxes are registered).
MAX_STREAM_BACKLOG: Final = 4096
MAX_SESSION_BACKLOG: Final = 32768
_BACKLOG_CHECK: Final = 256
BACKLOG_REASON: Final = "too many undelivered messages: the receiver is not reading"
_BAD_HANDSHAKE: Final = (
    "invalid WebSocket handshake: needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13"
)


class NotSent(Exception):
    """The request never left: the caller may send it another way (plain HTTP)."""


class BodyAborted(Exception):
    """A tunnelled request body did not end cleanly; its origin connection must go."""


class Sink(Protocol):
    """Where a link routes the events of one stream."""

    def deliver(self, event: Event) -> None: ...


# -- pure helpers --------------------------------------------------------------------------


def answering_config(config: Config) -> TunnelConfig:
    """The tunnel limits a gateway applies to the sessions other gateways open to it."""
    return TunnelConfig(
        # An endpoint WebSocket message may be as large as a session message.
        max_ws_message=min(config.max_message_size, _MAX_TUNNEL_WS_MESSAGE),
        max_streams=config.max_streams,
        session_reassembly=config.session_reassembly,
        max_unread=config.max_unread_bytes,
        session_window=_SESSION_WINDOW,
    )


def tunnel_target(upstream: URL | None, request: web.BaseRequest) -> str:
    """The origin-form target the next hop would receive on a plain path (base path kept)."""
    base = upstream.raw_path.rstrip("/") if upstream is not None else ""
    return base + request.raw_path


def check_request(method: str, target: bytes, headers: Headers) -> str | None:
    """Why a tunnelled request head must be refused, or None if it may be replayed."""
    if method == "CONNECT" or not _TOKEN.fullmatch(method.encode("ascii", "replace")):
        return f"method {method!r:.40} is not allowed through a tunnel"
    if not target.startswith(b"/") or target.startswith(b"//"):
        return f"target {target[:60]!r} is not origin-form (absolute/authority form refused)"
    if _BAD_TARGET.search(target):
        return "target contains whitespace or control characters"
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            return f"malformed header field {name[:40]!r}"
    return None


def under_upstream(upstream: URL, target: bytes) -> URL | None:
    """``target`` below ``upstream``'s base path, or None if it would leave that origin."""
    try:
        return join_upstream(upstream, target.decode("utf-8", "surrogateescape"))
    except BadTarget:
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def decode_headers(raw: Headers) -> CIMultiDict[str]:
    return CIMultiDict((_text(name), _text(value)) for name, value in raw)


def _pairs(headers: CIMultiDict[str]) -> Iterable[tuple[str, str]]:
    return headers.items()


def short(reason: str) -> str:
    """``reason`` cut to what a RESET/CLOSE frame carries, on a character boundary."""
    data = reason.encode("utf-8", "replace")
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def set_framing(headers: CIMultiDict[str], length: int | None) -> None:
    """Replace whatever framing fields ``headers`` carry with our own checked ``length``.

    ``None``: no ``Content-Length``; aiohttp sends a streamed body chunked (or
    a ``Content-Length: 0`` for a body-less POST), a body-less GET as is.
    """
    headers.popall("Content-Length", None)
    headers.popall("Transfer-Encoding", None)
    if length is not None:
        headers["Content-Length"] = str(length)


def _response_has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def _reset_status(code: int) -> int:
    try:
        return ResetCode(code).http_status
    except ValueError:
        return ResetCode.INTERNAL.http_status


def _reset_close_code(code: int) -> int:
    try:
        return ResetCode(code).ws_close_code
    except ValueError:
        return ResetCode.INTERNAL.ws_close_code


# -- per-stream mailboxes ------------------------------------------------------------------


class _EndpointDone:
    """Posted by a WebSocket reader when its endpoint closed (or vanished)."""

    __slots__ = ("closed",)

    def __init__(self, *, closed: bool) -> None:
        self.closed = closed


class Mailbox:
    """Events of one stream for the task that runs it; a reset may cancel that task."""

    __slots__ = ("_arrived", "_writable", "events", "reset", "task")

    def __init__(self) -> None:
        self.events: deque[Event | _EndpointDone] = deque()
        self.reset: StreamReset | None = None
        self.task: asyncio.Task[Any] | None = None
        self._arrived = asyncio.Event()
        self._writable = asyncio.Event()

    def deliver(self, event: Event) -> None:
        if type(event) is StreamWritable:
            self._writable.set()
            return
        if type(event) is StreamReset:
            if self.reset is not None:
                return
            self.reset = event
            self._writable.set()
            task = self.task
            if task is not None and task is not asyncio.current_task():
                task.cancel()  # the origin request goes at once (a held poll, an upload)
        self.events.append(event)
        self._arrived.set()

    @property
    def backlog(self) -> int:
        """Events delivered and not taken yet."""
        return len(self.events)

    def post(self, item: _EndpointDone) -> None:
        self.events.append(item)
        self._arrived.set()

    async def next_event(self) -> Event | _EndpointDone:
        while not self.events:
            self._arrived.clear()
            await self._arrived.wait()
        return self.events.popleft()

    async def wait_writable(self, tunnel: Tunnel, sid: int) -> bool:
        """True once ``sid`` takes more data; False if the stream was reset."""
        while not tunnel.is_writable(sid):
            if self.reset is not None or tunnel.closed:
                return False
            self._writable.clear()
            await self._writable.wait()
        return True


# -- the link ---------------------------------------------------------------------------------


class _LinkLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        assert self.extra is not None
        return f"[{self.extra['sid']}] {msg}", kwargs


class TunnelLink:
    """A Tunnel core driven over one HopSession."""

    def __init__(
        self,
        hop: HopSession,
        *,
        opener: bool,
        forwarder: Forwarder,
        upstream: URL | None,
        next_hop: Callable[[], TunnelLink | None] | None = None,
        config: TunnelConfig | None = None,
        peer_ip: str | None = None,
        session_connections: int | None = None,
        address_slots: asyncio.Semaphore | None = None,
    ) -> None:
        """``upstream``: this gateway's configured upstream (the origin behind a server
        gateway; the next gateway for a client one, used for the ``Host`` it would
        send). ``peer_ip``: the other gateway's address, for ``X-Forwarded-For``.
        ``session_connections``: origin exchanges the answering side runs at once
        (default ``--session-connections``); further streams wait for a slot.
        ``address_slots``: origin exchanges shared by every session of the peer's
        address, so one address cannot take all of ``--max-connections``.
        """
        self._hop = hop
        self._opener = opener
        self._forwarder = forwarder
        self._upstream = upstream
        self._next_hop = next_hop
        # An endpoint WebSocket message may be as large as a session message
        # (``--max-message-size``), not just the tunnel core's default.
        self.config = config or TunnelConfig(max_ws_message=hop.settings.max_message_size)
        self.peer_ip = peer_ip
        self.tunnel = Tunnel(self.config, opener=opener)
        self.stats = forwarder.stats
        self.name = str(upstream) if upstream is not None and opener else hop.session_id[:6]
        self.log = _LinkLog(log, {"sid": hop.session_id[:6]})
        self._loop = asyncio.get_running_loop()
        self._sinks: dict[int, Sink] = {}
        #: Streams whose incoming body must add up to a declared Content-Length.
        self._counters: dict[int, BodyCounter] = {}
        slots = session_connections or forwarder.config.session_connections
        self._origin_slots = asyncio.Semaphore(slots)
        self._address_slots = address_slots
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flush_due = False
        self._dispatching = False
        self._closing = False
        self._writable = asyncio.Event()
        hop.set_handlers(
            on_message=self._on_message, on_writable=self._on_writable, on_closed=self._on_closed
        )

    def __repr__(self) -> str:
        side = "opener" if self._opener else "answerer"
        return f"<TunnelLink {self.name} {side} streams={self.tunnel.stream_count}>"

    @property
    def alive(self) -> bool:
        return not (self._closing or self.tunnel.closed or self._hop.closed)

    @property
    def hop(self) -> HopSession:
        return self._hop

    @property
    def forwarder(self) -> Forwarder:
        return self._forwarder

    @property
    def upstream(self) -> URL | None:
        return self._upstream

    async def close(self) -> None:
        """Stop every stream (downstream: 502 / 1001; upstream: origin requests cancelled), then
        close the hop session gracefully."""
        if not self._closing:
            self._closing = True
            if not self.tunnel.closed:
                self.tunnel.close_all("tunnel link closed")
                self.dispatch()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not self._hop.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._hop.settings.close_timeout):
                    await self._hop.close()

    # -- session side ------------------------------------------------------------------------

    def _on_message(self, data: bytes | str) -> None:
        tunnel = self.tunnel
        if tunnel.closed:
            return
        try:
            tunnel.receive_message(data)
        except RemoteProtocolError as exc:
            self.log.warning("< tunnel protocol error, closing the session: %s", exc.reason)
            self.spawn(self._hop.close(exc.code, short(exc.reason)))
        self.dispatch()
        self.schedule_flush()

    def _on_writable(self) -> None:
        self._writable.set()
        self.flush()

    def _on_closed(self, code: int, reason: str) -> None:
        self._writable.set()
        if not self.tunnel.closed:
            self.tunnel.close_all(short(f"hop session closed ({code} {reason})".strip()))
        self.dispatch()

    def schedule_flush(self) -> None:
        """Flush at the end of this loop turn: everything queued until then shares a message."""
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand the tunnel's output to the session while it can take it."""
        self._flush_due = False
        hop, tunnel = self._hop, self.tunnel
        try:
            while not tunnel.closed and hop.writable:
                message = tunnel.next_message()
                if message is None:
                    break
                hop.send(message)
        except SessionClosedError:
            pass  # on_closed follows
        self.dispatch()  # next_message reports StreamWritable

    def dispatch(self) -> None:
        """Route the core's events to their streams (re-entrant calls fold into the outer one)."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while events := self.tunnel.events_received():
                for event in events:
                    self._route(event)
        finally:
            self._dispatching = False

    def _route(self, event: Event) -> None:
        if isinstance(event, RequestReceived | WebSocketRequested):
            self._accept(event)
            return
        sid = event.stream_id
        sink = self._sinks.get(sid)
        if sink is None:
            # The exchange finished early (an origin that answered before
            # reading the whole upload): drop the rest. No reset here: it
            # would also drop the end of our response still queued in the
            # core; the downstream side resets once it has that response.
            if isinstance(event, DataReceived):
                self.tunnel.consumed(sid, len(event.data))
            elif isinstance(event, WebSocketMessage):
                self.tunnel.consumed(sid, event.size)
            return
        kind = type(event)
        if kind is StreamReset:
            del self._sinks[sid]
            self._counters.pop(sid, None)
        elif (
            (kind is DataReceived or kind is StreamEnded)
            and sid in self._counters
            and not self._counted(sid, event)
        ):
            return
        sink.deliver(event)
        if (kind is WebSocketMessage or kind is DataReceived) and type(sink) is Mailbox:
            self._check_backlog(sid, sink)

    def _check_backlog(self, sid: int, box: Mailbox) -> None:
        """Reset a stream whose receiver lets events pile up (see MAX_STREAM_BACKLOG)."""
        held = box.backlog
        if held < _BACKLOG_CHECK or held % _BACKLOG_CHECK:
            return
        if held < MAX_STREAM_BACKLOG:
            total = sum(b.backlog for b in self._sinks.values() if type(b) is Mailbox)
            if total < MAX_SESSION_BACKLOG:
                return
        self.log.warning("< stream %d reset: %d events undelivered", sid, held)
        self.reset(sid, ResetCode.TOO_LARGE, BACKLOG_REASON)

    def _counted(self, sid: int, event: Event) -> bool:
        """Count body bytes against the declared length; on a lie reset and return False.

        Checked as the frame arrives, before any sink sees it: the excess is never
        passed on, and the sink gets the reset instead of a body that looks whole.
        """
        counter = self._counters[sid]
        if isinstance(event, DataReceived):
            problem = counter.data(len(event.data))
        else:
            problem = counter.ended()
            del self._counters[sid]
        if problem is None:
            return True
        self.log.warning("< stream %d reset: %s", sid, problem)
        self.reset(sid, ResetCode.PROTOCOL, problem)
        return False

    def count_body(self, sid: int, length: int) -> None:
        """The body arriving on ``sid`` must be exactly ``length`` bytes, or the stream is reset."""
        self._counters[sid] = BodyCounter(length)

    def register(self, sid: int, sink: Sink) -> None:
        self._sinks[sid] = sink

    def unregister(self, sid: int, sink: Sink) -> None:
        if self._sinks.get(sid) is sink:
            del self._sinks[sid]
            self._counters.pop(sid, None)

    def reset(self, sid: int, code: int, reason: str) -> None:
        """Reset ``sid`` and tell its sink, as if the peer had (the core reports no event)."""
        reason = short(reason)
        self.tunnel.reset(sid, code, reason)
        self.schedule_flush()
        self._counters.pop(sid, None)
        sink = self._sinks.pop(sid, None)
        if sink is not None:
            sink.deliver(
                StreamReset(stream_id=sid, code=code, reason=reason, remote=False, retry_safe=False)
            )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- answering side: a stream the peer opened -----------------------------------------------

    def _accept(self, event: RequestReceived | WebSocketRequested) -> None:
        sid = event.stream_id
        method = event.method if isinstance(event, RequestReceived) else "GET"
        if self._opener:
            self.log.warning("< refused stream %d: the upstream side may not open streams", sid)
            self.reset(sid, ResetCode.REFUSED, "a downstream gateway takes no streams")
            return
        if self._closing:
            self.reset(sid, ResetCode.REFUSED, "gateway shutting down")
            return
        has_body = isinstance(event, RequestReceived) and event.has_body
        problem = check_request(method, event.target, event.headers)
        framing = Framing(None, counted=False)
        if problem is None:
            try:
                framing = request_framing(event.headers, has_body=has_body)
            except FramingError as exc:
                problem = exc.reason
        if problem is not None:
            self.log.warning("< refused stream %d: %s", sid, problem)
            self.reset(sid, ResetCode.PROTOCOL, problem)
            return
        if framing.counted and framing.length is not None:
            self.count_body(sid, framing.length)
        following = self._next_hop() if self._next_hop is not None else None
        if following is not None and following is not self and following.alive:
            from .relay import relay_stream

            relay_stream(self, following, event, framing)
            return
        if self._upstream is None:
            self.log.warning("< refused stream %d: no upstream configured", sid)
            self.reset(sid, ResetCode.REFUSED, "this gateway has no upstream")
            return
        target = under_upstream(self._upstream, event.target)
        if target is None:
            self.log.warning(
                "< refused stream %d: target %r leaves the upstream", sid, event.target
            )
            self.reset(sid, ResetCode.PROTOCOL, "target does not stay on this gateway's upstream")
            return
        box = Mailbox()
        self._sinks[sid] = box
        if isinstance(event, RequestReceived):
            box.task = self.spawn(self._serve_http(event, framing, target, box))
        else:
            box.task = self.spawn(self._serve_websocket(event, target, box))

    async def _serve_http(
        self, event: RequestReceived, framing: Framing, target: URL, box: Mailbox
    ) -> None:
        sid, forwarder = event.stream_id, self._forwarder
        origin_key = str(self._upstream)
        headers = forwarder.replay_headers(
            decode_headers(event.headers), target, client_ip=self.peer_ip
        )
        set_framing(headers, framing.length)
        body = self._tunnel_body(sid, box) if event.has_body else None
        self.stats.upstream(origin_key).requests += 1
        self.stats.active_streams += 1
        self.log.debug("< %d %s %s", sid, event.method, target.raw_path_qs)
        try:
            async with self._origin_slot(sid):
                await self._exchange(sid, box, event.method, target, headers, body)
        except asyncio.CancelledError:
            if box.reset is None:
                self.reset(sid, ResetCode.CANCEL, "gateway stopping")
            raise
        finally:
            self.stats.active_streams -= 1
            self.unregister(sid, box)

    @contextlib.asynccontextmanager
    async def _origin_slot(self, sid: int) -> AsyncIterator[None]:
        """One of this session's origin slots, and one of its address's; waiters queue in order.

        Always the session's first, then the address's, so no two streams wait
        on each other's. A stream reset while it waits is cancelled out of the queue.
        """
        if self._origin_slots.locked():
            self.log.debug("= stream %d waits for one of the session's origin connections", sid)
        async with self._origin_slots:
            if self._address_slots is None:
                yield
                return
            if self._address_slots.locked():
                self.log.debug("= stream %d waits for one of its address's origin connections", sid)
            async with self._address_slots:
                yield

    async def _exchange(
        self,
        sid: int,
        box: Mailbox,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None,
    ) -> None:
        """One request to the origin and its response back over ``sid``.

        A request body that failed (reset, wrong length) makes aiohttp close the
        connection instead of returning it to the pool; a response not read to its
        end is closed too: a connection whose framing is in doubt is never reused.
        """
        origin_key = str(self._upstream)
        try:
            upstream = await self._forwarder.open_upstream(method, target, headers, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._origin_failed(sid, origin_key, exc, target)
            return
        try:
            await self._send_response(sid, box, method, upstream)
        except BaseException:
            upstream.close()
            raise
        finally:
            upstream.release()

    def _origin_failed(self, sid: int, origin_key: str, exc: Exception, target: URL) -> None:
        """The origin was unreachable: reset the stream with the reason a 502/504 gives."""
        self.stats.upstream(origin_key).errors += 1
        status, message = self._forwarder.describe_failure(exc, target)
        code = ResetCode.TIMEOUT if status == 504 else ResetCode.CONNECT_FAILED
        self.reset(sid, code, message)

    async def _tunnel_body(self, sid: int, box: Mailbox) -> AsyncIterator[bytes]:
        """The request body as it arrives; each chunk is credited once the origin took it.

        A reset (the peer's, or ours because the body broke its declared length)
        raises instead of ending: aiohttp then sends no end of body and closes
        the connection, so the origin never takes a truncated body as complete.
        """
        tunnel = self.tunnel
        while True:
            event = await box.next_event()
            if isinstance(event, DataReceived):
                yield event.data
                tunnel.consumed(sid, len(event.data))
                self.schedule_flush()
            elif isinstance(event, StreamEnded):
                return
            else:
                reason = event.reason if isinstance(event, StreamReset) else "stream gone"
                raise BodyAborted(f"request body aborted: {reason}")

    async def _send_response(
        self, sid: int, box: Mailbox, method: str, upstream: aiohttp.ClientResponse
    ) -> None:
        tunnel = self.tunnel
        has_body = _response_has_body(method, upstream.status)
        headers = self._forwarder.downstream_headers(upstream)
        tunnel.respond(
            sid, upstream.status, upstream.reason or "", _pairs(headers), has_body=has_body
        )
        self.schedule_flush()
        if not has_body:
            return
        limit_reads(upstream, _ORIGIN_READ)  # (+25 MiB RSS for 64 stalled streams without)
        try:
            async for chunk in upstream.content.iter_any():
                if not await box.wait_writable(tunnel, sid):
                    return
                tunnel.send_data(sid, chunk)
                self.schedule_flush()
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            self.log.warning("upstream failed mid-response on stream %d: %r", sid, exc)
            code = ResetCode.TIMEOUT if timed_out else ResetCode.CANCEL
            self.reset(sid, code, f"upstream failed mid-response: {type(exc).__name__}")
            return
        tunnel.end(sid)
        self.schedule_flush()

    async def _serve_websocket(self, event: WebSocketRequested, target: URL, box: Mailbox) -> None:
        sid, forwarder, tunnel = event.stream_id, self._forwarder, self.tunnel
        origin_key = str(self._upstream)
        headers = forwarder.replay_headers(
            decode_headers(event.headers), target, client_ip=self.peer_ip
        )
        set_framing(headers, None)  # a handshake has no body (a declared one was refused)
        self.stats.upstream(origin_key).requests += 1
        try:
            async with self._origin_slot(sid):
                try:
                    origin = await connect_origin(
                        forwarder.client,
                        target,
                        headers,
                        list(event.protocols),
                        self.config.max_ws_message,
                    )
                except OriginRefused as refusal:
                    self._pass_refusal(sid, refusal)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._origin_failed(sid, origin_key, exc, target)
                    return
                tunnel.accept_websocket(sid, origin.protocol)
                self.schedule_flush()
                await self.bridge_websocket(sid, box, origin)
        except asyncio.CancelledError:
            if box.reset is None:
                self.reset(sid, ResetCode.CANCEL, "gateway stopping")
            raise
        finally:
            self.unregister(sid, box)

    def _pass_refusal(self, sid: int, refusal: OriginRefused) -> None:
        if refusal.body is None:
            self.reset(
                sid,
                ResetCode.CONNECT_FAILED,
                f"upstream refused the WebSocket with {refusal.status} and an oversized body",
            )
            return
        headers = refusal_headers(
            refusal.headers, refusal.http_version, self._forwarder.config.via_name
        )
        body = refusal.body
        tunnel = self.tunnel
        tunnel.respond(sid, refusal.status, refusal.reason or "", _pairs(headers), has_body=True)
        if body:
            tunnel.send_data(sid, body)  # bounded by MAX_REFUSAL_BODY; one call may exceed pending
        tunnel.end(sid)
        self.schedule_flush()

    # -- opening side: this gateway's client request goes through the tunnel ----------------

    async def forward(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> web.StreamResponse:
        """Carry ``request`` over the tunnel; ``target`` as :func:`tunnel_target` gives it.

        Raises :class:`NotSent` only if the OPEN never reached the session.
        """
        _check_own_target(target)
        if not self.alive:
            raise NotSent(f"hop session to {self.name} is closed")
        tunnel = self.tunnel
        headers = self._forwarder.outgoing_headers(request, self._upstream)
        has_body = request.body_exists
        box = Mailbox()
        sid = tunnel.open_http(request.method, target, _pairs(headers), has_body=has_body)
        self._sinks[sid] = box
        await self._hand_over(sid, box)
        self.stats.upstream(origin_key).requests += 1
        self.stats.active_streams += 1
        upload = self._loop.create_task(self._upload(sid, box, request)) if has_body else None
        try:
            return await self._receive_response(request, sid, box)
        except BaseException:
            self.reset(sid, ResetCode.CANCEL, "client went away")
            self.flush()
            raise
        finally:
            if upload is not None:
                if not upload.done():
                    upload.cancel()
                    self.reset(sid, ResetCode.CANCEL, "response complete before the request body")
                await asyncio.gather(upload, return_exceptions=True)
            self.unregister(sid, box)
            self.stats.active_streams -= 1

    async def _hand_over(self, sid: int, box: Mailbox) -> None:
        """Return once the OPEN of ``sid`` is in the session; else reset it and raise NotSent."""
        tunnel = self.tunnel
        self.flush()
        try:
            async with asyncio.timeout(self._forwarder.config.connect_timeout):
                while box.reset is None and not tunnel.open_sent(sid):
                    self._writable.clear()
                    await self._writable.wait()
                    self.flush()
        except TimeoutError:
            pass
        except BaseException:
            self.reset(sid, ResetCode.CANCEL, "client went away")
            raise
        reset = box.reset
        if reset is None and tunnel.open_sent(sid):
            return
        if reset is not None and not reset.retry_safe:
            return  # it did go: the reset is answered like any other
        self.reset(sid, ResetCode.CANCEL, "not sent")  # vanishes: its OPEN never left
        self.unregister(sid, box)
        why = reset.reason if reset is not None else "the session stayed full"
        raise NotSent(f"hop session to {self.name} could not take the request: {why}")

    async def _upload(self, sid: int, box: Mailbox, request: web.BaseRequest) -> None:
        tunnel = self.tunnel
        try:
            async for chunk in request_body(request):
                if not await box.wait_writable(tunnel, sid):
                    return
                tunnel.send_data(sid, chunk)
                self.schedule_flush()
        except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
            self.reset(sid, ResetCode.CANCEL, f"client request body failed: {type(exc).__name__}")
            return
        tunnel.end(sid)
        self.schedule_flush()

    async def _receive_response(
        self, request: web.BaseRequest, sid: int, box: Mailbox
    ) -> web.StreamResponse:
        head = await box.next_event()
        if not isinstance(head, ResponseReceived):
            assert isinstance(head, StreamReset), head
            return self._reset_answer(head)
        try:
            framing = response_framing(
                head.headers, has_body=head.has_body, method=request.method, status=head.status
            )
        except FramingError as exc:
            self.log.warning("< stream %d: response head refused: %s", sid, exc.reason)
            self.reset(sid, ResetCode.PROTOCOL, exc.reason)
            return text_error(502, f"hop session {self.name} sent a bad response: {exc.reason}")
        response = RelayedResponse(status=head.status, reason=_text(head.reason) or None)
        headers = hdr.response_headers_for_downstream(
            decode_headers(head.headers),
            http_version=(1, 1),
            via_name=self._forwarder.config.via_name,
        )
        set_framing(headers, framing.length)  # the peer's Transfer-Encoding never passes
        response.headers.extend(headers)
        await response.prepare(request)
        problem = await self._relay_body(sid, box, response, framing) if head.has_body else None
        if problem is not None:
            self.log.warning("= stream %d: response cut: %s", sid, problem)
            if request.transport is not None:
                request.transport.close()  # a truncated or overlong body must not look complete
            return response
        await response.write_eof()
        return response

    async def _relay_body(
        self, sid: int, box: Mailbox, response: web.StreamResponse, framing: Framing
    ) -> str | None:
        """Write the response body downstream; why the client connection must be cut, if so.

        A body that passes its declared length is stopped before the excess is
        written; one that ends short, or is reset, leaves the client a
        connection that must be closed, never a short body that looks whole.
        """
        tunnel = self.tunnel
        counter = BodyCounter(framing.length) if framing.length is not None else None
        while True:
            event = await box.next_event()
            if isinstance(event, DataReceived):
                size = len(event.data)
                if counter is not None and framing.counted:
                    problem = counter.data(size)
                    if problem is not None:
                        self.reset(sid, ResetCode.PROTOCOL, problem)
                        return problem
                if framing.counted:  # else a body a HEAD/304 answer cannot carry: dropped
                    await response.write(event.data)
                tunnel.consumed(sid, size)
                self.schedule_flush()
            elif isinstance(event, StreamEnded):
                short_body = counter.ended() if counter is not None and framing.counted else None
                if short_body is not None:
                    self.reset(sid, ResetCode.PROTOCOL, short_body)
                return short_body
            else:
                assert isinstance(event, StreamReset), event
                return f"stream reset mid-response: {event.reason}"

    def _reset_answer(self, reset: StreamReset) -> web.Response:
        if reset.code == ResetCode.SESSION_LOST and not reset.remote:
            return text_error(
                502, f"hop session to {self.name} lost after the request was sent; not retried"
            )
        status = _reset_status(reset.code)
        return text_error(status, f"{reset.reason or 'stream reset'} (via hop session {self.name})")

    async def forward_websocket(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> web.StreamResponse:
        """Carry the client's WebSocket over the tunnel; the 101 only if the origin gave one."""
        _check_own_target(target)
        offered = offered_protocols(request.headers)
        if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
            return text_error(400, _BAD_HANDSHAKE)
        if not self.alive:
            raise NotSent(f"hop session to {self.name} is closed")
        tunnel = self.tunnel
        headers = self._forwarder.outgoing_headers(request, self._upstream)
        strip_handshake(headers)
        box = Mailbox()
        sid = tunnel.open_websocket(target, _pairs(headers), offered)
        self._sinks[sid] = box
        await self._hand_over(sid, box)
        self.stats.upstream(origin_key).requests += 1
        accepted = False
        try:
            head = await box.next_event()
            if isinstance(head, StreamReset):
                return self._reset_answer(head)
            if isinstance(head, ResponseReceived):
                return await self._refusal_answer(sid, box, head)
            assert isinstance(head, WebSocketAccepted), head
            client = web.WebSocketResponse(
                protocols=(head.protocol,) if head.protocol else (),
                autoclose=False,
                autoping=False,
                compress=False,
                max_msg_size=aiohttp_limit(self.config.max_ws_message),
                timeout=CLOSE_TIMEOUT,
            )
            await client.prepare(request)
            accepted = True
        except BaseException:
            self.reset(sid, ResetCode.CANCEL, "client went away")
            raise
        finally:
            if not accepted:
                self.unregister(sid, box)
        await run_shielded(self._bridge_detached(sid, box, client))
        return client

    async def _bridge_detached(self, sid: int, box: Mailbox, client: web.WebSocketResponse) -> None:
        try:
            await self.bridge_websocket(sid, box, client)
        finally:
            self.unregister(sid, box)

    async def _refusal_answer(
        self, sid: int, box: Mailbox, head: ResponseReceived
    ) -> web.StreamResponse:
        body = bytearray()
        while head.has_body:
            event = await box.next_event()
            if isinstance(event, DataReceived):
                body += event.data
                self.tunnel.consumed(sid, len(event.data))
                self.schedule_flush()
                if len(body) > MAX_REFUSAL_BODY:
                    self.reset(sid, ResetCode.TOO_LARGE, "refusal body too large")
                    return text_error(502, "WebSocket refusal body over the limit")
            elif isinstance(event, StreamEnded):
                break
            else:
                assert isinstance(event, StreamReset), event
                return self._reset_answer(event)
        headers = refusal_headers(
            decode_headers(head.headers), (1, 1), self._forwarder.config.via_name
        )
        return web.Response(
            status=head.status, reason=_text(head.reason) or None, headers=headers, body=bytes(body)
        )

    # -- a WebSocket endpoint <-> its stream (both sides) -------------------------------------

    async def bridge_websocket(self, sid: int, box: Mailbox, peer: Peer) -> None:
        """Relay ``peer`` (the endpoint beside us) and stream ``sid`` until both sides closed."""
        self.stats.active_websockets += 1
        reader = self._loop.create_task(self._ws_reader(sid, box, peer))
        clean = False
        try:
            clean = await self._ws_writer(sid, box, peer, reader)
        finally:
            if not clean:
                self.reset(sid, ResetCode.CANCEL, "endpoint WebSocket gone")
                await close_peer(peer, 1001, "hop stream lost")
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.stats.active_websockets -= 1

    async def _ws_reader(self, sid: int, box: Mailbox, peer: Peer) -> None:
        """Endpoint -> stream; posts _EndpointDone when the endpoint closed or vanished."""
        tunnel = self.tunnel
        while True:
            msg = await peer.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                if not await box.wait_writable(tunnel, sid):
                    return
                tunnel.send_ws_message(sid, msg.data)
                self.schedule_flush()
            elif kind is WSMsgType.PING:
                await peer.pong(msg.data)
            elif kind is WSMsgType.PONG:
                continue
            elif kind is WSMsgType.CLOSING:
                return  # our own close() interrupted this receive
            elif kind is WSMsgType.CLOSE:
                tunnel.close_websocket(sid, sendable(msg.data), short(msg.extra or ""))
                self.schedule_flush()
                box.post(_EndpointDone(closed=True))
                return
            else:
                code = 1001
                if isinstance(msg.data, aiohttp.WebSocketError):
                    code = sendable(msg.data.code)
                tunnel.close_websocket(sid, code, "endpoint connection lost")
                self.schedule_flush()
                box.post(_EndpointDone(closed=False))
                return

    async def _ws_writer(
        self, sid: int, box: Mailbox, peer: Peer, reader: asyncio.Task[None]
    ) -> bool:
        """Stream -> endpoint; True when the close handshake completed on both sides."""
        tunnel = self.tunnel
        endpoint_done = False
        while True:
            if endpoint_done:
                try:
                    async with asyncio.timeout(2 * CLOSE_TIMEOUT):
                        event = await box.next_event()
                except TimeoutError:
                    return False
            else:
                event = await box.next_event()
            kind = type(event)
            if kind is WebSocketMessage:
                assert isinstance(event, WebSocketMessage)
                if not endpoint_done:
                    try:
                        if isinstance(event.data, str):
                            await peer.send_str(event.data)
                        else:
                            await peer.send_bytes(event.data)
                    except (ConnectionError, aiohttp.ClientError):
                        pass  # the reader reports the endpoint's end
                tunnel.consumed(sid, event.size)
                self.schedule_flush()
            elif kind is _EndpointDone:
                endpoint_done = True
            elif kind is WebSocketClosed:
                assert isinstance(event, WebSocketClosed)
                if endpoint_done:  # the far side's answer to our close
                    await close_peer(peer, sendable(event.code), event.reason)
                    return True
                if isinstance(peer, web.WebSocketResponse):
                    reader.cancel()  # aiohttp's server side reads the answer only then
                    await asyncio.gather(reader, return_exceptions=True)
                await close_peer(peer, sendable(event.code), event.reason)
                answer = sendable(peer.close_code) if peer.close_code else event.code
                tunnel.close_websocket(sid, answer, "")
                self.schedule_flush()
                return True
            else:
                assert isinstance(event, StreamReset), event
                await close_peer(peer, _reset_close_code(event.code), event.reason)
                return True


def _check_own_target(target: str) -> None:
    if not target.startswith("/") or target.startswith("//"):
        raise ValueError(f"tunnel targets are origin-form paths, not {target[:60]!r}")
