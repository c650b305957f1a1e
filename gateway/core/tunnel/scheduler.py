"""Building the next session message: OPENs, then control frames, then fair data chunks.

``next_message(max_bytes)`` builds one session message: first every queued
OPEN, then every control frame (heads, END/CLOSE with no data before them,
RESET, WINDOW), then data chunks of at most ``max_chunk`` bytes until the
budget is spent. Data chunks are chosen round-robin among streams that have
both data and credit, with one refinement: a stream whose whole queue fits
in one chunk when it becomes ready (a poll response, a small WebSocket
message) goes to an *express* queue served before the ring, so a bulk
transfer delays it by at most the chunk already being built. Express service
yields to the ring after ``_EXPRESS_BURST`` picks in a row, so bulk streams
cannot starve. END/CLOSE queued behind data follow the stream's last chunk.
A stream blocked on credit leaves the ring and comes back with WINDOW.

An OPEN frame is encoded when the stream is opened but only *handed over*
here: ``Stream.open_sent`` turns True as it goes into a message. A packed head
(``packing.py``) is encoded here, as it goes, so header tables change in wire
order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from gateway.core.tunnel.config import MAX_QUEUED_ITEMS, TunnelConfig
from gateway.core.tunnel.flow import FlowControl
from gateway.core.tunnel.frames import FLAG_FIN, FLAG_TEXT, FRAME_OVERHEAD, bin_header
from gateway.core.tunnel.packing import ControlQueue, PendingHead
from gateway.core.tunnel.stream_state import Stream

__all__ = ["Scheduler"]

# A data chunk cut short by the message budget is not worth sending below this.
_MIN_SPLIT: Final = 512
_EXPRESS_BURST: Final = 8
_FLAG_BYTES: Final = tuple(bytes((flags,)) for flags in range(4))
#: The flags byte of a whole MESSAGE, by ``is_text``.
_FIN_FLAGS: Final = (_FLAG_BYTES[FLAG_FIN], _FLAG_BYTES[FLAG_FIN | FLAG_TEXT])
#: ``bin_header(n)`` for n < 256, the most common chunk sizes (small messages).
_BIN8: Final = tuple(bin_header(n) for n in range(0x100))


def _payload_header(n: int) -> bytes:
    """``bin_header(n)``, from the table for the small sizes."""
    return _BIN8[n] if n < 0x100 else bin_header(n)


_Parts = list[bytes | memoryview]


def _bound(frame: bytes | PendingHead) -> int:
    """The most bytes the frame takes in a batch."""
    return frame.bound if isinstance(frame, PendingHead) else len(frame)


class Scheduler:
    """The out-queues of one tunnel, and the order in which they share session messages."""

    __slots__ = (
        "_config",
        "_encode_head",
        "_express",
        "_express_streak",
        "_flow",
        "_on_trailer_sent",
        "_ring",
        "control",
        "opens",
    )

    def __init__(
        self,
        config: TunnelConfig,
        flow: FlowControl,
        control: ControlQueue,
        on_trailer_sent: Callable[[Stream], None],
        encode_head: Callable[[PendingHead], bytes],
    ) -> None:
        self._config = config
        self._encode_head = encode_head  # a packed head's bytes, as it goes on the wire
        self._flow = flow
        self._on_trailer_sent = on_trailer_sent  # the stream may be finished now
        self.opens: deque[Stream] = deque()
        self.control = control
        self._express: deque[Stream] = deque()
        self._ring: deque[Stream] = deque()
        self._express_streak = 0  # express picks in a row

    def has_pending(self) -> bool:
        """next_message would return a message."""
        opens = self.opens
        while opens and opens[0].dead:
            opens.popleft()
        return bool(opens or self.control) or self._pick() is not None

    def schedule(self, stream: Stream, *, bulk: bool = False) -> None:
        """Put a stream that can send now in line (express if its queue fits one chunk)."""
        if stream.scheduled or stream.dead or not stream.ready():
            return
        stream.scheduled = True
        if bulk or stream.queued > self._config.max_chunk:
            self._ring.append(stream)
        else:
            self._express.append(stream)

    def clear(self) -> None:
        self.opens.clear()
        self.control.clear()
        self._express.clear()
        self._ring.clear()

    def next_message(self, limit: int) -> bytes | None:
        """The next batch of frames within ``limit`` bytes (a lone huge frame may exceed it)."""
        if not (self.opens or self.control or self._ring):
            express = self._express
            if not express:
                return None  # the flush after each send asks once more: nothing is queued
            if len(express) == 1:
                lone = self._lone_message(express[0], limit)
                if lone is not None:
                    return lone
        parts: _Parts = []
        size: int | None = self._take_opens(parts, limit) if self.opens else 0
        if size is not None and self.control:
            size = self._take_control(parts, size, limit)
        if size is None:
            return b"".join(parts)
        self._take_chunks(parts, size, limit)
        if self._flow.starved:
            self._flow.feed_starved()  # sent bytes within the peer's leeway no longer count
        return b"".join(parts) if parts else None

    def _lone_message(self, stream: Stream, limit: int) -> bytes | None:
        """The batch when all there is to send is one stream's one whole small WebSocket message.

        The common case at one message per loop turn: the frame is built in one
        concatenation, without the general path's picks, budget loop and join.
        It is the batch ``_take_chunks`` would build; None when it does not apply.
        """
        queue = stream.queue
        if len(queue) != 1 or not stream.ws or stream.offset or stream.dead:
            return None
        item = queue[0]
        n = len(item)
        if not 0 < n <= stream.send_credit or n > self._config.max_chunk:
            return None
        if n + FRAME_OVERHEAD > limit:
            return None
        self._express.popleft()
        stream.scheduled = False
        self._express_streak += 1
        queue.popleft()
        flags = _FIN_FLAGS[stream.text_flags.popleft()]
        self._flow.chunk_sent(stream, n)
        frame = stream.prefix + flags + _payload_header(n) + item
        if not stream.writable or stream.trailer is not None:
            parts: _Parts = [frame]
            added = self._sent(stream, parts, limit, len(frame))
            frame = b"".join(parts) if added != len(frame) else frame
        if self._flow.starved:
            self._flow.feed_starved()
        return frame

    def _take_opens(self, parts: _Parts, limit: int) -> int | None:
        """Add queued OPENs; the size so far, or None if the message is full."""
        size = 0
        opens = self.opens
        while opens:
            stream = opens[0]
            frame = stream.open_frame
            if stream.dead or frame is None:
                opens.popleft()
                continue
            if parts and size + _bound(frame) > limit:
                return None
            opens.popleft()
            stream.open_frame = None
            stream.open_sent = True
            if isinstance(frame, PendingHead):
                frame = self._encode_head(frame)
            parts.append(frame)
            size += len(frame)
            if stream.trailer is not None and not stream.queue:
                self.control.append(stream.trailer)
                stream.trailer = None
        return size

    def _take_control(self, parts: _Parts, size: int, limit: int) -> int | None:
        """Add queued control frames; the size so far, or None if the message is full."""
        control = self.control
        while control:
            frame = control[0]
            if parts and size + _bound(frame) > limit:
                return None
            control.popleft()
            if isinstance(frame, PendingHead):
                frame = self._encode_head(frame)
            parts.append(frame)
            size += len(frame)
        return size

    def _take_chunks(self, parts: _Parts, size: int, limit: int) -> None:
        """Fill the rest of the budget with data chunks, express streams first."""
        while True:
            room = limit - size - FRAME_OVERHEAD
            if room <= 0:
                break
            picked = self._pick()
            if picked is None:
                break
            lane, stream = picked
            remaining = len(stream.queue[0]) - stream.offset
            n = min(remaining, stream.send_credit, self._config.max_chunk, room)
            if n == room < remaining and room < _MIN_SPLIT and parts:
                break
            lane.popleft()
            stream.scheduled = False
            if lane is self._express:
                self._express_streak += 1
            else:
                self._express_streak = 0
            if n == remaining and stream.ws and not stream.offset:
                size += self._emit_messages(stream, parts, limit - size)
            else:
                size += self._emit_chunk(stream, n, parts, limit - size)
            if stream.queue:  # else not ready: nothing to schedule
                self.schedule(stream, bulk=True)

    def _pick(self) -> tuple[deque[Stream], Stream] | None:
        express, ring = self._express, self._ring
        while express or ring:
            if express and not (ring and self._express_streak >= _EXPRESS_BURST):
                lane = express
            else:
                lane = ring
            stream = lane[0]
            if stream.dead or not stream.ready():
                lane.popleft()
                stream.scheduled = False
                continue
            return lane, stream
        return None

    def _emit_chunk(self, stream: Stream, n: int, parts: _Parts, room: int) -> int:
        """Append one DATA/MESSAGE frame of n bytes (and a due trailer); return bytes added."""
        queue = stream.queue
        item = queue[0]
        offset = stream.offset
        end = offset + n
        payload = item if offset == 0 and end == len(item) else memoryview(item)[offset:end]
        last = end == len(item)
        if last:
            queue.popleft()
            stream.offset = 0
        else:
            stream.offset = end
        self._flow.chunk_sent(stream, n)
        header = self._chunk_header(stream, n, last)
        parts.append(header)
        parts.append(payload)
        return self._sent(stream, parts, room, len(header) + n)

    def _emit_messages(self, stream: Stream, parts: _Parts, room: int) -> int:
        """Append whole WebSocket messages from the head of the stream's queue; bytes added.

        One pick's worth: messages while they fit the credit, ``max_chunk``
        bytes in all (the unit of fairness, as one chunk) and the room left.
        A burst of small messages then costs a header and two appends each,
        not a pick, a reschedule and a flow update each (the first always
        fits: the caller checked it).
        """
        queue, text_flags = stream.queue, stream.text_flags
        budget = min(stream.send_credit, self._config.max_chunk)
        room -= FRAME_OVERHEAD  # each frame must leave room for the largest header
        binary = stream.prefix + _FLAG_BYTES[FLAG_FIN]
        text = stream.prefix + _FLAG_BYTES[FLAG_FIN | FLAG_TEXT]
        sent = added = 0
        last_n = last_text = -1  # the previous frame's size and kind: its header is reused
        framing = b""
        while queue:
            item = queue[0]
            n = len(item)
            if sent + n > budget or added + n > room:
                break
            queue.popleft()
            is_text = text_flags.popleft()
            if n != last_n or is_text != last_text:
                last_n, last_text = n, is_text
                framing = (text if is_text else binary) + _payload_header(n)
            parts.append(framing)
            parts.append(item)
            sent += n
            added += len(framing) + n
        self._flow.chunk_sent(stream, sent)
        return self._sent(stream, parts, room + FRAME_OVERHEAD, added)

    def _sent(self, stream: Stream, parts: _Parts, room: int, added: int) -> int:
        """After a stream's frames of ``added`` bytes: writable again? its trailer? Bytes added."""
        queue = stream.queue
        if (
            not stream.writable
            and stream.queued < self._config.max_pending
            and len(queue) < MAX_QUEUED_ITEMS
        ):
            self._flow.writable_again(stream)
        trailer = stream.trailer
        if trailer is not None and not queue:
            stream.trailer = None
            if len(trailer) <= room - added:
                parts.append(trailer)
                added += len(trailer)
            else:
                self.control.append(trailer)
            self._on_trailer_sent(stream)
        return added

    @staticmethod
    def _chunk_header(stream: Stream, n: int, last: bool) -> bytes:
        header = _payload_header(n)
        if stream.ws:
            flags = FLAG_TEXT if stream.text_flags[0] else 0
            if last:
                flags |= FLAG_FIN
                stream.text_flags.popleft()
            return stream.prefix + _FLAG_BYTES[flags] + header
        return stream.prefix + header
