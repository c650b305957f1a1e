"""The send side of a session: numbered frames kept in a replay buffer until acked.

``Session.send_message`` fragments a message into DATA frames of at most
``fragment_size`` bytes, numbers them with consecutive sequence numbers and
encodes each one exactly once into the *replay buffer* (a deque of encoded
frames, oldest unacked first). ``data_to_send`` walks the buffer from the
*send pointer* and concatenates frames into one batch; nothing is copied or
re-encoded on a resend. The buffer is bounded in frames and bytes. When it is
full, ``send_message`` raises BufferFull and ``writable`` is False; acks free
space and a ``SendWindowOpened`` event says so. A message larger than the
free space is accepted as the single *pending* message (a view of the
caller's bytes) and admitted fragment by fragment as acks arrive. Nothing is
ever dropped.

Acks and replay. An ACK (or a HELLO's last_received) removes frames from the
buffer. Frames after the ack are resent when:

* a transport is attached: the send pointer goes back to ack+1, so anything
  that was in flight on the old transport goes out again on the new one;
* ``rewind`` is called: the long-poll server does so with the last-received
  seq carried by each held GET, because the previous response may be lost;
* the retransmit timer fires: data outstanding and no ack progress for
  ``retransmit_timeout`` (covers a batch lost inside a transport).

Every resend is harmless because the receiver discards duplicates.

CLOSE is sequenced like DATA, so it goes after every message queued before it
and is replayed like them.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

import msgpack

from gateway.core.session.config import SessionConfig
from gateway.core.session.errors import RemoteProtocolError, SessionUsageError
from gateway.core.session.frames import DATA_OVERHEAD, FLAG_FIN, FLAG_TEXT, encode_close

__all__ = ["ReplayBuffer", "message_payload"]


def message_payload(data: bytes | bytearray | memoryview | str) -> tuple[bytes, bool]:
    """The bytes a message travels as, and whether it is text (``str``)."""
    if isinstance(data, str):
        try:
            return data.encode("utf-8"), True
        except UnicodeEncodeError as exc:
            raise SessionUsageError("text message is not encodable as UTF-8") from exc
    if isinstance(data, bytes):
        return data, False
    return bytes(data), False  # own the bytes we slice later; the caller may reuse its buffer


class ReplayBuffer:
    """Sent-but-unacked frames of one session, the send pointer and the pending message."""

    __slots__ = (
        "_config",
        "_packer",
        "acked",
        "buf",
        "buf_bytes",
        "close_request",
        "close_seq",
        "high_sent",
        "next_send",
        "next_seq",
        "pending",
        "pending_off",
        "pending_text",
    )

    def __init__(self, config: SessionConfig, packer: msgpack.Packer) -> None:
        self._config = config
        self._packer = packer
        self.buf: deque[bytes] = deque()  # buf[i] holds seq acked + 1 + i
        self.buf_bytes = 0
        self.acked = 0
        self.next_seq = 1
        self.next_send = 1
        self.high_sent = 0
        self.pending: memoryview | None = None
        self.pending_off = 0
        self.pending_text = False
        self.close_request: tuple[int, str] | None = None
        self.close_seq: int | None = None

    # -- queries ----------------------------------------------------------------

    @property
    def has_room(self) -> bool:
        """A new message would be accepted (no pending one, buffer below its limits)."""
        return (
            self.pending is None
            and len(self.buf) < self._config.max_buffer_frames
            and self.buf_bytes < self._config.max_buffer_bytes
        )

    @property
    def unsent(self) -> bool:
        """Frames from the send pointer on wait to go out."""
        return self.next_send - self.acked - 1 < len(self.buf)

    @property
    def outstanding(self) -> bool:
        # Sent at least once and not acked; a rewind does not make data less outstanding.
        return self.high_sent > self.acked

    @property
    def close_acked(self) -> bool:
        return self.close_seq is not None and self.acked >= self.close_seq

    def describe_full(self) -> str:
        return f"replay buffer full ({len(self.buf)} frames, {self.buf_bytes} bytes)"

    # -- queueing -----------------------------------------------------------------

    def add_message(self, payload: bytes, text: bool) -> bool:
        """Number and encode a message; False (nothing queued) without ``has_room``.

        The check is made here, once: ``send_message`` asking ``has_room`` first
        was a second property call per message.
        """
        config = self._config
        if (
            self.pending is not None
            or len(self.buf) >= config.max_buffer_frames
            or self.buf_bytes >= config.max_buffer_bytes
        ):
            return False
        size = len(payload)
        if (
            size <= config.fragment_size
            and self.buf_bytes + size + DATA_OVERHEAD <= config.max_buffer_bytes
        ):
            # Fast path: one frame, no view, no pending state.
            frame = self._packer.pack(
                (2, self.next_seq, (FLAG_FIN | FLAG_TEXT) if text else FLAG_FIN, payload)
            )
            self.buf.append(frame)
            self.buf_bytes += len(frame)
            self.next_seq += 1
            return True
        self.pending = memoryview(payload)
        self.pending_off = 0
        self.pending_text = text
        self._admit_pending()
        return True

    def _admit_pending(self) -> None:
        """Move as much of the pending message into the buffer as the limits allow."""
        view = self.pending
        assert view is not None
        config = self._config
        total = len(view)
        off = self.pending_off
        text_flag = FLAG_TEXT if self.pending_text else 0
        buf = self.buf
        pack = self._packer.pack
        while len(buf) < config.max_buffer_frames:
            end = min(off + config.fragment_size, total)
            if self.buf_bytes + (end - off) + DATA_OVERHEAD > config.max_buffer_bytes:
                break
            flags = text_flag | (FLAG_FIN if end == total else 0)
            frame = pack((2, self.next_seq, flags, view[off:end]))
            buf.append(frame)
            self.buf_bytes += len(frame)
            self.next_seq += 1
            off = end
            if end == total:
                self.pending = None
                view.release()
                if self.close_request is not None:
                    self._enqueue_close(*self.close_request)
                return
        self.pending_off = off

    def request_close(self, code: int, reason: str) -> None:
        """Queue our CLOSE after everything queued so far (the pending message included)."""
        if self.pending is None:
            self._enqueue_close(code, reason)
        else:
            self.close_request = (code, reason)

    def _enqueue_close(self, code: int, reason: str) -> None:
        # May exceed the buffer limits by this one frame: a close must not block.
        frame = encode_close(self._packer, self.next_seq, code, reason)
        self.close_request = None
        self.close_seq = self.next_seq
        self.next_seq += 1
        self.buf.append(frame)
        self.buf_bytes += len(frame)

    # -- sending and acks -------------------------------------------------------------

    def take(self, parts: list[bytes], limit: int) -> None:
        """Append frames from the send pointer while the batch stays within ``limit``."""
        size = 0
        for part in parts:
            size += len(part)
        taken = 0
        for frame in islice(self.buf, self.next_send - self.acked - 1, None):
            if taken and size + len(frame) > limit:
                break
            parts.append(frame)
            size += len(frame)
            taken += 1
        self.next_send += taken
        if self.next_send - 1 > self.high_sent:
            self.high_sent = self.next_send - 1

    def ack(self, upto: int) -> bool:
        """The peer has every frame up to ``upto``: free them; False if that is old news."""
        if upto <= self.acked:
            return False
        if upto > self.high_sent:
            raise RemoteProtocolError(f"ack of seq {upto} but only {self.high_sent} were sent")
        buf = self.buf
        freed = 0
        for _ in range(upto - self.acked):
            freed += len(buf.popleft())
        self.buf_bytes -= freed
        self.acked = upto
        if self.next_send <= upto:
            self.next_send = upto + 1
        if self.pending is not None:
            self._admit_pending()
        return True

    def rewind(self) -> None:
        """Go back to the oldest unacked frame (go-back-N): everything after it goes again."""
        self.next_send = self.acked + 1

    def release(self) -> None:
        """The session is closed: nothing will be sent or replayed any more."""
        self.buf.clear()
        self.buf_bytes = 0
        if self.pending is not None:
            self.pending.release()
            self.pending = None
