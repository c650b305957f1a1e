"""Flow control: every stream's windows, and the session-wide bounds over them.

Every stream has a window per direction, counted in payload bytes of DATA
and MESSAGE frames. Each side starts a new stream with ``BASE_WINDOW`` of
credit for sending to the peer, except that OPEN and ACCEPT carry the
sender's own receive window; the answerer of an HTTP OPEN with a body tops
the opener's credit up to its own ``initial_window`` with one WINDOW frame.
Those announced windows exceed ``BASE_WINDOW`` only while their excess,
summed over the session's live streams, fits ``session_window``: later
streams get ``BASE_WINDOW``, so a session's windows total ``session_window +
max_streams * BASE_WINDOW`` at most (the receiver's choice alone, invisible
to the protocol). The receiver hands credit back as its consumer reports
bytes consumed (``consumed()``), in WINDOW frames of at least half the
stream's window, so WINDOW traffic stays small; a WINDOW also doubles the
stream's window, up to ``max_stream_window`` and within ``session_window``,
while the stream carries large pieces (``_grow``). A peer that sends past the
window broke the protocol (FlowControlError).

On the way out, a stream stops being writable once it holds ``max_pending``
bytes, and every stream does once the session's unread bytes (queued here
plus sent and not yet credited back by the peer beyond a leeway of half its
window, over all streams) reach ``max_unread``; streams told to wait for
that reason are *starved* and get StreamWritable when the session has room.
"""

from __future__ import annotations

from typing import Final

import msgpack

from gateway.core.tunnel.config import TunnelConfig
from gateway.core.tunnel.errors import FlowControlError
from gateway.core.tunnel.events import Event, StreamWritable
from gateway.core.tunnel.frames import BASE_WINDOW, MAX_WINDOW, encode_window
from gateway.core.tunnel.packing import ControlQueue
from gateway.core.tunnel.stream_state import DONE, Stream

__all__ = ["FlowControl"]

# A peer grants credit back in batches of half its window, so that much
# uncredited data per stream is normal and not counted against max_unread
# (else 32 streams each with a batch pending would deadlock the session);
# for windows up to this size, beyond which a window buys no more leeway.
_LEEWAY_WINDOW: Final = 2 * 1024 * 1024
# A stream's window doubles only while a full doubled window would hold at
# most this many pieces of the size it is consumed in (see _grow).
_GROW_PIECES: Final = 1024


class FlowControl:
    """The window accounting of one tunnel, over all its streams."""

    __slots__ = (
        "_config",
        "_control",
        "_events",
        "_packer",
        "queued_total",
        "starved",
        "unacked_total",
        "window_extra",
    )

    def __init__(
        self,
        config: TunnelConfig,
        packer: msgpack.Packer,
        control: ControlQueue,
        events: list[Event],
    ) -> None:
        self._config = config
        self._packer = packer
        self._control = control  # the tunnel's control frames: WINDOWs go there
        self._events = events  # the tunnel's events: StreamWritable goes there
        self.window_extra = 0  # sum of Stream.extra over live streams
        # Unread budget: bytes queued here plus bytes sent but not credited
        # back; streams told "not writable" because of it wait in starved.
        self.queued_total = 0
        self.unacked_total = 0
        self.starved: dict[int, Stream] = {}

    # -- the receive side: what we let the peer send --------------------------

    def announce(self, stream: Stream) -> int:
        """The receive window to announce for a new stream, within ``session_window``.

        ``initial_window`` while the windows already announced beyond
        BASE_WINDOW leave room, else BASE_WINDOW: one session cannot make this
        end hold ``max_streams`` full windows. Credit is granted back in
        batches of half the stream's own window, so a small one never stalls.
        """
        extra = self._config.initial_window - BASE_WINDOW
        if extra <= 0 or self.window_extra + extra > self._config.session_window:
            return BASE_WINDOW
        self.window_extra += extra
        stream.extra = extra
        stream.grant_at = self._config.initial_window // 2
        return self._config.initial_window

    def release_extra(self, stream: Stream) -> None:
        """Nothing more comes in on the stream: its window beyond BASE_WINDOW is free."""
        self.window_extra -= stream.extra
        stream.extra = 0

    @staticmethod
    def take_credit(stream: Stream, n: int) -> None:
        if n > stream.recv_window:
            raise FlowControlError(
                f"stream {stream.id} sent {n} bytes with a window of {stream.recv_window}"
            )
        stream.recv_window -= n

    def credit(self, stream: Stream, n: int) -> None:
        """Owe the peer ``n`` bytes of credit; a WINDOW goes once half the window is owed."""
        stream.to_grant += n
        stream.to_grant_n += 1
        if stream.to_grant >= stream.grant_at and stream.recv_state != DONE:
            grant = stream.to_grant + self._grow(stream)
            self._control.append(encode_window(self._packer, stream.id, grant))
            stream.recv_window += grant
            stream.to_grant = stream.to_grant_n = 0

    def _grow(self, stream: Stream) -> int:
        """Bytes by which to widen the stream's window: doubled while it carries large pieces.

        A window buys one window of bytes per credit round trip, and between two
        gateways that trip takes milliseconds, so 64 KiB messages waited for
        credit at 256 KiB. Grown only while the pieces consumed since the last
        WINDOW average ``2 * window / _GROW_PIECES`` bytes or more: a full grown
        window then holds at most ``_GROW_PIECES`` such pieces, far below the
        I/O layer's bound on undelivered events, so a burst of tiny messages
        keeps the window it started with. The growth is taken from
        ``session_window`` as announce() takes its share, and released with it.
        """
        window = BASE_WINDOW + stream.extra
        limit = self._config.max_stream_window
        if window >= limit or stream.to_grant * _GROW_PIECES < 2 * window * stream.to_grant_n:
            return 0
        delta = min(window, limit - window)
        if self.window_extra + delta > self._config.session_window:
            return 0
        self.window_extra += delta
        stream.extra += delta
        stream.grant_at = (window + delta) // 2
        return delta

    # -- the send side: what the peer lets us send ------------------------------

    def window_received(self, stream: Stream, increment: int) -> None:
        """The peer granted ``increment`` more bytes on the stream."""
        stream.send_credit += increment
        if stream.send_credit > MAX_WINDOW:
            raise FlowControlError(f"WINDOW overflows the credit of stream {stream.id}")
        # Seen before the ack: a top-up WINDOW for bytes not sent yet widens
        # the window without acknowledging anything (a grant overestimates it).
        self.see_window(stream)
        stream.unacked -= min(increment, stream.unacked)
        self.count_unacked(stream)

    def see_window(self, stream: Stream) -> None:
        """Track the peer's window for the stream: credit plus bytes in flight, at its largest."""
        window = stream.send_credit + stream.unacked
        if window > stream.window:
            stream.window = window
            stream.leeway = min(window, _LEEWAY_WINDOW) // 2
        self.count_unacked(stream)

    def count_unacked(self, stream: Stream) -> None:
        counted = max(0, stream.unacked - stream.leeway)
        self.unacked_total += counted - stream.unacked_counted
        stream.unacked_counted = counted

    def chunk_queued(self, stream: Stream, n: int) -> None:
        """The caller queued ``n`` bytes on the stream: they count as unread from now."""
        stream.queued += n
        self.queued_total += n

    def chunk_sent(self, stream: Stream, n: int) -> None:
        """``n`` queued bytes of the stream left in a DATA/MESSAGE frame."""
        stream.send_credit -= n
        stream.queued -= n
        unacked = stream.unacked = stream.unacked + n
        self.queued_total -= n
        # count_unacked, inline: one call less for every message sent
        counted = max(0, unacked - stream.leeway)
        self.unacked_total += counted - stream.unacked_counted
        stream.unacked_counted = counted

    def full(self) -> bool:
        """The session's unread bytes reached ``max_unread``: no stream is writable."""
        return self.queued_total + self.unacked_total >= self._config.max_unread

    def is_writable(self, stream: Stream) -> bool:
        """The stream itself has room; False (and starved) if the session has none."""
        if self.queued_total + self.unacked_total >= self._config.max_unread:  # full()
            self.starved[stream.id] = stream
            return False
        return True

    def writable_again(self, stream: Stream) -> None:
        """The stream's queue drained below its limits: say so, once the session has room."""
        stream.writable = True
        if self.full():
            self.starved[stream.id] = stream  # StreamWritable once the session has room
        else:
            self._events.append(StreamWritable(stream_id=stream.id))

    def feed_starved(self) -> None:
        """The session dropped under max_unread: wake the streams that were told to wait."""
        starved = self.starved
        if not starved or self.full():
            return
        self.starved = {}
        for stream in starved.values():
            if not stream.dead and stream.writable:
                self._events.append(StreamWritable(stream_id=stream.id))

    def send_ended(self, stream: Stream) -> None:
        """Our side of the stream ended: no WINDOW comes back after the peer saw END/CLOSE."""
        stream.unacked = 0
        self.count_unacked(stream)
        self.feed_starved()

    # -- lifetime -----------------------------------------------------------------

    def forget(self, stream: Stream) -> None:
        """Drop a dead stream's share of every session-wide count."""
        self.release_extra(stream)
        self.queued_total -= stream.queued
        self.unacked_total -= stream.unacked_counted
        stream.queued = stream.unacked = stream.unacked_counted = 0
        self.starved.pop(stream.id, None)

    def clear(self) -> None:
        self.window_extra = self.queued_total = self.unacked_total = 0
        self.starved.clear()
