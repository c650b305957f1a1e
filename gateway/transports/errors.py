"""The I/O errors of hop sessions, matched by class (never by message text).

Every one is a ``ConnectionError``, so code that only needs "it did not
work" can catch that; code that must tell a legacy origin from a gateway
saying "not now" catches the subclass::

    ConnectionError
     ├── SessionClosedError       send()/drain() on a finished session (code, reason)
     └── HopIOError               base of the rest; ``reason`` says why
          ├── SessionUnavailable  connector: no session could be opened
          │    ├── PeerUnreachable   the session endpoint could not be reached
          │    ├── NotAGateway       it answered, but not like a hopgate gateway
          │    └── SessionRefused    a gateway refused: 403, 429, 503 (status, retry_after)
          └── TransportFailed     a WebSocket candidate is unusable
               └── HandshakeRefused  the upgrade was answered without a 101 (status)

The message a person reads (``str(exc)``, ``exc.reason``) is unchanged from
the days these were plain strings: logs and ``/.hopgate/status`` show it.
"""

from __future__ import annotations

__all__ = [
    "PEER_FORGOT",
    "HandshakeRefused",
    "HopIOError",
    "NotAGateway",
    "PeerUnreachable",
    "SessionClosedError",
    "SessionRefused",
    "SessionUnavailable",
    "TransportFailed",
]


#: The close reason of a session the peer answered 404 for (it expired it, or its
#: instance is gone and another one answered): a new session may be opened at once.
PEER_FORGOT = "expired: the peer no longer knows this session"


class SessionClosedError(ConnectionError):
    """The hop session is finished; ``code`` and ``reason`` say why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"hop session closed ({code} {reason})".rstrip())
        self.code = code
        self.reason = reason


class HopIOError(ConnectionError):
    """A hop session could not be opened or carried; ``reason`` says why (also ``str()``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionUnavailable(HopIOError):
    """No hop session could be opened with the peer."""


class PeerUnreachable(SessionUnavailable):
    """The session endpoint could not be reached (refused, reset, timed out).

    Says nothing about what the peer is: try again later.
    """


class NotAGateway(SessionUnavailable):
    """The peer answered the session POST, but not as a gateway does.

    A legacy origin (any status but 200/403/429/503, a 200 without a session
    id, token and HELLO, an oversized answer): a note or hello that claimed
    otherwise is not to be believed for a while.
    """


class SessionRefused(SessionUnavailable):
    """A gateway would not open a session: ``status`` 403 (hop secret), 429 or 503.

    ``retry_after`` is the peer's ``Retry-After`` text, if it sent one.
    """

    def __init__(self, reason: str, *, status: int, retry_after: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class TransportFailed(HopIOError):
    """A transport candidate (a WebSocket) could not be used."""


class HandshakeRefused(TransportFailed):
    """The WebSocket upgrade was answered with ``status``, not ``101``."""

    def __init__(self, status: int, detail: str = "") -> None:
        said = f"{status} {detail}" if detail else str(status)
        super().__init__(f"WebSocket upgrade refused ({said})")
        self.status = status
