"""The session's states, the one table of their changes, and the close under way.

CLOSE is sequenced like DATA, so it is delivered after every message sent
before it and is replayed like them. The receiver of a CLOSE answers with its
own CLOSE (after its remaining data); the session is CLOSED when our CLOSE
is acked and the peer's has arrived. Failures (protocol errors, expiry, close
timeout) skip the handshake: CLOSED at once, with an unsequenced best-effort
ABORT for the peer. ``SessionClosed`` is reported exactly once.

States live in ``TRANSITIONS``; every state change goes through
:func:`next_state`::

    OPEN --close/peer_close--> CLOSING --close_done--> CLOSED
      \\____________________abort______________________/
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from gateway.core.session.errors import SessionUsageError
from gateway.core.session.frames import MAX_REASON_BYTES

__all__ = [
    "TRANSITIONS",
    "Closing",
    "SessionState",
    "check_close_args",
    "clip_reason",
    "next_state",
]


class SessionState(Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN, _CLOSING, _CLOSED = SessionState.OPEN, SessionState.CLOSING, SessionState.CLOSED

TRANSITIONS: Final[dict[tuple[SessionState, str], SessionState]] = {
    (_OPEN, "close"): _CLOSING,
    (_OPEN, "peer_close"): _CLOSING,
    (_CLOSING, "peer_close"): _CLOSING,
    (_CLOSING, "close_done"): _CLOSED,
    (_OPEN, "abort"): _CLOSED,
    (_CLOSING, "abort"): _CLOSED,
}


def next_state(state: SessionState, event: str) -> SessionState:
    """The state ``event`` leads to; an event the state cannot take is the caller's bug."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise SessionUsageError(f"{event!r} is not allowed in state {state.name}") from None


@dataclass(slots=True)
class Closing:
    """The close under way: (code, reason, by_peer) to report, and when to give up on it."""

    info: tuple[int, str, bool] | None = None
    deadline: float = 0.0

    def begin(self, code: int, reason: str, *, by_peer: bool, deadline: float) -> None:
        self.info = (code, reason, by_peer)
        self.deadline = deadline


def check_close_args(code: int, reason: str) -> None:
    if not 1000 <= code <= 4999:
        raise SessionUsageError(f"close code {code} outside [1000, 4999]")
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise SessionUsageError(f"close reason longer than {MAX_REASON_BYTES} bytes")


def clip_reason(reason: str) -> str:
    """A reason from anywhere (an exception's text) cut to what CLOSE/ABORT may carry."""
    raw = reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore")
