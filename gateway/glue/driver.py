"""TunnelDriver: one Tunnel core driven over one live HopSession, events routed to sinks.

The role-free half of a :class:`~gateway.glue.link.TunnelLink` (the roles
are ``opener.py`` and ``answerer.py``; ``relay.py`` works on two drivers).

No task per message. The session calls ``on_message`` for each tunnel message
(one batch of frames): the driver feeds it to the core and routes the events
synchronously to per-stream *sinks* (``mailbox.py``: a mailbox an exchange
awaits, or a relay half). A stream the peer opens goes to the stream handler
its owner set (the answering role); without one it is refused, so a server
gateway can never make a client gateway issue requests. Output is pulled by
one coalescing *flush* (``loop.call_soon``, so every frame queued in one loop
turn leaves in one session message) that moves ``next_message()`` into
``hop.send()`` while the session is writable; ``on_writable`` flushes again
when the replay buffer frees up.

Framing is ours, never the peer's (``framing.py``): for a stream whose head
declared a length, :meth:`TunnelDriver.count_body` makes ``_route`` count the
DATA as they arrive; one byte too many or an END that comes short resets the
stream before any of it is passed on.

Undelivered events are bounded too: windows count payload bytes only, so a
peer sending tiny or empty messages to an endpoint that does not read could
otherwise queue ~100 bytes of event per message without end (see
``MAX_STREAM_BACKLOG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from yarl import URL

from gateway.core.tunnel import Tunnel, TunnelConfig
from gateway.core.tunnel.errors import RemoteProtocolError, ResetCode
from gateway.core.tunnel.events import (
    DataReceived,
    Event,
    PushReceived,
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
from gateway.core.tunnel.framing import BodyCounter
from gateway.glue.heads import short
from gateway.glue.mailbox import Mailbox, Sink
from gateway.glue.origin import OriginClient
from gateway.transports.errors import SessionClosedError
from gateway.transports.handshake import TUNNEL_PACKED_HEADS, TUNNEL_WHOLE_ANSWERS
from gateway.transports.tasks import TaskSet

if TYPE_CHECKING:
    from gateway.transports.hopsession import HopSession

__all__ = [
    "BACKLOG_REASON",
    "LINK_CLOSED",
    "MAX_SESSION_BACKLOG",
    "MAX_STREAM_BACKLOG",
    "StreamHandler",
    "TunnelDriver",
]

log = logging.getLogger("hopgate.tunnel")

# Undelivered events one stream's Mailbox may hold, and all of a link's
# Mailboxes together; beyond either bound the stream is reset TOO_LARGE. The
# session total is summed every _BACKLOG_CHECK events of a stream's backlog
# (cheap, and exact: only live Mailboxes are registered). Per stream: a window
# grown to max_stream_window (1 MiB) whose sender turns to 64-byte messages
# just as its endpoint stops reading stays within it (a compliant sender is
# never reset); the session bound keeps the memory where it was.
MAX_STREAM_BACKLOG: Final = 16384
MAX_SESSION_BACKLOG: Final = 32768
_BACKLOG_CHECK: Final = 256
BACKLOG_REASON: Final = "too many undelivered messages: the receiver is not reading"

#: The events of a stream that exists: routed to its sink (the rest open streams, or PUSH).
_STREAM_EVENTS: Final = frozenset(
    {
        DataReceived,
        ResponseReceived,
        StreamEnded,
        StreamReset,
        StreamWritable,
        WebSocketAccepted,
        WebSocketClosed,
        WebSocketMessage,
    }
)

#: Why streams end when this gateway closes the link itself (its stop), not the session dying.
LINK_CLOSED: Final = "tunnel link closed"

#: Takes a stream the peer opened (checked by nothing yet).
StreamHandler = Callable[[RequestReceived | WebSocketRequested], None]


class _LinkLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line carries the session id's first characters (``extra["session"]``)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        # The session goes in the record, not the text: gateway.logs shows it
        # as "[2Avsnp…]" in a text line and as "session" in a JSON one.
        assert self.extra is not None
        return msg, {**kwargs, "extra": {**self.extra, **(kwargs.get("extra") or {})}}


class TunnelDriver:
    """A Tunnel core driven over one HopSession; streams' events go to their sinks."""

    # One per hop session, thousands idle at once: no per-instance dict.
    __slots__ = (
        "_closing",
        "_counters",
        "_dispatching",
        "_flush_due",
        "_hop",
        "_sinks",
        "_tasks",
        "_writable",
        "config",
        "forwarder",
        "log",
        "loop",
        "name",
        "on_lost",
        "on_push",
        "on_stream",
        "opener",
        "peer_ip",
        "stats",
        "tunnel",
        "upstream",
    )

    def __init__(
        self,
        hop: HopSession,
        *,
        opener: bool,
        forwarder: OriginClient,
        upstream: URL | None,
        config: TunnelConfig | None = None,
        peer_ip: str | None = None,
    ) -> None:
        """``upstream``: this gateway's configured upstream (the origin behind a server
        gateway; the next gateway for a client one, used for the ``Host`` it would
        send). ``peer_ip``: the other gateway's address, for ``X-Forwarded-For``.
        """
        self._hop = hop
        self.opener = opener
        self.forwarder = forwarder
        self.upstream = upstream
        # An endpoint WebSocket message may be as large as a session message
        # (``--max-message-size``), not just the tunnel core's default.
        self.config = config or TunnelConfig(max_ws_message=hop.settings.max_message_size)
        self.peer_ip = peer_ip
        self.tunnel = Tunnel(self.config, opener=opener)
        if TUNNEL_PACKED_HEADS in hop.peer_tunnel:
            self.tunnel.peer_reads_packed_heads()  # else: only once the peer packs its own
        if TUNNEL_WHOLE_ANSWERS in hop.peer_tunnel:
            self.tunnel.peer_reads_whole_answers()
        self.stats = forwarder.stats
        self.name = str(upstream) if upstream is not None and opener else hop.session_id[:6]
        self.log = _LinkLog(log, {"session": hop.session_id[:6] + "…"})
        self.loop = asyncio.get_running_loop()
        #: Takes the streams the peer opens; None: every one is refused.
        self.on_stream: StreamHandler | None = None
        #: Poll-ahead (glue/pollahead.py): takes PUSH frames; None: they are ignored.
        self.on_push: Callable[[PushReceived], None] | None = None
        #: Poll-ahead: told once when the session or the tunnel ends.
        self.on_lost: Callable[[], None] | None = None
        self._sinks: dict[int, Sink] = {}
        #: Streams whose incoming body must add up to a declared Content-Length.
        self._counters: dict[int, BodyCounter] = {}
        self._tasks = TaskSet()
        self._flush_due = False
        self._dispatching = False
        self._closing = False
        self._writable = asyncio.Event()
        hop.set_handlers(
            on_message=self._on_message, on_writable=self._on_writable, on_closed=self._on_closed
        )

    @property
    def alive(self) -> bool:
        return not (self._closing or self.tunnel.closed or self._hop.closed)

    @property
    def closing(self) -> bool:
        """``close`` was called: no new stream is taken."""
        return self._closing

    @property
    def hop(self) -> HopSession:
        return self._hop

    async def close(self) -> None:
        """Stop every stream (downstream: 502 / 1001; upstream: origin requests cancelled), then
        close the hop session gracefully."""
        if not self._closing:
            self._closing = True
            self._lost()
            if not self.tunnel.closed:
                self.tunnel.close_all(LINK_CLOSED)
                self.dispatch()
        await self._tasks.cancel_all()
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
        # Always, even when nothing is queued yet: what the events start in the next
        # turn (an endpoint write and its credit) leaves with it. Scheduled only when
        # the tunnel had something pending, the 64 KiB message row fell 1,000 -> 750
        # MB/s (A/B, 2026-12-04; likely the server gateway's WINDOWs leaving a turn later).
        self.schedule_flush()

    def _on_writable(self) -> None:
        self._writable.set()
        self.flush()

    def _on_closed(self, code: int, reason: str) -> None:
        self._writable.set()
        self._lost()
        if not self.tunnel.closed:
            self.tunnel.close_all(short(f"hop session closed ({code} {reason})".strip()))
        self.dispatch()

    def _lost(self) -> None:
        lost, self.on_lost = self.on_lost, None
        if lost is not None:
            lost()

    async def session_writable(self) -> None:
        """Return when the session next reports room (or closes); the caller flushes."""
        self._writable.clear()
        await self._writable.wait()

    def schedule_flush(self) -> None:
        """Flush at the end of this loop turn: everything queued until then shares a message."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)

    def credit(self, sid: int, n: int) -> None:
        """The consumer took ``n`` bytes of ``sid``: credit them, flushed if that made a frame.

        Credit is batched (``consumed``), so most calls send nothing, and a flush
        scheduled for nothing is a loop callback per answer.
        """
        tunnel = self.tunnel
        tunnel.consumed(sid, n)
        if tunnel.has_pending():
            self.schedule_flush()

    def flush(self) -> None:
        """Hand the tunnel's output to the session while it can take it."""
        self._flush_due = False
        hop, tunnel = self._hop, self.tunnel
        sent = False
        try:
            while not tunnel.closed and hop.writable:
                message = tunnel.next_message()
                if message is None:
                    break
                hop.send(message, wake=False)
                sent = True
        except SessionClosedError:
            pass  # on_closed follows
        if sent:
            hop.wake(now=True)  # this flush ends the turn's sending: written here, not a turn later
        self.dispatch()  # next_message reports StreamWritable

    # -- routing -------------------------------------------------------------------------------

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
        kind = type(event)
        if kind not in _STREAM_EVENTS:  # one set lookup for the events of live streams
            if isinstance(event, PushReceived):
                if self.on_push is not None:
                    self.on_push(event)
            elif isinstance(event, RequestReceived | WebSocketRequested):
                self._opened(event)
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
            self.check_backlog(sid, sink)

    def _opened(self, event: RequestReceived | WebSocketRequested) -> None:
        """A stream the peer opened: to the stream handler, if this side takes any."""
        sid = event.stream_id
        if self.on_stream is None:
            self.log.warning("< refused stream %d: the upstream side may not open streams", sid)
            self.reset(sid, ResetCode.REFUSED, "a downstream gateway takes no streams")
        elif self._closing:
            self.reset(sid, ResetCode.REFUSED, "gateway shutting down")
        else:
            self.on_stream(event)

    def check_backlog(self, sid: int, box: Mailbox) -> None:
        """Reset a stream whose receiver lets events pile up (see MAX_STREAM_BACKLOG).

        Run here for every Mailbox sink; a sink of its own (the WebSocket
        bridge's) runs it for the mailbox it keeps, and says how many events it
        holds in ``backlog`` for the session's total.
        """
        held = box.backlog
        if held < _BACKLOG_CHECK or held % _BACKLOG_CHECK:
            return
        if held < MAX_STREAM_BACKLOG:
            total = sum(getattr(b, "backlog", 0) for b in self._sinks.values())
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
        """Run ``coro`` as a task of this link: ``close`` cancels and awaits it."""
        return self._tasks.spawn(coro)
