"""WebSocket message reassembly, and the session-wide budget that keeps it from deadlocking.

WebSocket messages are reassembled before they are delivered, so a message
larger than the window would deadlock if its chunks waited for
``consumed()``: the chunks of a message in progress are credited back on
arrival, but only while the session's reassembly total (unfinished messages
plus delivered, unconsumed ones) is within ``session_reassembly``; past it
the credit is owed, and paid oldest message first as consumed messages
leave the budget. The stream holding the oldest unfinished message keeps its
credit (up to ``max_ws_message``) as long as the delivered messages leave
room, so large messages finish one after the other instead of deadlocking.
Credit given ahead of consumption is thus bounded by ``session_reassembly +
max_ws_message`` per session, on top of the windows.
"""

from __future__ import annotations

from gateway.core.tunnel.flow import FlowControl
from gateway.core.tunnel.stream_state import Stream

__all__ = ["Reassembly"]


class Reassembly:
    """The WebSocket messages one tunnel holds for the I/O layer, and their credit."""

    __slots__ = ("_budget", "_flow", "_unfinished", "delivered", "held")

    def __init__(self, session_reassembly: int, flow: FlowControl) -> None:
        self._budget = session_reassembly
        self._flow = flow
        # Bytes of unfinished WebSocket messages plus delivered, unconsumed
        # ones; streams with an unfinished message, oldest first (the oldest
        # always gets credit, so nothing deadlocks).
        self.held = 0
        self.delivered = 0  # of which delivered, not consumed yet
        self._unfinished: dict[int, Stream] = {}

    def add_whole(self, stream: Stream, n: int) -> None:
        """``add`` of a whole message in one frame with nothing held before: count its bytes."""
        self.held += n
        stream.unconsumed += n
        self.delivered += n

    def add(self, stream: Stream, payload: bytes, *, fin: bool) -> bytes | None:
        """Take one MESSAGE chunk (already within the size limit); the whole message at FIN."""
        n = len(payload)
        self.held += n
        parts = stream.msg_parts
        if fin and not parts:  # a whole message in one frame (most are): nothing held before
            stream.unconsumed += n
            self.delivered += n
            return payload
        stream.msg_size += n
        if not fin:
            self._hold_fragment(stream, payload)
            return None
        whole = b"".join((*parts, payload))
        size = stream.msg_size
        stream.prepaid += size - n - stream.msg_owed
        stream.unconsumed += size
        self.delivered += size
        stream.msg_parts = []
        stream.msg_size = stream.msg_owed = 0
        if self._unfinished.pop(stream.id, None) is not None:
            self.release_owed()
        return whole

    def _hold_fragment(self, stream: Stream, payload: bytes) -> None:
        """Hold a fragment; credit it back now only if the session's reassembly budget allows.

        Within the budget, the fragment is credited at once (a message larger
        than the window cannot deadlock); otherwise the credit is owed until
        the budget frees (``release_owed``). The oldest unfinished message is
        the exception: it gets credit whatever the unfinished messages of other
        streams hold, as long as the delivered, unconsumed messages leave room
        (those go as the consumer takes them). So several large messages
        finish one after the other and a full budget never deadlocks.
        """
        n = len(payload)
        if not stream.msg_parts:
            self._unfinished[stream.id] = stream
        stream.msg_parts.append(payload)
        if self._may_credit(stream.id, self.held):
            self._flow.credit(stream, n)
        else:
            stream.msg_owed += n

    def release_owed(self) -> None:
        """Pay credit owed to unfinished messages: the oldest always, others while there is room."""
        held = self.held
        for stream in self._unfinished.values():
            owed = stream.msg_owed
            if not owed:
                continue
            if not self._may_credit(stream.id, held + owed):
                break  # younger messages wait their turn: credit goes out oldest first
            held += owed  # the peer may send that much more
            stream.msg_owed = 0
            self._flow.credit(stream, owed)

    def _may_credit(self, sid: int, held: int) -> bool:
        if next(iter(self._unfinished)) == sid:
            return self.delivered <= self._budget
        return held <= self._budget

    def consumed(self, stream: Stream, n: int) -> int:
        """Whole messages leave the budget as they are consumed; returns the credit still due."""
        self.held -= n
        self.delivered -= n
        prepaid = min(n, stream.prepaid)
        stream.prepaid -= prepaid
        self.release_owed()
        return n - prepaid

    def forget(self, stream: Stream) -> None:
        """A dead stream's messages, whole or not, leave the budget."""
        stream.msg_parts = []
        if stream.ws:
            self.held -= stream.msg_size + stream.unconsumed
            self.delivered -= stream.unconsumed
        stream.msg_size = stream.msg_owed = 0
        if self._unfinished.pop(stream.id, None) is not None or stream.ws:
            self.release_owed()

    def clear(self) -> None:
        self.held = self.delivered = 0
        self._unfinished.clear()
