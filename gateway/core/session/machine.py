"""The hop session state machine: reliable, ordered whole messages over any transport.

Theory of operation
===================

A :class:`Session` is one end of a hop between two gateways. It owns no socket
and reads no clock: the I/O layer pushes in transport batches
(:meth:`Session.receive_data`), transport changes and the current time, and
pulls out events (:meth:`Session.events_received`) and the bytes to write
(:meth:`Session.data_to_send`). Everything below follows from wanting the
session to outlive any number of transports (WebSocket, HTTP long-poll,
reconnects) without losing, duplicating or reordering a message.

Sending. ``send_message`` fragments a message into DATA frames of at most
``fragment_size`` bytes, numbers them with consecutive sequence numbers and
encodes each one exactly once into the *replay buffer* (a deque of encoded
frames, oldest unacked first). ``data_to_send`` walks the buffer from the
*send pointer* and concatenates frames into one batch; nothing is copied or
re-encoded on a resend. The buffer is bounded in frames and bytes. When it is
full, ``send_message`` raises :class:`BufferFull` and ``writable`` is False;
acks free space and a ``SendWindowOpened`` event says so. A message larger
than the free space is accepted as the single *pending* message (a view of the
caller's bytes) and admitted fragment by fragment as acks arrive. Nothing is
ever dropped.

Receiving. The receiver accepts a DATA frame only if its seq is exactly one
more than the last it accepted; a lower seq is a duplicate and a higher one
is out of order, both are discarded (go-back-N: the sender will replay them).
Any DATA, accepted or not, makes the next batch carry a cumulative ACK.
Fragments are reassembled and delivered as one ``MessageReceived``.

Acks and replay. An ACK (or a HELLO's last_received) removes frames from the
replay buffer. Frames after the ack are resent when:

* a transport is attached: the send pointer goes back to ack+1, so anything
  that was in flight on the old transport goes out again on the new one;
* ``rewind`` is called: the long-poll server does so with the last-received
  seq carried by each held GET, because the previous response may be lost;
* the retransmit timer fires: data outstanding and no ack progress for
  ``retransmit_timeout`` (covers a batch lost inside a transport).

Every resend is harmless because the receiver discards duplicates.

Handshake. Each attach queues a HELLO (version, session id, our last-received
seq, and on the client the resume token). A HELLO is idempotent: it is
validated (wrong version/id/token is :class:`HelloRejected`) and its
last_received acts as an ACK. The first one yields ``HelloReceived(first=True)``,
the I/O layer's proof that the peer really speaks hopgate. Candidate transports
are checked with a probe (HELLO+PING -> HELLO+PONG) outside the session's
stream before traffic moves to them.

Liveness. No clock inside, so every timer is a timestamp compared with the
``now`` the I/O layer passes in; ``next_deadline`` says when to call
``handle_timer`` next. Timers: heartbeat PING after ``heartbeat_interval``
without sending; retransmit; stall watchdog (data or ping outstanding and no
ack/pong progress for ``stall_timeout`` -> ``TransportStalled`` once per
transport); expiry (no transport for ``resume_grace``); close handshake.

Closing. CLOSE is sequenced like DATA, so it is delivered after every message
sent before it and is replayed like them. The receiver of a CLOSE answers with
its own CLOSE (after its remaining data); the session is CLOSED when our CLOSE
is acked and the peer's has arrived. Failures (protocol errors, expiry, close
timeout) skip the handshake: CLOSED at once, with an unsequenced best-effort
ABORT for the peer. ``SessionClosed`` is reported exactly once.

States live in ``_TRANSITIONS``; every state change goes through
``Session._transition``::

    OPEN --close/peer_close--> CLOSING --close_done--> CLOSED
      \\____________________abort______________________/
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import Any, Final

from gateway.core.session.errors import (
    BufferFull,
    CloseCode,
    HelloRejected,
    MessageTooBig,
    RemoteProtocolError,
    SessionUsageError,
)
from gateway.core.session.events import (
    Event,
    HelloReceived,
    MessageReceived,
    ProbeAnswered,
    SendWindowOpened,
    SessionClosed,
    TransportStalled,
)
from gateway.core.session.frames import (
    DATA_OVERHEAD,
    FLAG_FIN,
    FLAG_TEXT,
    MAX_FRAGMENT_SIZE,
    MAX_REASON_BYTES,
    MAX_SESSION_ID_LENGTH,
    MAX_TOKEN_LENGTH,
    MAX_UINT64,
    PROTOCOL_VERSION,
    Abort,
    Ack,
    Close,
    Data,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encode_abort,
    encode_ack,
    encode_close,
    encode_hello,
    encode_ping,
    encode_pong,
    new_packer,
)

__all__ = ["Session", "SessionConfig", "SessionState"]

_MiB: Final = 1024 * 1024
_MAX_QUEUED_PONGS: Final = 16
_MAX_PROBES: Final = 8
#: One Packer for every session: with autoreset each ``pack`` is a single call
#: that keeps nothing, and a Packer of its own cost each idle session 4 KiB.
_PACKER: Final = new_packer()


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionConfig:
    """Limits and timers of one session. Times are seconds, sizes bytes."""

    max_message_size: int = 16 * _MiB
    fragment_size: int = 64 * 1024
    max_buffer_bytes: int = 4 * _MiB
    max_buffer_frames: int = 4096
    max_batch_bytes: int = 1 * _MiB
    retransmit_timeout: float = 10.0
    heartbeat_interval: float = 20.0
    stall_timeout: float = 15.0
    resume_grace: float = 60.0
    close_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.fragment_size <= MAX_FRAGMENT_SIZE:
            raise ValueError(f"fragment_size must be in [1, {MAX_FRAGMENT_SIZE}]")
        if self.max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        if self.max_buffer_bytes < self.fragment_size + DATA_OVERHEAD:
            raise ValueError("max_buffer_bytes must hold at least one full fragment")
        if self.max_buffer_frames < 1 or self.max_batch_bytes < 1:
            raise ValueError("max_buffer_frames and max_batch_bytes must be >= 1")
        timers = (
            self.retransmit_timeout,
            self.heartbeat_interval,
            self.stall_timeout,
            self.resume_grace,
            self.close_timeout,
        )
        if min(timers) <= 0:
            raise ValueError("timeouts must be > 0")


class SessionState(Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN, _CLOSING, _CLOSED = SessionState.OPEN, SessionState.CLOSING, SessionState.CLOSED

_TRANSITIONS: Final[dict[tuple[SessionState, str], SessionState]] = {
    (_OPEN, "close"): _CLOSING,
    (_OPEN, "peer_close"): _CLOSING,
    (_CLOSING, "peer_close"): _CLOSING,
    (_CLOSING, "close_done"): _CLOSED,
    (_OPEN, "abort"): _CLOSED,
    (_CLOSING, "abort"): _CLOSED,
}


def _check_close_args(code: int, reason: str) -> None:
    if not 1000 <= code <= 4999:
        raise SessionUsageError(f"close code {code} outside [1000, 4999]")
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise SessionUsageError(f"close reason longer than {MAX_REASON_BYTES} bytes")


def _clip_reason(reason: str) -> str:
    raw = reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore")


class Session:
    """One end of a hop session. See the module docstring for how it works."""

    # Thousands of idle sessions live at once: no per-instance dict.
    __slots__ = (
        "_abort_due",
        "_abort_frame",
        "_ack_pending",
        "_acked",
        "_attached",
        "_buf",
        "_buf_bytes",
        "_close_deadline",
        "_close_info",
        "_close_request",
        "_close_seq",
        "_config",
        "_decoder",
        "_detached_since",
        "_events",
        "_hello_due",
        "_hello_seen",
        "_high_sent",
        "_is_client",
        "_last_sent_at",
        "_next_send",
        "_next_seq",
        "_nonce",
        "_packer",
        "_peer_closed",
        "_pending",
        "_pending_off",
        "_pending_text",
        "_ping_due",
        "_ping_nonce",
        "_pongs",
        "_probes",
        "_received",
        "_retx_since",
        "_rx_parts",
        "_rx_size",
        "_rx_text",
        "_session_id",
        "_sid_bytes",
        "_stall_reported",
        "_state",
        "_token",
        "_watch_since",
    )

    def __init__(
        self,
        config: SessionConfig | None = None,
        *,
        session_id: str,
        token: bytes,
        is_client: bool,
        now: float,
    ) -> None:
        if not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH or not session_id.isascii():
            raise SessionUsageError("session_id must be 1-128 ASCII characters")
        if not 0 < len(token) <= MAX_TOKEN_LENGTH:
            raise SessionUsageError(f"token must be 1-{MAX_TOKEN_LENGTH} bytes")
        self._config = config or SessionConfig()
        self._session_id = session_id
        self._sid_bytes = session_id.encode("ascii")
        self._token = bytes(token)
        self._is_client = is_client
        self._packer = _PACKER
        self._decoder = FrameDecoder()
        self._state = _OPEN
        self._events: list[Event] = []

        # transport
        self._attached = False
        self._detached_since: float | None = now

        # send side: _buf[i] holds seq _acked + 1 + i
        self._buf: deque[bytes] = deque()
        self._buf_bytes = 0
        self._acked = 0
        self._next_seq = 1
        self._next_send = 1
        self._high_sent = 0
        self._pending: memoryview | None = None
        self._pending_off = 0
        self._pending_text = False
        self._close_request: tuple[int, str] | None = None
        self._close_seq: int | None = None

        # control frames queued for the next batch
        self._hello_due = False
        self._ack_pending = False
        self._pongs: list[int] = []
        self._ping_nonce: int | None = None
        self._ping_due = False
        self._abort_frame: bytes | None = None
        self._abort_due = False
        self._nonce = 0
        self._probes: dict[int, float] = {}

        # receive side
        self._received = 0
        self._rx_parts: list[bytes] = []
        self._rx_size = 0
        self._rx_text = False
        self._hello_seen = False
        self._peer_closed = False

        # timers (timestamps from the caller's clock)
        self._last_sent_at = now
        self._retx_since = now
        self._watch_since = now
        self._stall_reported = False
        self._close_deadline = 0.0
        self._close_info: tuple[int, str, bool] | None = None

    # -- introspection ------------------------------------------------------

    @property
    def config(self) -> SessionConfig:
        return self._config

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def is_client(self) -> bool:
        return self._is_client

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def last_received(self) -> int:
        """Highest seq received in order; a long-poll GET carries it."""
        return self._received

    @property
    def buffered_frames(self) -> int:
        return len(self._buf)

    @property
    def buffered_bytes(self) -> int:
        return self._buf_bytes

    @property
    def writable(self) -> bool:
        """Would ``send_message`` accept a message now?"""
        return (
            self._state is _OPEN
            and self._pending is None
            and len(self._buf) < self._config.max_buffer_frames
            and self._buf_bytes < self._config.max_buffer_bytes
        )

    @property
    def wants_write(self) -> bool:
        """Would ``data_to_send`` return something now? (A bare ACK counts.)"""
        return self._attached and (self._ack_pending or self.has_payload_to_send)

    @property
    def has_payload_to_send(self) -> bool:
        """Like ``wants_write`` but a bare ACK does not count.

        Long-poll uses it: a held GET or a POST is worth making only for this,
        since acks also travel as the GET's last-received and in POST replies.
        """
        if not self._attached:
            return False
        if self._abort_due:
            return True
        if self._state is _CLOSED:
            return False
        return bool(
            self._hello_due
            or self._pongs
            or self._ping_due
            or self._next_send - self._acked - 1 < len(self._buf)
        )

    def verify_token(self, token: bytes) -> bool:
        """Constant-time check of a resume token presented out of band (long-poll)."""
        return hmac.compare_digest(token, self._token)

    # -- transport changes ----------------------------------------------------

    def transport_attached(self, now: float) -> None:
        """A transport is ready; what it carries starts with our HELLO.

        Attaching while attached is a switch: the old transport counts as lost.
        """
        self._attached = True
        self._detached_since = None
        self._pongs.clear()
        self._ping_nonce = None
        self._ping_due = False
        if self._state is _CLOSED:
            # Tell the peer why, if we gave up (expiry, protocol error).
            self._abort_due = self._abort_frame is not None
            return
        self._hello_due = True
        self._next_send = self._acked + 1  # go-back-N: replay whatever was in flight
        self._last_sent_at = self._retx_since = self._watch_since = now
        self._stall_reported = False

    def transport_lost(self, now: float) -> None:
        """The current transport is gone; the resume_grace clock starts."""
        if not self._attached:
            return
        self._attached = False
        self._detached_since = now
        self._hello_due = self._ping_due = self._abort_due = False
        self._pongs.clear()
        self._ping_nonce = None

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed one transport batch (a WebSocket message or an HTTP body).

        Raises RemoteProtocolError if the peer broke the protocol; the
        session is then CLOSED, SessionClosed is queued and an ABORT is ready
        in ``data_to_send``. A closed session ignores data (re-acking a
        graceful close, re-sending the ABORT of a failed one).
        """
        if self._state is _CLOSED:
            if self._abort_frame is not None:
                self._abort_due = self._attached
            elif data:
                self._ack_pending = True
            return
        try:
            handlers = _HANDLERS
            for frame in self._decoder.decode(data):
                handlers[type(frame)](self, frame, now)
                if self._state is _CLOSED:
                    break
        except RemoteProtocolError as exc:
            self._terminate(exc.code, exc.reason, by_peer=False, abort=True)
            raise

    def events_received(self) -> list[Event]:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def _on_data(self, frame: Data, now: float) -> None:
        self._ack_pending = True
        seq = frame.seq
        if seq != self._received + 1:
            return  # duplicate or gap: discarded, go-back-N replays it
        if self._peer_closed:
            raise RemoteProtocolError("DATA after CLOSE")
        self._received = seq
        payload = frame.payload
        parts = self._rx_parts
        if parts:
            if frame.text is not self._rx_text:
                raise RemoteProtocolError("fragments of one message mix text and binary")
        else:
            self._rx_text = frame.text
        size = self._rx_size + len(payload)
        if size > self._config.max_message_size:
            raise MessageTooBig(
                f"message exceeds max_message_size ({self._config.max_message_size} bytes)"
            )
        if not frame.fin:
            parts.append(payload)
            self._rx_size = size
            return
        if parts:
            parts.append(payload)
            payload = b"".join(parts)
            parts.clear()
            self._rx_size = 0
        if frame.text:
            try:
                self._events.append(MessageReceived(data=payload.decode("utf-8")))
            except UnicodeDecodeError:
                raise RemoteProtocolError(
                    "text message is not valid UTF-8", CloseCode.INVALID_DATA
                ) from None
        else:
            self._events.append(MessageReceived(data=payload))

    def _on_ack(self, frame: Ack, now: float) -> None:
        self._ack(frame.received, now)

    def _on_hello(self, frame: Hello, now: float) -> None:
        self._check_hello(frame)
        self._ack(frame.last_received, now)
        first = not self._hello_seen
        self._hello_seen = True
        self._events.append(HelloReceived(last_received=frame.last_received, first=first))

    def _on_ping(self, frame: Ping, now: float) -> None:
        if len(self._pongs) < _MAX_QUEUED_PONGS:
            self._pongs.append(frame.nonce)

    def _on_pong(self, frame: Pong, now: float) -> None:
        nonce = frame.nonce
        if nonce == self._ping_nonce and not self._ping_due:
            self._ping_nonce = None
            self._progress(now)
        elif nonce in self._probes:
            self._progress(now)
            sent_at = self._probes.pop(nonce)
            self._events.append(ProbeAnswered(nonce=nonce, rtt=now - sent_at))

    def _on_close(self, frame: Close, now: float) -> None:
        self._ack_pending = True
        if frame.seq != self._received + 1:
            return
        if self._peer_closed:
            raise RemoteProtocolError("second CLOSE")
        if self._rx_parts:
            raise RemoteProtocolError("CLOSE in the middle of a fragmented message")
        self._received = frame.seq
        self._peer_closed = True
        if self._state is _OPEN:
            self._close_info = (frame.code, frame.reason, True)
            self._close_deadline = now + self._config.close_timeout
            self._request_close(frame.code, frame.reason)
        self._transition("peer_close")
        self._maybe_finish_close()

    def _on_abort(self, frame: Abort, now: float) -> None:
        self._terminate(frame.code, frame.reason, by_peer=True, abort=False)

    def _check_hello(self, frame: Hello) -> None:
        if frame.version != PROTOCOL_VERSION:
            raise HelloRejected(
                f"unsupported protocol version {frame.version}", CloseCode.UNSUPPORTED_VERSION
            )
        if not hmac.compare_digest(frame.session_id.encode("utf-8"), self._sid_bytes):
            raise HelloRejected("HELLO names another session", CloseCode.UNKNOWN_SESSION)
        if not self._is_client and (
            frame.token is None or not hmac.compare_digest(frame.token, self._token)
        ):
            raise HelloRejected("bad resume token", CloseCode.AUTH_FAILED)

    def _ack(self, upto: int, now: float) -> None:
        if upto <= self._acked:
            return
        if upto > self._high_sent:
            raise RemoteProtocolError(f"ack of seq {upto} but only {self._high_sent} were sent")
        was_writable = self.writable
        buf = self._buf
        freed = 0
        for _ in range(upto - self._acked):
            freed += len(buf.popleft())
        self._buf_bytes -= freed
        self._acked = upto
        if self._next_send <= upto:
            self._next_send = upto + 1
        self._retx_since = now
        self._progress(now)
        if self._pending is not None:
            self._admit_pending()
        if self._close_seq is not None and upto >= self._close_seq:
            self._maybe_finish_close()
        if not was_writable and self.writable:
            self._events.append(SendWindowOpened())

    def _progress(self, now: float) -> None:
        self._watch_since = now
        self._stall_reported = False

    # -- sending ----------------------------------------------------------------

    def send_message(self, data: bytes | bytearray | memoryview | str) -> None:
        """Queue one whole message; ``str`` travels as text, anything else as binary.

        Raises BufferFull (nothing queued) when not ``writable``, and
        SessionUsageError if the session is closing/closed or the message is
        over ``max_message_size``.
        """
        if self._state is not _OPEN:
            raise SessionUsageError(f"cannot send a message in state {self._state.name}")
        text = False
        if isinstance(data, str):
            text = True
            try:
                payload = data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise SessionUsageError("text message is not encodable as UTF-8") from exc
        elif isinstance(data, bytes):
            payload = data
        else:
            payload = bytes(data)  # own the bytes we slice later; the caller may reuse its buffer
        size = len(payload)
        config = self._config
        if size > config.max_message_size:
            raise SessionUsageError(
                f"message of {size} bytes exceeds max_message_size ({config.max_message_size})"
            )
        if not self.writable:
            raise BufferFull(
                f"replay buffer full ({len(self._buf)} frames, {self._buf_bytes} bytes)"
            )
        if (
            size <= config.fragment_size
            and self._buf_bytes + size + DATA_OVERHEAD <= config.max_buffer_bytes
        ):
            # Fast path: one frame, no view, no pending state.
            frame = self._packer.pack(
                (2, self._next_seq, (FLAG_FIN | FLAG_TEXT) if text else FLAG_FIN, payload)
            )
            self._buf.append(frame)
            self._buf_bytes += len(frame)
            self._next_seq += 1
            return
        self._pending = memoryview(payload)
        self._pending_off = 0
        self._pending_text = text
        self._admit_pending()

    def _admit_pending(self) -> None:
        """Move as much of the pending message into the buffer as the limits allow."""
        view = self._pending
        assert view is not None
        config = self._config
        total = len(view)
        off = self._pending_off
        text_flag = FLAG_TEXT if self._pending_text else 0
        buf = self._buf
        pack = self._packer.pack
        while len(buf) < config.max_buffer_frames:
            end = min(off + config.fragment_size, total)
            if self._buf_bytes + (end - off) + DATA_OVERHEAD > config.max_buffer_bytes:
                break
            flags = text_flag | (FLAG_FIN if end == total else 0)
            frame = pack((2, self._next_seq, flags, view[off:end]))
            buf.append(frame)
            self._buf_bytes += len(frame)
            self._next_seq += 1
            off = end
            if end == total:
                self._pending = None
                view.release()
                if self._close_request is not None:
                    self._enqueue_close(*self._close_request)
                return
        self._pending_off = off

    def _request_close(self, code: int, reason: str) -> None:
        if self._pending is None:
            self._enqueue_close(code, reason)
        else:
            self._close_request = (code, reason)

    def _enqueue_close(self, code: int, reason: str) -> None:
        # May exceed the buffer limits by this one frame: a close must not block.
        frame = encode_close(self._packer, self._next_seq, code, reason)
        self._close_request = None
        self._close_seq = self._next_seq
        self._next_seq += 1
        self._buf.append(frame)
        self._buf_bytes += len(frame)

    def data_to_send(
        self, now: float, max_bytes: int | None = None, *, include_data: bool = True
    ) -> bytes:
        """The next batch for the current transport, or b"" if there is nothing.

        Control frames (HELLO, PONG, PING, cumulative ACK) come first, then
        DATA/CLOSE from the send pointer up to ``max_bytes`` (default
        ``max_batch_bytes``; at least one frame always fits). With
        ``include_data=False`` only control frames are produced (a long-poll
        POST response carrying the ack).
        """
        if not self._attached:
            return b""
        parts: list[bytes] = []
        if self._abort_due:
            assert self._abort_frame is not None
            parts.append(self._abort_frame)
            self._abort_due = False
        if self._state is not _CLOSED:
            self._control_frames(parts, now)
        if self._ack_pending:
            parts.append(encode_ack(self._packer, self._received))
            self._ack_pending = False
        if include_data and self._state is not _CLOSED:
            start = self._next_send - self._acked - 1
            if start < len(self._buf):
                self._take_frames(parts, start, max_bytes or self._config.max_batch_bytes, now)
        if not parts:
            return b""
        self._last_sent_at = now
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _control_frames(self, parts: list[bytes], now: float) -> None:
        packer = self._packer
        if self._hello_due:
            parts.append(self._encode_hello())
            self._hello_due = False
        for nonce in self._pongs:
            parts.append(encode_pong(packer, nonce))
        self._pongs.clear()
        if self._ping_due:
            assert self._ping_nonce is not None
            if not self._data_outstanding:
                self._progress(now)  # the stall watch starts with this ping
            parts.append(encode_ping(packer, self._ping_nonce))
            self._ping_due = False

    def _take_frames(self, parts: list[bytes], start: int, limit: int, now: float) -> None:
        size = 0
        for part in parts:
            size += len(part)
        taken = 0
        for frame in islice(self._buf, start, None):
            if taken and size + len(frame) > limit:
                break
            parts.append(frame)
            size += len(frame)
            taken += 1
        if not self._data_outstanding:
            self._retx_since = now
            if self._ping_nonce is None:
                self._progress(now)
        self._next_send += taken
        if self._next_send - 1 > self._high_sent:
            self._high_sent = self._next_send - 1

    @property
    def _data_outstanding(self) -> bool:
        # Sent at least once and not acked; a rewind does not make data less outstanding.
        return self._high_sent > self._acked

    def _encode_hello(self) -> bytes:
        token = self._token if self._is_client else None
        return encode_hello(self._packer, PROTOCOL_VERSION, self._session_id, self._received, token)

    def rewind(self, now: float, peer_received: int | None = None) -> None:
        """Resend from ``peer_received + 1`` (default: from the last ack).

        The long-poll server calls it with the last-received seq of each held
        GET, since the response to the previous GET may never have arrived.
        A value above anything we sent is the peer's fault (RemoteProtocolError).
        """
        if self._state is _CLOSED:
            return
        if peer_received is not None:
            if type(peer_received) is not int or not 0 <= peer_received <= MAX_UINT64:
                raise SessionUsageError("peer_received must be a non-negative int")
            try:
                self._ack(peer_received, now)
            except RemoteProtocolError as exc:
                self._terminate(exc.code, exc.reason, by_peer=False, abort=True)
                raise
        self._next_send = self._acked + 1

    # -- closing ----------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, now: float) -> None:
        """Start a graceful close: CLOSE goes after everything already queued.

        Idempotent once closing. SessionClosed comes when the peer has
        confirmed, or after ``close_timeout`` (code CLOSE_TIMEOUT).
        """
        _check_close_args(code, reason)
        if self._state is not _OPEN:
            return
        self._transition("close")
        self._close_info = (int(code), reason, False)
        self._close_deadline = now + self._config.close_timeout
        self._request_close(int(code), reason)

    def _maybe_finish_close(self) -> None:
        if (
            self._state is _CLOSING
            and self._peer_closed
            and self._close_seq is not None
            and self._acked >= self._close_seq
        ):
            self._transition("close_done")
            assert self._close_info is not None
            code, reason, by_peer = self._close_info
            self._events.append(SessionClosed(code=code, reason=reason, by_peer=by_peer))
            self._release()

    def _terminate(self, code: int, reason: str, *, by_peer: bool, abort: bool) -> None:
        """Close without handshake; ``abort`` queues an ABORT telling the peer why."""
        if self._state is _CLOSED:
            return
        reason = _clip_reason(reason)
        self._transition("abort")
        if abort:
            self._abort_frame = encode_abort(self._packer, code, reason)
            self._abort_due = self._attached
        self._events.append(SessionClosed(code=code, reason=reason, by_peer=by_peer))
        self._release()

    def _release(self) -> None:
        self._buf.clear()
        self._buf_bytes = 0
        if self._pending is not None:
            self._pending.release()
            self._pending = None
        self._rx_parts.clear()
        self._hello_due = self._ping_due = False
        self._pongs.clear()
        self._probes.clear()

    def _transition(self, event: str) -> None:
        try:
            self._state = _TRANSITIONS[self._state, event]
        except KeyError:
            raise SessionUsageError(
                f"{event!r} is not allowed in state {self._state.name}"
            ) from None

    # -- timers -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must be called next (None: no timer running)."""
        if self._state is _CLOSED:
            return None
        config = self._config
        deadlines: list[float] = []
        if self._state is _CLOSING:
            deadlines.append(self._close_deadline)
        if not self._attached:
            assert self._detached_since is not None
            deadlines.append(self._detached_since + config.resume_grace)
            return min(deadlines)
        if not self._ping_due:
            deadlines.append(self._last_sent_at + config.heartbeat_interval)
        if self._data_outstanding:
            deadlines.append(self._retx_since + config.retransmit_timeout)
        if not self._stall_reported and self._watching:
            deadlines.append(self._watch_since + config.stall_timeout)
        return min(deadlines, default=None)

    @property
    def _watching(self) -> bool:
        ping_in_flight = self._ping_nonce is not None and not self._ping_due
        return ping_in_flight or self._data_outstanding

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at ``now``; cheap to call early."""
        if self._state is _CLOSED:
            return
        config = self._config
        if not self._attached:
            assert self._detached_since is not None
            if now >= self._detached_since + config.resume_grace:
                self._terminate(
                    CloseCode.SESSION_EXPIRED,
                    f"expired: no transport for {config.resume_grace:g} s",
                    by_peer=False,
                    abort=True,
                )
                return
        if self._state is _CLOSING and now >= self._close_deadline:
            assert self._close_info is not None
            code, reason, _ = self._close_info
            self._terminate(
                CloseCode.CLOSE_TIMEOUT,
                f"close handshake timed out ({code} {reason})",
                by_peer=False,
                abort=False,
            )
            return
        if not self._attached:
            return
        if self._data_outstanding and now >= self._retx_since + config.retransmit_timeout:
            # Nothing acked for a while: a batch was lost inside the transport.
            self._next_send = self._acked + 1
            self._hello_due = True
            self._retx_since = now
        if (
            not self._stall_reported
            and self._watching
            and now >= self._watch_since + config.stall_timeout
        ):
            self._stall_reported = True
            self._events.append(TransportStalled(since=self._watch_since))
        if not self._ping_due and now >= self._last_sent_at + config.heartbeat_interval:
            self._ping_nonce = self._new_nonce()
            self._ping_due = True

    def _new_nonce(self) -> int:
        # A counter is enough: a nonce must be fresh within the session, not secret.
        self._nonce += 1
        return self._nonce

    # -- probing candidate transports --------------------------------------------

    def probe_request(self, now: float) -> tuple[int, bytes]:
        """HELLO+PING to write on a candidate transport; returns (nonce, batch)."""
        if self._state is _CLOSED:
            raise SessionUsageError("cannot probe a CLOSED session")
        nonce = self._new_nonce()
        if len(self._probes) >= _MAX_PROBES:
            del self._probes[next(iter(self._probes))]
        self._probes[nonce] = now
        return nonce, self._encode_hello() + encode_ping(self._packer, nonce)

    def probe_reply(self, batch: bytes | bytearray | memoryview, now: float) -> bytes:
        """Answer a probe that arrived on a candidate transport with HELLO+PONG.

        Validates the probe's HELLO (token included); a bad probe raises
        RemoteProtocolError but leaves the session untouched, since the
        candidate transport is not the session's yet.
        """
        if self._state is _CLOSED:
            raise SessionUsageError("cannot answer a probe on a CLOSED session")
        hello, pings = self._parse_probe(batch, Ping)
        if hello is None or not pings:
            raise RemoteProtocolError("a probe needs a HELLO and a PING")
        return self._encode_hello() + b"".join(encode_pong(self._packer, n) for n in pings)

    def probe_check(
        self, batch: bytes | bytearray | memoryview, now: float
    ) -> ProbeAnswered | None:
        """Check the reply to ``probe_request``; None if it answers no live probe."""
        hello, pongs = self._parse_probe(batch, Pong)
        if hello is None:
            raise RemoteProtocolError("a probe reply needs a HELLO")
        for nonce in pongs:
            if nonce in self._probes:
                return ProbeAnswered(nonce=nonce, rtt=now - self._probes.pop(nonce))
        return None

    def _parse_probe(
        self, batch: bytes | bytearray | memoryview, kind: type[Ping] | type[Pong]
    ) -> tuple[Hello | None, list[int]]:
        # A separate decoder: garbage on a candidate must not desync the session's.
        hello: Hello | None = None
        nonces: list[int] = []
        for frame in FrameDecoder().decode(batch):
            if isinstance(frame, Hello):
                self._check_hello(frame)
                hello = frame
            elif isinstance(frame, kind):
                nonces.append(frame.nonce)
            else:
                raise RemoteProtocolError(f"unexpected {type(frame).__name__} in a probe")
        return hello, nonces


#: Frame type -> handler; one table for all sessions rather than bound methods in each.
_HANDLERS: Final[dict[type, Callable[[Session, Any, float], None]]] = {
    Data: Session._on_data,
    Ack: Session._on_ack,
    Hello: Session._on_hello,
    Ping: Session._on_ping,
    Pong: Session._on_pong,
    Close: Session._on_close,
    Abort: Session._on_abort,
}
