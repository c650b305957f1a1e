"""Sans-I/O tunnel: HTTP exchanges and endpoint WebSockets multiplexed over a hop session.

Layer 4 ("streams over a session") of the design; ``docs/tunnel.md`` describes the wire
format and how an I/O layer drives :class:`Tunnel`.
"""

from gateway.core.tunnel.errors import (
    FlowControlError,
    LocalProtocolError,
    RemoteProtocolError,
    ResetCode,
    TunnelError,
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
from gateway.core.tunnel.streams import HeaderInput, Tunnel, TunnelConfig

__all__ = [
    "DataReceived",
    "Event",
    "FlowControlError",
    "HeaderInput",
    "Headers",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RequestReceived",
    "ResetCode",
    "ResponseReceived",
    "StreamEnded",
    "StreamReset",
    "StreamWritable",
    "Tunnel",
    "TunnelConfig",
    "TunnelError",
    "WebSocketAccepted",
    "WebSocketClosed",
    "WebSocketMessage",
    "WebSocketRequested",
]
