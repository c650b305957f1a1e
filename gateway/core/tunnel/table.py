"""The live streams of one tunnel and their lifetime: ids, lookups, state steps, forgetting.

Ids. The side that opened the session (``opener=True``) uses odd ids, the
other side even ids, so both may open streams without coordination. Ids only
grow: an id at or below the highest one seen (or allocated) that is no
longer in the table is a stream that was closed, and any frame for it is a
late frame that crossed our RESET or END on the wire: it is ignored. A frame
for an id above that mark that is not an OPEN is a frame for a stream that
never existed: a protocol error. So no "recently closed" set is kept at all.

The :class:`StreamTable` also holds the parts every side of the tunnel
shares: the flow control, the reassembly budget, the scheduler with its
control-frame queue, and the events for the I/O layer.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from gateway.core.tunnel.config import TunnelConfig
from gateway.core.tunnel.errors import RemoteProtocolError, ResetCode, TunnelUsageError
from gateway.core.tunnel.events import Event, StreamReset
from gateway.core.tunnel.flow import FlowControl
from gateway.core.tunnel.frames import (
    MAX_STREAM_ID,
    data_prefix,
    encode_reset,
    message_prefix,
    new_packer,
)
from gateway.core.tunnel.packing import ControlQueue, HeaderTable, PendingHead
from gateway.core.tunnel.reassembly import Reassembly
from gateway.core.tunnel.scheduler import Scheduler
from gateway.core.tunnel.stream_state import DONE, HEAD, Stream, step

__all__ = ["StreamTable"]

# Queued control frames beyond which a peer-provoked RESET closes the tunnel
# (plus 16 per allowed stream: heads and WINDOWs of our own live streams).
_MAX_CONTROL: Final = 16384

#: One Packer for every tunnel: each one costs a few KB, which is most of an idle session's.
_PACKER: Final = new_packer()


class StreamTable:
    """The streams of one tunnel end, with the parts of the tunnel they all share."""

    __slots__ = (
        "closed",
        "config",
        "control",
        "events",
        "flow",
        "highest_peer_id",
        "next_id",
        "opener",
        "pack_heads",
        "packer",
        "peer_streams",
        "reassembly",
        "recv_heads",
        "refuse_above",
        "scheduler",
        "send_heads",
        "streams",
        "whole_answers",
    )

    def __init__(self, config: TunnelConfig, *, opener: bool) -> None:
        self.config = config
        self.opener = opener
        self.packer = _PACKER  # shared: pack() is synchronous and resets itself
        self.streams: dict[int, Stream] = {}
        self.next_id = 1 if opener else 2
        self.highest_peer_id = 0
        #: After a GOAWAY: peer streams above this id are refused unprocessed.
        self.refuse_above: int | None = None
        self.peer_streams = 0
        self.events: list[Event] = []
        self.control: ControlQueue = deque()
        self.flow = FlowControl(config, self.packer, self.control, self.events)
        self.reassembly = Reassembly(config.session_reassembly, self.flow)
        self.scheduler = Scheduler(
            config, self.flow, self.control, self.maybe_forget, self.encode_head
        )
        #: Send heads packed (``packing.py``): the peer reads them.
        self.pack_heads = False
        #: Send small whole answers as one RESPONSE_WHOLE frame: the peer reads them.
        self.whole_answers = False
        # Header tables, made on first use: most idle sessions never carry a head.
        self.send_heads: HeaderTable | None = None
        self.recv_heads: HeaderTable | None = None
        self.closed = False

    # -- finding streams ----------------------------------------------------

    def live(self, stream_id: int) -> Stream | None:
        """A stream the API may act on; None if it was closed (a race, not a bug)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self.check_known(stream_id)
        return stream

    def check_known(self, stream_id: int) -> None:
        if type(stream_id) is not int or stream_id <= 0:
            raise TunnelUsageError(f"bad stream id {stream_id!r:.20}")
        if not self.allocated(stream_id):
            raise TunnelUsageError(f"stream {stream_id} was never opened")

    def allocated(self, sid: int) -> bool:
        """The id was opened at some point (ids only grow, so this needs no history)."""
        if (sid & 1) == self.opener:
            return sid < self.next_id
        return sid <= self.highest_peer_id

    def lookup(self, sid: int) -> Stream | None:
        """The stream a received frame is for; None for a late frame of a closed one."""
        stream = self.streams.get(sid)
        if stream is not None:
            return stream
        if not self.allocated(sid):
            raise RemoteProtocolError(f"frame for stream {sid}, which was never opened")
        return None

    # -- new streams ----------------------------------------------------------

    def new_stream(
        self, sid: int, *, local: bool, ws: bool, send_state: int, recv_state: int
    ) -> Stream:
        packer = self.packer
        prefix = message_prefix(packer, sid) if ws else data_prefix(packer, sid)
        return Stream(
            sid, local=local, ws=ws, send_state=send_state, recv_state=recv_state, prefix=prefix
        )

    def new_local(self, *, ws: bool, send_state: int) -> Stream:
        """A stream we open: the next id of ours, queued for its OPEN."""
        sid = self.next_id
        if sid > MAX_STREAM_ID:
            raise TunnelUsageError("stream ids exhausted: open a new session")
        self.next_id = sid + 2
        stream = self.new_stream(sid, local=True, ws=ws, send_state=send_state, recv_state=HEAD)
        stream.recv_window = self.flow.announce(stream)
        self.streams[sid] = stream
        self.scheduler.opens.append(stream)
        return stream

    # -- state steps ------------------------------------------------------------

    @staticmethod
    def send_step(stream: Stream, what: int) -> None:
        stream.send_state = step(stream.id, stream.send_state, what, local=True)

    def recv_step(self, stream: Stream, what: int) -> None:
        stream.recv_state = step(stream.id, stream.recv_state, what, local=False)
        if stream.recv_state == DONE and stream.extra:  # nothing more comes in: window free
            self.flow.release_extra(stream)

    def as_http(self, stream: Stream) -> None:
        """A refused WebSocket stream carries its refusal body as a plain HTTP body."""
        stream.ws = False
        stream.prefix = data_prefix(self.packer, stream.id)

    # -- packed heads -------------------------------------------------------------

    def encode_head(self, head: PendingHead) -> bytes:
        """``head`` as it goes on the wire now (the scheduler's call: wire order)."""
        if self.send_heads is None:
            self.send_heads = HeaderTable(indexed=True)
        return head.encode(self.packer, self.send_heads)

    def receive_table(self) -> HeaderTable:
        """The table of the heads the peer packs; the peer reads packed heads too."""
        self.pack_heads = True
        if self.recv_heads is None:
            self.recv_heads = HeaderTable(indexed=False)
        return self.recv_heads

    # -- resets -------------------------------------------------------------------

    def answer(self, frame: bytes) -> None:
        """Queue a RESET the peer provoked, unless it provokes them faster than it reads them.

        Refusals cost the peer a few bytes each and us a queued frame; a peer
        that keeps opening past ``max_streams`` while never reading the
        session would grow the control queue without end.
        """
        if len(self.control) >= _MAX_CONTROL + 16 * self.config.max_streams:
            raise RemoteProtocolError("the peer provokes refusals faster than it reads them")
        self.control.append(frame)

    def reset_locally(self, stream: Stream, code: ResetCode, reason: str) -> None:
        """A received frame broke one of our limits: reset just this stream, both ends."""
        self.answer(encode_reset(self.packer, stream.id, code, reason))
        self.forget(stream)
        self.events.append(
            StreamReset(
                stream_id=stream.id, code=code, reason=reason, remote=False, retry_safe=False
            )
        )

    # -- forgetting -----------------------------------------------------------------

    def maybe_forget(self, stream: Stream) -> None:
        """Forget the stream if it is finished both ways."""
        if stream.unacked and stream.send_state == DONE and stream.trailer is None:
            self.flow.send_ended(stream)
        if stream.finished():
            self.forget(stream)

    def forget(self, stream: Stream) -> None:
        if stream.dead:
            return
        stream.dead = True
        del self.streams[stream.id]
        if not stream.local:
            self.peer_streams -= 1
        stream.queue.clear()
        self.flow.forget(stream)
        self.reassembly.forget(stream)
        self.flow.feed_starved()

    def close_all(self, reason: str) -> None:
        """Every live stream gets a local StreamReset; the tunnel is closed."""
        for stream in self.streams.values():
            stream.dead = True
            self.events.append(
                StreamReset(
                    stream_id=stream.id,
                    code=ResetCode.SESSION_LOST,
                    reason=reason,
                    remote=False,
                    retry_safe=stream.local and not stream.open_sent,
                )
            )
        self.streams.clear()
        self.scheduler.clear()
        self.peer_streams = 0
        self.flow.clear()
        self.reassembly.clear()
        self.closed = True
