"""Fresh session ids and resume tokens, for the I/O layer.

Kept apart from the core so the protocol modules stay free of randomness:
only this module touches ``secrets``.
"""

from __future__ import annotations

import hmac
import secrets

__all__ = ["TOKEN_BYTES", "new_nonce", "new_session_id", "new_token", "tokens_equal"]

TOKEN_BYTES = 32


def new_session_id() -> str:
    """An unguessable, URL-safe session id (128 bits, 22 characters)."""
    return secrets.token_urlsafe(16)


def new_token() -> bytes:
    """A resume token: the secret that proves a transport belongs to the session."""
    return secrets.token_bytes(TOKEN_BYTES)


def tokens_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison; never compare tokens with ``==``."""
    return hmac.compare_digest(a, b)


def new_nonce() -> str:
    """A hop-secret proof's nonce: 128 random bits as 32 lowercase hex digits."""
    return secrets.token_hex(16)
