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
``POST /.hopgate/session/{id}?epoch=E&post=K``     a POST that polls (``poll-post``): its
``&poll=P&last=N&seen=S``                          batch is fed, then it is held and answered
                                                   as the GET numbered P
``GET|POST .../{id}?...&stream=1``                 streamed poll / POST (``stream``):
                                                   many batches per request
                                                   (``longpoll_stream``)
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
errors are ``text/plain`` with the same two headers. A session whose
creating POST said ``X-Hopgate-Long-Poll: lean`` (a gateway) gets lean
answers: ``no-store`` and the framing only. The create answer's
``X-Hopgate-Long-Poll: poll-post lean stream`` says this server does those
and streams. The
header names, the token's encoding and the hop secret's proof are drawn in
``handshake``.

Per client address
==================

Opening sessions is limited per client address (an IPv6 peer counts per
/64): ``max_sessions_per_client`` held at once and ``session_create_rate``
new ones a second, so filling ``max_sessions`` takes many peers. Refusals
are ``429`` with ``Retry-After`` and a reason naming the flag. These checks,
and the per-session bounds on POSTs and WebSockets, are in ``admission``;
this module holds the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from aiohttp import web

from gateway.core.session.errors import CloseCode
from gateway.core.session.frames import PROTOCOL_VERSION, encode_hello, new_packer
from gateway.core.session.machine import Session
from gateway.core.session.tokens import new_session_id, new_token
from gateway.transports.admission import (
    RETRY_AFTER,
    Admission,
    MemoryTrim,
    Refused,
    SessionHolds,
)
from gateway.transports.aiohttp_internals import RelayedResponse
from gateway.transports.cluster import ClusterForwarder
from gateway.transports.handshake import (
    AUTH_HEADER,
    LONG_POLL_HEADER,
    LONG_POLL_LEAN,
    LONG_POLL_POLL_POST,
    LONG_POLL_STREAM,
    SESSION_HEADER,
    SESSION_PATH,
    TOKEN_HEADER,
    TUNNEL_FEATURES,
    TUNNEL_HEADER,
    decode_token,
    encode_token,
    parse_decimal,
)
from gateway.transports.hopsession import HopSession
from gateway.transports.http import offers_websocket, text_error
from gateway.transports.longpoll import CONTENT_TYPE, LongPollServer
from gateway.transports.longpoll_stream import RecordError, StreamServer, stream_answer
from gateway.transports.registry import RegistryFull, SessionRegistry, client_key
from gateway.transports.session_settings import SessionSettings
from gateway.transports.ws import accept_websocket, offers_subprotocol

if TYPE_CHECKING:
    from gateway.status import GatewayStats

__all__ = ["SessionServer"]

log = logging.getLogger("hopgate.session")

#: One Packer for every HELLO we answer with (autoreset: each pack stands alone).
_PACKER: Final = new_packer()
#: The two carriers a long-poll epoch can have: one batch per request, or streamed.
_Carrier = TypeVar("_Carrier", "LongPollServer", "StreamServer")
_NO_STORE: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_LEAN: Final = {"Cache-Control": "no-store"}
#: What this server's long-poll end does (``handshake.LONG_POLL_HEADER``).
_LONG_POLL_FEATURES: Final = f"{LONG_POLL_POLL_POST} {LONG_POLL_LEAN} {LONG_POLL_STREAM}"


# -- responses ---------------------------------------------------------------------------


def _octets(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        content_type=CONTENT_TYPE,
        headers={**_NO_STORE, **(headers or {})},
    )


class _LeanAnswer(RelayedResponse, web.Response):
    """A whole answer without aiohttp's ``Content-Type`` and ``Server`` (``RelayedResponse``)."""


def _answer(body: bytes, lean: bool, status: int = 200) -> web.Response:
    """A long-poll answer; ``lean`` for a gateway that asked: no headers a browser needs.

    ``no-store`` stays (for whatever cache sits on the hop); the content type,
    ``nosniff`` and ``Server`` are for browsers and people, and a browser never
    asks for lean answers (issue 13 item 4: they were most of a hop's bytes).
    """
    if lean:
        return _LeanAnswer(status=status, body=body, headers=_LEAN)
    return _octets(body, status)


def _peer_label(request: web.BaseRequest) -> str:
    """``host:port`` of the connection that opened a session (``[v6]:port``)."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peername, tuple) or len(peername) < 2:
        return request.remote or ""
    host, port = str(peername[0]), peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _query_int(request: web.BaseRequest, name: str) -> int | None:
    value = request.query.get(name)
    number = None if value is None else parse_decimal(value)
    return number if number is not None and number < 2**64 else None


def _optional_ints(request: web.BaseRequest, *names: str) -> list[int | None]:
    """Numbers a newer client adds (absent: None); ValueError if one is malformed."""
    numbers = [_query_int(request, name) for name in names]
    for name, number in zip(names, numbers, strict=True):
        if number is None and name in request.query:
            raise ValueError(f"malformed {name}=")
    return numbers


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
        cluster: ClusterForwarder | None = None,
    ) -> None:
        self.settings = settings
        self.registry = SessionRegistry(settings.max_sessions)
        self._on_session = on_session
        self._stats = stats
        if stats is not None:
            stats.sessions = self.registry.reports
        self._config = settings.core_config()
        self.admission = Admission(settings, self.registry, hop_secret)
        self.holds = SessionHolds(settings)
        self._trim = MemoryTrim()
        #: Set on an instance of a cluster: ids name their owner, others' requests go there.
        self.cluster = cluster
        #: Sessions whose client asked for lean long-poll answers (a gateway, not a browser).
        self._lean: set[str] = set()

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
        if self.cluster is not None and "/" not in session_id:
            elsewhere = await self.cluster.route(request, session_id)
            if elsewhere is not None:
                return elsewhere
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
            return await self._websocket(request, hop, epoch, proven=not tokenless_ws)
        if request.method == "GET":
            return await self._get(request, hop, epoch)
        if request.method == "POST":
            return await self._post(request, hop, epoch)
        return text_error(405, "hop sessions take GET and POST", Allow="GET, POST")

    async def close(self) -> None:
        """End every session: graceful 1001 for a moment, then without handshake."""
        self.admission.closing = True
        self._trim.stop()
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
        if self.cluster is not None:
            await self.cluster.close()

    # -- handlers ------------------------------------------------------------------

    def _create(self, request: web.BaseRequest) -> web.Response:
        try:
            key = self.admission.admit(request.headers.get(AUTH_HEADER), request.remote)
        except Refused as refused:
            return refused.response()
        loop = asyncio.get_running_loop()
        session_id, token = new_session_id(), new_token()
        if self.cluster is not None:
            session_id = self.cluster.new_id(session_id)
        core = Session(
            self._config, session_id=session_id, token=token, is_client=False, now=loop.time()
        )
        hop = HopSession(core, self.settings)
        hop.peer_address = request.remote
        try:
            self.registry.add(hop, peer=_peer_label(request), since=time.time())
        except RegistryFull:
            self.admission.release(key)
            hop.abandon(CloseCode.GOING_AWAY, "no room")
            return Refused(503, "too many hop sessions", retry_after=RETRY_AFTER).response()
        hop.on_finished.append(self._forget)
        if self._stats is not None:
            self._stats.active_sessions += 1
        hop.log.debug("= session opened for %s", request.remote)
        # What the client's tunnel reads (its tunnel is made in on_session, below).
        hop.peer_tunnel = frozenset(request.headers.get(TUNNEL_HEADER, "").split())
        try:
            self._on_session(hop)
        except Exception:
            log.exception("on_session failed")
            hop.abandon(CloseCode.INTERNAL_ERROR, "internal error")
            return text_error(500, "internal error opening the session")
        if LONG_POLL_LEAN in request.headers.get(LONG_POLL_HEADER, "").split():
            self._lean.add(session_id)
        hello = encode_hello(_PACKER, PROTOCOL_VERSION, session_id, 0, None)
        return _octets(
            hello,
            headers={
                SESSION_HEADER: session_id,
                TOKEN_HEADER: encode_token(token),
                TUNNEL_HEADER: TUNNEL_FEATURES,
                LONG_POLL_HEADER: _LONG_POLL_FEATURES,
            },
        )

    def _forget(self, hop: HopSession) -> None:
        self.registry.remove(hop)
        self._lean.discard(hop.session_id)
        self.admission.release(client_key(hop.peer_address))
        if self._stats is not None:
            self._stats.active_sessions -= 1
        self._trim.session_ended()

    def _long_poll(self, hop: HopSession, epoch: int) -> LongPollServer | None:
        """The long-poll transport of ``epoch``, attaching it if newer; None if stale."""
        return self._epoch_transport(hop, epoch, LongPollServer)

    def _streamed(self, hop: HopSession, epoch: int) -> StreamServer | None:
        """The streamed long-poll transport of ``epoch``, attaching it if newer; None if stale."""
        return self._epoch_transport(hop, epoch, StreamServer)

    def _epoch_transport(
        self, hop: HopSession, epoch: int, kind: type[_Carrier]
    ) -> _Carrier | None:
        """``hop``'s ``kind`` transport of ``epoch``: the attached one, a new one if newer."""
        current = hop.current
        if isinstance(current, kind) and current.epoch == epoch:
            return current
        if epoch < hop.epoch or (epoch == hop.epoch and current is not None):
            return None
        hop.epoch = epoch
        transport = kind(hop, self.settings, epoch=epoch)
        hop.attach(transport)
        return transport

    async def _stream_get(
        self, request: web.BaseRequest, hop: HopSession, epoch: int, last: int
    ) -> web.StreamResponse:
        transport = self._streamed(hop, epoch)
        if transport is None:
            return _answer(b"", True)  # stale: the client sees no mark and a clean end
        try:
            return await transport.down(request, last)
        except ValueError as exc:
            return text_error(400, f"bad poll: {exc}")

    async def _stream_post(
        self, request: web.BaseRequest, hop: HopSession, epoch: int
    ) -> web.StreamResponse:
        """Feed a streamed POST's records; its head leaves first (a sign of a clear path)."""
        number = _query_int(request, "post")
        if number is None:
            return text_error(400, "a streamed POST needs post=")
        transport = self._streamed(hop, epoch)
        if transport is None:
            return _answer(b"", True)
        try:
            with self.holds.stream(hop.session_id) as hold:
                resp = await stream_answer(request)
                try:
                    if not await transport.up(request, number, hold):
                        await resp.write(hop.take(include_data=False))  # the ABORT
                    await resp.write_eof()
                except (RecordError, Refused, TimeoutError) as exc:
                    hop.log.info("< streamed post refused: %s", exc)
                    if request.transport is not None:
                        request.transport.close()  # the client sees a cut answer
                return resp
        except Refused as refused:
            return refused.response()

    async def _websocket(
        self, request: web.BaseRequest, hop: HopSession, epoch: int, *, proven: bool
    ) -> web.StreamResponse:
        """Upgrade, capped per session like POSTs: each candidate may hold a partial message.

        A candidate without the token header (a browser's: it cannot set one)
        proves the token only in its probe, so anyone who saw the session id
        (in a proxy's access log) could open such sockets and take the
        session's slots. Those are counted per session *and client address*:
        a stranger fills only its own.
        """
        key = hop.session_id if proven else f"{hop.session_id} {request.remote}"
        try:
            with self.holds.socket(key):
                return await accept_websocket(request, hop, self.settings, epoch=epoch)
        except Refused as refused:
            return refused.response()

    async def _get(
        self, request: web.BaseRequest, hop: HopSession, epoch: int
    ) -> web.StreamResponse:
        lean = hop.session_id in self._lean
        last = _query_int(request, "last")
        if last is None:
            return text_error(400, "missing or malformed last=")
        if "stream" in request.query:
            return await self._stream_get(request, hop, epoch, last)
        transport = self._long_poll(hop, epoch)
        if transport is None:
            return _answer(b"", lean)  # a stale poll: answered at once, takes nothing
        try:
            poll, seen = _optional_ints(request, "poll", "seen")
            body = await transport.get(last, poll, seen)
        except ValueError as exc:
            return text_error(400, f"bad poll: {exc}")
        return _answer(body, lean)

    async def _post(
        self, request: web.BaseRequest, hop: HopSession, epoch: int
    ) -> web.StreamResponse:
        """Feed a batch; a POST carrying ``poll=`` is then held and answered as that GET."""
        if "stream" in request.query:
            return await self._stream_post(request, hop, epoch)
        lean = hop.session_id in self._lean
        deadline = hop.now() + self.settings.hold_time
        try:
            number, poll, last, seen = _optional_ints(request, "post", "poll", "last", "seen")
        except ValueError as exc:
            return text_error(400, f"bad post: {exc}")
        if poll is not None and last is None:
            return text_error(400, "a POST with poll= needs last=")
        try:
            body = await self.holds.read_post(request, hop.session_id)
        except Refused as refused:
            return refused.response()
        transport = self._long_poll(hop, epoch)
        if transport is None:
            hop.feed(body)  # stale: its frames still count, it writes nothing
            return _answer(b"", lean)
        try:
            if not await transport.feed(body, number):
                return _answer(hop.take(include_data=False), lean, status=400)
            if poll is None or last is None:
                return _answer(hop.take(include_data=False), lean)
            return _answer(await transport.get(last, poll, seen, deadline=deadline), lean)
        except ValueError as exc:
            return text_error(400, f"bad post: {exc}")
