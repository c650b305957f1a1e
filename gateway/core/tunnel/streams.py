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

Streams. Each conversation is a stream with an id; the side that opened the
session (``opener=True``) uses odd ids, the other side even ids, so both may
open streams without coordination. Ids only grow: an id at or below the
highest one seen (or allocated) that is no longer in the table is a stream
that was closed, and any frame for it is a late frame that crossed our RESET
or END on the wire: it is ignored. A frame for an id above that mark that
is not an OPEN is a frame for a stream that never existed: a protocol error.
So no "recently closed" set is kept at all.

A stream is two *halves*, one per direction, each a tiny machine over the
states HEAD (waiting for a head), BODY (HTTP body chunks flow), WS (WebSocket
messages flow) and DONE. Every change goes through ``_TRANSITIONS``; an input
a half cannot take names the state it arrived in and raises
LocalProtocolError (we tried to send it) or RemoteProtocolError (the peer
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

Flow control. Every stream has a window per direction, counted in payload
bytes of DATA and MESSAGE frames. Each side starts a new stream with
``BASE_WINDOW`` of credit for sending to the peer, except that OPEN and
ACCEPT carry the sender's own receive window; the answerer of an HTTP OPEN
with a body tops the opener's credit up to its own ``initial_window`` with
one WINDOW frame. Those announced windows exceed ``BASE_WINDOW`` only while
their excess, summed over the session's live streams, fits
``session_window``: later streams get ``BASE_WINDOW``, so a session's windows
total ``session_window + max_streams * BASE_WINDOW`` at most (the receiver's
choice alone, invisible to the protocol). The receiver hands credit back as
its consumer reports bytes consumed (``consumed()``), in WINDOW frames of at
least half the stream's window, so WINDOW traffic stays small. A peer that
sends past the window broke the protocol (FlowControlError). WebSocket
messages are reassembled before they are delivered, so a message larger
than the window would deadlock if its chunks waited for ``consumed()``: the
chunks of a message in progress are
credited back on arrival, but only while the session's reassembly total
(unfinished messages plus delivered, unconsumed ones) is within
``session_reassembly``; past it the credit is owed, and paid oldest message
first as consumed messages leave the budget. The stream holding the oldest
unfinished message keeps its credit (up to ``max_ws_message``) as long as
the delivered messages leave room, so large messages finish one after the
other instead of deadlocking. Credit given ahead of consumption is thus
bounded by ``session_reassembly + max_ws_message`` per session, on top of
the windows.

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

Scheduling. ``next_message(max_bytes)`` builds one session message: first
every queued OPEN, then every control frame (heads, END/CLOSE with no data
before them, RESET, WINDOW), then data chunks of at most ``max_chunk`` bytes
until the budget is spent. Data chunks are chosen round-robin among streams
that have both data and credit, with one refinement: a stream whose whole
queue fits in one chunk when it becomes ready (a poll response, a small
WebSocket message) goes to an *express* queue served before the ring, so a
bulk transfer delays it by at most the chunk already being built. Express
service yields to the ring after ``_EXPRESS_BURST`` picks in a row, so bulk
streams cannot starve. END/CLOSE queued behind data follow the stream's last
chunk. A stream blocked on credit leaves the ring and comes back with WINDOW.

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
resets that one stream with a RESET to the peer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.core.tunnel.errors import (
    FlowControlError,
    LocalProtocolError,
    RemoteProtocolError,
    ResetCode,
)
from gateway.core.tunnel.events import (
    DataReceived,
    Event,
    Headers,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
    WebSocketAccepted,
    WebSocketClosed,
    WebSocketMessage,
    WebSocketRequested,
)
from gateway.core.tunnel.frames import (
    BASE_WINDOW,
    FLAG_FIN,
    FLAG_TEXT,
    FRAME_OVERHEAD,
    MAX_HEADER_FIELDS,
    MAX_METHOD_LENGTH,
    MAX_PAYLOAD,
    MAX_PROTOCOL_LENGTH,
    MAX_PROTOCOLS,
    MAX_REASON_BYTES,
    MAX_STREAM_ID,
    MAX_WINDOW,
    FrameDecoder,
    FrameType,
    bin_header,
    data_prefix,
    encode_accept,
    encode_close,
    encode_end,
    encode_open_http,
    encode_open_ws,
    encode_reset,
    encode_response,
    encode_window,
    message_prefix,
    new_packer,
)

__all__ = ["HeaderInput", "Tunnel", "TunnelConfig"]

#: What the API accepts for headers: (name, value) pairs; str is encoded
#: UTF-8 with surrogateescape, which undoes how aiohttp decoded it.
HeaderInput = Iterable[tuple[bytes | str, bytes | str]]

#: next_message refuses budgets below this (a head must be able to fit).
MIN_MESSAGE: Final = 1024
# A data chunk cut short by the message budget is not worth sending below this.
_MIN_SPLIT: Final = 512
_EXPRESS_BURST: Final = 8
_MAX_WS_MESSAGE: Final = 256 * 1024 * 1024
# A peer grants credit back in batches of half its window, so that much
# uncredited data per stream is normal and not counted against max_unread
# (else 32 streams each with a batch pending would deadlock the session);
# for windows up to this size, beyond which a window buys no more leeway.
_LEEWAY_WINDOW: Final = 2 * 1024 * 1024
# Queued control frames beyond which a peer-provoked RESET closes the tunnel
# (plus 16 per allowed stream: heads and WINDOWs of our own live streams).
_MAX_CONTROL: Final = 16384
# Items (messages, body chunks) one stream may queue before it is not
# writable: max_pending counts bytes, and empty WebSocket messages have none
# (a relayed peer's flood of them would otherwise queue without end).
MAX_QUEUED_ITEMS: Final = 1024
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
    #: Largest DATA/MESSAGE payload we send: the unit of fairness.
    max_chunk: int = 16 * 1024
    #: Queued outgoing bytes at which a stream stops being writable.
    max_pending: int = 64 * 1024
    #: Default budget of one session message built by next_message.
    max_message: int = 64 * 1024
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


# -- half-stream states and the one transition table ------------------------

HEAD, BODY, WS, DONE = 0, 1, 2, 3
STATE_NAMES: Final = ("HEAD", "BODY", "WS", "DONE")

# Inputs of a half-stream machine.
_HEAD_BODY, _HEAD_EMPTY, _ACCEPT, _REFUSED, _DATA, _END, _MESSAGE, _CLOSE = range(8)
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

_TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (HEAD, _HEAD_BODY): BODY,
    (HEAD, _HEAD_EMPTY): DONE,
    (HEAD, _ACCEPT): WS,
    (HEAD, _REFUSED): DONE,
    (BODY, _DATA): BODY,
    (BODY, _END): DONE,
    (WS, _MESSAGE): WS,
    (WS, _CLOSE): DONE,
}


class _Stream:
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
        self.queue: deque[bytes | memoryview] = deque()
        self.text_flags: deque[bool] = deque()  # WS only: one per queued message
        self.offset = 0  # bytes of queue[0] already sent
        self.queued = 0  # bytes in queue not yet sent
        self.trailer: bytes | None = None  # END/CLOSE frame to send after the queue
        self.writable = True
        self.scheduled = False
        self.dead = False
        self.open_frame: bytes | None = None
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


def _octets(value: object, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise LocalProtocolError(f"{what} must be bytes or str, not {type(value).__name__}")


def _pairs(flat: list[bytes]) -> Headers:
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


def _reason_ok(reason: str) -> str:
    if not isinstance(reason, str) or len(reason.encode("utf-8", "replace")) > MAX_REASON_BYTES:
        raise LocalProtocolError(f"reason must be a str of at most {MAX_REASON_BYTES} bytes")
    return reason.encode("utf-8", "replace").decode("utf-8")


#: One Packer for every tunnel: each one costs a few KB, which is most of an idle session's.
_PACKER: Final = new_packer()

class Tunnel:
    """One end of the stream multiplexer over a hop session (see module docstring)."""

    def __init__(self, config: TunnelConfig | None = None, *, opener: bool) -> None:
        self._config = config = config or TunnelConfig()
        self._opener = opener
        self._packer = _PACKER  # shared: pack() is synchronous and resets itself
        self._decoder = FrameDecoder()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if opener else 2
        self._highest_peer_id = 0
        self._peer_streams = 0
        self._opens: deque[_Stream] = deque()
        self._control: deque[bytes] = deque()
        self._express: deque[_Stream] = deque()
        self._ring: deque[_Stream] = deque()
        self._express_streak = 0
        self._events: list[Event] = []
        self._closed = False
        self._window_extra = 0  # sum of _Stream.extra over live streams
        # Reassembly budget: bytes of unfinished WebSocket messages plus
        # delivered, unconsumed ones; streams with an unfinished message,
        # oldest first (the oldest always gets credit, so nothing deadlocks).
        self._reassembly = 0
        self._delivered = 0  # of which delivered, not consumed yet
        self._unfinished: dict[int, _Stream] = {}
        # Unread budget: bytes queued here plus bytes sent but not credited
        # back; streams told "not writable" because of it wait in _starved.
        self._queued_total = 0
        self._unacked_total = 0
        self._starved: dict[int, _Stream] = {}

    # -- queries ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """close_all ran (or the peer broke the protocol): the tunnel is finished."""
        return self._closed

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def open_sent(self, stream_id: int) -> bool:
        """True once the stream's OPEN was handed to the session (or the peer opened it).

        The exactly-once rule hangs on this: only a stream for which this is
        False may be retried some other way.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream.open_sent

    @property
    def reassembly_bytes(self) -> int:
        """WebSocket bytes held against ``session_reassembly`` (unfinished or unconsumed)."""
        return self._reassembly

    @property
    def unread_bytes(self) -> int:
        """Bytes queued here or sent and not credited back (beyond leeway): see ``max_unread``."""
        return self._queued_total + self._unacked_total

    def is_writable(self, stream_id: int) -> bool:
        """The stream takes more data now; if False, StreamWritable follows when it does."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.writable:
            return False
        if self._session_full():
            self._starved[stream.id] = stream
            return False
        return True

    def _session_full(self) -> bool:
        return self._queued_total + self._unacked_total >= self._config.max_unread

    def has_pending(self) -> bool:
        """next_message would return a message."""
        opens = self._opens
        while opens and opens[0].dead:
            opens.popleft()
        return bool(opens or self._control) or self._peek_ready() is not None

    def events_received(self) -> list[Event]:
        """Everything that happened since the last call, in order."""
        events, self._events = self._events, []
        return events

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
        if not isinstance(method, str) or not (
            0 < len(method) <= MAX_METHOD_LENGTH and method.isascii()
        ):
            raise LocalProtocolError(f"bad method {method!r:.40}")
        raw_target, flat = self._head(target, headers)
        stream = self._new_local(ws=False, send_state=BODY if has_body else DONE)
        stream.open_frame = encode_open_http(
            self._packer, stream.id, stream.recv_window, method, raw_target, flat, has_body
        )
        return stream.id

    def open_websocket(
        self, target: bytes | str, headers: HeaderInput = (), protocols: Sequence[str] = ()
    ) -> int:
        """Open a stream asking the peer for an endpoint WebSocket; returns its id."""
        self._check_usable()
        raw_target, flat = self._head(target, headers)
        offered = list(protocols)
        if len(offered) > MAX_PROTOCOLS or not all(
            isinstance(p, str) and 0 < len(p) <= MAX_PROTOCOL_LENGTH for p in offered
        ):
            raise LocalProtocolError("bad subprotocol list")
        stream = self._new_local(ws=True, send_state=HEAD)
        stream.send_credit = 0  # until ACCEPT carries the peer's window
        stream.open_frame = encode_open_ws(
            self._packer, stream.id, stream.recv_window, raw_target, flat, offered
        )
        return stream.id

    def _new_local(self, *, ws: bool, send_state: int) -> _Stream:
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted: open a new session")
        self._next_id = sid + 2
        packer = self._packer
        prefix = message_prefix(packer, sid) if ws else data_prefix(packer, sid)
        stream = _Stream(
            sid, local=True, ws=ws, send_state=send_state, recv_state=HEAD, prefix=prefix
        )
        stream.recv_window = self._announce(stream)
        self._streams[sid] = stream
        self._opens.append(stream)
        return stream

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
        if type(status) is not int or not 100 <= status <= 999:
            raise LocalProtocolError(f"bad status {status!r:.20}")
        raw_reason, flat = self._head(reason, headers)
        self._send_step(stream, _HEAD_BODY if has_body else _HEAD_EMPTY)
        if stream.ws:
            stream.recv_state = self._step(stream, stream.recv_state, _REFUSED, local=True)
            self._as_http(stream)
        self._control.append(
            encode_response(self._packer, stream_id, status, raw_reason, flat, has_body)
        )
        self._maybe_forget(stream)

    def accept_websocket(
        self, stream_id: int, protocol: str | None = None, headers: HeaderInput = ()
    ) -> None:
        """Accept a peer's WebSocket stream: messages may flow both ways from now."""
        stream = self._answerable(stream_id)
        if stream is None:
            return
        if not stream.ws:
            raise LocalProtocolError(f"stream {stream_id} is not a WebSocket stream")
        if protocol is not None and not (
            isinstance(protocol, str) and 0 < len(protocol) <= MAX_PROTOCOL_LENGTH
        ):
            raise LocalProtocolError(f"bad subprotocol {protocol!r:.40}")
        _, flat = self._head(b"", headers)
        self._send_step(stream, _ACCEPT)
        stream.recv_state = self._step(stream, stream.recv_state, _ACCEPT, local=True)
        stream.recv_window = self._announce(stream)
        self._control.append(
            encode_accept(self._packer, stream_id, stream.recv_window, protocol, flat)
        )

    def _answerable(self, stream_id: int) -> _Stream | None:
        stream = self._live(stream_id)
        if stream is not None and stream.local:
            raise LocalProtocolError(f"stream {stream_id} was opened by us: the peer answers it")
        return stream

    # -- sending ------------------------------------------------------------

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> bool:
        """Queue a body chunk; returns False once the stream is full (wait for StreamWritable).

        The tunnel keeps a reference to ``data`` until it is sent: pass bytes
        or a view of memory that will not change. A stream reset meanwhile
        (by the peer or close_all) swallows the data and returns False; the
        StreamReset event tells the rest.
        """
        stream = self._live(stream_id)
        if stream is None:
            return False
        if stream.send_state != BODY:  # BODY --DATA--> BODY needs no table lookup
            self._send_step(stream, _DATA)
        return self._enqueue(stream, bytes(data) if isinstance(data, bytearray) else data)

    def send_ws_message(self, stream_id: int, data: bytes | bytearray | memoryview | str) -> bool:
        """Queue one whole WebSocket message (str: text); same contract as send_data."""
        stream = self._live(stream_id)
        if stream is None:
            return False
        self._send_step(stream, _MESSAGE)
        text = isinstance(data, str)
        if isinstance(data, str):
            try:
                payload: bytes | memoryview = data.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise LocalProtocolError("text message is not encodable as UTF-8") from exc
        else:
            payload = bytes(data) if isinstance(data, bytearray) else data
        if len(payload) > self._config.max_ws_message:
            raise LocalProtocolError(
                f"WebSocket message of {len(payload)} bytes over max_ws_message"
            )
        stream.text_flags.append(text)
        return self._enqueue(stream, payload, allow_empty=True)

    def _enqueue(
        self, stream: _Stream, data: bytes | memoryview, *, allow_empty: bool = False
    ) -> bool:
        if not stream.writable:
            raise LocalProtocolError(f"stream {stream.id} is not writable: wait for StreamWritable")
        n = len(data)
        if n or allow_empty:
            stream.queue.append(data)
            stream.queued += n
            self._queued_total += n
            self._schedule(stream)
        if stream.queued >= self._config.max_pending or len(stream.queue) >= MAX_QUEUED_ITEMS:
            stream.writable = False
        return self.is_writable(stream.id)

    def end(self, stream_id: int) -> None:
        """Finish our body (request or response); END follows the queued data."""
        stream = self._live(stream_id)
        if stream is None:
            return
        self._send_step(stream, _END)
        self._finish_half(stream, encode_end(self._packer, stream_id))

    def close_websocket(self, stream_id: int, code: int = 1000, reason: str = "") -> None:
        """Close our side of a WebSocket stream; CLOSE follows the queued messages."""
        stream = self._live(stream_id)
        if stream is None:
            return
        if type(code) is not int or not 1000 <= code <= 4999:
            raise LocalProtocolError(f"bad close code {code!r:.20}")
        reason = _reason_ok(reason)
        self._send_step(stream, _CLOSE)
        self._finish_half(stream, encode_close(self._packer, stream_id, code, reason))

    def _finish_half(self, stream: _Stream, frame: bytes) -> None:
        # Held back while data is queued, and while the OPEN has not left: a
        # stream reset before then must vanish without a trace.
        if stream.queue or not stream.open_sent:
            stream.trailer = frame
        else:
            self._control.append(frame)
            self._maybe_forget(stream)

    def reset(self, stream_id: int, code: int = ResetCode.CANCEL, reason: str = "") -> None:
        """Abort a stream both ways. No event follows; a stream whose OPEN never left vanishes.

        REFUSED promises the peer that nothing was processed (it may retry):
        use it only before anything of the stream reached the origin.
        """
        stream = self._live(stream_id)
        if stream is None:
            return
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
            raise LocalProtocolError(f"bad reset code {code!r:.20}")
        reason = _reason_ok(reason)
        if stream.open_sent:
            self._control.append(encode_reset(self._packer, stream_id, int(code), reason))
        self._forget(stream)

    def consumed(self, stream_id: int, n: int) -> None:
        """The consumer took ``n`` received bytes: grant them back to the sender (batched)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)
            return
        if type(n) is not int or not 0 <= n <= stream.unconsumed:
            raise LocalProtocolError(
                f"consumed({n!r:.20}) on stream {stream_id} with {stream.unconsumed} unconsumed"
            )
        stream.unconsumed -= n
        if stream.ws:  # whole messages leave the reassembly budget as they are consumed
            self._reassembly -= n
            self._delivered -= n
            prepaid = min(n, stream.prepaid)
            stream.prepaid -= prepaid
            n -= prepaid
            self._release_owed()
        self._credit(stream, n)

    def _credit(self, stream: _Stream, n: int) -> None:
        stream.to_grant += n
        if stream.to_grant >= stream.grant_at and stream.recv_state != DONE:
            self._control.append(encode_window(self._packer, stream.id, stream.to_grant))
            stream.recv_window += stream.to_grant
            stream.to_grant = 0

    def _announce(self, stream: _Stream) -> int:
        """The receive window to announce for a new stream, within ``session_window``.

        ``initial_window`` while the windows already announced beyond
        BASE_WINDOW leave room, else BASE_WINDOW: one session cannot make this
        end hold ``max_streams`` full windows. Credit is granted back in
        batches of half the stream's own window, so a small one never stalls.
        """
        extra = self._config.initial_window - BASE_WINDOW
        if extra <= 0 or self._window_extra + extra > self._config.session_window:
            return BASE_WINDOW
        self._window_extra += extra
        stream.extra = extra
        stream.grant_at = self._config.initial_window // 2
        return self._config.initial_window

    def close_all(self, reason: str = "session closed") -> None:
        """The session died: every live stream gets a local StreamReset; the tunnel is closed."""
        for stream in self._streams.values():
            stream.dead = True
            self._events.append(
                StreamReset(
                    stream_id=stream.id,
                    code=ResetCode.SESSION_LOST,
                    reason=reason,
                    remote=False,
                    retry_safe=stream.local and not stream.open_sent,
                )
            )
        self._streams.clear()
        self._opens.clear()
        self._control.clear()
        self._express.clear()
        self._ring.clear()
        self._peer_streams = 0
        self._window_extra = 0
        self._reassembly = self._delivered = self._queued_total = self._unacked_total = 0
        self._unfinished.clear()
        self._starved.clear()
        self._closed = True

    # -- the scheduler --------------------------------------------------------

    def next_message(self, max_bytes: int | None = None) -> bytes | None:
        """The next session message to send (a batch of frames), or None if idle.

        Call it only when the session can take a message. ``max_bytes`` (by
        default ``max_message``) bounds the batch, except that a single frame
        larger than it (a huge head) is sent alone.
        """
        limit = self._config.max_message if max_bytes is None else max_bytes
        if limit < MIN_MESSAGE:
            raise LocalProtocolError(f"max_bytes must be at least {MIN_MESSAGE}")
        parts: list[bytes | memoryview] = []
        size = 0
        opens = self._opens
        while opens:
            stream = opens[0]
            frame = stream.open_frame
            if stream.dead or frame is None:
                opens.popleft()
                continue
            if parts and size + len(frame) > limit:
                return b"".join(parts)
            opens.popleft()
            stream.open_frame = None
            stream.open_sent = True
            parts.append(frame)
            size += len(frame)
            if stream.trailer is not None and not stream.queue:
                self._control.append(stream.trailer)
                stream.trailer = None
        control = self._control
        while control:
            frame = control[0]
            if parts and size + len(frame) > limit:
                return b"".join(parts)
            control.popleft()
            parts.append(frame)
            size += len(frame)
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
            size += self._emit_chunk(stream, n, parts, limit - size)
            self._schedule(stream, bulk=True)
        self._feed_starved()  # sent bytes within the peer's leeway no longer count
        return b"".join(parts) if parts else None

    def _pick(self) -> tuple[deque[_Stream], _Stream] | None:
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

    def _peek_ready(self) -> _Stream | None:
        picked = self._pick()
        return None if picked is None else picked[1]

    def _schedule(self, stream: _Stream, *, bulk: bool = False) -> None:
        if stream.scheduled or stream.dead or not stream.ready():
            return
        stream.scheduled = True
        if bulk or stream.queued > self._config.max_chunk:
            self._ring.append(stream)
        else:
            self._express.append(stream)

    def _emit_chunk(
        self, stream: _Stream, n: int, parts: list[bytes | memoryview], room: int
    ) -> int:
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
        stream.send_credit -= n
        stream.queued -= n
        stream.unacked += n
        self._queued_total -= n
        self._count_unacked(stream)
        if stream.ws:
            flags = FLAG_TEXT if stream.text_flags[0] else 0
            if last:
                flags |= FLAG_FIN
                stream.text_flags.popleft()
            header = stream.prefix + _FLAG_BYTES[flags] + bin_header(n)
        else:
            header = stream.prefix + bin_header(n)
        parts.append(header)
        parts.append(payload)
        added = len(header) + n
        if (
            not stream.writable
            and stream.queued < self._config.max_pending
            and len(queue) < MAX_QUEUED_ITEMS
        ):
            stream.writable = True
            if self._session_full():
                self._starved[stream.id] = stream  # StreamWritable once the session has room
            else:
                self._events.append(StreamWritable(stream_id=stream.id))
        trailer = stream.trailer
        if trailer is not None and not queue:
            stream.trailer = None
            if len(trailer) <= room - added:
                parts.append(trailer)
                added += len(trailer)
            else:
                self._control.append(trailer)
            self._maybe_forget(stream)
        return added

    # -- receiving ------------------------------------------------------------

    def receive_message(self, message: bytes | bytearray | memoryview | str) -> None:
        """Process one session message from the peer; results come as events.

        On RemoteProtocolError every stream has been reset locally (events
        queued) and the tunnel is closed: abort the session with ``exc.code``.
        """
        self._check_usable()
        try:
            if isinstance(message, str):
                raise RemoteProtocolError("tunnel messages are binary, got a text message")
            handlers = _HANDLERS
            for n, raw in enumerate(self._decoder.decode(message)):
                if n == MAX_MESSAGE_FRAMES:
                    raise RemoteProtocolError(f"more than {n} frames in one session message")
                handlers[raw[0]](self, raw)
        except RemoteProtocolError as exc:
            self.close_all(f"tunnel protocol error: {exc.reason}")
            raise

    def _on_open_http(self, raw: list[Any]) -> None:
        _, sid, window, method, target, flat, has_body = raw
        stream = self._admit(
            sid, window, target, flat, ws=False, recv_state=BODY if has_body else DONE
        )
        if stream is None:
            return
        if has_body:
            extra = self._announce(stream) - BASE_WINDOW
            if extra > 0:
                stream.recv_window += extra
                self._control.append(encode_window(self._packer, sid, extra))
        self._events.append(
            RequestReceived(
                stream_id=sid, method=method, target=target, headers=_pairs(flat), has_body=has_body
            )
        )

    def _on_open_ws(self, raw: list[Any]) -> None:
        _, sid, window, target, flat, protocols = raw
        if self._admit(sid, window, target, flat, ws=True, recv_state=HEAD) is None:
            return
        self._events.append(
            WebSocketRequested(
                stream_id=sid, target=target, headers=_pairs(flat), protocols=tuple(protocols)
            )
        )

    def _admit(
        self, sid: int, window: int, target: bytes, flat: list[bytes], *, ws: bool, recv_state: int
    ) -> _Stream | None:
        """A new peer stream, or None after refusing it with a RESET (policy limits)."""
        if (sid & 1) == self._opener:
            raise RemoteProtocolError(f"OPEN for stream {sid}: that id is ours to allocate")
        if sid <= self._highest_peer_id:
            raise RemoteProtocolError(f"OPEN for stream {sid}, not above {self._highest_peer_id}")
        self._highest_peer_id = sid
        if self._peer_streams >= self._config.max_streams:
            self._answer(encode_reset(self._packer, sid, ResetCode.REFUSED, "too many streams"))
            return None
        if len(target) + sum(map(len, flat)) > self._config.max_header_bytes:
            self._answer(
                encode_reset(self._packer, sid, ResetCode.TOO_LARGE, "request head too large")
            )
            return None
        packer = self._packer
        prefix = message_prefix(packer, sid) if ws else data_prefix(packer, sid)
        stream = _Stream(
            sid, local=False, ws=ws, send_state=HEAD, recv_state=recv_state, prefix=prefix
        )
        stream.send_credit = window
        self._see_window(stream)
        self._streams[sid] = stream
        self._peer_streams += 1
        return stream

    def _on_response(self, raw: list[Any]) -> None:
        _, sid, status, reason, flat, has_body = raw
        stream = self._target(sid, "RESPONSE")
        if stream is None:
            return
        if len(reason) + sum(map(len, flat)) > self._config.max_header_bytes:
            self._reset_locally(stream, ResetCode.TOO_LARGE, "response head too large")
            return
        self._recv_step(stream, _HEAD_BODY if has_body else _HEAD_EMPTY)
        if stream.ws:
            stream.send_state = self._step(stream, stream.send_state, _REFUSED, local=False)
            self._as_http(stream)
        self._events.append(
            ResponseReceived(
                stream_id=sid, status=status, reason=reason, headers=_pairs(flat), has_body=has_body
            )
        )
        self._maybe_forget(stream)

    def _on_accept(self, raw: list[Any]) -> None:
        _, sid, window, protocol, flat = raw
        stream = self._target(sid, "ACCEPT")
        if stream is None:
            return
        if not stream.ws:
            raise RemoteProtocolError(f"ACCEPT on HTTP stream {sid}")
        self._recv_step(stream, _ACCEPT)
        stream.send_state = self._step(stream, stream.send_state, _ACCEPT, local=False)
        stream.send_credit = window
        self._see_window(stream)
        self._events.append(
            WebSocketAccepted(stream_id=sid, protocol=protocol, headers=_pairs(flat))
        )

    def _target(self, sid: int, frame: str) -> _Stream | None:
        """The stream a head answers: it must be ours."""
        stream = self._lookup(sid)
        if stream is not None and not stream.local:
            raise RemoteProtocolError(f"{frame} on stream {sid}, which the peer opened itself")
        return stream

    def _on_data(self, raw: list[Any]) -> None:
        sid = raw[1]
        stream = self._lookup(sid)
        if stream is None:
            return
        payload: bytes = raw[2]
        if stream.recv_state != BODY:  # BODY --DATA--> BODY needs no table lookup
            self._recv_step(stream, _DATA)
        self._take_credit(stream, len(payload))
        stream.unconsumed += len(payload)
        self._events.append(DataReceived(stream_id=sid, data=payload))

    def _on_end(self, raw: list[Any]) -> None:
        sid = raw[1]
        stream = self._lookup(sid)
        if stream is None:
            return
        self._recv_step(stream, _END)
        self._events.append(StreamEnded(stream_id=sid))
        self._maybe_forget(stream)

    def _on_message(self, raw: list[Any]) -> None:
        _, sid, flags, payload = raw
        stream = self._lookup(sid)
        if stream is None:
            return
        self._recv_step(stream, _MESSAGE)
        n = len(payload)
        self._take_credit(stream, n)
        text = bool(flags & FLAG_TEXT)
        if stream.msg_parts:
            if text != stream.msg_text:
                raise RemoteProtocolError(f"MESSAGE on stream {sid} changes type mid-message")
        else:
            stream.msg_text = text
        if stream.msg_size + n > self._config.max_ws_message:
            self._reset_locally(stream, ResetCode.TOO_LARGE, "WebSocket message too large")
            return
        stream.msg_size += n
        self._reassembly += n
        if not flags & FLAG_FIN:
            self._on_fragment(stream, payload)
            return
        parts = stream.msg_parts
        whole = b"".join((*parts, payload)) if parts else payload
        size = stream.msg_size
        stream.prepaid += size - n - stream.msg_owed
        stream.unconsumed += size
        self._delivered += size
        stream.msg_parts = []
        stream.msg_size = stream.msg_owed = 0
        if self._unfinished.pop(sid, None) is not None:
            self._release_owed()
        data: bytes | str = whole
        if text:
            try:
                data = whole.decode("utf-8")
            except UnicodeDecodeError:
                self._reset_locally(stream, ResetCode.PROTOCOL, "text message is not UTF-8")
                return
        self._events.append(WebSocketMessage(stream_id=sid, data=data, size=size))

    def _on_fragment(self, stream: _Stream, payload: bytes) -> None:
        """Hold a fragment; credit it back now only if the session's reassembly budget allows.

        Within the budget, the fragment is credited at once (a message larger
        than the window cannot deadlock); otherwise the credit is owed until
        the budget frees (``_release_owed``). The oldest unfinished message is
        the exception: it gets credit whatever the unfinished messages of other
        streams hold, as long as the delivered, unconsumed messages leave room
        (those go as the consumer takes them). So several large messages
        finish one after the other and a full budget never deadlocks.
        """
        n = len(payload)
        unfinished = self._unfinished
        if not stream.msg_parts:
            unfinished[stream.id] = stream
        stream.msg_parts.append(payload)
        if self._may_credit(stream.id, self._reassembly):
            self._credit(stream, n)
        else:
            stream.msg_owed += n

    def _release_owed(self) -> None:
        """Pay credit owed to unfinished messages: the oldest always, others while there is room."""
        held = self._reassembly
        for stream in self._unfinished.values():
            owed = stream.msg_owed
            if not owed:
                continue
            if not self._may_credit(stream.id, held + owed):
                break  # younger messages wait their turn: credit goes out oldest first
            held += owed  # the peer may send that much more
            stream.msg_owed = 0
            self._credit(stream, owed)

    def _may_credit(self, sid: int, held: int) -> bool:
        budget = self._config.session_reassembly
        if next(iter(self._unfinished)) == sid:
            return self._delivered <= budget
        return held <= budget

    def _on_close(self, raw: list[Any]) -> None:
        _, sid, code, reason = raw
        stream = self._lookup(sid)
        if stream is None:
            return
        self._recv_step(stream, _CLOSE)
        if stream.msg_parts:
            raise RemoteProtocolError(f"CLOSE inside a fragmented message on stream {sid}")
        self._events.append(WebSocketClosed(stream_id=sid, code=code, reason=reason))
        self._maybe_forget(stream)

    def _on_window(self, raw: list[Any]) -> None:
        _, sid, increment = raw
        stream = self._lookup(sid)
        if stream is None:
            return
        stream.send_credit += increment
        if stream.send_credit > MAX_WINDOW:
            raise FlowControlError(f"WINDOW overflows the credit of stream {sid}")
        # Seen before the ack: a top-up WINDOW for bytes not sent yet widens
        # the window without acknowledging anything (a grant overestimates it).
        self._see_window(stream)
        stream.unacked -= min(increment, stream.unacked)
        self._count_unacked(stream)
        self._schedule(stream)
        self._feed_starved()

    def _see_window(self, stream: _Stream) -> None:
        """Track the peer's window for the stream: credit plus bytes in flight, at its largest."""
        window = stream.send_credit + stream.unacked
        if window > stream.window:
            stream.window = window
            stream.leeway = min(window, _LEEWAY_WINDOW) // 2
        self._count_unacked(stream)

    def _count_unacked(self, stream: _Stream) -> None:
        counted = max(0, stream.unacked - stream.leeway)
        self._unacked_total += counted - stream.unacked_counted
        stream.unacked_counted = counted

    def _feed_starved(self) -> None:
        """The session dropped under max_unread: wake the streams that were told to wait."""
        starved = self._starved
        if not starved or self._session_full():
            return
        self._starved = {}
        for stream in starved.values():
            if not stream.dead and stream.writable:
                self._events.append(StreamWritable(stream_id=stream.id))

    def _on_reset(self, raw: list[Any]) -> None:
        _, sid, code, reason = raw
        stream = self._lookup(sid)
        if stream is None:
            return
        known = ResetCode(code) if code in _RESET_CODES else ResetCode.INTERNAL
        self._forget(stream)
        self._events.append(
            StreamReset(
                stream_id=sid,
                code=known,
                reason=reason,
                remote=True,
                retry_safe=stream.local and known == ResetCode.REFUSED,
            )
        )

    def _take_credit(self, stream: _Stream, n: int) -> None:
        if n > stream.recv_window:
            raise FlowControlError(
                f"stream {stream.id} sent {n} bytes with a window of {stream.recv_window}"
            )
        stream.recv_window -= n

    def _answer(self, frame: bytes) -> None:
        """Queue a RESET the peer provoked, unless it provokes them faster than it reads them.

        Refusals cost the peer a few bytes each and us a queued frame; a peer
        that keeps opening past ``max_streams`` while never reading the
        session would grow the control queue without end.
        """
        if len(self._control) >= _MAX_CONTROL + 16 * self._config.max_streams:
            raise RemoteProtocolError("the peer provokes refusals faster than it reads them")
        self._control.append(frame)

    def _reset_locally(self, stream: _Stream, code: ResetCode, reason: str) -> None:
        """A received frame broke one of our limits: reset just this stream, both ends."""
        self._answer(encode_reset(self._packer, stream.id, code, reason))
        self._forget(stream)
        self._events.append(
            StreamReset(
                stream_id=stream.id, code=code, reason=reason, remote=False, retry_safe=False
            )
        )

    # -- stream table and state steps ------------------------------------------

    def _step(self, stream: _Stream, state: int, what: int, *, local: bool) -> int:
        new = _TRANSITIONS.get((state, what))
        if new is None:
            half = "send" if local else "receive"
            message = (
                f"{_INPUT_NAMES[what]} on stream {stream.id} whose {half} side is "
                f"{STATE_NAMES[state]}"
            )
            if local:
                raise LocalProtocolError(f"cannot send {message}")
            raise RemoteProtocolError(f"received {message}")
        return new

    def _send_step(self, stream: _Stream, what: int) -> None:
        stream.send_state = self._step(stream, stream.send_state, what, local=True)

    def _recv_step(self, stream: _Stream, what: int) -> None:
        stream.recv_state = self._step(stream, stream.recv_state, what, local=False)
        if stream.recv_state == DONE and stream.extra:  # nothing more comes in: window free
            self._window_extra -= stream.extra
            stream.extra = 0

    def _live(self, stream_id: int) -> _Stream | None:
        """A stream the API may act on; None if it was closed (a race, not a bug)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)
        return stream

    def _check_known(self, stream_id: int) -> None:
        if type(stream_id) is not int or stream_id <= 0:
            raise LocalProtocolError(f"bad stream id {stream_id!r:.20}")
        if not self._allocated(stream_id):
            raise LocalProtocolError(f"stream {stream_id} was never opened")

    def _allocated(self, sid: int) -> bool:
        """The id was opened at some point (ids only grow, so this needs no history)."""
        if (sid & 1) == self._opener:
            return sid < self._next_id
        return sid <= self._highest_peer_id

    def _lookup(self, sid: int) -> _Stream | None:
        """The stream a received frame is for; None for a late frame of a closed one."""
        stream = self._streams.get(sid)
        if stream is not None:
            return stream
        if not self._allocated(sid):
            raise RemoteProtocolError(f"frame for stream {sid}, which was never opened")
        return None

    def _as_http(self, stream: _Stream) -> None:
        """A refused WebSocket stream carries its refusal body as a plain HTTP body."""
        stream.ws = False
        stream.prefix = data_prefix(self._packer, stream.id)

    def _maybe_forget(self, stream: _Stream) -> None:
        if stream.unacked and stream.send_state == DONE and stream.trailer is None:
            # Our side ended: no WINDOW comes back after the peer saw END/CLOSE.
            stream.unacked = 0
            self._count_unacked(stream)
            self._feed_starved()
        if (
            stream.send_state == DONE
            and stream.recv_state == DONE
            and not stream.queue
            and stream.trailer is None
        ):
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if stream.dead:
            return
        stream.dead = True
        del self._streams[stream.id]
        if not stream.local:
            self._peer_streams -= 1
        self._window_extra -= stream.extra
        stream.extra = 0
        stream.queue.clear()
        self._queued_total -= stream.queued
        self._unacked_total -= stream.unacked_counted
        stream.queued = stream.unacked = stream.unacked_counted = 0
        stream.msg_parts = []
        if stream.ws:
            self._reassembly -= stream.msg_size + stream.unconsumed
            self._delivered -= stream.unconsumed
        stream.msg_size = stream.msg_owed = 0
        self._starved.pop(stream.id, None)
        if self._unfinished.pop(stream.id, None) is not None or stream.ws:
            self._release_owed()
        self._feed_starved()

    def _head(self, first: bytes | str, headers: HeaderInput) -> tuple[bytes, list[bytes]]:
        """Encode a head's target/reason and headers to wire form, checking our limits."""
        raw = _octets(first, "target/reason")
        flat: list[bytes] = []
        size = len(raw)
        try:
            for name, value in headers:
                flat.append(_octets(name, "header name"))
                flat.append(_octets(value, "header value"))
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError("headers must be (name, value) pairs") from exc
        size += sum(map(len, flat))
        if size > self._config.max_header_bytes or len(flat) > 2 * MAX_HEADER_FIELDS:
            raise LocalProtocolError(f"head of {size} bytes/{len(flat) // 2} fields over the limit")
        return raw, flat

    def _check_usable(self) -> None:
        if self._closed:
            raise LocalProtocolError("the tunnel is closed")


_FLAG_BYTES: Final = tuple(bytes((flags,)) for flags in range(4))
_RESET_CODES: Final = frozenset(int(code) for code in ResetCode)

_HANDLERS: Final[dict[int, Callable[[Tunnel, list[Any]], None]]] = {
    FrameType.OPEN_HTTP: Tunnel._on_open_http,
    FrameType.OPEN_WS: Tunnel._on_open_ws,
    FrameType.RESPONSE: Tunnel._on_response,
    FrameType.ACCEPT: Tunnel._on_accept,
    FrameType.DATA: Tunnel._on_data,
    FrameType.END: Tunnel._on_end,
    FrameType.MESSAGE: Tunnel._on_message,
    FrameType.CLOSE: Tunnel._on_close,
    FrameType.WINDOW: Tunnel._on_window,
    FrameType.RESET: Tunnel._on_reset,
}
