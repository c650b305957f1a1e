"""The server end of hop sessions: the aiohttp handler for everything under ``/.hopgate/session``.

Wire format
===========

=================================================  ==========================================
request                                            answers
=================================================  ==========================================
``POST /.hopgate/session``                         ``200`` + headers ``X-Hopgate-Session``
(empty body; ``X-Hopgate-Auth`` if a hop secret    (id) and ``X-Hopgate-Token`` (base64url
is configured)                                     token); body = the server's HELLO.
                                                   ``400`` malformed hop-secret header,
                                                   ``403`` hop secret missing/wrong/replayed,
                                                   ``429`` + ``Retry-After`` when this
                                                   client address holds or opens too many,
                                                   ``503`` + ``Retry-After`` when full
``GET /.hopgate/session/{id}?epoch=E``             WebSocket upgrade, subprotocol
(``Upgrade: websocket``, ``hopgate.v1`` offered)   ``hopgate.v1``, then the probe (``ws``);
                                                   ``429`` when MAX_SESSION_SOCKETS are open
``GET /.hopgate/session/{id}?last=N&epoch=E``      held poll: ``200``, body = batch (may be
                                                   empty when hold_time passed or a newer
                                                   poll released this one)
``POST /.hopgate/session/{id}?epoch=E``            ``200``, body = control frames (ACK,
(body = one batch, ``Content-Type:                 PONG, HELLO); ``400`` + ABORT batch when
application/octet-stream``)                        the batch broke the protocol (the session
                                                   is closed); ``413`` body too large;
                                                   ``429`` too many POSTs in flight on the
                                                   session; ``408`` body not whole within
                                                   hold_time
=================================================  ==========================================

Every request for an existing session carries ``X-Hopgate-Token`` (base64url
of the resume token; never in the URL). ``404`` means no such session —
unknown and expired are the same answer, so probing ids learns nothing;
``403`` means a wrong token (the session is not disturbed); ``400`` a
malformed request (``last``/``epoch`` missing or not a number, WebSocket
without ``hopgate.v1``). Session answers are ``application/octet-stream``
with ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``;
errors are ``text/plain`` with the same two headers. The header names, the
token's encoding and the hop secret's proof are drawn in ``handshake``.

Per client address
==================

Opening sessions is limited per client address (an IPv6 peer counts per
/64): ``max_sessions_per_client`` held at once and ``session_create_rate``
new ones a second, so filling ``max_sessions`` takes many peers. Refusals
are ``429`` with ``Retry-After`` and a reason naming the flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web

from gateway.core.session.errors import CloseCode
from gateway.core.session.frames import PROTOCOL_VERSION, encode_hello, new_packer
from gateway.core.session.machine import Session
from gateway.core.session.tokens import new_session_id, new_token
from gateway.transports.handshake import (
    AUTH_HEADER,
    AUTH_NONCES,
    AUTH_WINDOW,
    SESSION_HEADER,
    SESSION_PATH,
    TOKEN_HEADER,
    check_auth,
    decode_token,
    encode_token,
    parse_decimal,
)
from gateway.transports.hopsession import HopSession
from gateway.transports.http import BodyTooLarge, bounded_chunks, offers_websocket, text_error
from gateway.transports.longpoll import CONTENT_TYPE, LongPollServer
from gateway.transports.registry import (
    ClientLimits,
    ClientRefused,
    RegistryFull,
    ReplayCache,
    SessionRegistry,
    client_key,
)
from gateway.transports.session_settings import SessionSettings
from gateway.transports.ws import accept_websocket, offers_subprotocol

if TYPE_CHECKING:
    from gateway.status import GatewayStats

__all__ = ["MAX_SESSION_SOCKETS", "RETRY_AFTER", "SessionServer"]

log = logging.getLogger("hopgate.session")

RETRY_AFTER: Final = "10"
#: WebSockets one session may have open at once (current, candidate, closing, one spare).
MAX_SESSION_SOCKETS: Final = 4
#: After this many sessions ended, unused heap pages are given back (see _trim_memory),
#: at most once per _TRIM_INTERVAL seconds (a full collection of a big heap takes a while).
_TRIM_AFTER: Final = 1024
_TRIM_INTERVAL: Final = 30.0
#: Seconds a trim waits, at most, for a sweep still going on to end.
_TRIM_MAX_WAITS: Final = 10
#: Refusals of new sessions are logged at most once per this many seconds.
_REFUSAL_LOG_INTERVAL: Final = 10.0

#: One Packer for every HELLO we answer with (autoreset: each pack stands alone).
_PACKER: Final = new_packer()
_NO_STORE: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# -- responses ---------------------------------------------------------------------------


def _octets(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        content_type=CONTENT_TYPE,
        headers={**_NO_STORE, **(headers or {})},
    )


def _query_int(request: web.BaseRequest, name: str) -> int | None:
    value = request.query.get(name)
    number = None if value is None else parse_decimal(value)
    return number if number is not None and number < 2**64 else None


def _refusal(status: int, message: str, **headers: str) -> web.Response:
    """An error after which the connection closes: the request body may be unread."""
    response = text_error(status, message, **headers)
    response.force_close()
    return response


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


# -- the server ----------------------------------------------------------------------------


class SessionServer:
    """Serves hop sessions under ``SESSION_PATH``; ``on_session`` sees each new one."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        on_session: Callable[[HopSession], None],
        hop_secret: str | None = None,
        stats: GatewayStats | None = None,
    ) -> None:
        self.settings = settings
        self.registry = SessionRegistry(settings.max_sessions)
        self._on_session = on_session
        self._hop_secret = hop_secret
        self._stats = stats
        self._config = settings.core_config()
        self._closing = False
        self._clients = ClientLimits(
            max_sessions=settings.max_sessions_per_client, rate=settings.session_create_rate
        )
        self._replays = ReplayCache(window=AUTH_WINDOW, capacity=AUTH_NONCES)
        #: Session id -> [POSTs in flight, bytes they hold]; only sessions with a POST.
        self._posts: dict[str, list[int]] = {}
        #: Session id -> WebSocket connections open on it; only sessions with one.
        self._sockets: dict[str, int] = {}
        #: Bytes held by unfinished POST bodies of every session together.
        self.post_bytes = 0
        self._ended = 0
        self._trim_due = False
        self._trim_seen = 0
        self._trim_waits = 0
        self._trimmed_at = -_TRIM_INTERVAL
        self._refusals = 0
        self._refusal_logged = -_REFUSAL_LOG_INTERVAL

    def handles(self, request: web.BaseRequest) -> bool:
        path = request.path
        return path == SESSION_PATH or path.startswith(SESSION_PATH + "/")

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        tail = request.path[len(SESSION_PATH) :]
        if tail in ("", "/"):
            if request.method != "POST" or offers_websocket(request.headers):
                return text_error(405, f"open a session with POST {SESSION_PATH}", Allow="POST")
            return self._create(request)
        session_id = tail[1:]
        hop = self.registry.get(session_id) if "/" not in session_id else None
        if hop is None or hop.closed:
            return text_error(404, "no such hop session (unknown or expired)")
        token = decode_token(request.headers.get(TOKEN_HEADER, ""))
        upgrade = offers_websocket(request.headers)
        # A WebSocket without the header (browsers cannot set one) proves the
        # token in its probe HELLO instead.
        tokenless_ws = upgrade and TOKEN_HEADER not in request.headers
        if (token is None or not hop.core.verify_token(token)) and not tokenless_ws:
            return text_error(403, "wrong resume token for this session")
        epoch = _query_int(request, "epoch")
        if epoch is None:
            return text_error(400, "missing or malformed epoch=")
        if upgrade:
            if request.method != "GET" or not offers_subprotocol(request):
                return text_error(400, "a hop WebSocket must offer the hopgate.v1 subprotocol")
            return await self._websocket(request, hop, epoch)
        if request.method == "GET":
            return await self._get(request, hop, epoch)
        if request.method == "POST":
            return await self._post(request, hop, epoch)
        return text_error(405, "hop sessions take GET and POST", Allow="GET, POST")

    async def close(self) -> None:
        """End every session: graceful 1001 for a moment, then without handshake."""
        self._closing = True
        sessions = list(self.registry)
        waits = []
        for hop in sessions:
            # Only a session with a transport can finish the handshake.
            if not hop.closed and hop.current is not None:
                with contextlib.suppress(Exception):
                    hop.core.close(CloseCode.GOING_AWAY, "gateway shutting down", now=hop.now())
                    hop.dispatch()
                    waits.append(hop.wait_closed())
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(2.0, self.settings.close_timeout)):
                    await asyncio.gather(*waits, return_exceptions=True)
        for hop in sessions:
            hop.abandon(CloseCode.GOING_AWAY, "gateway shutting down")
            await hop.aclose_tasks()

    # -- handlers ------------------------------------------------------------------

    def _create(self, request: web.BaseRequest) -> web.Response:
        if self._closing:
            return text_error(503, "gateway shutting down", **{"Retry-After": RETRY_AFTER})
        if self._hop_secret is not None:
            refused = check_auth(
                self._hop_secret, request.headers.get(AUTH_HEADER), replays=self._replays
            )
            if refused is not None:
                status, problem = refused
                self._log_refusal(request, f"{status} {problem}")
                extra = {"Retry-After": RETRY_AFTER} if status == 503 else {}
                return text_error(status, problem, **extra)
        if self.registry.full:
            self._log_refusal(request, "503 --max-sessions reached")
            return text_error(
                503,
                f"too many hop sessions ({self.settings.max_sessions}); try again later",
                **{"Retry-After": RETRY_AFTER},
            )
        loop = asyncio.get_running_loop()
        key = client_key(request.remote)
        try:
            self._clients.admit(key, loop.time())
        except ClientRefused as exc:
            self._log_refusal(request, f"429 {exc.reason}")
            return text_error(429, exc.reason, **{"Retry-After": str(exc.retry_after)})
        session_id, token = new_session_id(), new_token()
        core = Session(
            self._config, session_id=session_id, token=token, is_client=False, now=loop.time()
        )
        hop = HopSession(core, self.settings)
        hop.peer_address = request.remote
        try:
            self.registry.add(hop)
        except RegistryFull:
            self._clients.release(key, loop.time())
            hop.abandon(CloseCode.GOING_AWAY, "no room")
            return text_error(503, "too many hop sessions", **{"Retry-After": RETRY_AFTER})
        hop.on_finished.append(self._forget)
        if self._stats is not None:
            self._stats.active_sessions += 1
        hop.log.debug("= session opened for %s", request.remote)
        try:
            self._on_session(hop)
        except Exception:
            log.exception("on_session failed")
            hop.abandon(CloseCode.INTERNAL_ERROR, "internal error")
            return text_error(500, "internal error opening the session")
        hello = encode_hello(_PACKER, PROTOCOL_VERSION, session_id, 0, None)
        return _octets(
            hello, headers={SESSION_HEADER: session_id, TOKEN_HEADER: encode_token(token)}
        )

    def _log_refusal(self, request: web.BaseRequest, why: str) -> None:
        """One line per interval however many are refused (a flood must not flood the log)."""
        self._refusals += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged < _REFUSAL_LOG_INTERVAL:
            return
        log.warning(
            "= refused %d hop session(s) in the last %.0f s; latest from %s: %s",
            self._refusals,
            min(now - self._refusal_logged, _REFUSAL_LOG_INTERVAL),
            request.remote,
            why,
        )
        self._refusals = 0
        self._refusal_logged = now

    def _forget(self, hop: HopSession) -> None:
        self.registry.remove(hop)
        loop = asyncio.get_running_loop()
        self._clients.release(client_key(hop.peer_address), loop.time())
        if self._stats is not None:
            self._stats.active_sessions -= 1
        self._ended += 1
        if self._ended >= _TRIM_AFTER and not self._trim_due:
            # Many sessions ended (an expiry sweep): give the memory back once it settles.
            self._trim_due = True
            self._trim_seen = self._ended
            delay = max(1.0, self._trimmed_at + _TRIM_INTERVAL - loop.time())
            loop.call_later(delay, self._trim)

    def _trim(self) -> None:
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        if self._ended != self._trim_seen and self._trim_waits < _TRIM_MAX_WAITS:
            # Still ending (a sweep in progress): one trim once it is over.
            self._trim_seen = self._ended
            self._trim_waits += 1
            loop.call_later(1.0, self._trim)
            return
        self._trim_due = False
        self._ended = self._trim_waits = 0
        _trim_memory()
        self._trimmed_at = loop.time()

    def _long_poll(self, hop: HopSession, epoch: int) -> LongPollServer | None:
        """The long-poll transport of ``epoch``, attaching it if newer; None if stale."""
        current = hop.current
        if isinstance(current, LongPollServer) and current.epoch == epoch:
            return current
        if epoch < hop.epoch or (epoch == hop.epoch and current is not None):
            return None
        hop.epoch = epoch
        transport = LongPollServer(hop, self.settings, epoch=epoch)
        hop.attach(transport)
        return transport

    async def _websocket(
        self, request: web.BaseRequest, hop: HopSession, epoch: int
    ) -> web.StreamResponse:
        """Upgrade, capped per session like POSTs: each candidate may hold a partial message.

        A client needs the current socket, one candidate and one closing; a
        peer holding more is only pinning buffers (a partial message of up to
        max_batch_bytes each).
        """
        sid = hop.session_id
        held = self._sockets.get(sid, 0)
        if held >= MAX_SESSION_SOCKETS:
            return _refusal(
                429,
                f"{held} WebSockets already open on this session (at most {MAX_SESSION_SOCKETS})",
                **{"Retry-After": "1"},
            )
        self._sockets[sid] = held + 1
        try:
            return await accept_websocket(request, hop, self.settings, epoch=epoch)
        finally:
            left = self._sockets[sid] - 1
            if left:
                self._sockets[sid] = left
            else:
                del self._sockets[sid]

    async def _get(self, request: web.BaseRequest, hop: HopSession, epoch: int) -> web.Response:
        last = _query_int(request, "last")
        if last is None:
            return text_error(400, "missing or malformed last=")
        transport = self._long_poll(hop, epoch)
        if transport is None:
            return _octets(b"")  # a stale poll: answered at once, takes nothing
        try:
            body = await transport.get(last)
        except ValueError as exc:
            return text_error(400, f"bad poll: {exc}")
        return _octets(body)

    async def _post(self, request: web.BaseRequest, hop: HopSession, epoch: int) -> web.Response:
        settings = self.settings
        limit = settings.max_batch_bytes
        length = request.content_length
        if length is not None and length > limit:
            return _refusal(413, f"batch larger than {limit} bytes")
        sid = hop.session_id
        inflight = self._posts.get(sid)
        if inflight is None:
            inflight = self._posts[sid] = [0, 0]
        elif inflight[0] >= settings.max_session_posts:
            return _refusal(
                429,
                f"{inflight[0]} POSTs already in flight on this session "
                f"(--max-session-posts {settings.max_session_posts})",
                **{"Retry-After": "1"},
            )
        inflight[0] += 1
        try:
            body = await self._read_body(request, inflight)
        finally:
            inflight[0] -= 1
            if inflight[0] == 0:
                del self._posts[sid]
        if isinstance(body, web.Response):
            return body
        transport = self._long_poll(hop, epoch)
        if transport is None:
            hop.feed(body)  # stale: its frames still count, it writes nothing
            return _octets(b"")
        ok, reply = transport.post(body)
        return _octets(reply, status=200 if ok else 400)

    async def _read_body(
        self, request: web.BaseRequest, inflight: list[int]
    ) -> bytes | web.Response:
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
    ) -> bytes | web.Response:
        settings = self.settings
        limit = settings.max_batch_bytes
        try:
            async with asyncio.timeout(settings.hold_time):
                chunks = bounded_chunks(request.content, limit, declared=request.content_length)
                async for chunk in chunks:
                    body += chunk
                    inflight[1] += len(chunk)
                    self.post_bytes += len(chunk)
                    if inflight[1] > limit:
                        return _refusal(
                            413, f"POSTs in flight on this session hold more than {limit} bytes"
                        )
                    if self.post_bytes > settings.post_bytes_total:
                        return _refusal(
                            503,
                            "this gateway holds too many unfinished POST bodies; try again",
                            **{"Retry-After": "1"},
                        )
        except BodyTooLarge:
            return _refusal(413, f"batch larger than {limit} bytes")
        except TimeoutError:
            return _refusal(408, f"POST body not complete within {settings.hold_time:g} s")
        return bytes(body)
