"""Sans-I/O tunnel: HTTP exchanges and endpoint WebSockets multiplexed over a hop session.

Layer 4 ("streams over a session") of the design; ``docs/tunnel.md`` describes the wire
format and how an I/O layer drives :class:`Tunnel`.
"""

from gateway.core.tunnel.config import TunnelConfig
from gateway.core.tunnel.errors import (
    FlowControlError,
    RemoteProtocolError,
    ResetCode,
    TunnelError,
    TunnelUsageError,
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
from gateway.core.tunnel.heads import HeaderInput
from gateway.core.tunnel.streams import Tunnel

__all__ = [
    "DataReceived",
    "Event",
    "FlowControlError",
    "HeaderInput",
    "Headers",
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
    "TunnelUsageError",
    "WebSocketAccepted",
    "WebSocketClosed",
    "WebSocketMessage",
    "WebSocketRequested",
]
