"""Exceptions and close codes of the hop session core.

Every exception says *who is at fault*, so the I/O layer knows what to do
without parsing messages::

    SessionError                  base class; never raised itself
    ├── SessionUsageError         our caller broke the session's API contract
    │                             (wrong state, bad argument); a bug in
    │                             the I/O layer, the session is left unchanged
    ├── BufferFull                backpressure, nobody's fault: the replay
    │                             buffer is full; wait for SendWindowOpened
    └── RemoteProtocolError       the peer broke the protocol; carries the
        │                         close ``code`` to report; the session is
        │                         already CLOSED and an ABORT is queued
        ├── HelloRejected         HELLO with a wrong version, session id
        │                         or resume token (4001/4002/4003)
        └── MessageTooBig         reassembled message over the limit (1009)

A RemoteProtocolError is the *only* exception that peer-controlled bytes can
produce: the decoder converts anything msgpack or our validation would raise
into one, so a hostile peer can close its own session and nothing else.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "BufferFull",
    "CloseCode",
    "HelloRejected",
    "MessageTooBig",
    "RemoteProtocolError",
    "SessionError",
    "SessionUsageError",
]


class CloseCode(IntEnum):
    """Close codes carried by CLOSE/ABORT frames and SessionClosed events.

    The 1xxx values mean what they mean in RFC 6455 so an I/O layer can pass
    them straight to a WebSocket close; 4xxx are hopgate's own.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SESSION_EXPIRED = 4000
    AUTH_FAILED = 4001
    UNKNOWN_SESSION = 4002
    UNSUPPORTED_VERSION = 4003
    CLOSE_TIMEOUT = 4004


class SessionError(Exception):
    """Base class of everything the session core raises."""


class SessionUsageError(SessionError):
    """The caller (the I/O layer) used the session in a way it must not: a bug on our side."""


class BufferFull(SessionError):
    """The replay buffer is full; the message was *not* accepted.

    Not an error of anybody: it is how backpressure reaches the caller. Check
    ``Session.writable`` or wait for a ``SendWindowOpened`` event.
    """


class RemoteProtocolError(SessionError):
    """The peer violated the protocol; ``code`` is the close code to report."""

    def __init__(self, reason: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = int(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, code={self.code})"


class HelloRejected(RemoteProtocolError):
    """A HELLO that does not belong to this session (version, id or token)."""


class MessageTooBig(RemoteProtocolError):
    """The peer sent a message larger than ``max_message_size``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, CloseCode.MESSAGE_TOO_BIG)
