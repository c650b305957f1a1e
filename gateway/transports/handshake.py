"""What both ends of a hop session agree on before the first frame.

Where sessions live (``SESSION_PATH``, unless a discovery note names another
path), the headers that carry the session id, the resume token and the
hop-secret proof, and how those are encoded and checked. The server end
(``endpoint``) and the client end (``connector``) both take them from here.

Resume token
============

Every request of an open session carries ``X-Hopgate-Token``: the token
base64url-encoded without padding, never in the URL (which gets logged).

Hop secret
==========

With ``hop_secret`` set, opening a session needs ``X-Hopgate-Auth: v2 <unix
time> <nonce> <hex HMAC-SHA256(secret, "hopgate.v2 open-session <unix time>
<nonce>")>``, the nonce being 32 lowercase hex digits the sender picks at
random for every attempt. The MAC is checked in constant time, the time must
be within ``AUTH_WINDOW`` seconds of the server's clock, and the nonce must
be new: the server remembers every nonce it accepted for as long as its
proof could still be valid (``ReplayCache``), so a captured header opens
nothing, not even inside the window. When that bounded cache is full the
server answers ``503`` rather than forget a nonce. The secret itself never
travels. Without the header, or with the replayable ``v1`` of older gateways:
``403`` saying why; a malformed one: ``400``.
Requests of an open session are authenticated by the resume token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from gateway.core.discovery import DEFAULT_SESSION_PATH
from gateway.core.session.errors import RemoteProtocolError
from gateway.core.session.frames import (
    MAX_SESSION_ID_LENGTH,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
)
from gateway.core.session.tokens import new_nonce
from gateway.transports.registry import ReplayCache
from gateway.transports.session_settings import SessionSettings

__all__ = [
    "AUTH_HEADER",
    "AUTH_NONCES",
    "AUTH_WINDOW",
    "LONG_POLL_HEADER",
    "LONG_POLL_LEAN",
    "LONG_POLL_POLL_POST",
    "LONG_POLL_STREAM",
    "MAX_DIGITS",
    "SESSION_HEADER",
    "SESSION_PATH",
    "TOKEN_HEADER",
    "TUNNEL_FEATURES",
    "TUNNEL_HEADER",
    "TUNNEL_PACKED_HEADS",
    "TUNNEL_WHOLE_ANSWERS",
    "SessionRoute",
    "auth_header_value",
    "check_auth",
    "decode_token",
    "encode_token",
    "parse_decimal",
]

#: Where sessions live when the peer's discovery note names no other path.
SESSION_PATH: Final = DEFAULT_SESSION_PATH
SESSION_HEADER: Final = "X-Hopgate-Session"
TOKEN_HEADER: Final = "X-Hopgate-Token"
AUTH_HEADER: Final = "X-Hopgate-Auth"
#: What a tunnel reads beyond the base frames (space-separated tokens; unknown ones
#: are ignored): the server's on its session-creating 200, the client's on the
#: POST that asks for it. ``packed-heads`` = header compaction, ``whole-answers`` =
#: RESPONSE_WHOLE (docs/tunnel.md). A tunnel sends either only to a peer that said so.
TUNNEL_HEADER: Final = "X-Hopgate-Tunnel"
TUNNEL_PACKED_HEADS: Final = "packed-heads"
TUNNEL_WHOLE_ANSWERS: Final = "whole-answers"
#: What this version's tunnels read: the value of TUNNEL_HEADER both ways.
TUNNEL_FEATURES: Final = f"{TUNNEL_PACKED_HEADS} {TUNNEL_WHOLE_ANSWERS}"
#: Long-poll features, space-separated tokens. On the session-creating POST, what
#: the client asks for: ``lean`` = answer this session's GETs and POSTs without
#: the headers a browser needs (the client is a gateway). On its 200, what the
#: server does: ``lean`` as asked, ``poll-post`` = a POST carrying ``poll=`` is held
#: and answered like a GET of that number (one request carries data up and waits
#: for data down), ``stream`` = GETs and POSTs carrying ``stream=1`` stream many
#: batches each (``longpoll_stream``; a client uses it only as a gateway, lean).
#: Unknown tokens are ignored both ways.
LONG_POLL_HEADER: Final = "X-Hopgate-Long-Poll"
LONG_POLL_LEAN: Final = "lean"
LONG_POLL_POLL_POST: Final = "poll-post"
LONG_POLL_STREAM: Final = "stream"
#: Seconds a hop-secret proof stays valid either side of the server's clock.
AUTH_WINDOW: Final = 60
#: Nonces of accepted proofs remembered at once (for 2 * AUTH_WINDOW each).
AUTH_NONCES: Final = 16384
#: Longest decimal number accepted anywhere in a hop request (2**64 has 20 digits).
MAX_DIGITS: Final = 20
_NONCE_LENGTH: Final = 32


@dataclass(frozen=True, slots=True)
class SessionRoute:
    """How the client end reaches one open session: every transport it starts dials this.

    ``url`` is the session's own (``.../session/{id}``, no query); ``headers``
    carry the resume token; ``poll_posts``: the server holds POSTs that poll
    (``LONG_POLL_POLL_POST``); ``rtt``: seconds the session-creating POST took
    (what a streamed request's answers are compared with, ``longpoll_stream``).
    """

    http: aiohttp.ClientSession
    url: URL
    headers: Mapping[str, str]
    settings: SessionSettings
    poll_posts: bool = False
    rtt: float = 0.0


def encode_token(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def decode_token(value: str) -> bytes | None:
    try:
        raw = value.strip().encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None


def read_created(session_id: str, token_text: str, body: bytes) -> bytes:
    """The token of a session-creating 200, or ValueError saying why it is no gateway's.

    A gateway's 200 carries a session id, a token and that session's HELLO
    as the body; anything else (an origin answering 200 to any POST) is not
    a session.  The connector and ``hopgate doctor`` both judge by this.
    """
    token = decode_token(token_text)
    if not (0 < len(session_id) <= MAX_SESSION_ID_LENGTH and session_id.isascii()) or not (
        token and 16 <= len(token) <= 64
    ):
        raise ValueError("its 200 has no session id and token")
    try:
        frames = FrameDecoder().decode(body)
    except RemoteProtocolError as exc:
        raise ValueError(f"its answer is not a session HELLO ({exc.reason})") from None
    if not (
        len(frames) == 1
        and isinstance(hello := frames[0], Hello)
        and hello.version == PROTOCOL_VERSION
        and hello.session_id == session_id
        and hello.token is None
    ):
        raise ValueError("its answer is not a session HELLO")
    return token


def _auth_mac(secret: str, stamp: int, nonce: str) -> str:
    message = f"hopgate.v2 open-session {stamp} {nonce}".encode("ascii")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def auth_header_value(secret: str, now: float | None = None, nonce: str | None = None) -> str:
    """The ``X-Hopgate-Auth`` value proving knowledge of ``secret``; a fresh nonce each call."""
    stamp = int(time.time() if now is None else now)
    nonce = new_nonce() if nonce is None else nonce
    return f"v2 {stamp} {nonce} {_auth_mac(secret, stamp, nonce)}"


def parse_decimal(text: str, *, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative decimal of ASCII digits only and at most ``max_digits``; else None.

    ``str.isdigit`` alone accepts "²" and other Unicode digits that ``int``
    rejects (a 500), and no length limit lets a peer make ``int`` chew on
    thousands of digits.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _is_nonce(text: str) -> bool:
    return len(text) == _NONCE_LENGTH and all(c in "0123456789abcdef" for c in text)


def check_auth(
    secret: str,
    value: str | None,
    now: float | None = None,
    replays: ReplayCache | None = None,
) -> tuple[int, str] | None:
    """None if ``value`` proves ``secret`` (and its nonce is new), else (status, reason).

    400 malformed, 403 missing / outdated v1 / wrong / stale / replayed, 503 replay
    cache full.
    Without ``replays`` the nonce is not checked for reuse (tests, tools).
    """
    if not value:
        return 403, f"this gateway requires the hop secret (--hop-secret): no {AUTH_HEADER} header"
    parts = value.split()
    if parts and parts[0] == "v1":
        # 403, not 400: an older client gateway reports it as a refusal, with this reason.
        return 403, (
            f"outdated {AUTH_HEADER} v1 (replayable): the sending gateway must be upgraded"
        )
    stamp = parse_decimal(parts[1]) if len(parts) == 4 and parts[0] == "v2" else None
    if stamp is None or not _is_nonce(parts[2]):
        return 400, (
            f"malformed {AUTH_HEADER} header: expected v2 <unix time> <32 hex digits nonce> <mac>"
        )
    nonce = parts[2]
    if not hmac.compare_digest(
        parts[3].encode("ascii", "replace"), _auth_mac(secret, stamp, nonce).encode()
    ):
        return 403, "wrong hop secret"
    now = time.time() if now is None else now
    if abs(now - stamp) > AUTH_WINDOW:
        return 403, (
            f"hop secret proof is more than {AUTH_WINDOW} s off this gateway's clock "
            "(are both clocks right?)"
        )
    if replays is not None:
        try:
            fresh = replays.add(nonce, now)
        except ReplayCache.Full as exc:
            return 503, f"too many hop-secret proofs to remember ({exc}); try again later"
        if not fresh:
            return 403, "hop secret proof replayed (its nonce was used before)"
    return None
