"""The server end of hop sessions: the aiohttp handler for everything under ``/.hopgate/session``.

Wire format
===========

=================================================  ==========================================
request                                            answers
=================================================  ==========================================
``POST /.hopgate/session``                         ``200`` + headers ``X-Hopgate-Session``
(empty body; ``X-Hopgate-Auth`` if a hop secret    (id) and ``X-Hopgate-Token`` (base64url
is configured)                                     token); body = the server's HELLO.
                                                   ``403`` hop secret missing/wrong,
                                                   ``503`` + ``Retry-After`` when full
``GET /.hopgate/session/{id}?epoch=E``             WebSocket upgrade, subprotocol
(``Upgrade: websocket``, ``hopgate.v1`` offered)   ``hopgate.v1``, then the probe (``ws``)
``GET /.hopgate/session/{id}?last=N&epoch=E``      held poll: ``200``, body = batch (may be
                                                   empty when hold_time passed or a newer
                                                   poll released this one)
``POST /.hopgate/session/{id}?epoch=E``            ``200``, body = control frames (ACK,
(body = one batch, ``Content-Type:                 PONG, HELLO); ``400`` + ABORT batch when
application/octet-stream``)                        the batch broke the protocol (the session
                                                   is closed); ``413`` body too large
=================================================  ==========================================

Every request for an existing session carries ``X-Hopgate-Token`` (base64url
of the resume token; never in the URL). ``404`` means no such session —
unknown and expired are the same answer, so probing ids learns nothing;
``403`` means a wrong token (the session is not disturbed); ``400`` a
malformed request (``last``/``epoch`` missing or not a number, WebSocket
without ``hopgate.v1``). Session answers are ``application/octet-stream``
with ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``;
errors are ``text/plain`` with the same two headers.

Hop secret
==========

With ``hop_secret`` set, opening a session needs ``X-Hopgate-Auth: v1 <unix
time> <hex HMAC-SHA256(secret, "hopgate.v1 open-session <unix time>")>``,
checked in constant time and accepted within ``AUTH_WINDOW`` seconds of the
server's clock. The secret itself never travels, and a captured header is
worth nothing after the window (use TLS against replay inside it). Without
it: ``403`` saying the gateway needs the hop secret. Requests of an open
session are authenticated by the resume token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from .core import Session
from .errors import CloseCode
from .frames import PROTOCOL_VERSION, encode_hello, new_packer
from .hop import HopSession, SessionSettings
from .longpoll import CONTENT_TYPE, LongPollServer
from .registry import RegistryFull, SessionRegistry
from .tokens import new_session_id, new_token
from .ws import accept_websocket, offers_subprotocol

if TYPE_CHECKING:
    from gateway.status import GatewayStats

__all__ = [
    "AUTH_HEADER",
    "SESSION_HEADER",
    "SESSION_PATH",
    "TOKEN_HEADER",
    "SessionServer",
    "auth_header_value",
    "check_auth",
    "decode_token",
    "encode_token",
]

log = logging.getLogger("hopgate.session")

SESSION_PATH: Final = "/.hopgate/session"
SESSION_HEADER: Final = "X-Hopgate-Session"
TOKEN_HEADER: Final = "X-Hopgate-Token"
AUTH_HEADER: Final = "X-Hopgate-Auth"
#: Seconds a hop-secret proof stays valid either side of the server's clock.
AUTH_WINDOW: Final = 300
RETRY_AFTER: Final = "10"

_NO_STORE: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# -- tokens and the hop secret ---------------------------------------------------------


def encode_token(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def decode_token(value: str) -> bytes | None:
    try:
        raw = value.strip().encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None


def _auth_mac(secret: str, stamp: int) -> str:
    message = f"hopgate.v1 open-session {stamp}".encode("ascii")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def auth_header_value(secret: str, now: float | None = None) -> str:
    """The ``X-Hopgate-Auth`` value proving knowledge of ``secret``."""
    stamp = int(time.time() if now is None else now)
    return f"v1 {stamp} {_auth_mac(secret, stamp)}"


def check_auth(secret: str, value: str | None, now: float | None = None) -> str | None:
    """None if ``value`` proves ``secret``, else what is wrong (for the 403)."""
    if not value:
        return f"this gateway requires the hop secret (--hop-secret): no {AUTH_HEADER} header"
    parts = value.split()
    if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
        return f"malformed {AUTH_HEADER} header"
    stamp = int(parts[1])
    if not hmac.compare_digest(
        parts[2].encode("ascii", "replace"), _auth_mac(secret, stamp).encode()
    ):
        return "wrong hop secret"
    if abs((time.time() if now is None else now) - stamp) > AUTH_WINDOW:
        return f"hop secret proof is older than {AUTH_WINDOW} s (are both clocks right?)"
    return None


# -- responses ---------------------------------------------------------------------------


def _octets(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        content_type=CONTENT_TYPE,
        headers={**_NO_STORE, **(headers or {})},
    )


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers={**_NO_STORE, **headers})


def _query_int(request: web.BaseRequest, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or not value.isdigit() or len(value) > 20:
        return None
    number = int(value)
    return number if number < 2**64 else None


def _is_upgrade(request: web.BaseRequest) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


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

    def handles(self, request: web.BaseRequest) -> bool:
        path = request.path
        return path == SESSION_PATH or path.startswith(SESSION_PATH + "/")

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        tail = request.path[len(SESSION_PATH) :]
        if tail in ("", "/"):
            if request.method != "POST" or _is_upgrade(request):
                return _error(405, f"open a session with POST {SESSION_PATH}", Allow="POST")
            return self._create(request)
        session_id = tail[1:]
        hop = self.registry.get(session_id) if "/" not in session_id else None
        if hop is None or hop.closed:
            return _error(404, "no such hop session (unknown or expired)")
        token = decode_token(request.headers.get(TOKEN_HEADER, ""))
        upgrade = _is_upgrade(request)
        # A WebSocket without the header (browsers cannot set one) proves the
        # token in its probe HELLO instead.
        tokenless_ws = upgrade and TOKEN_HEADER not in request.headers
        if (token is None or not hop.core.verify_token(token)) and not tokenless_ws:
            return _error(403, "wrong resume token for this session")
        epoch = _query_int(request, "epoch")
        if epoch is None:
            return _error(400, "missing or malformed epoch=")
        if upgrade:
            if request.method != "GET" or not offers_subprotocol(request):
                return _error(400, "a hop WebSocket must offer the hopgate.v1 subprotocol")
            return await accept_websocket(request, hop, self.settings, epoch=epoch)
        if request.method == "GET":
            return await self._get(request, hop, epoch)
        if request.method == "POST":
            return await self._post(request, hop, epoch)
        return _error(405, "hop sessions take GET and POST", Allow="GET, POST")

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
            return _error(503, "gateway shutting down", **{"Retry-After": RETRY_AFTER})
        if self._hop_secret is not None:
            problem = check_auth(self._hop_secret, request.headers.get(AUTH_HEADER))
            if problem is not None:
                return _error(403, problem)
        if self.registry.full:
            return _error(
                503,
                f"too many hop sessions ({self.settings.max_sessions}); try again later",
                **{"Retry-After": RETRY_AFTER},
            )
        loop = asyncio.get_running_loop()
        session_id, token = new_session_id(), new_token()
        core = Session(
            self._config, session_id=session_id, token=token, is_client=False, now=loop.time()
        )
        hop = HopSession(core, self.settings)
        hop.peer_address = request.remote
        try:
            self.registry.add(hop)
        except RegistryFull:
            hop.abandon(CloseCode.GOING_AWAY, "no room")
            return _error(503, "too many hop sessions", **{"Retry-After": RETRY_AFTER})
        hop.on_finished.append(self._forget)
        if self._stats is not None:
            self._stats.active_sessions += 1
        hop.log.debug("= session opened for %s", request.remote)
        try:
            self._on_session(hop)
        except Exception:
            log.exception("on_session failed")
            hop.abandon(CloseCode.INTERNAL_ERROR, "internal error")
            return _error(500, "internal error opening the session")
        hello = encode_hello(new_packer(), PROTOCOL_VERSION, session_id, 0, None)
        return _octets(
            hello, headers={SESSION_HEADER: session_id, TOKEN_HEADER: encode_token(token)}
        )

    def _forget(self, hop: HopSession) -> None:
        self.registry.remove(hop)
        if self._stats is not None:
            self._stats.active_sessions -= 1

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

    async def _get(self, request: web.BaseRequest, hop: HopSession, epoch: int) -> web.Response:
        last = _query_int(request, "last")
        if last is None:
            return _error(400, "missing or malformed last=")
        transport = self._long_poll(hop, epoch)
        if transport is None:
            return _octets(b"")  # a stale poll: answered at once, takes nothing
        try:
            body = await transport.get(last)
        except ValueError as exc:
            return _error(400, f"bad poll: {exc}")
        return _octets(body)

    async def _post(self, request: web.BaseRequest, hop: HopSession, epoch: int) -> web.Response:
        limit = self.settings.max_batch_bytes
        length = request.content_length
        if length is not None and length > limit:
            return _error(413, f"batch larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return _error(413, f"batch larger than {limit} bytes")
        transport = self._long_poll(hop, epoch)
        if transport is None:
            hop.feed(body)  # stale: its frames still count, it writes nothing
            return _octets(b"")
        ok, reply = transport.post(bytes(body))
        return _octets(reply, status=200 if ok else 400)
