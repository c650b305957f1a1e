"""Inbound connections: how many, how long a request head may take, what is logged.

Theory of operation
-------------------
aiohttp's server has an idle keep-alive timeout (we pass
``--keepalive-timeout``) but no limit on connections and no deadline for a
request head, so a peer sending a byte a second, or a thousand idle sockets,
holds descriptors for as long as it likes.  Each accepted connection is
therefore wrapped in a ``ConnectionGuard``: a plain ``asyncio.Protocol`` that
passes every call through to aiohttp's ``RequestHandler`` and keeps one state
per connection:

``HEAD``  waiting for a request head: from the moment the connection is
          accepted, or from the first byte after a kept-alive connection sat
          idle.  The head must be complete within ``header_timeout``, else the
          connection is closed (with a ``408`` if any byte came).
``BUSY``  a request is being handled (the dispatcher calls ``request_started``
          and ``request_finished``); no deadline: held polls, uploads,
          tunnels and WebSockets last as long as they need.
``IDLE``  between requests of a kept-alive connection; aiohttp's
          ``keepalive_timeout`` ends it.

At most ``max_clients`` connections are held.  When a new one arrives at the
cap, the connection that has been waiting longest without a request in
progress (a ``HEAD`` one, or one ``IDLE`` for at least ``IDLE_GRACE``) is
closed to make room: idle sockets cannot lock a legitimate client out, which
sends its head at once and so is never the oldest.  Only when every held
connection is busy is the newcomer answered ``503`` and closed at once.

Refusals, evictions, head timeouts and ``accept()`` failures for want of
descriptors (``EMFILE``, reported through the loop's exception handler) are
logged by ``IntervalLog``: one WARNING per interval with a count, never one
line per socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, Literal, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("hopgate.inbound")

State = Literal["HEAD", "BUSY", "IDLE"]

#: A kept-alive connection idle for less than this is not closed to make room:
#: its last response may still be on its way out.
IDLE_GRACE = 1.0
#: Seconds between two WARNINGs of the same kind.
LOG_INTERVAL = 10.0
#: How early a head timer may fire and still count as the deadline (asyncio runs
#: timers up to its clock resolution early).
_EARLY = 0.005


def _canned(status: str, text: str) -> bytes:
    """A whole ``Connection: close`` response, for a connection aiohttp never saw."""
    body = f"hopgate: {text}\n".encode()
    head = (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_REFUSAL = _canned(
    "503 Service Unavailable", "too many connections at once (--max-clients); try again later"
)
_TIMEOUT = _canned("408 Request Timeout", "the request head did not arrive within --header-timeout")


Schedule = Callable[[float, Callable[[], None]], object]


def _on_running_loop(delay: float, callback: Callable[[], None]) -> None:
    """Run ``callback`` after ``delay`` on the running loop (none running: never)."""
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().call_later(delay, callback)


class IntervalLog:
    """Counts events of one kind and logs them at most once per ``interval``.

    The first event is logged at once; later ones within the interval are
    only counted, and reported with their count when the interval ends
    (``schedule`` arranges that call; tests pass none and call ``flush``).
    """

    def __init__(
        self,
        what: str,
        *,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = _on_running_loop,
        logger: logging.Logger = log,
    ) -> None:
        self.what = what
        self.interval = interval
        self.total = 0
        self._clock = clock
        self._schedule = schedule
        self._logger = logger
        self._pending = 0
        self._detail = ""
        self._last: float | None = None
        self._flush_due = False

    def record(self, detail: str = "") -> None:
        self.total += 1
        self._pending += 1
        self._detail = detail
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._write(now)
        elif not self._flush_due and self._schedule is not None:
            self._flush_due = True
            self._schedule(self._last + self.interval - now, self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line, if anything."""
        self._flush_due = False
        if self._pending:
            self._write(self._clock())

    def _write(self, now: float) -> None:
        since = "" if self._last is None else f" in the last {now - self._last:.0f}s"
        detail = f" ({self._detail})" if self._detail else ""
        self._logger.warning("= %d %s%s%s", self._pending, self.what, since, detail)
        self._pending = 0
        self._last = now


class ConnectionGuard(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, our limits around it."""

    def __init__(self, inner: asyncio.Protocol, limits: InboundLimits) -> None:
        self.inner = inner
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.state: State = "HEAD"
        #: When the connection entered its current state (loop time).
        self.since = 0.0
        self.admitted = False
        self.got_bytes = False
        self.busy = 0
        #: Loop time by which the awaited head must be complete (state ``HEAD``).
        self._due = 0.0
        #: At most one timer per connection, re-armed lazily (see ``_expect_head``).
        self._deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol, passed through to aiohttp --------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's (--event-loop) does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        if not self.limits.admit(self):
            self.transport.write(_REFUSAL)
            self.transport.close()
            return
        self.admitted = True
        self.inner.connection_made(transport)
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if data:
            if self.state == "IDLE":
                self._expect_head()
            self.got_bytes = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self.admitted:
            self.admitted = False
            self.limits.forget(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    # -- states ---------------------------------------------------------------

    def request_started(self) -> None:
        self.busy += 1
        self.limits.moved(self, "BUSY")  # a pending head timer finds BUSY and lapses

    def request_finished(self) -> None:
        self.busy = max(0, self.busy - 1)
        if self.busy == 0 and self.admitted:
            self.got_bytes = False
            self.limits.moved(self, "IDLE")

    def close(self, why: Literal["timeout", "evicted"]) -> None:
        """End the connection now, telling a client that sent something why."""
        self._cancel_deadline()
        if self.transport is None or self.transport.is_closing():
            return
        if why == "timeout" and self.got_bytes:
            self.transport.write(_TIMEOUT)
        self.transport.close()

    def _expect_head(self) -> None:
        """Start the head deadline: a due time, and a timer only if none is pending.

        A kept-alive connection expects a head per request; a timer made and
        cancelled for each was a measurable part of a request's cost. The
        pending timer, when it fires, re-arms itself for the latest due time
        or, the connection no longer awaiting a head, lapses.
        """
        self.limits.moved(self, "HEAD")
        self.got_bytes = False
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.limits.header_timeout
        if self._deadline is None:
            self._deadline = loop.call_at(self._due, self._head_overdue)

    def _head_overdue(self) -> None:
        self._deadline = None
        if self.state != "HEAD" or not self.admitted:
            return
        loop = asyncio.get_running_loop()
        if self._due - loop.time() > _EARLY:  # a later head is awaited: its own time
            self._deadline = loop.call_at(self._due, self._head_overdue)
            return
        self.limits.head_timeouts.record(f"--header-timeout {self.limits.header_timeout:g}s")
        self.close("timeout")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class InboundLimits:
    """The connection cap and head deadline of one listening gateway."""

    def __init__(self, *, max_clients: int, header_timeout: float) -> None:
        self.max_clients = max_clients
        self.header_timeout = header_timeout
        #: Guards by state, oldest first (dicts keep insertion order).
        self._waiting: dict[ConnectionGuard, None] = {}
        self._idle: dict[ConnectionGuard, None] = {}
        self._busy: set[ConnectionGuard] = set()
        #: aiohttp's protocol -> our guard, so a request can find its connection.
        self._by_inner: dict[object, ConnectionGuard] = {}
        self.refusals = IntervalLog("connection(s) refused: --max-clients reached, all busy")
        self.evictions = IntervalLog(
            "waiting connection(s) closed to make room (--max-clients reached)"
        )
        self.head_timeouts = IntervalLog("connection(s) closed: request head too slow")
        self.accept_errors = IntervalLog("accept() failure(s): out of descriptors")

    @property
    def active(self) -> int:
        return len(self._by_inner)

    def figures(self) -> dict[str, int]:
        """What ``/.hopgate/status`` shows under ``clients``."""
        return {
            "active": self.active,
            "busy": len(self._busy),
            "max": self.max_clients,
            "refused": self.refusals.total,
            "evicted": self.evictions.total,
            "head_timeouts": self.head_timeouts.total,
            "accept_errors": self.accept_errors.total,
        }

    def wrap(self, inner: asyncio.Protocol) -> ConnectionGuard:
        return ConnectionGuard(inner, self)

    def admit(self, guard: ConnectionGuard) -> bool:
        if self.active >= self.max_clients and not self._make_room():
            self.refusals.record()
            return False
        self._by_inner[guard.inner] = guard
        return True

    def forget(self, guard: ConnectionGuard) -> None:
        self._by_inner.pop(guard.inner, None)
        self._waiting.pop(guard, None)
        self._idle.pop(guard, None)
        self._busy.discard(guard)

    def moved(self, guard: ConnectionGuard, state: State) -> None:
        """``guard`` entered ``state`` now (re-filed as the newest of that state)."""
        if guard.inner not in self._by_inner:
            return
        self._waiting.pop(guard, None)
        self._idle.pop(guard, None)
        self._busy.discard(guard)
        guard.state = state
        guard.since = time.monotonic()
        if state == "HEAD":
            self._waiting[guard] = None
        elif state == "IDLE":
            self._idle[guard] = None
        else:
            self._busy.add(guard)

    def request_started(self, protocol: object) -> None:
        guard = self._by_inner.get(protocol)
        if guard is not None:
            guard.request_started()

    def request_finished(self, protocol: object) -> None:
        guard = self._by_inner.get(protocol)
        if guard is not None:
            guard.request_finished()

    def _make_room(self) -> bool:
        """Close the connection longest without a request in progress; False if none may go."""
        candidates = []
        if self._waiting:
            candidates.append(next(iter(self._waiting)))
        if self._idle:
            oldest_idle = next(iter(self._idle))
            if time.monotonic() - oldest_idle.since >= IDLE_GRACE:
                candidates.append(oldest_idle)
        if not candidates:
            return False
        victim = min(candidates, key=lambda g: g.since)
        self.evictions.record()
        self.forget(victim)
        victim.close("evicted")
        return True

    # -- descriptors ----------------------------------------------------------

    def accept_error_filter(self, previous: LoopHandler | None) -> AcceptErrorFilter:
        return AcceptErrorFilter(self.accept_errors, previous)


LoopHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorFilter:
    """A loop exception handler counting ``accept()`` EMFILE errors instead of logging each.

    asyncio reports every failed ``accept()`` through the loop's exception
    handler with a traceback, on Python 3.11 up to the listen backlog's worth
    per loop turn (134k lines in 25 s were seen); everything else goes on to
    ``previous`` (or the loop's default handler).
    """

    def __init__(self, counter: IntervalLog, previous: LoopHandler | None) -> None:
        self.counter = counter
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            self.counter.record(str(exc.strerror))
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


class _MalformedRequests(logging.Filter):
    """Turns aiohttp's traceback per unparseable request into one counted line per interval.

    A peer sending garbage gets its ``400`` from aiohttp's parser; the
    traceback aiohttp logs with it would let that peer fill the disk.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counter = IntervalLog("malformed request(s) answered 400 by the HTTP parser")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self.counter.record(str(exc.message).strip().split("\n")[0][:100])
            return False
        return True


#: The logger aiohttp's server protocol writes to (``RequestHandler``'s public ``logger``).
SERVER_LOG = logging.getLogger("hopgate.server")
SERVER_LOG.addFilter(_MalformedRequests())


class GuardedServer(web.Server):
    """aiohttp's low-level server, each connection's protocol wrapped in a ``ConnectionGuard``.

    ``web.Server`` is the protocol factory ``loop.create_server`` calls; we
    wrap what it builds instead of building aiohttp's ``RequestHandler``
    ourselves, so no private constructor arguments are involved.
    """

    def __init__(self, handler: Any, *, limits: InboundLimits, **kwargs: Any) -> None:
        super().__init__(handler, logger=SERVER_LOG, **kwargs)
        self.limits = limits

    # The factory's product is our guard, not a RequestHandler: asyncio only
    # needs an asyncio.Protocol, and aiohttp itself never sees the guard.
    def __call__(self) -> ConnectionGuard:  # type: ignore[override]
        return self.limits.wrap(super().__call__())


def derive_max_clients(configured: int) -> tuple[int, int]:
    """(connection cap, open-file limit): ``configured`` or half the raised descriptor limit.

    With ``--max-clients 0`` the soft ``RLIMIT_NOFILE`` is first raised to the
    hard limit (a process may do that itself); half of it is left for origin
    connections, hop sessions and files.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if configured > 0:
        return configured, soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning(
                "= could not raise the open-file limit from %d to %d: %s", soft, target, exc
            )
    return max(16, soft // 2), soft
