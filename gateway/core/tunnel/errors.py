"""Exceptions and reset codes of the tunnel core.

Every exception says *who is at fault*, so the I/O layer knows what to do
without parsing messages::

    TunnelError                   base class; never raised itself
    ├── TunnelUsageError          our caller broke the tunnel's API contract
    │                             (wrong state, bad argument, writing to
    │                             a stream that is not writable); a bug in
    │                             the I/O layer, the tunnel is left unchanged
    └── RemoteProtocolError       the peer broke the tunnel protocol
        │                         (malformed frame, illegal state change,
        │                         unknown stream); carries the hop-session
        │                         close ``code`` to report; every stream has
        │                         already been reset locally (StreamReset
        │                         events are queued) and the tunnel is closed
        └── FlowControlError      the peer sent more than a stream's window

Peer mistakes that concern one stream only (a head over our header limit, a
WebSocket message over our size limit, invalid UTF-8 in a text message, too
many concurrent streams) are *not* exceptions: that stream is reset with a
:class:`ResetCode` and the tunnel lives on.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "GOING_AWAY",
    "FlowControlError",
    "RemoteProtocolError",
    "ResetCode",
    "TunnelError",
    "TunnelUsageError",
]

#: The reason of a REFUSED for a stream opened after the GOAWAY (``Tunnel.go_away``).
GOING_AWAY = "going away"

#: Hop-session close codes (RFC 6455 meanings) carried by RemoteProtocolError.
PROTOCOL_ERROR = 1002
POLICY_VIOLATION = 1008


class ResetCode(IntEnum):
    """Why a stream was reset; carried by RESET frames and StreamReset events.

    ``http_status`` and ``ws_close_code`` are the answers a gateway gives its
    legacy endpoint when a tunnelled exchange dies with this code.
    """

    CANCEL = 0  # the sender's endpoint went away (client abort, origin hung up)
    REFUSED = 1  # not processed at all: safe to retry, even over plain HTTP
    CONNECT_FAILED = 2  # the origin could not be reached or refused the connection
    TIMEOUT = 3  # the origin did not answer in time
    TOO_LARGE = 4  # a head or WebSocket message over the receiver's limit
    PROTOCOL = 5  # the stream's content was invalid (e.g. text that is not UTF-8)
    INTERNAL = 6  # the gateway failed; also what an unknown code from a newer peer means
    SESSION_LOST = 7  # a hop session died (ours: close_all; from the peer: one further on)

    @classmethod
    def of(cls, code: int) -> ResetCode:
        """The reset code ``code`` names; ``INTERNAL`` for one this version does not know."""
        try:
            return cls(code)
        except ValueError:
            return cls.INTERNAL

    @property
    def http_status(self) -> int:
        """Status a downstream gateway answers its client with (if no head was sent yet)."""
        return _HTTP_STATUS.get(self, 502)

    @property
    def ws_close_code(self) -> int:
        """Close code a gateway closes its endpoint WebSocket with."""
        return _WS_CLOSE.get(self, 1011)


_HTTP_STATUS = {
    ResetCode.REFUSED: 503,
    ResetCode.TIMEOUT: 504,
    ResetCode.TOO_LARGE: 431,
}
_WS_CLOSE = {
    ResetCode.CANCEL: 1001,
    ResetCode.REFUSED: 1013,
    ResetCode.TOO_LARGE: 1009,
    ResetCode.PROTOCOL: 1007,
    ResetCode.SESSION_LOST: 1001,
}


class TunnelError(Exception):
    """Base class of everything the tunnel core raises."""


class TunnelUsageError(TunnelError):
    """The caller (the I/O layer) used the tunnel in a way it must not: a bug on our side."""


class RemoteProtocolError(TunnelError):
    """The peer violated the tunnel protocol; ``code`` is the session close code to use."""

    def __init__(self, reason: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, code={self.code})"


class FlowControlError(RemoteProtocolError):
    """The peer sent past a stream's window (or overflowed its own credit)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, POLICY_VIOLATION)
