"""One stream's book-keeping and the half-stream machine with its one transition table.

A stream is two *halves*, one per direction, each a tiny machine over the
states HEAD (waiting for a head), BODY (HTTP body chunks flow), WS (WebSocket
messages flow) and DONE. Every change goes through ``TRANSITIONS``; an input
a half cannot take names the state it arrived in and raises
TunnelUsageError (we tried to send it) or RemoteProtocolError (the peer
did). Initial states::

    HTTP opener     send: BODY (or DONE without a body)   recv: HEAD
    HTTP answerer   send: HEAD                            recv: BODY (or DONE)
    WS opener       send: HEAD (until accepted)           recv: HEAD
    WS answerer     send: HEAD                            recv: HEAD (until we accept)

A response head takes a half HEAD -> BODY/DONE; a WebSocket accept takes
both halves HEAD -> WS; a refusal (a response head on a WebSocket stream)
takes the opener's send half HEAD -> DONE. END and CLOSE take BODY and WS to
DONE. A stream is forgotten when both halves are DONE and nothing of it is
queued; RESET (either way) forgets it at once.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from gateway.core.tunnel.errors import RemoteProtocolError, TunnelUsageError
from gateway.core.tunnel.frames import BASE_WINDOW
from gateway.core.tunnel.packing import PendingHead

__all__ = [
    "ACCEPT",
    "BODY",
    "CLOSE",
    "DATA",
    "DONE",
    "END",
    "HEAD",
    "HEAD_BODY",
    "HEAD_EMPTY",
    "MESSAGE",
    "REFUSED",
    "STATE_NAMES",
    "TRANSITIONS",
    "WS",
    "Stream",
    "step",
]

HEAD, BODY, WS, DONE = 0, 1, 2, 3
STATE_NAMES: Final = ("HEAD", "BODY", "WS", "DONE")

# Inputs of a half-stream machine.
HEAD_BODY, HEAD_EMPTY, ACCEPT, REFUSED, DATA, END, MESSAGE, CLOSE = range(8)
_INPUT_NAMES: Final = (
    "a head with a body",
    "a head without a body",
    "an accept",
    "a refusal",
    "DATA",
    "END",
    "a MESSAGE",
    "CLOSE",
)

TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (HEAD, HEAD_BODY): BODY,
    (HEAD, HEAD_EMPTY): DONE,
    (HEAD, ACCEPT): WS,
    (HEAD, REFUSED): DONE,
    (BODY, DATA): BODY,
    (BODY, END): DONE,
    (WS, MESSAGE): WS,
    (WS, CLOSE): DONE,
}


def step(stream_id: int, state: int, what: int, *, local: bool) -> int:
    """The state a half moves to on ``what``; an illegal input blames whoever sent it."""
    new = TRANSITIONS.get((state, what))
    if new is None:
        half = "send" if local else "receive"
        message = (
            f"{_INPUT_NAMES[what]} on stream {stream_id} whose {half} side is {STATE_NAMES[state]}"
        )
        if local:
            raise TunnelUsageError(f"cannot send {message}")
        raise RemoteProtocolError(f"received {message}")
    return new


class Stream:
    """Book-keeping of one live stream (both halves, both windows, the out-queue)."""

    __slots__ = (
        "dead",
        "extra",
        "grant_at",
        "id",
        "leeway",
        "local",
        "msg_owed",
        "msg_parts",
        "msg_size",
        "msg_text",
        "offset",
        "open_frame",
        "open_sent",
        "prefix",
        "prepaid",
        "queue",
        "queued",
        "recv_state",
        "recv_window",
        "scheduled",
        "send_credit",
        "send_state",
        "text_flags",
        "to_grant",
        "to_grant_n",
        "trailer",
        "unacked",
        "unacked_counted",
        "unconsumed",
        "window",
        "writable",
        "ws",
    )

    def __init__(
        self, sid: int, *, local: bool, ws: bool, send_state: int, recv_state: int, prefix: bytes
    ) -> None:
        self.id = sid
        self.local = local
        self.ws = ws
        self.send_state = send_state
        self.recv_state = recv_state
        self.prefix = prefix  # DATA or MESSAGE frame prefix, by kind
        self.send_credit = BASE_WINDOW
        self.recv_window = BASE_WINDOW
        self.extra = 0  # receive window announced beyond BASE_WINDOW (session_window)
        self.grant_at = BASE_WINDOW // 2  # credit owed before a WINDOW goes out: half the window
        self.unconsumed = 0  # delivered to the I/O layer, not yet consumed()
        self.to_grant = 0  # consumed, not yet granted back in a WINDOW
        self.to_grant_n = 0  # consumed() calls that to_grant sums (window growth)
        self.queue: deque[bytes | memoryview] = deque()
        self.text_flags: deque[bool] = deque()  # WS only: one per queued message
        self.offset = 0  # bytes of queue[0] already sent
        self.queued = 0  # bytes in queue not yet sent
        self.trailer: bytes | None = None  # END/CLOSE frame to send after the queue
        self.writable = True
        self.scheduled = False
        self.dead = False
        self.open_frame: bytes | PendingHead | None = None
        self.open_sent = not local
        self.msg_parts: list[bytes] = []
        self.msg_size = 0  # bytes of the message being reassembled
        self.msg_owed = 0  # of those, not credited back yet (the session budget was spent)
        self.msg_text = False
        self.prepaid = 0  # delivered, unconsumed message bytes credited back before delivery
        self.unacked = 0  # sent, not yet credited back by the peer
        self.unacked_counted = 0  # of those, counted against max_unread (beyond leeway)
        self.window = BASE_WINDOW  # the peer's receive window for us, as far as we have seen
        self.leeway = BASE_WINDOW // 2  # uncredited bytes the peer may keep back legitimately

    def ready(self) -> bool:
        """Has a chunk it may send now (an empty WS message needs no credit)."""
        queue = self.queue
        return bool(queue) and (self.send_credit > 0 or len(queue[0]) == self.offset)

    def finished(self) -> bool:
        """Both halves are DONE and nothing of it waits to be sent: it can be forgotten."""
        return (
            self.send_state == DONE
            and self.recv_state == DONE
            and not self.queue
            and self.trailer is None
        )
