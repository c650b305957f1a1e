"""Events the session core reports to its I/O layer (``Session.events_received``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Event",
    "GoAwayReceived",
    "HelloReceived",
    "MessageReceived",
    "ProbeAnswered",
    "SendWindowOpened",
    "SessionClosed",
    "TransportStalled",
    "message_received",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class HelloReceived:
    """The peer opened (or re-opened) its side: it speaks hopgate and knows us.

    ``first`` is True only for the first HELLO of the session; the I/O layer
    uses it to accept a WebSocket upgrade (proof required by seed 001).
    """

    last_received: int
    first: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class GoAwayReceived:
    """The peer will stop serving this session: open new streams on another one.

    Streams we opened with ids up to ``last_stream_id`` are served to the
    end; any above it were not processed (safe to send again elsewhere).
    Reported once, or again only when a later GOAWAY lowers the id.
    """

    last_stream_id: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageReceived:
    """One whole message from the peer: ``str`` if sent as text, else ``bytes``."""

    data: bytes | str


@dataclass(frozen=True, kw_only=True, slots=True)
class SendWindowOpened:
    """``Session.writable`` went from False to True: send_message will accept again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportStalled:
    """Data or a ping is outstanding and neither ack nor pong came for ``stall_timeout``.

    Reported once per attached transport; the I/O layer demotes (WebSocket ->
    long-poll) with ``transport_lost``/``transport_attached``.
    """

    since: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeAnswered:
    """A probe PING came back: the transport it went over carries frames both ways."""

    nonce: int
    rtt: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionClosed:
    """The session is over; reported exactly once. ``by_peer`` says who decided."""

    code: int
    reason: str
    by_peer: bool


Event = (
    HelloReceived
    | GoAwayReceived
    | MessageReceived
    | SendWindowOpened
    | TransportStalled
    | ProbeAnswered
    | SessionClosed
)


_new = object.__new__
#: The ``data`` slot's own setter, bound once: no lookup by name per message.
_set_data: Callable[[object, object], None] = MessageReceived.__dict__["data"].__set__


def message_received(data: bytes | str) -> MessageReceived:
    """``MessageReceived(data=...)`` for the receive path: the same frozen object without the
    keyword ``__init__`` (``object.__setattr__`` looked up per field), once per message."""
    event = _new(MessageReceived)
    _set_data(event, data)
    return event
