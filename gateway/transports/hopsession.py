"""The asyncio driver of one hop session, shared by both ends and every transport.

Theory of operation
===================

A :class:`HopSession` wraps one sans-I/O :class:`~gateway.core.session.machine.Session`
(the *core*) and is the only object that calls it. Around it:

* **one loop timer** (``loop.call_at``, no task) set for the core's ``next_deadline``
  runs its timers (heartbeat, retransmit, stall watchdog, delayed ACK, expiry, close
  handshake), so a session expires even with no transport. What may bring the deadline
  earlier (events, data going out with none outstanding; never a plain ``send``) asks
  for one recomputation at the end of the loop turn; the timer moves only when the
  deadline comes earlier (one that fires early re-arms). An idle session is a few small
  objects and one heap entry of the event loop: no task, event or future until used;
* **at most one current transport** (``ws.WebSocketTransport``,
  ``longpoll.LongPollClient`` or ``longpoll.LongPollServer``) writes the
  core's batches. One that is not current may still *feed* what it receives
  (the core discards duplicates), but never writes;
* :meth:`wake` (from :meth:`send`, :meth:`feed`, the timer) tells writers the
  core may have something new: long-poll writers wait on :meth:`wait_changed`;
  the current WebSocket's *flusher* flushes synchronously once per loop turn,
  or at once when ``unsent_bytes`` reach 64 KiB (no task wake-up per message).
  A sender that is itself the end of its turn (the tunnel driver's coalesced
  flush) sends with ``wake=False`` and then calls ``wake(now=True)``: the
  write happens in that callback, not one loop turn later.

Messages are delivered by calling ``on_message`` synchronously from :meth:`feed`
(the transport's receive loop): no task per message. Writers take whatever
accumulated since their last write as one batch: a burst of ``send`` calls costs one write.

Transports call :meth:`attach` when usable (WebSocket: after the probe), :meth:`detach`
when they die, :meth:`feed`/:meth:`take` in between. Attaching a new transport abandons
the old one (its held GET is answered, its socket closed in the background); the core
replays everything unacknowledged on the new one, so a switch loses nothing.

When the core reports ``SessionClosed``, the session is *finished*: ``on_closed``
runs once, :meth:`wait_closed` returns, the current transport flushes what is left
(the last ACK, an ABORT) and closes itself, and the timer stops. :meth:`abandon`
finishes a session without the core's handshake.

Raises ``SessionClosedError`` from :meth:`send`/:meth:`drain` on a finished session
(transport errors: ``gateway.transports.errors``; the core's: ``gateway.core.session.errors``);
timers and limits: a :class:`~gateway.transports.session_settings.SessionSettings`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, Literal, Protocol

from gateway.core.cluster import short_id
from gateway.core.session.errors import (
    BufferFull,
    CloseCode,
    RemoteProtocolError,
    SessionUsageError,
)
from gateway.core.session.events import (
    MessageReceived,
    SendWindowOpened,
    SessionClosed,
    TransportStalled,
)
from gateway.core.session.machine import Session, SessionState
from gateway.transports.errors import SessionClosedError
from gateway.transports.session_settings import SessionSettings
from gateway.transports.tasks import TaskSet

__all__ = ["HopSession", "Transport", "TransportKind"]

log = logging.getLogger("hopgate.session")

#: Queued bytes written at once, in the turn that queued them, not at its end: a
#: sender that queues a burst without yielding (the client gateway relaying a
#: legacy client's burst) keeps the peer busy meanwhile instead of handing it
#: everything when the burst's credit runs out. ``send(wake=False)`` still wakes
#: the writer past it, so a tunnel flush that moves a burst feeds the peer as
#: it goes too.
WRITE_NOW_BYTES: Final = 64 * 1024

TransportKind = Literal["websocket", "long-poll", "none"]


class _SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line carries the session id's first characters (``extra["session"]``)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        # The session goes in the record, not the text: gateway.logs shows it
        # as "[2Avsnp…]" in a text line and as "session" in a JSON one.
        assert self.extra is not None
        return msg, {**kwargs, "extra": {**self.extra, **(kwargs.get("extra") or {})}}


class Transport(Protocol):
    """What a HopSession needs from a transport."""

    epoch: int

    @property
    def kind(self) -> Literal["websocket", "long-poll"]: ...

    def abandon(self) -> None:
        """Stop using it now (sync); sockets are closed in the background."""


class HopSession:
    """One live hop session (either end): owns the core Session, its timer, its transport."""

    # A server holds thousands of idle sessions: no instance dict, and every
    # event, future and set below is created only once something waits on it.
    __slots__ = (
        "__weakref__",
        "_attaches",
        "_background",
        "_changed",
        "_close_info",
        "_closed",
        "_core",
        "_current",
        "_early",
        "_loop",
        "_on_closed",
        "_on_message",
        "_on_writable",
        "_timer",
        "_timer_at",
        "_timer_due",
        "_window",
        "bytes_received",
        "bytes_sent",
        "epoch",
        "flusher",
        "is_client",
        "last_activity",
        "messages_received",
        "messages_sent",
        "on_event",
        "on_finished",
        "on_stalled",
        "on_transport_change",
        "on_transport_lost",
        "peer_address",
        "peer_tunnel",
        "session_id",
        "settings",
        "unsent_bytes",
    )

    def __init__(self, core: Session, settings: SessionSettings) -> None:
        self._core = core
        self.settings = settings
        self.session_id: str = core.session_id
        self.is_client: bool = core.is_client
        self.epoch = 0  # client: last transport epoch used; server: highest seen
        #: Server end: the address that opened the session (for ``X-Forwarded-For``).
        self.peer_address: str | None = None
        self._loop = asyncio.get_running_loop()
        self._changed: asyncio.Event | None = None
        self._window: asyncio.Event | None = None
        self._closed: asyncio.Future[tuple[int, str]] | None = None
        self._close_info: tuple[int, str] | None = None
        self._current: Transport | None = None
        self._on_message: Callable[[bytes | str], None] | None = None
        self._on_writable: Callable[[], None] | None = None
        self._on_closed: Callable[[int, str], None] | None = None
        self._early: list[bytes | str] | None = None
        #: The current WebSocket's flush (once per loop turn), told whenever the core may write.
        self.flusher: Callable[[bool], None] | None = None
        self._background = TaskSet()
        # What metrics read (summed at scrape time, gateway.metrics): plain
        # counters, one ``+=`` per message or batch.
        self.messages_sent = self.messages_received = 0
        self.unsent_bytes = 0  #: given to ``send`` since the last ``take``: the flusher's hint
        #: Batch bytes written and read on this session's transports.
        self.bytes_sent = self.bytes_received = 0
        #: Transports attached while none was current (the first one included).
        self._attaches = 0
        #: Loop time of the last batch read or written, either way (a path's idle clock).
        self.last_activity = self._loop.time()
        # For the owner (connector / server): not part of the public API.
        self.on_stalled: Callable[[Transport], None] | None = None
        self.on_transport_lost: Callable[[Transport, str], None] | None = None
        self.on_transport_change: list[Callable[[str, str], None]] = []
        self.on_finished: list[Callable[[HopSession], None]] = []
        self.on_event: Callable[[object], None] | None = None  # the rest (GoAwayReceived)
        #: The tunnel features the peer announced (``handshake.TUNNEL_HEADER``): the client
        #: has the server's from its session-creating 200, the server the client's POST.
        self.peer_tunnel: frozenset[str] = frozenset()
        # The core's timers run from one loop timer (no task per session),
        # scheduled for the core's next deadline; see _rearm.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_due = False
        self._rearm_now()

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """Lines prefixed with the session id's first characters (made on use: logs are rare)."""
        return _SessionLog(log, {"session": short_id(self.session_id) + "…"})

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        state = self._core.state.name
        return f"<HopSession {short_id(self.session_id)}… {side} {self.transport} {state}>"

    # -- public API ---------------------------------------------------------------

    @property
    def transport(self) -> TransportKind:
        return "none" if self._current is None else self._current.kind

    def set_handlers(
        self,
        *,
        on_message: Callable[[bytes | str], None],
        on_writable: Callable[[], None] | None = None,
        on_closed: Callable[[int, str], None] | None = None,
    ) -> None:
        """Install the application's callbacks; messages that came earlier are delivered now."""
        self._on_message = on_message
        self._on_writable = on_writable
        self._on_closed = on_closed
        early, self._early = self._early, None
        for data in early or ():
            self._deliver(data)
        if self._close_info is not None and on_closed is not None:
            on_closed(*self._close_info)

    @property
    def resumes(self) -> int:
        """Times a transport took over after the session had lost its own."""
        return max(0, self._attaches - 1)

    @property
    def writable(self) -> bool:
        return self._close_info is None and self._core.writable

    def send(self, data: bytes | str, *, wake: bool = True) -> bool:
        """Queue one whole message; False (nothing queued) when the replay buffer is full
        (``on_writable`` fires once space frees). SessionClosedError once closing or closed.

        ``wake=False``: the caller sends more in this callback and then calls
        ``wake(now=True)`` itself; past ``WRITE_NOW_BYTES`` the writer is woken anyway."""
        core = self._core
        if self._close_info is not None:
            raise SessionClosedError(*self._close_info_or_closing())
        try:
            core.send_message(data)  # checks room once: not ``writable`` and then again
        except BufferFull:
            return False
        except SessionUsageError:
            if core.state is not SessionState.OPEN:  # closing: checked only now, not per message
                raise SessionClosedError(*self._close_info_or_closing()) from None
            raise
        self.messages_sent += 1
        self.unsent_bytes += len(data)
        if wake or self.unsent_bytes >= WRITE_NOW_BYTES:
            self.wake()  # no timer moves until take(): nothing is outstanding yet
        return True

    async def drain(self) -> None:
        """Wait until ``send`` would accept a message; SessionClosedError if it never will."""
        while not self.writable:
            if self._close_info is not None or self._core.state is not SessionState.OPEN:
                raise SessionClosedError(*self._close_info_or_closing())
            window = self._window
            if window is None:
                window = self._window = asyncio.Event()
            window.clear()
            await window.wait()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Graceful close: the peer gets every message sent before, then CLOSE."""
        if self._close_info is None:
            self._core.close(code, reason, now=self.now())
            self.dispatch()
        await self.wait_closed()

    async def wait_closed(self) -> tuple[int, str]:
        """(code, reason) once the session is over."""
        if self._close_info is not None:
            return self._close_info
        if self._closed is None:
            self._closed = self._loop.create_future()
        return await asyncio.shield(self._closed)

    @property
    def closed(self) -> bool:
        return self._close_info is not None

    @property
    def close_info(self) -> tuple[int, str] | None:
        return self._close_info

    # -- for transports -------------------------------------------------------------

    @property
    def core(self) -> Session:
        return self._core

    def now(self) -> float:
        return self._loop.time()

    def is_current(self, transport: Transport) -> bool:
        return self._current is transport

    @property
    def current(self) -> Transport | None:
        return self._current

    def attach(self, transport: Transport) -> None:
        """Make ``transport`` the one that writes; the previous one is abandoned."""
        if self._current is transport:
            return
        self.log.debug("= attached %s (epoch %d)", transport.kind, transport.epoch)
        self._replace_current(transport)

    def detach(self, transport: Transport, reason: str) -> None:
        """``transport`` died; if it was current, the resume clock starts."""
        if self._current is not transport:
            return
        self.log.debug("= lost %s: %s", transport.kind, reason)
        self._replace_current(None)
        if self.on_transport_lost is not None and self._close_info is None:
            self.on_transport_lost(transport, reason)

    def _replace_current(self, new: Transport | None) -> None:
        """Swap the writing transport: the old one is abandoned, the core and the owner told."""
        old, old_kind = self._current, self.transport
        self._current = new
        if old is None and new is not None:
            self._attaches += 1
        if old is not None:
            old.abandon()
        if new is None:
            self._core.transport_lost(self.now())
        else:
            self._core.transport_attached(self.now())
        self._transport_changed(old_kind)
        self.dispatch()

    def feed(self, batch: bytes | bytearray | memoryview) -> bool:
        """Pass one received batch to the core; False if it broke the protocol."""
        ok = True
        self.bytes_received += len(batch)
        self.last_activity = now = self.now()
        try:
            self._core.receive_data(batch, now)
        except RemoteProtocolError as exc:
            self.log.warning(
                "< protocol error, closing the session: %s (%d)",
                exc.reason,
                exc.code,
                extra={"reason": exc.reason},
            )
            ok = False
        self.dispatch(rearm_now=True, fed=True)
        return ok

    def take(self, *, include_data: bool = True) -> bytes:
        """The next batch to write on the current transport (may be b"")."""
        core, now = self._core, self.now()
        was_outstanding = core.outstanding
        batch = core.data_to_send(now, include_data=include_data)
        self.unsent_bytes = 0
        if batch:
            self.bytes_sent += len(batch)
            self.last_activity = now
        if not was_outstanding:  # retransmit/stall timers start; once running they only move later
            self._rearm_now()  # once per batch written: not worth a callback of its own
        return batch

    def set_heartbeat(self, seconds: float) -> None:
        """PING after ``seconds`` of silence from now on (the path's idle limit was learned)."""
        self._core.set_heartbeat(seconds)
        self._rearm()

    async def wait_changed(self) -> None:
        """Sleep until the core may have something new to write."""
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        changed.clear()
        await changed.wait()

    def wake(self, *, now: bool = False) -> None:
        """Tell the writers the core may have something to write.

        ``now``: the caller is the last sender of its loop turn, so a
        WebSocket writes in this call instead of scheduling a flush: one loop
        turn and one callback less per request.
        """
        if self._changed is not None:
            self._changed.set()
        if self.flusher is not None:
            self.flusher(now)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """A background task the session keeps a reference to (closing sockets)."""
        return self._background.spawn(coro, name=name)

    def dispatch(self, *, rearm_now: bool = False, fed: bool = False) -> None:
        """Act on the core's events; wake writers and the pump.

        ``rearm_now``: move the timer in this call rather than at the end of
        the turn (``feed``: once per batch received, and the delayed ACK a
        DATA starts must be armed anyway).

        ``fed``: after a received batch the writers are woken only if the core
        has something due or the session ended. Most batches leave only an
        ACK that may wait: a long-poll writer woke for each, found nothing and
        slept again (one loop callback per tunnelled request in each gateway).
        What a batch changes besides the core's output (a POST's turn) the
        transport wakes for itself.
        """
        for event in self._core.events_received():
            if type(event) is MessageReceived:
                handler = self._on_message
                if handler is None:
                    self._deliver(event.data)  # kept for set_handlers
                    continue
                # _deliver, inline: once per message received
                self.messages_received += 1
                try:
                    handler(event.data)
                except Exception:
                    self._handler_failed()
            elif type(event) is SendWindowOpened:
                if self._window is not None:
                    self._window.set()
                if self._on_writable is not None:
                    self._on_writable()
            elif type(event) is TransportStalled:
                current = self._current
                self.log.info(
                    "= %s stalled (no progress for %.2f s)",
                    self.transport,
                    self.now() - event.since,
                    extra={"transport": self.transport, "reason": "stalled"},
                )
                if current is not None and self.on_stalled is not None:
                    self.on_stalled(current)
            elif type(event) is SessionClosed:
                self._finish(event.code, event.reason)
            elif self.on_event is not None:
                self.on_event(event)
        if not fed or self._core.wants_write_now or self._close_info is not None:
            self.wake()
        if rearm_now:
            self._rearm_now()
        else:
            self._rearm()

    def abandon(self, code: int, reason: str) -> None:
        """Finish without the core's handshake (the peer forgot us, or we must stop now)."""
        if self._close_info is not None:
            return
        current, self._current = self._current, None
        if current is not None:
            current.abandon()
        self._finish(code, reason)

    # -- internals --------------------------------------------------------------------

    def _close_info_or_closing(self) -> tuple[int, str]:
        return self._close_info or (CloseCode.NORMAL, "closing")

    def _deliver(self, data: bytes | str) -> None:
        handler = self._on_message
        if handler is None:  # counted when set_handlers delivers it
            self._early = self._early or []
            self._early.append(data)
            return
        self.messages_received += 1
        try:
            handler(data)
        except Exception:
            self._handler_failed()

    def _handler_failed(self) -> None:
        self.log.exception("on_message handler failed; closing the session")
        if self._core.state is SessionState.OPEN:
            self._core.close(CloseCode.INTERNAL_ERROR, "internal error", now=self.now())

    def _transport_changed(self, old: str) -> None:
        new = self.transport
        for callback in self.on_transport_change if old != new else ():
            try:
                callback(old, new)
            except Exception:
                self.log.exception("on_transport_change callback failed")

    def _finish(self, code: int, reason: str) -> None:
        if self._close_info is not None:
            return
        self._close_info = (code, reason)
        level = logging.DEBUG if code in (CloseCode.NORMAL, CloseCode.GOING_AWAY) else logging.INFO
        self.log.log(level, "= session closed: %d %s", code, reason)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result((code, reason))
        if self._window is not None:
            self._window.set()
        self.wake()
        self._cancel_timer()
        if self._on_closed is not None:
            try:
                self._on_closed(code, reason)
            except Exception:
                self.log.exception("on_closed handler failed")
        finished, self.on_finished = self.on_finished, []
        for callback in finished:
            callback(self)
        # Break the cycles with the application (a tunnel holds us, we hold its bound
        # methods): reference counting frees a finished session, not the next full GC.
        self._on_message = self._on_writable = self._on_closed = None
        self.on_stalled = self.on_transport_lost = self.on_event = None
        self.on_transport_change = []

    def _rearm(self) -> None:
        """The core's next deadline may have changed: recompute it once, at the end of this turn."""
        if not self._timer_due and self._close_info is None:
            self._timer_due = True
            self._loop.call_soon(self._rearm_now)

    def _rearm_now(self) -> None:
        self._timer_due = False
        if self._close_info is not None:
            return
        deadline = self._core.next_deadline()
        if deadline is None:
            return  # a timer still armed fires harmlessly and is not renewed
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # fires first; _on_timer schedules the rest
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._close_info is not None:
            return
        now = self.now()
        self._core.handle_timer(now, late=now - self._timer_at)
        self.dispatch()
        self._rearm_now()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def aclose_tasks(self) -> None:
        """Stop the timer and wait for background closes (teardown)."""
        self._cancel_timer()
        await self._background.wait()
