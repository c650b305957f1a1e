"""What the session endpoint admits: who may open a session, and what one session may hold.

The HTTP handlers (``endpoint``) ask three objects here before they act:

* :class:`Admission` decides whether a new session may open (not while
  shutting down; the hop secret's proof; ``--max-sessions``; per client
  address, ``--max-sessions-per-client`` and ``--session-create-rate``), and
  logs refusals at most once per interval, so a flood does not flood the log;
* :class:`SessionHolds` bounds what each open session holds at once on the
  endpoint: long-poll POSTs in flight and the bytes of their unfinished
  bodies (per session and for the whole gateway, in time too), WebSockets;
* :class:`MemoryTrim` hands the memory of many ended sessions back to the
  OS once an expiry sweep is over.

A refusal is a :class:`Refused` carrying the status, a reason a person can
act on and its headers (``Retry-After``); ``Refused.response()`` is the
plain-text answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Final

from aiohttp import web

from gateway.transports.handshake import AUTH_NONCES, AUTH_WINDOW, check_auth
from gateway.transports.http import BodyTooLarge, bounded_chunks, text_error
from gateway.transports.registry import (
    ClientLimits,
    ClientRefused,
    ReplayCache,
    SessionRegistry,
    client_key,
)
from gateway.transports.session_settings import SessionSettings

__all__ = [
    "MAX_SESSION_SOCKETS",
    "RETRY_AFTER",
    "Admission",
    "MemoryTrim",
    "Refused",
    "SessionHolds",
]

log = logging.getLogger("hopgate.session")

RETRY_AFTER: Final = "10"
#: WebSockets one session may have open at once (current, candidate, closing, one spare).
MAX_SESSION_SOCKETS: Final = 4
#: Refusals of new sessions are logged at most once per this many seconds.
_REFUSAL_LOG_INTERVAL: Final = 10.0
#: After this many sessions ended, unused heap pages are given back (see _trim_memory),
#: at most once per _TRIM_INTERVAL seconds (a full collection of a big heap takes a while).
_TRIM_AFTER: Final = 1024
_TRIM_INTERVAL: Final = 30.0
#: Seconds a trim waits, at most, for a sweep still going on to end.
_TRIM_MAX_WAITS: Final = 10


class Refused(Exception):
    """A request turned down: ``status``, a ``reason`` a person can act on, ``headers``.

    ``close``: the connection closes after the answer (the request body may
    be unread).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        retry_after: str | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.close = close

    def response(self) -> web.Response:
        response = text_error(self.status, self.reason, **self.headers)
        if self.close:
            response.force_close()
        return response


# -- opening a session ---------------------------------------------------------------------


class Admission:
    """Whether a new session may open, and who holds how many (per client address)."""

    def __init__(
        self, settings: SessionSettings, registry: SessionRegistry, hop_secret: str | None
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._hop_secret = hop_secret
        self._clients = ClientLimits(
            max_sessions=settings.max_sessions_per_client, rate=settings.session_create_rate
        )
        self._replays = ReplayCache(window=AUTH_WINDOW, capacity=AUTH_NONCES)
        self.closing = False
        self._refusals = 0
        self._refusal_logged = -_REFUSAL_LOG_INTERVAL

    def admit(self, proof: str | None, remote: str | None) -> str:
        """The client key the new session counts against; Refused if it may not open."""
        if self.closing:
            raise Refused(503, "gateway shutting down", retry_after=RETRY_AFTER)
        if self._hop_secret is not None:
            refused = check_auth(self._hop_secret, proof, replays=self._replays)
            if refused is not None:
                status, problem = refused
                self._log_refusal(remote, f"{status} {problem}")
                raise Refused(status, problem, retry_after=RETRY_AFTER if status == 503 else None)
        if self._registry.full:
            self._log_refusal(remote, "503 --max-sessions reached")
            raise Refused(
                503,
                f"too many hop sessions ({self._settings.max_sessions}); try again later",
                retry_after=RETRY_AFTER,
            )
        key = client_key(remote)
        try:
            self._clients.admit(key, _now())
        except ClientRefused as exc:
            self._log_refusal(remote, f"429 {exc.reason}")
            raise Refused(429, exc.reason, retry_after=str(exc.retry_after)) from None
        return key

    def release(self, key: str) -> None:
        """A session counted against ``key`` (``admit``'s answer) ended or never opened."""
        self._clients.release(key, _now())

    def _log_refusal(self, remote: str | None, why: str) -> None:
        """One line per interval however many are refused (a flood must not flood the log)."""
        self._refusals += 1
        now = _now()
        if now - self._refusal_logged < _REFUSAL_LOG_INTERVAL:
            return
        log.warning(
            "= refused %d hop session(s) in the last %.0f s; latest from %s: %s",
            self._refusals,
            min(now - self._refusal_logged, _REFUSAL_LOG_INTERVAL),
            remote,
            why,
            extra={"reason": why},
        )
        self._refusals = 0
        self._refusal_logged = now


def _now() -> float:
    return asyncio.get_running_loop().time()


# -- what an open session holds --------------------------------------------------------------


class SessionHolds:
    """POSTs in flight, their unfinished bodies and WebSockets, per session and in all."""

    def __init__(self, settings: SessionSettings) -> None:
        self._settings = settings
        #: Session id -> [POSTs in flight, bytes they hold]; only sessions with a POST.
        self._posts: dict[str, list[int]] = {}
        #: Session id -> WebSocket connections open on it; only sessions with one.
        self._sockets: dict[str, int] = {}
        #: Bytes held by unfinished POST bodies of every session together.
        self.post_bytes = 0

    def posts_in_flight(self, session_id: str) -> int:
        return self._posts.get(session_id, [0])[0]

    def sockets_open(self, session_id: str | None = None) -> int:
        """WebSockets open on ``session_id``, or on every session."""
        if session_id is None:
            return sum(self._sockets.values())
        return self._sockets.get(session_id, 0)

    @contextlib.contextmanager
    def socket(self, session_id: str) -> Iterator[None]:
        """Hold one WebSocket of ``session_id`` while inside; 429 beyond MAX_SESSION_SOCKETS.

        A client needs the current socket, one candidate and one closing; a
        peer holding more is only pinning buffers (a partial message of up to
        max_batch_bytes each).
        """
        held = self._sockets.get(session_id, 0)
        if held >= MAX_SESSION_SOCKETS:
            raise Refused(
                429,
                f"{held} WebSockets already open on this session (at most {MAX_SESSION_SOCKETS})",
                retry_after="1",
                close=True,
            )
        self._sockets[session_id] = held + 1
        try:
            yield
        finally:
            left = self._sockets[session_id] - 1
            if left:
                self._sockets[session_id] = left
            else:
                del self._sockets[session_id]

    @contextlib.contextmanager
    def stream(self, session_id: str) -> Iterator[Callable[[int], None]]:
        """Hold one streamed POST of ``session_id`` while inside (``longpoll_stream``).

        It counts as a POST in flight (429 beyond ``max_session_posts``). The
        yielded ``hold(n)`` counts the record being read, ``n`` bytes (0: none
        now), in the session's and the gateway's unfinished bytes, Refused
        (413, 503) beyond them, as a POST body's bytes are.
        """
        inflight = self._enter_post(session_id)
        now = [0]

        def hold(size: int) -> None:
            inflight[1] += size - now[0]
            self.post_bytes += size - now[0]
            now[0] = size
            if size:
                self._check_held(inflight[1])

        try:
            yield hold
        finally:
            hold(0)
            inflight[0] -= 1
            if inflight[0] == 0:
                del self._posts[session_id]

    async def read_post(self, request: web.BaseRequest, session_id: str) -> bytes:
        """The whole body of one POST of ``session_id``; Refused (the connection closes) if not.

        413 too large (declared or read), 429 too many POSTs in flight on the
        session; the body is bounded in size per POST, per session and per
        gateway, and in time (see ``_read_body``).
        """
        settings = self._settings
        limit = settings.max_batch_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise Refused(413, f"batch larger than {limit} bytes", close=True)
        inflight = self._enter_post(session_id)
        try:
            return await self._read_body(request, inflight)
        finally:
            inflight[0] -= 1
            if inflight[0] == 0:
                del self._posts[session_id]

    def _enter_post(self, session_id: str) -> list[int]:
        """One more POST in flight on ``session_id``: its [POSTs, bytes held]; 429 past the cap."""
        cap = self._settings.max_session_posts
        inflight = self._posts.get(session_id)
        if inflight is None:
            inflight = self._posts[session_id] = [0, 0]
        elif inflight[0] >= cap:
            raise Refused(
                429,
                f"{inflight[0]} POSTs already in flight on this session "
                f"(--max-session-posts {cap})",
                retry_after="1",
                close=True,
            )
        inflight[0] += 1
        return inflight

    async def _read_body(self, request: web.BaseRequest, inflight: list[int]) -> bytes:
        """The whole body, bounded in size (per POST, per session, per gateway) and in time.

        ``inflight[1]`` counts the bytes this session's POSTs hold together,
        ``post_bytes`` those of every session. A body still incomplete after
        ``hold_time`` is a stalled peer: 408, and its bytes are freed.
        """
        body = bytearray()
        try:
            return await self._read_into(request, inflight, body)
        finally:
            inflight[1] -= len(body)
            self.post_bytes -= len(body)

    async def _read_into(
        self, request: web.BaseRequest, inflight: list[int], body: bytearray
    ) -> bytes:
        settings = self._settings
        limit = settings.max_batch_bytes
        try:
            async with asyncio.timeout(settings.hold_time):
                chunks = bounded_chunks(request.content, limit, declared=request.content_length)
                async for chunk in chunks:
                    body += chunk
                    inflight[1] += len(chunk)
                    self.post_bytes += len(chunk)
                    self._check_held(inflight[1])
        except BodyTooLarge:
            raise Refused(413, f"batch larger than {limit} bytes", close=True) from None
        except TimeoutError:
            raise Refused(
                408, f"POST body not complete within {settings.hold_time:g} s", close=True
            ) from None
        return bytes(body)

    def _check_held(self, session_bytes: int) -> None:
        settings = self._settings
        limit = settings.max_batch_bytes
        if session_bytes > limit:
            raise Refused(
                413, f"POSTs in flight on this session hold more than {limit} bytes", close=True
            )
        if self.post_bytes > settings.post_bytes_total:
            raise Refused(
                503,
                "this gateway holds too many unfinished POST bodies; try again",
                retry_after="1",
                close=True,
            )


# -- memory ----------------------------------------------------------------------------------


class MemoryTrim:
    """Gives the memory of many ended sessions back, once, when their sweep is over."""

    def __init__(self) -> None:
        self._ended = 0
        self._due = False
        self._seen = 0
        self._waits = 0
        self._trimmed_at = -_TRIM_INTERVAL
        self._stopped = False

    def session_ended(self) -> None:
        self._ended += 1
        if self._ended >= _TRIM_AFTER and not self._due:
            # Many sessions ended (an expiry sweep): give the memory back once it settles.
            loop = asyncio.get_running_loop()
            self._due = True
            self._seen = self._ended
            delay = max(1.0, self._trimmed_at + _TRIM_INTERVAL - loop.time())
            loop.call_later(delay, self._trim)

    def stop(self) -> None:
        self._stopped = True

    def _trim(self) -> None:
        if self._stopped:
            return
        loop = asyncio.get_running_loop()
        if self._ended != self._seen and self._waits < _TRIM_MAX_WAITS:
            # Still ending (a sweep in progress): one trim once it is over.
            self._seen = self._ended
            self._waits += 1
            loop.call_later(1.0, self._trim)
            return
        self._due = False
        self._ended = self._waits = 0
        _trim_memory()
        self._trimmed_at = loop.time()


_libc_trim: Callable[[int], int] | None = None


def _trim_memory() -> None:
    """Collect the ended sessions' cycles and hand glibc's free pages back to the OS.

    Without it the RSS of a gateway that held 10,000 sessions stays where it
    peaked long after they expired. Linux/glibc only; elsewhere a no-op.
    """
    global _libc_trim
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            _libc_trim = lambda _pad: 0  # noqa: E731
    _libc_trim(0)
