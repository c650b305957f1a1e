"""Limits and sizes of one tunnel end: the knobs (``TunnelConfig``) and the fixed bounds.

The fixed bounds protect this end whatever the configuration says: each one
caps something a peer could otherwise make us hold without end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.core.tunnel.frames import BASE_WINDOW, FRAME_OVERHEAD, MAX_PAYLOAD, MAX_WINDOW

__all__ = [
    "MAX_MESSAGE_FRAMES",
    "MAX_QUEUED_ITEMS",
    "MIN_MESSAGE",
    "WHOLE_BODY_MAX",
    "TunnelConfig",
]

#: next_message refuses budgets below this (a head must be able to fit).
MIN_MESSAGE: Final = 1024
_MAX_WS_MESSAGE: Final = 256 * 1024 * 1024
# Items (messages, body chunks) one stream may queue before it is not
# writable: max_pending counts bytes, and empty WebSocket messages have none
# (a relayed peer's flood of them would otherwise queue without end).
MAX_QUEUED_ITEMS: Final = 1024
#: The largest body a RESPONSE_WHOLE carries. Such a body is never queued on its
#: stream, so no send limit counts it: this bounds it instead (at most
#: ``max_streams`` of them wait in a tunnel's control queue, 2 MiB by default).
WHOLE_BODY_MAX: Final = 8 * 1024
# Frames one received session message may carry. Each becomes an event of
# ~100 bytes before the I/O layer sees any, and empty MESSAGEs cost no window:
# 2 MiB of them would be ~350k events. next_message's 64 KiB batches hold at
# most ~13k frames (5 bytes each at the least), so this refuses no real peer.
MAX_MESSAGE_FRAMES: Final = 32768


@dataclass(frozen=True, kw_only=True, slots=True)
class TunnelConfig:
    """Limits and sizes of one tunnel end; the peer may use different values."""

    #: Receive window per stream and direction, granted to the peer.
    initial_window: int = 256 * 1024
    #: Largest receive window a stream grows to, doubling at each WINDOW, while
    #: the pieces its consumer takes are large (flow.py ``_grow``); within
    #: ``session_window`` like ``initial_window``'s excess.
    max_stream_window: int = 1024 * 1024
    #: Largest DATA/MESSAGE payload we send: the unit of fairness. 64 KiB, so
    #: a WebSocket message of up to 64 KiB crosses as one frame, one event and
    #: one write at the receiver (16 KiB cut it into 4-5 of each and 2 session
    #: messages: 10-18% more gateway CPU per byte); a small express message
    #: still waits at most one chunk.
    max_chunk: int = 64 * 1024
    #: Queued outgoing bytes at which a stream stops being writable.
    max_pending: int = 64 * 1024
    #: Default budget of one session message built by next_message: a whole
    #: ``max_chunk`` chunk and its framing fit, and the batch is one session
    #: fragment (``SessionConfig.fragment_size``, 64 KiB + 64).
    max_message: int = 64 * 1024 + FRAME_OVERHEAD
    #: Concurrent streams the *peer* may have open towards us.
    max_streams: int = 256
    #: Target plus header names and values of a head, each way.
    max_header_bytes: int = 64 * 1024
    #: Largest WebSocket message, each way.
    max_ws_message: int = 1024 * 1024
    #: Bytes of unfinished WebSocket messages the peer may make this end hold,
    #: summed over all streams of the session (see docs/tunnel.md).
    session_reassembly: int = 16 * 1024 * 1024
    #: Bytes queued here or sent but not yet credited back by the peer (beyond
    #: each stream's leeway), summed over all streams, at which no stream is
    #: writable.
    max_unread: int = 4 * 1024 * 1024
    #: Receive window this end announces beyond BASE_WINDOW, summed over the
    #: session's live streams: a new stream gets ``initial_window`` while the
    #: sum stays within this, else BASE_WINDOW (like HTTP/2's connection
    #: window, chosen by the receiver alone: no protocol change).
    session_window: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        checks = (
            ("initial_window", BASE_WINDOW <= self.initial_window <= MAX_WINDOW),
            ("max_stream_window", BASE_WINDOW <= self.max_stream_window <= MAX_WINDOW),
            ("max_chunk", 1 <= self.max_chunk <= MAX_PAYLOAD),
            ("max_pending", self.max_pending >= 1),
            ("max_message", self.max_message >= max(MIN_MESSAGE, self.max_chunk)),
            ("max_streams", self.max_streams >= 1),
            ("max_header_bytes", 1 <= self.max_header_bytes <= MAX_PAYLOAD),
            ("max_ws_message", 1 <= self.max_ws_message <= _MAX_WS_MESSAGE),
            ("session_reassembly", self.session_reassembly >= 1),
            ("max_unread", self.max_unread >= 1),
            ("session_window", self.session_window >= 0),
        )
        for name, ok in checks:
            if not ok:
                raise ValueError(f"TunnelConfig.{name} out of range: {getattr(self, name)!r}")
