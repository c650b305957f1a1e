"""Sans-I/O hop session: a reliable, ordered channel of whole messages between
two adjacent gateways that survives any number of transport changes.

No sockets, no event loop, no clock in here; see ``machine`` for the theory of
operation and ``docs/protocol.md`` for the wire contract.
"""

from gateway.core.session.config import SessionConfig
from gateway.core.session.errors import (
    BufferFull,
    CloseCode,
    HelloRejected,
    MessageTooBig,
    RemoteProtocolError,
    SessionError,
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
from gateway.core.session.frames import PROTOCOL_VERSION
from gateway.core.session.machine import Session, SessionState
from gateway.core.session.tokens import new_session_id, new_token

__all__ = [
    "PROTOCOL_VERSION",
    "BufferFull",
    "CloseCode",
    "Event",
    "HelloReceived",
    "HelloRejected",
    "MessageReceived",
    "MessageTooBig",
    "ProbeAnswered",
    "RemoteProtocolError",
    "SendWindowOpened",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "SessionError",
    "SessionState",
    "SessionUsageError",
    "TransportStalled",
    "new_session_id",
    "new_token",
]
