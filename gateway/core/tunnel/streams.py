"""The tunnel state machine: many HTTP exchanges and WebSockets over one hop session.

Theory of operation
===================

A :class:`Tunnel` is one end of the stream layer on top of a hop session. It
knows nothing about the session's internals: the session is an ordered,
reliable pipe of whole binary messages that is sometimes not writable. The
I/O layer pushes in each session message from the peer
(:meth:`Tunnel.receive_message`), pulls out events
(:meth:`Tunnel.events_received`), and, whenever the session can take a
message, pulls the next one to send (:meth:`Tunnel.next_message`). No
sockets, no clock, no tasks: every test runs without an event loop.

This module is the API and its argument checks; the machinery lives beside
it, one concern per module:

=================  ==========================================================
``table``          the live streams, stream ids, forgetting a stream
``stream_state``   one stream's book-keeping; the half-stream states and the
                   one transition table every state change goes through
``flow``           windows and credit per stream, the session-wide bounds
``reassembly``     WebSocket messages reassembled, within a session budget
``scheduler``      which frames the next session message carries
``receiving``      one handler per frame type the peer sends
``heads``          checking heads, codes and reasons; heads to wire form
``config``         ``TunnelConfig`` and the fixed bounds
=================  ==========================================================

Sending and backpressure. ``send_data``/``send_ws_message`` queue the
caller's object (no copy) on the stream and return False once the stream
holds ``max_pending`` bytes or more, or once the session's unread bytes
(queued here plus sent and not yet credited back by the peer beyond a
leeway of half its window, over all streams) reach ``max_unread``;
``is_writable`` says the same. The caller then waits for StreamWritable
(or StreamReset) before sending more. So memory is bounded by
``max_pending`` per stream and ``max_unread`` per session on the way out,
whatever window the peer announced, and by the window (plus the reassembly
budget) on the way in.

Exactly once. An OPEN frame is encoded when the stream is opened but only
*handed over* inside ``next_message``; ``open_sent(stream_id)`` tells which.
A stream reset before its OPEN left is dropped silently (the peer never hears
of it). When the session dies (``close_all``) every stream is reported with
StreamReset(retry_safe=...): True only if its OPEN never left, or the peer
answered REFUSED. The rule for the I/O layer: a stream whose OPEN was handed
to the session is never re-sent; if the session dies it is answered 502.

Errors. A frame that is malformed, illegal in its stream's state, for a
never-opened stream, or over a window is a RemoteProtocolError: the tunnel
resets every stream locally (StreamReset events, code SESSION_LOST) and is
closed. A frame that only breaks one of *our* policy limits (too many
streams, head too large, WebSocket message too large, invalid UTF-8 text)
resets that one stream with a RESET to the peer. A call that breaks the
API's contract raises TunnelUsageError and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.tunnel.config import MAX_QUEUED_ITEMS, MIN_MESSAGE, WHOLE_BODY_MAX, TunnelConfig
from gateway.core.tunnel.errors import RemoteProtocolError, ResetCode, TunnelUsageError
from gateway.core.tunnel.events import Event
from gateway.core.tunnel.frames import (
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    encode_accept,
    encode_close,
    encode_end,
    encode_open_http,
    encode_open_ws,
    encode_push,
    encode_reset,
    encode_response,
)
from gateway.core.tunnel.heads import (
    HeaderInput,
    check_close_code,
    check_method,
    check_reset_code,
    check_status,
    check_subprotocol,
    checked_protocols,
    checked_reason,
    encode_head,
)
from gateway.core.tunnel.packing import PendingHead, packable
from gateway.core.tunnel.receiving import receive_frames
from gateway.core.tunnel.stream_state import (
    ACCEPT,
    BODY,
    CLOSE,
    DATA,
    DONE,
    END,
    HEAD,
    HEAD_BODY,
    HEAD_EMPTY,
    MESSAGE,
    REFUSED,
    WS,
    Stream,
    step,
)
from gateway.core.tunnel.table import StreamTable

__all__ = ["HeaderInput", "Tunnel", "TunnelConfig"]


class Tunnel:
    """One end of the stream multiplexer over a hop session (see module docstring)."""

    # One per hop session, thousands idle at once: no per-instance dict.
    __slots__ = ("_config", "_decoder", "_table")

    def __init__(self, config: TunnelConfig | None = None, *, opener: bool) -> None:
        self._config = config = config or TunnelConfig()
        self._decoder = FrameDecoder()
        self._table = StreamTable(config, opener=opener)

    # -- queries ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """close_all ran (or the peer broke the protocol): the tunnel is finished."""
        return self._table.closed

    @property
    def stream_count(self) -> int:
        return len(self._table.streams)

    def open_sent(self, stream_id: int) -> bool:
        """True once the stream's OPEN was handed to the session (or the peer opened it).

        The exactly-once rule hangs on this: only a stream for which this is
        False may be retried some other way.
        """
        stream = self._table.streams.get(stream_id)
        if stream is None:
            raise TunnelUsageError(f"stream {stream_id} is not open")
        return stream.open_sent

    @property
    def reassembly_bytes(self) -> int:
        """WebSocket bytes held against ``session_reassembly`` (unfinished or unconsumed)."""
        return self._table.reassembly.held

    @property
    def unread_bytes(self) -> int:
        """Bytes queued here or sent and not credited back (beyond leeway): see ``max_unread``."""
        flow = self._table.flow
        return flow.queued_total + flow.unacked_total

    @property
    def packs_heads(self) -> bool:
        """Heads go out packed (header compaction, ``packing.py``)."""
        return self._table.pack_heads

    def peer_reads_packed_heads(self) -> None:
        """The peer said it reads packed heads (the session's set-up did): pack ours.

        Without this call a tunnel packs only after the peer sent a packed head,
        so a peer that never heard of them (the browser shim, an older
        gateway) gets plain heads.
        """
        self._table.pack_heads = True

    @property
    def answers_whole(self) -> bool:
        """Small whole answers leave as one RESPONSE_WHOLE frame (``respond_whole``)."""
        return self._table.whole_answers and self._table.pack_heads

    def peer_reads_whole_answers(self) -> None:
        """The peer said it reads RESPONSE_WHOLE (the session's set-up did): see respond_whole."""
        self._table.whole_answers = True

    def is_writable(self, stream_id: int) -> bool:
        """The stream takes more data now; if False, StreamWritable follows when it does."""
        stream = self._table.streams.get(stream_id)
        if stream is None or not stream.writable:
            return False
        return self._table.flow.is_writable(stream)

    def has_pending(self) -> bool:
        """next_message would return a message."""
        return self._table.scheduler.has_pending()

    def events_received(self) -> list[Event]:
        """Everything that happened since the last call, in order."""
        events = self._table.events
        taken = events.copy()  # the list itself is shared with the tunnel's parts
        events.clear()
        return taken

    # -- opening ------------------------------------------------------------

    def open_http(
        self,
        method: str,
        target: bytes | str,
        headers: HeaderInput = (),
        *,
        has_body: bool = False,
    ) -> int:
        """Open a stream carrying one HTTP request; returns its id.

        With ``has_body`` the body follows as send_data calls and end().
        """
        self._check_usable()
        check_method(method)
        raw_target, flat = encode_head(target, headers, self._config.max_header_bytes)
        table = self._table
        stream = table.new_local(ws=False, send_state=BODY if has_body else DONE)
        if table.pack_heads and packable(flat):
            fields = (FrameType.OPEN_HTTP_PACKED, stream.id, stream.recv_window, method, raw_target)
            stream.open_frame = PendingHead(fields, flat, has_body)
        else:
            stream.open_frame = encode_open_http(
                table.packer, stream.id, stream.recv_window, method, raw_target, flat, has_body
            )
        return stream.id

    def open_websocket(
        self, target: bytes | str, headers: HeaderInput = (), protocols: Sequence[str] = ()
    ) -> int:
        """Open a stream asking the peer for an endpoint WebSocket; returns its id."""
        self._check_usable()
        raw_target, flat = encode_head(target, headers, self._config.max_header_bytes)
        offered = checked_protocols(protocols)
        table = self._table
        stream = table.new_local(ws=True, send_state=HEAD)
        stream.send_credit = 0  # until ACCEPT carries the peer's window
        stream.open_frame = encode_open_ws(
            table.packer, stream.id, stream.recv_window, raw_target, flat, offered
        )
        return stream.id

    # -- answering ----------------------------------------------------------

    def respond(
        self,
        stream_id: int,
        status: int,
        reason: bytes | str = b"",
        headers: HeaderInput = (),
        *,
        has_body: bool = True,
    ) -> None:
        """Send the response head of a peer-opened stream (on a WebSocket stream: refuse it)."""
        stream = self._answerable(stream_id)
        if stream is None:
            return
        check_status(status)
        raw_reason, flat = encode_head(reason, headers, self._config.max_header_bytes)
        self._respond(stream, status, raw_reason, flat, has_body)

    def respond_whole(
        self,
        stream_id: int,
        status: int,
        reason: bytes | str = b"",
        headers: HeaderInput = (),
        body: bytes = b"",
    ) -> None:
        """``respond``, ``send_data(body)`` and ``end`` at once, for a body the caller holds whole.

        Most tunnelled answers are small and arrive from the origin in one
        read: to a peer that reads them (``peer_reads_whole_answers``) such a
        body (at most WHOLE_BODY_MAX bytes, within the stream's credit) leaves
        with its head and its end in one RESPONSE_WHOLE frame, which each side
        encodes, decodes and checks once instead of three times. Otherwise
        (or on a WebSocket stream, which this refuses) it is the three calls.
        """
        stream = self._answerable(stream_id)
        if stream is None:
            return
        check_status(status)
        raw_reason, flat = encode_head(reason, headers, self._config.max_header_bytes)
        n = len(body)
        if (
            self.answers_whole
            and not stream.ws
            and n <= WHOLE_BODY_MAX
            and n <= stream.send_credit
            and packable(flat)
        ):
            table = self._table
            table.send_step(stream, HEAD_BODY)
            table.send_step(stream, END)
            fields = (FrameType.RESPONSE_WHOLE, stream_id, status, raw_reason)
            table.control.append(PendingHead(fields, flat, bytes(body)))
            table.maybe_forget(stream)
            return
        self._respond(stream, status, raw_reason, flat, has_body=True)
        if n:
            self.send_data(stream_id, body)
        self.end(stream_id)

    def _respond(
        self, stream: Stream, status: int, raw_reason: bytes, flat: list[bytes], has_body: bool
    ) -> None:
        """The RESPONSE of a checked, encoded head: packed if the peer reads packed heads."""
        table = self._table
        table.send_step(stream, HEAD_BODY if has_body else HEAD_EMPTY)
        if stream.ws:
            stream.recv_state = step(stream.id, stream.recv_state, REFUSED, local=True)
            table.as_http(stream)
        if table.pack_heads and packable(flat):
            fields = (FrameType.RESPONSE_PACKED, stream.id, status, raw_reason)
            table.control.append(PendingHead(fields, flat, has_body))
        else:
            table.control.append(
                encode_response(table.packer, stream.id, status, raw_reason, flat, has_body)
            )
        table.maybe_forget(stream)

    def accept_websocket(
        self, stream_id: int, protocol: str | None = None, headers: HeaderInput = ()
    ) -> None:
        """Accept a peer's WebSocket stream: messages may flow both ways from now."""
        stream = self._answerable(stream_id)
        if stream is None:
            return
        if not stream.ws:
            raise TunnelUsageError(f"stream {stream_id} is not a WebSocket stream")
        check_subprotocol(protocol)
        _, flat = encode_head(b"", headers, self._config.max_header_bytes)
        table = self._table
        table.send_step(stream, ACCEPT)
        stream.recv_state = step(stream_id, stream.recv_state, ACCEPT, local=True)
        stream.recv_window = table.flow.announce(stream)
        table.control.append(
            encode_accept(table.packer, stream_id, stream.recv_window, protocol, flat)
        )

    def _answerable(self, stream_id: int) -> Stream | None:
        stream = self._table.live(stream_id)
        if stream is not None and stream.local:
            raise TunnelUsageError(f"stream {stream_id} was opened by us: the peer answers it")
        return stream

    # -- sending ------------------------------------------------------------

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> bool:
        """Queue a body chunk; returns False once the stream is full (wait for StreamWritable).

        The tunnel keeps a reference to ``data`` until it is sent: pass bytes
        or a view of memory that will not change. A stream reset meanwhile
        (by the peer or close_all) swallows the data and returns False; the
        StreamReset event tells the rest.
        """
        stream = self._table.live(stream_id)
        if stream is None:
            return False
        if stream.send_state != BODY:  # BODY --DATA--> BODY needs no table lookup
            self._table.send_step(stream, DATA)
        return self._enqueue(stream, bytes(data) if isinstance(data, bytearray) else data)

    def send_ws_message(self, stream_id: int, data: bytes | bytearray | memoryview | str) -> bool:
        """Queue one whole WebSocket message (str: text); same contract as send_data."""
        table = self._table
        stream = table.streams.get(stream_id)
        if stream is None:
            table.check_known(stream_id)  # else closed: a race, not a bug
            return False
        if stream.send_state != WS:  # WS --MESSAGE--> WS needs no table lookup
            table.send_step(stream, MESSAGE)
        text = False
        if type(data) is bytes:
            payload: bytes | memoryview = data
        elif isinstance(data, str):
            text = True
            try:
                payload = data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise TunnelUsageError("text message is not encodable as UTF-8") from exc
        else:
            payload = bytes(data) if isinstance(data, bytearray) else data
        n = len(payload)
        if n > self._config.max_ws_message:
            raise TunnelUsageError(f"WebSocket message of {n} bytes over max_ws_message")
        if not stream.writable:
            raise TunnelUsageError(f"stream {stream.id} is not writable: wait for StreamWritable")
        # _enqueue's work inline (most messages come one per loop turn), empty ones too.
        stream.text_flags.append(text)
        stream.queue.append(payload)
        flow = table.flow
        flow.chunk_queued(stream, n)
        if not stream.scheduled:
            table.scheduler.schedule(stream)
        if stream.queued >= self._config.max_pending or len(stream.queue) >= MAX_QUEUED_ITEMS:
            stream.writable = False
            return False
        return flow.is_writable(stream)

    def _enqueue(self, stream: Stream, data: bytes | memoryview) -> bool:
        if not stream.writable:
            raise TunnelUsageError(f"stream {stream.id} is not writable: wait for StreamWritable")
        n = len(data)
        if n:
            stream.queue.append(data)
            self._table.flow.chunk_queued(stream, n)
            if not stream.scheduled:  # a burst: scheduled for all but its first
                self._table.scheduler.schedule(stream)
        if stream.queued >= self._config.max_pending or len(stream.queue) >= MAX_QUEUED_ITEMS:
            stream.writable = False
            return False
        return self._table.flow.is_writable(stream)

    def end(self, stream_id: int) -> None:
        """Finish our body (request or response); END follows the queued data."""
        stream = self._table.live(stream_id)
        if stream is None:
            return
        self._table.send_step(stream, END)
        self._finish_half(stream, encode_end(self._table.packer, stream_id))

    def close_websocket(self, stream_id: int, code: int = 1000, reason: str = "") -> None:
        """Close our side of a WebSocket stream; CLOSE follows the queued messages."""
        stream = self._table.live(stream_id)
        if stream is None:
            return
        check_close_code(code)
        reason = checked_reason(reason)
        self._table.send_step(stream, CLOSE)
        self._finish_half(stream, encode_close(self._table.packer, stream_id, code, reason))

    def _finish_half(self, stream: Stream, frame: bytes) -> None:
        # Held back while data is queued, and while the OPEN has not left: a
        # stream reset before then must vanish without a trace.
        if stream.queue or not stream.open_sent:
            stream.trailer = frame
        else:
            self._table.control.append(frame)
            self._table.maybe_forget(stream)

    def reset(self, stream_id: int, code: int = ResetCode.CANCEL, reason: str = "") -> None:
        """Abort a stream both ways. No event follows; a stream whose OPEN never left vanishes.

        REFUSED promises the peer that nothing was processed (it may retry):
        use it only before anything of the stream reached the origin.
        """
        table = self._table
        stream = table.live(stream_id)
        if stream is None:
            return
        check_reset_code(code)
        reason = checked_reason(reason)
        if stream.open_sent:
            table.control.append(encode_reset(table.packer, stream_id, int(code), reason))
        table.forget(stream)

    def push(self, ident: int, op: int, payload: bytes) -> None:
        """Queue a PUSH frame (poll-ahead, ``core/pollahead/codec.py``); it goes with the
        control frames, ahead of queued body data."""
        self._check_usable()
        if not 0 < op < 64 or len(payload) > MAX_PAYLOAD:
            raise TunnelUsageError(f"PUSH op {op!r:.20} or a {len(payload)}-byte payload")
        self._table.control.append(encode_push(self._table.packer, ident, op, payload))

    def consumed(self, stream_id: int, n: int) -> None:
        """The consumer took ``n`` received bytes: grant them back to the sender (batched)."""
        table = self._table
        stream = table.streams.get(stream_id)
        if stream is None:
            table.check_known(stream_id)
            return
        if type(n) is not int or not 0 <= n <= stream.unconsumed:
            raise TunnelUsageError(
                f"consumed({n!r:.20}) on stream {stream_id} with {stream.unconsumed} unconsumed"
            )
        stream.unconsumed -= n
        if stream.ws:
            n = table.reassembly.consumed(stream, n)
        table.flow.credit(stream, n)

    def go_away(self) -> int:
        """Serve the peer's streams opened so far, refuse later ones; the id GOAWAY carries.

        An OPEN that crossed the GOAWAY on the wire gets RESET(REFUSED, GOING_AWAY):
        not processed, so the peer may send it again on another session.
        """
        table = self._table
        if table.refuse_above is None:
            table.refuse_above = table.highest_peer_id
        return table.refuse_above

    def close_all(self, reason: str = "session closed") -> None:
        """The session died: every live stream gets a local StreamReset; the tunnel is closed."""
        self._table.close_all(reason)

    # -- the session's side -------------------------------------------------------

    def next_message(self, max_bytes: int | None = None) -> bytes | None:
        """The next session message to send (a batch of frames), or None if idle.

        Call it only when the session can take a message. ``max_bytes`` (by
        default ``max_message``) bounds the batch, except that a single frame
        larger than it (a huge head) is sent alone.
        """
        if max_bytes is None:  # max_message: checked by TunnelConfig
            return self._table.scheduler.next_message(self._config.max_message)
        if max_bytes < MIN_MESSAGE:
            raise TunnelUsageError(f"max_bytes must be at least {MIN_MESSAGE}")
        return self._table.scheduler.next_message(max_bytes)

    def receive_message(self, message: bytes | bytearray | memoryview | str) -> None:
        """Process one session message from the peer; results come as events.

        On RemoteProtocolError every stream has been reset locally (events
        queued) and the tunnel is closed: abort the session with ``exc.code``.
        """
        table = self._table
        if table.closed:
            raise TunnelUsageError("the tunnel is closed")
        try:
            receive_frames(table, self._decoder, message)
        except RemoteProtocolError as exc:
            self.close_all(f"tunnel protocol error: {exc.reason}")
            raise

    def _check_usable(self) -> None:
        if self._table.closed:
            raise TunnelUsageError("the tunnel is closed")
