"""Who a session is, and the HELLO that proves it on every transport.

Each attach queues a HELLO (version, session id, our last-received seq, and
on the client the resume token). A HELLO is idempotent: it is validated
(wrong version/id/token is HelloRejected) and its last_received acts as an
ACK. The first one yields ``HelloReceived(first=True)``, the I/O layer's
proof that the peer really speaks hopgate. Candidate transports are checked
with a probe (HELLO+PING -> HELLO+PONG) outside the session's stream before
traffic moves to them (``probes``).
"""

from __future__ import annotations

import hmac

import msgpack

from gateway.core.session.errors import CloseCode, HelloRejected, SessionUsageError
from gateway.core.session.frames import (
    MAX_SESSION_ID_LENGTH,
    MAX_TOKEN_LENGTH,
    PROTOCOL_VERSION,
    Hello,
    encode_hello,
)

__all__ = ["Credentials"]


class Credentials:
    """The session id, the resume token and which end we are: what a HELLO carries."""

    __slots__ = ("_sid_bytes", "is_client", "session_id", "token")

    def __init__(self, session_id: str, token: bytes, *, is_client: bool) -> None:
        if not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH or not session_id.isascii():
            raise SessionUsageError("session_id must be 1-128 ASCII characters")
        if not 0 < len(token) <= MAX_TOKEN_LENGTH:
            raise SessionUsageError(f"token must be 1-{MAX_TOKEN_LENGTH} bytes")
        self.session_id = session_id
        self._sid_bytes = session_id.encode("ascii")
        self.token = bytes(token)
        self.is_client = is_client

    def hello(self, packer: msgpack.Packer, last_received: int) -> bytes:
        """Our HELLO; only the client proves itself with the token."""
        token = self.token if self.is_client else None
        return encode_hello(packer, PROTOCOL_VERSION, self.session_id, last_received, token)

    def check_hello(self, frame: Hello) -> None:
        """Raise HelloRejected unless the peer's HELLO is for this very session."""
        if frame.version != PROTOCOL_VERSION:
            raise HelloRejected(
                f"unsupported protocol version {frame.version}", CloseCode.UNSUPPORTED_VERSION
            )
        if not hmac.compare_digest(frame.session_id.encode("utf-8"), self._sid_bytes):
            raise HelloRejected("HELLO names another session", CloseCode.UNKNOWN_SESSION)
        if not self.is_client and (
            frame.token is None or not hmac.compare_digest(frame.token, self.token)
        ):
            raise HelloRejected("bad resume token", CloseCode.AUTH_FAILED)

    def verify_token(self, token: bytes) -> bool:
        """Constant-time check of a resume token presented out of band (long-poll)."""
        return hmac.compare_digest(token, self.token)
