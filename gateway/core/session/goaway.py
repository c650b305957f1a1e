"""GOAWAY: telling the peer this session will stop serving, and hearing it from the peer.

A draining gateway cannot close a session its peer still has streams on,
and must not let the peer open more (HTTP/2 GOAWAY, RFC 9113 section 6.8,
is the model).  So it sends GOAWAY(last_stream_id, reason): the streams the
peer opened up to that id are served to the end; new ones belong on another
session, and any above the id were not processed, so the peer may send
them again elsewhere.  Stream ids are the tunnel's business; here they are
just a number the sender chose.

GOAWAY is a control frame (unsequenced, never replayed), so it is queued
again at the start of every transport until the session ends: a transport
lost right after it went out cannot swallow it.  A repeat may only lower
the id; the receiver reports the first one, and a later one only if it is
lower (``GoAwayReceived``).
"""

from __future__ import annotations

import msgpack

from gateway.core.session.closing import clip_reason
from gateway.core.session.errors import SessionUsageError
from gateway.core.session.events import GoAwayReceived
from gateway.core.session.frames import MAX_UINT64, GoAway, encode_goaway

__all__ = ["GoAwayState"]


class GoAwayState:
    """The GOAWAY we sent (re-sent on each transport) and the lowest one we got."""

    __slots__ = ("due", "frame", "received", "sent")

    def __init__(self) -> None:
        #: The last stream id we promised to serve, once we said GOAWAY.
        self.sent: int | None = None
        self.frame: bytes | None = None
        #: The frame goes out in the next batch.
        self.due = False
        #: The lowest last_stream_id the peer sent, once it said GOAWAY.
        self.received: int | None = None

    def send(self, packer: msgpack.Packer, last_stream_id: int, reason: str) -> None:
        if type(last_stream_id) is not int or not 0 <= last_stream_id <= MAX_UINT64:
            raise SessionUsageError("last_stream_id must be an integer in [0, 2**64-1]")
        if self.sent is not None and last_stream_id > self.sent:
            raise SessionUsageError(
                f"GOAWAY already promised streams up to {self.sent}; it may not raise that"
            )
        self.sent = last_stream_id
        self.frame = encode_goaway(packer, last_stream_id, clip_reason(reason))
        self.due = True

    def attached(self) -> None:
        """A new transport: say it again there."""
        self.due = self.frame is not None

    def take(self, parts: list[bytes]) -> None:
        if self.due and self.frame is not None:
            parts.append(self.frame)
        self.due = False

    def receive(self, frame: GoAway) -> GoAwayReceived | None:
        """The event for a first GOAWAY or a lower id; None for a repeat."""
        if self.received is not None and frame.last_stream_id >= self.received:
            return None
        self.received = frame.last_stream_id
        return GoAwayReceived(last_stream_id=frame.last_stream_id, reason=frame.reason)
