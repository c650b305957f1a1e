"""The receive side of a session: in-order acceptance and message reassembly.

The receiver accepts a DATA frame only if its seq is exactly one more than
the last it accepted; a lower seq is a duplicate and a higher one is out of
order, both are discarded (go-back-N: the sender will replay them). Any
DATA, accepted or not, makes the next batch carry a cumulative ACK (the
session's business). Fragments are reassembled and delivered as one
``MessageReceived``. The peer's CLOSE is sequenced like DATA and ends the
stream of messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.session.errors import CloseCode, MessageTooBig, RemoteProtocolError
from gateway.core.session.frames import FLAG_FIN, FLAG_TEXT, Close, Data

__all__ = ["Inbound"]


@dataclass(slots=True)
class Inbound:
    """What arrived in order so far, and the message being reassembled."""

    received: int = 0  # highest seq accepted in order
    parts: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes in parts
    text: bool = False  # the message being reassembled is text
    hello_seen: bool = False
    peer_closed: bool = False

    def accept(self, frame: Data, max_message_size: int) -> bytes | str | None:
        """The message this DATA completes; None if it was discarded or is a fragment."""
        flags = (FLAG_FIN if frame.fin else 0) | (FLAG_TEXT if frame.text else 0)
        return self.accept_fields(frame.seq, flags, frame.payload, max_message_size)

    def accept_fields(
        self, seq: int, flags: int, payload: bytes, max_message_size: int
    ) -> bytes | str | None:
        """``accept`` for a DATA frame's checked fields (the receive path builds no ``Data``)."""
        if seq != self.received + 1:
            return None  # duplicate or gap: discarded, go-back-N replays it
        if self.peer_closed:
            raise RemoteProtocolError("DATA after CLOSE")
        self.received = seq
        text = bool(flags & FLAG_TEXT)
        parts = self.parts
        if parts:
            if text is not self.text:
                raise RemoteProtocolError("fragments of one message mix text and binary")
            size = self.size + len(payload)
        else:
            self.text = text
            size = len(payload)
        if size > max_message_size:
            raise MessageTooBig(f"message exceeds max_message_size ({max_message_size} bytes)")
        if not flags & FLAG_FIN:
            parts.append(payload)
            self.size = size
            return None
        if parts:
            parts.append(payload)
            payload = b"".join(parts)
            parts.clear()
            self.size = 0
        if not text:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                "text message is not valid UTF-8", CloseCode.INVALID_DATA
            ) from None

    def accept_close(self, frame: Close) -> bool:
        """True if this CLOSE is the next in order (the peer closed); False if discarded."""
        if frame.seq != self.received + 1:
            return False
        if self.peer_closed:
            raise RemoteProtocolError("second CLOSE")
        if self.parts:
            raise RemoteProtocolError("CLOSE in the middle of a fragmented message")
        self.received = frame.seq
        self.peer_closed = True
        return True
