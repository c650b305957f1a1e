"""What the session transports need to know: timers and limits, seconds and bytes.

One frozen :class:`SessionSettings` serves both ends of a hop session and
every transport; :meth:`SessionSettings.core_config` derives the pure core's
:class:`~gateway.core.session.config.SessionConfig` from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.core.session.config import SessionConfig

__all__ = ["TUNNEL_SESSION_MESSAGE", "SessionSettings"]

_MiB: Final = 1024 * 1024


#: Largest session message a gateway's hop sessions take (1009 beyond), not
#: ``--max-message-size``: a session message is one tunnel batch, and
#: legitimate peers (TunnelLink, the relay, the JS shim) send batches of at
#: most 64 KiB and a frame head, or one head frame alone (max_header_bytes,
#: 64 KiB, plus framing). 2 MiB leaves room for peers with larger batches
#: while a hostile peer's unfinished session message pins 2 MiB, not 16.
#: Endpoint WebSocket messages up to ``--max-message-size`` travel chunked
#: inside the tunnel.
TUNNEL_SESSION_MESSAGE: Final = 2 * _MiB
#: The core's own defaults: the knobs passed through to it default to them.
_CORE: Final = SessionConfig()


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionSettings:
    """Everything the session transports need to know. Seconds and bytes."""

    #: Longest a long-poll GET is held open (RFC 6202: stay under 30 s).
    hold_time: float = 25.0
    #: How long a session waits for a transport before it expires (4000).
    resume_grace: float = _CORE.resume_grace
    #: Sessions one gateway serves at once (503 beyond).
    max_sessions: int = 1000
    #: Sessions one client address may hold at once (429 beyond; 0 = no limit).
    max_sessions_per_client: int = 100
    #: New sessions per second per client address, bursts of the same size (429 beyond).
    session_create_rate: float = 10.0
    #: Long-poll POSTs one session may have in flight (429 beyond). Each
    #: must arrive whole within ``hold_time`` (408 otherwise).
    max_session_posts: int = 4
    #: Largest whole message, both directions (1009 beyond): an endpoint
    #: WebSocket message through the tunnel (chunked into tunnel frames), and
    #: the session message too unless ``max_session_message`` is set.
    max_message_size: int = 16 * _MiB
    #: Largest session message, both directions (1009 beyond): what the hop
    #: session core reassembles from fragments. 0: ``max_message_size`` (the
    #: session as a plain message transport). Gateways carry tunnel batches
    #: and use ``TUNNEL_SESSION_MESSAGE`` (``gateway.settings``). Not a flag.
    max_session_message: int = 0
    #: Replay buffer per session (encoded bytes); backpressure beyond.
    buffer_bytes: int = _CORE.max_buffer_bytes
    buffer_frames: int = _CORE.max_buffer_frames
    fragment_size: int = _CORE.fragment_size
    #: Largest batch we write (one WebSocket message / HTTP body).
    batch_bytes: int = _CORE.max_batch_bytes
    #: Largest batch we accept (WebSocket message, POST or GET body).
    max_batch_bytes: int = 8 * _MiB
    #: Bytes of unfinished long-poll POST bodies the whole server holds (503 beyond).
    post_bytes_total: int = 64 * _MiB
    heartbeat: float = _CORE.heartbeat_interval
    stall_timeout: float = _CORE.stall_timeout
    retransmit_timeout: float = _CORE.retransmit_timeout
    close_timeout: float = _CORE.close_timeout
    #: How long a WebSocket candidate may take to answer the probe.
    probe_timeout: float = 5.0
    #: Connect + handshake timeout for every hop request.
    connect_timeout: float = 10.0
    #: After a WebSocket failure or demotion, the next probe waits this long,
    #: doubling up to ``reprobe_max``.
    reprobe_initial: float = 2.0
    reprobe_max: float = 60.0
    #: Retry delays when a transport cannot be re-established (resume).
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0

    def __post_init__(self) -> None:
        if not self.hold_time > 0:
            raise ValueError("hold_time must be > 0")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if self.max_sessions_per_client < 0 or not self.session_create_rate > 0:
            raise ValueError("max_sessions_per_client must be >= 0, session_create_rate > 0")
        if self.max_session_posts < 1:
            raise ValueError("max_session_posts must be >= 1")
        if self.max_batch_bytes < self.batch_bytes + 4096:
            raise ValueError("max_batch_bytes must exceed batch_bytes")
        if 0 < self.max_session_message < 256 * 1024:
            raise ValueError("max_session_message must hold a tunnel head frame (>= 256 KiB)")
        if self.post_bytes_total < self.max_batch_bytes:
            raise ValueError("post_bytes_total must hold at least one max_batch_bytes body")
        self.core_config()  # validates the rest

    def core_config(self) -> SessionConfig:
        return SessionConfig(
            max_message_size=self.max_session_message or self.max_message_size,
            fragment_size=self.fragment_size,
            max_buffer_bytes=self.buffer_bytes,
            max_buffer_frames=self.buffer_frames,
            max_batch_bytes=self.batch_bytes,
            retransmit_timeout=self.retransmit_timeout,
            heartbeat_interval=self.heartbeat,
            stall_timeout=self.stall_timeout,
            resume_grace=self.resume_grace,
            close_timeout=self.close_timeout,
        )
