"""What the next transport batch carries: control frames first, then frames from the send pointer.

Control frames are unsequenced and never replayed: a HELLO at the start of
every transport, PONGs for the peer's PINGs, our heartbeat PING, the
cumulative ACK, and after a failure the ABORT telling the peer why. Then
come DATA/CLOSE frames from the replay buffer's send pointer, up to the
batch budget (at least one frame always fits).

Delayed acks. The ACK rides on whatever batch goes out next; a *bare* ACK
is urgent (``ack_now``, ``Session.wants_write_now``) only after ACK_EVERY
frames or ACK_BYTES of payload since the last one, for a duplicate (the
peer is replaying) or a CLOSE, or ACK_DELAY after the first frame it
covers (``ack_deadline``, one session timer per ack, not per frame). A
message that arrives alone thus costs its receiver no frame back: the ack
of a stream of them is one frame per ACK_EVERY.
"""

from __future__ import annotations

from typing import Final

import msgpack

from gateway.core.session.config import SessionConfig
from gateway.core.session.frames import encode_ack, encode_ping, encode_pong
from gateway.core.session.handshake import Credentials
from gateway.core.session.inbound import Inbound
from gateway.core.session.liveness import Liveness
from gateway.core.session.replay import ReplayBuffer

__all__ = ["Outbox"]

_MAX_QUEUED_PONGS: Final = 16
#: A bare ACK waits at most this long (seconds) for a batch to ride on.
ACK_DELAY: Final = 0.01
#: ... and goes at once after this many DATA frames or payload bytes.
ACK_EVERY: Final = 64
ACK_BYTES: Final = 256 * 1024


class Outbox:
    """The control frames due, and the builder of each batch from them and the replay buffer."""

    __slots__ = (
        "_config",
        "_credentials",
        "_live",
        "_owed_bytes",
        "_owed_frames",
        "_packer",
        "_recv",
        "_send",
        "abort_due",
        "abort_frame",
        "ack_due_at",
        "ack_now",
        "ack_pending",
        "hello_due",
        "pongs",
    )

    def __init__(
        self,
        config: SessionConfig,
        packer: msgpack.Packer,
        credentials: Credentials,
        send: ReplayBuffer,
        recv: Inbound,
        live: Liveness,
    ) -> None:
        self._config = config
        self._packer = packer
        self._credentials = credentials
        self._send = send
        self._recv = recv
        self._live = live
        self.hello_due = False
        self.ack_pending = False  # an ACK is owed
        self.ack_now = False  # ... and may not wait for data to ride on
        self.ack_due_at: float | None = None  # when a waiting bare ACK becomes urgent
        self._owed_frames = self._owed_bytes = 0
        self.pongs: list[int] = []
        self.abort_frame: bytes | None = None  # once we gave up: tells the peer why
        self.abort_due = False

    def has_payload(self) -> bool:
        """Something besides a bare ACK or ABORT waits to go out."""
        return bool(self.hello_due or self.pongs or self._live.ping_due or self._send.unsent)

    def data_received(self, seq: int, received: int, size: int, now: float) -> None:
        """A DATA frame (``seq``) arrived, ``received`` the last in order before it: owe an ACK."""
        self.ack_pending = True
        if self.ack_due_at is None:
            self.ack_due_at = now + ACK_DELAY
        self._owed_frames += 1
        self._owed_bytes += size
        if seq <= received or self._owed_frames >= ACK_EVERY or self._owed_bytes >= ACK_BYTES:
            self.ack_now = True

    def ack_at_once(self) -> None:
        """A CLOSE (or data after the end): the peer waits for this ACK."""
        self.ack_pending = self.ack_now = True

    def ack_deadline(self) -> float | None:
        """When a waiting bare ACK must go (None: none waits)."""
        return self.ack_due_at if self.ack_pending and not self.ack_now else None

    def ack_timer(self, now: float) -> None:
        if self.ack_pending and self.ack_due_at is not None and now >= self.ack_due_at:
            self.ack_now = True

    def queue_pong(self, nonce: int) -> None:
        if len(self.pongs) < _MAX_QUEUED_PONGS:
            self.pongs.append(nonce)

    def drop_control(self) -> None:
        """The transport is gone (or the session closed): these frames were for it."""
        self.hello_due = False
        self.pongs.clear()
        self._live.ping_due = False

    def hello(self) -> bytes:
        return self._credentials.hello(self._packer, self._recv.received)

    def batch(
        self, now: float, max_bytes: int | None, *, include_data: bool, closed: bool
    ) -> list[bytes]:
        """The frames of the next batch (see ``Session.data_to_send``)."""
        parts: list[bytes] = []
        if self.abort_due:
            assert self.abort_frame is not None
            parts.append(self.abort_frame)
            self.abort_due = False
        if not closed:
            self._control_frames(parts, now)
        if self.ack_pending:
            parts.append(encode_ack(self._packer, self._recv.received))
            self.ack_pending = self.ack_now = False
            self.ack_due_at = None
            self._owed_frames = self._owed_bytes = 0
        if include_data and not closed and self._send.unsent:
            self._take_frames(parts, max_bytes or self._config.max_batch_bytes, now)
        return parts

    def _control_frames(self, parts: list[bytes], now: float) -> None:
        packer = self._packer
        live = self._live
        if self.hello_due:
            parts.append(self.hello())
            self.hello_due = False
        for nonce in self.pongs:
            parts.append(encode_pong(packer, nonce))
        self.pongs.clear()
        if live.ping_due:
            assert live.ping_nonce is not None
            if not self._send.outstanding:
                live.progress(now)  # the stall watch starts with this ping
            parts.append(encode_ping(packer, live.ping_nonce))
            live.ping_sent(now)

    def _take_frames(self, parts: list[bytes], limit: int, now: float) -> None:
        live = self._live
        if not self._send.outstanding:
            live.retx_since = now
            if live.ping_nonce is None:
                live.progress(now)
        send = self._send
        first, high_before = send.next_send, send.high_sent
        send.take(parts, limit)
        live.rtt.sent(first, send.next_send - 1, high_before, now)
