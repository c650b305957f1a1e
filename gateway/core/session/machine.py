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

This module ties the parts together; each part has its own module and its
own part of the theory:

================  ============================================================
``replay``        the send side: numbered frames kept until acked, the send
                  pointer, the pending large message
``inbound``       the receive side: in-order acceptance and reassembly
``handshake``     the session's identity and the HELLO proving it
``probes``        checking a candidate transport before traffic moves to it
``outbox``        what the next batch carries: control frames, then data
``liveness``      the timers, as timestamps of the caller's clock
``rtt``           the smoothed round trip that sets how soon a stall shows
``closing``       the states, their one transition table, the close handshake
``goaway``        GOAWAY: "open new streams elsewhere", sent and received
``config``        ``SessionConfig``
================  ============================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

from gateway.core.session.closing import (
    Closing,
    SessionState,
    check_close_args,
    clip_reason,
    next_state,
)
from gateway.core.session.config import SessionConfig
from gateway.core.session.errors import (
    BufferFull,
    CloseCode,
    RemoteProtocolError,
    SessionUsageError,
)
from gateway.core.session.events import (
    Event,
    HelloReceived,
    ProbeAnswered,
    SendWindowOpened,
    SessionClosed,
    TransportStalled,
    message_received,
)
from gateway.core.session.frames import (
    MAX_UINT64,
    Abort,
    Ack,
    Close,
    FrameDecoder,
    GoAway,
    Hello,
    Ping,
    Pong,
    encode_abort,
    new_packer,
)
from gateway.core.session.goaway import GoAwayState
from gateway.core.session.handshake import Credentials
from gateway.core.session.inbound import Inbound
from gateway.core.session.liveness import Liveness
from gateway.core.session.outbox import Outbox
from gateway.core.session.probes import Probes
from gateway.core.session.replay import ReplayBuffer, message_payload

__all__ = ["Session", "SessionConfig", "SessionState"]

#: One Packer for every session: with autoreset each ``pack`` is a single call
#: that keeps nothing, and a Packer of its own cost each idle session 4 KiB.
_PACKER: Final = new_packer()
_OPEN, _CLOSING, _CLOSED = SessionState.OPEN, SessionState.CLOSING, SessionState.CLOSED


class Session:
    """One end of a hop session. See the module docstring for how it works."""

    # Thousands of idle sessions live at once: no per-instance dict.
    __slots__ = (
        *("_attached", "_closing", "_config", "_credentials", "_decoder", "_events", "_live"),
        *("_outbox", "_probes", "_recv", "_send", "_state", "goaway"),
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
        self._credentials = Credentials(session_id, token, is_client=is_client)
        self._config = config = config or SessionConfig()
        self._decoder = FrameDecoder()
        self._state = _OPEN
        self._events: list[Event] = []
        self._attached = False
        self._send = ReplayBuffer(config, _PACKER)
        self._recv = Inbound()
        self._live = Liveness(detached_since=now, last_sent_at=now, retx_since=now, watch_since=now)
        self._outbox = Outbox(
            config, _PACKER, self._credentials, self._send, self._recv, self._live
        )
        self._probes = Probes(self._credentials, self._outbox, self._live, _PACKER)
        self._closing = Closing()
        #: GOAWAY sent (``goaway.sent``) and received (``goaway.received``): see ``goaway``.
        self.goaway = GoAwayState()

    # -- introspection ------------------------------------------------------

    @property
    def config(self) -> SessionConfig:
        return self._config

    def set_heartbeat(self, seconds: float) -> None:
        """Use a new heartbeat interval from now on (a path's idle limit was learned)."""
        self._config = dataclasses.replace(self._config, heartbeat_interval=seconds)

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def session_id(self) -> str:
        return self._credentials.session_id

    @property
    def is_client(self) -> bool:
        return self._credentials.is_client

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def last_received(self) -> int:
        """Highest seq received in order; a long-poll GET carries it."""
        return self._recv.received

    @property
    def sent_upto(self) -> int:
        """Highest seq written since the last rewind (what a long-poll answer carried up to)."""
        return self._send.next_send - 1

    @property
    def buffered_frames(self) -> int:
        return len(self._send.buf)

    @property
    def buffered_bytes(self) -> int:
        return self._send.buf_bytes

    @property
    def writable(self) -> bool:
        """Would ``send_message`` accept a message now?"""
        if self._state is not _OPEN:
            return False
        send, config = self._send, self._config  # ReplayBuffer.has_room, inline: twice a message
        return (
            send.pending is None
            and len(send.buf) < config.max_buffer_frames
            and send.buf_bytes < config.max_buffer_bytes
        )

    @property
    def wants_write(self) -> bool:
        """Would ``data_to_send`` return something now? (A bare ACK counts.)"""
        return self._attached and (self._outbox.ack_pending or self.has_payload_to_send)

    @property
    def wants_write_now(self) -> bool:
        """``wants_write``, but a bare ACK may wait a moment for data to ride on (``outbox``)."""
        return self._attached and (self._outbox.ack_now or self.has_payload_to_send)

    @property
    def outstanding(self) -> bool:
        """Data sent and not acked yet (its retransmit and stall timers run)."""
        return self._send.outstanding

    @property
    def has_payload_to_send(self) -> bool:
        """``wants_write`` without bare ACKs (long-poll: acks ride on GETs and POSTs)."""
        if not self._attached:
            return False
        if self._outbox.abort_due:
            return True
        if self._state is _CLOSED:
            return False
        return self.goaway.due or self._outbox.has_payload()

    def verify_token(self, token: bytes) -> bool:
        """Constant-time check of a resume token presented out of band (long-poll)."""
        return self._credentials.verify_token(token)

    # -- transport changes ----------------------------------------------------

    def transport_attached(self, now: float) -> None:
        """A transport is ready; it starts with our HELLO (while attached: a switch, the old
        transport counts as lost)."""
        self._attached = True
        outbox, live = self._outbox, self._live
        outbox.pongs.clear()
        live.attach()
        if self._state is _CLOSED:
            # Tell the peer why, if we gave up (expiry, protocol error).
            outbox.abort_due = outbox.abort_frame is not None
            return
        outbox.hello_due = True
        self.goaway.attached()
        self._send.rewind()  # go-back-N: replay whatever was in flight
        live.restart(now)

    def transport_lost(self, now: float) -> None:
        """The current transport is gone; the resume_grace clock starts."""
        if not self._attached:
            return
        self._attached = False
        self._live.detach(now)
        self._outbox.drop_control()
        self._outbox.abort_due = False

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed one transport batch. RemoteProtocolError if the peer broke the protocol (then
        CLOSED, SessionClosed queued, an ABORT ready); once CLOSED: re-ack a close, re-ABORT."""
        if self._state is _CLOSED:
            if self._outbox.abort_frame is not None:
                self._outbox.abort_due = self._attached
            elif data:
                self._outbox.ack_at_once()
            return
        outbox, recv, events = self._outbox, self._recv, self._events
        max_size = self._config.max_message_size
        try:
            for frame in self._decoder.decode_hot(data):
                if type(frame) is list:  # a checked DATA, [2, seq, flags, payload]: no Data built
                    # _on_data, inline (one call less per message)
                    _, seq, flags, payload = frame
                    outbox.data_received(seq, recv.received, len(payload), now)
                    message = recv.accept_fields(seq, flags, payload, max_size)
                    if message is not None:
                        events.append(message_received(message))
                elif type(frame) is int:  # a checked ACK's count: no Ack built
                    self._ack(frame, now)
                else:
                    _HANDLERS[type(frame)](self, frame, now)
                if self._state is _CLOSED:
                    break
        except RemoteProtocolError as exc:
            self._terminate(exc.code, exc.reason, by_peer=False, abort=True)
            raise

    def events_received(self) -> list[Event]:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def _on_ack(self, frame: Ack, now: float) -> None:
        self._ack(frame.received, now)

    def _on_hello(self, frame: Hello, now: float) -> None:
        self._credentials.check_hello(frame)
        self._ack(frame.last_received, now)
        first = not self._recv.hello_seen
        self._recv.hello_seen = True
        self._events.append(HelloReceived(last_received=frame.last_received, first=first))

    def _on_ping(self, frame: Ping, now: float) -> None:
        self._outbox.queue_pong(frame.nonce)

    def _on_pong(self, frame: Pong, now: float) -> None:
        if self._live.heartbeat_answered(frame.nonce, now):
            return
        answered = self._probes.answer(frame.nonce, now)
        if answered is not None:
            self._live.progress(now)
            self._events.append(answered)

    def _on_close(self, frame: Close, now: float) -> None:
        self._outbox.ack_at_once()
        if not self._recv.accept_close(frame):
            return
        if self._state is _OPEN:
            deadline = now + self._config.close_timeout
            self._closing.begin(frame.code, frame.reason, by_peer=True, deadline=deadline)
            self._send.request_close(frame.code, frame.reason)
        self._transition("peer_close")
        self._maybe_finish_close()

    def _on_abort(self, frame: Abort, now: float) -> None:
        self._terminate(frame.code, frame.reason, by_peer=True, abort=False)

    def _on_goaway(self, frame: GoAway, now: float) -> None:
        if (event := self.goaway.receive(frame)) is not None:
            self._events.append(event)

    def _ack(self, upto: int, now: float) -> None:
        was_writable = self.writable
        if not self._send.ack(upto):
            return
        self._live.acked(upto, now)
        if self._send.close_acked:
            self._maybe_finish_close()
        if not was_writable and self.writable:
            self._events.append(SendWindowOpened())

    # -- sending ----------------------------------------------------------------

    def send_message(self, data: bytes | bytearray | memoryview | str) -> None:
        """Queue one whole message (``str``: text). BufferFull (nothing queued) when not
        ``writable``; SessionUsageError when closing, closed or over ``max_message_size``."""
        if self._state is not _OPEN:
            raise SessionUsageError(f"cannot send a message in state {self._state.name}")
        payload, text = (data, False) if type(data) is bytes else message_payload(data)
        size = len(payload)
        limit = self._config.max_message_size
        if size > limit:
            raise SessionUsageError(f"message of {size} bytes exceeds max_message_size ({limit})")
        if not self._send.add_message(payload, text):  # no room: not writable
            raise BufferFull(self._send.describe_full())

    def data_to_send(
        self, now: float, max_bytes: int | None = None, *, include_data: bool = True
    ) -> bytes:
        """The next batch, or b"": control frames (HELLO, PONG, PING, ACK), then DATA/CLOSE
        from the send pointer up to ``max_bytes`` (default ``max_batch_bytes``; one frame always
        fits), then a due GOAWAY. ``include_data=False``: control frames only (a POST answer)."""
        if not self._attached:
            return b""
        closed = self._state is _CLOSED
        parts = self._outbox.batch(now, max_bytes, include_data=include_data, closed=closed)
        if not closed:
            self.goaway.take(parts)
        if not parts:
            return b""
        self._live.last_sent_at = now
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def rewind(self, now: float, peer_received: int | None = None, *, replay: bool = True) -> None:
        """Ack ``peer_received`` and (``replay``) resend from the ack: a long-poll GET's ``last=``.

        The answer to an earlier GET may be lost. Above all we sent: RemoteProtocolError."""
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
        if replay:
            self._send.rewind()

    # -- closing ----------------------------------------------------------------

    def go_away(self, last_stream_id: int, reason: str = "") -> None:
        """GOAWAY: peer streams up to ``last_stream_id`` are served, new ones go elsewhere."""
        if self._state is not _CLOSED:
            self.goaway.send(_PACKER, last_stream_id, reason)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, now: float) -> None:
        """Graceful close: CLOSE after everything queued; idempotent. SessionClosed when the
        peer confirmed, or after ``close_timeout`` (code CLOSE_TIMEOUT)."""
        check_close_args(code, reason)
        if self._state is not _OPEN:
            return
        self._transition("close")
        self._closing.begin(
            int(code), reason, by_peer=False, deadline=now + self._config.close_timeout
        )
        self._send.request_close(int(code), reason)

    def _maybe_finish_close(self) -> None:
        if self._state is _CLOSING and self._recv.peer_closed and self._send.close_acked:
            self._transition("close_done")
            assert self._closing.info is not None
            code, reason, by_peer = self._closing.info
            self._events.append(SessionClosed(code=code, reason=reason, by_peer=by_peer))
            self._release()

    def _terminate(self, code: int, reason: str, *, by_peer: bool, abort: bool) -> None:
        """Close without handshake; ``abort`` queues an ABORT telling the peer why."""
        if self._state is _CLOSED:
            return
        reason = clip_reason(reason)
        self._transition("abort")
        if abort:
            self._outbox.abort_frame = encode_abort(_PACKER, code, reason)
            self._outbox.abort_due = self._attached
        self._events.append(SessionClosed(code=code, reason=reason, by_peer=by_peer))
        self._release()

    def _release(self) -> None:
        self._send.release()
        self._recv.parts.clear()
        self._outbox.drop_control()
        self._probes.clear()

    def _transition(self, event: str) -> None:
        self._state = next_state(self._state, event)

    # -- timers -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must be called next (None: no timer running)."""
        state = self._state
        if state is _CLOSED:
            return None
        live = self._live
        if not self._attached:
            assert live.detached_since is not None
            due: float | None = live.detached_since + self._config.resume_grace
        else:
            due = live.attached_deadline(self._config, self._send.outstanding)
            ack = self._outbox.ack_deadline()  # a bare ACK waiting for data to ride on
            if ack is not None and (due is None or ack < due):
                due = ack
        if state is _CLOSING:
            closing = self._closing.deadline
            if due is None or closing < due:
                due = closing
        return due

    def handle_timer(self, now: float, late: float = 0.0) -> None:
        """Run every timer that is due at ``now``; cheap to call early.

        ``late``: how long after the deadline it was armed for the caller's
        timer ran; the stall watch does not count it (see ``Liveness.excuse``).
        """
        if self._state is _CLOSED or self._gave_up(now):
            return
        if self._attached:
            if late > 0.0 and self._live.watching(self._send.outstanding):
                self._live.excuse(late, self._config.stall_timeout)
            self._transport_timers(now)

    def _gave_up(self, now: float) -> bool:
        """Expiry and the close timeout: the session ends without handshake."""
        grace, since = self._config.resume_grace, self._live.detached_since
        if not self._attached and since is not None and now >= since + grace:
            reason = f"expired: no transport for {grace:g} s"
            self._terminate(CloseCode.SESSION_EXPIRED, reason, by_peer=False, abort=True)
            return True
        if self._state is _CLOSING and now >= self._closing.deadline:
            assert self._closing.info is not None
            code, reason, _ = self._closing.info
            reason = f"close handshake timed out ({code} {reason})"
            self._terminate(CloseCode.CLOSE_TIMEOUT, reason, by_peer=False, abort=False)
            return True
        return False

    def _transport_timers(self, now: float) -> None:
        """Retransmit, stall watch and heartbeat of the attached transport."""
        live = self._live
        self._outbox.ack_timer(now)
        retransmit, stalled = live.run_transport_timers(now, self._config, self._send.outstanding)
        if retransmit:
            self._send.rewind()
            self._outbox.hello_due = True
        if stalled:
            self._events.append(TransportStalled(since=live.watch_since))

    # -- probing candidate transports --------------------------------------------

    def probe_request(self, now: float) -> tuple[int, bytes]:
        """HELLO+PING to write on a candidate transport; returns (nonce, batch)."""
        if self._state is _CLOSED:
            raise SessionUsageError("cannot probe a CLOSED session")
        return self._probes.request(now)

    def probe_reply(self, batch: bytes | bytearray | memoryview, now: float) -> bytes:
        """Answer a probe that arrived on a candidate transport with HELLO+PONG.

        A bad probe HELLO (token included) raises RemoteProtocolError and leaves the
        session untouched: the candidate transport is not the session's yet.
        """
        if self._state is _CLOSED:
            raise SessionUsageError("cannot answer a probe on a CLOSED session")
        return self._probes.reply(batch)

    def probe_check(
        self, batch: bytes | bytearray | memoryview, now: float
    ) -> ProbeAnswered | None:
        """Check the reply to ``probe_request``; None if it answers no live probe."""
        return self._probes.check(batch, now)


#: Frame type -> handler; one table for all sessions rather than bound methods in each.
_HANDLERS: Final[dict[type, Callable[[Session, Any, float], None]]] = {
    Ack: Session._on_ack,
    Hello: Session._on_hello,
    Ping: Session._on_ping,
    Pong: Session._on_pong,
    Close: Session._on_close,
    Abort: Session._on_abort,
    GoAway: Session._on_goaway,
}
