"""One typed ``Settings`` per gateway, derived once from its ``Config``.

``Config`` is what a user gives (flags, a file, ``config.SETTINGS``).  The
layers below the gateway never read it: each takes a typed piece in its own
terms, and :func:`derive` is the one place that builds every piece::

    Config ──derive()──▶ Settings
      session   SessionSettings    hop sessions, both ends (transports)
      tunnel    TunnelConfig       tunnels other gateways open to this one (core)
      ladder    LadderSettings     back-off of each upstream link (core)
      hop       HopSettings        hop secret, hello timeout, origin-connection shares
      listener  ListenerSettings   socket, TLS, inbound limits (edges)
      client    ClientSettings     the HTTP client towards origins and next hops
      routes    RouteSettings      what the router needs to place a request
      forward   ForwardSettings    the hop's forwarding rules (edges and glue)

A new knob is therefore a row in ``config.SETTINGS`` with its ``Config``
field, one line in :func:`derive` and its consumer; ``tests/test_settings.py``
fails for a row that reaches no piece.  Fields no flag sets (the ladder's
back-off, a session's heartbeat...) keep their defaults; a test that wants
them fast replaces the piece: ``derive(config).replace(ladder=FAST)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from yarl import URL

from gateway.config import Config, Role, parse_listen
from gateway.core.ladder import LadderSettings
from gateway.core.pollahead.rules import parse_rules
from gateway.core.tunnel import TunnelConfig
from gateway.glue.origin import ForwardSettings
from gateway.transports.cluster import ClusterSettings
from gateway.transports.session_settings import TUNNEL_SESSION_MESSAGE, SessionSettings

__all__ = [
    "CONFIG_ONLY",
    "AdminSettings",
    "ClientSettings",
    "ForwardSettings",
    "HopSettings",
    "ListenerSettings",
    "RouteSettings",
    "Settings",
    "derive",
    "normal_origin",
]

#: ``config.SETTINGS`` rows no piece carries, and who reads them instead.
CONFIG_ONLY: Final = {
    "log_level": "the CLI, which sets up logging before any gateway exists",
    "log_format": "the CLI, which sets up logging before any gateway exists",
    "event_loop": "gateway.process, which picks the loop before any gateway exists",
}

#: The tunnel core's ceiling for one WebSocket message (``TunnelConfig`` refuses more).
MAX_TUNNEL_WS_MESSAGE: Final = 256 * 1024 * 1024
#: Receive windows beyond BASE_WINDOW one answered session may announce
#: (``TunnelConfig.session_window``): 8 MiB.
SESSION_WINDOW: Final = 8 * 1024 * 1024
#: Longest a gateway waits for its own hop sessions' close handshake on shutdown.
MAX_SESSION_CLOSE: Final = 10.0


@dataclass(frozen=True, kw_only=True)
class AdminSettings:
    """The operational endpoints (``gateway.admin``): their own listener, readiness."""

    #: ``--admin-listen``: (host, port) of the listener serving only them; ``None``: none.
    listen: tuple[str, int] | None = None
    #: ``--ready-unreachable``: not ready once the upstream answered only 502/504 this long.
    ready_unreachable: float = 30.0


@dataclass(frozen=True, kw_only=True)
class ListenerSettings:
    """Where and how a gateway listens, and what one client connection may hold."""

    host: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    #: Inbound connections held at once (0 = derived from the open-file limit).
    max_clients: int
    header_timeout: float
    keepalive_timeout: float
    #: On stop: how long held requests (and hop sessions) get to finish.
    shutdown_grace: float


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """The gateway's HTTP client towards origins and next hops."""

    #: Origin connections of the whole gateway (0 = unlimited).
    max_connections: int
    connect_timeout: float
    #: Longest wait for the next byte from upstream (a held poll waits this long).
    upstream_timeout: float
    #: Extra CA bundle for ``https://`` upstreams.
    ca_file: Path | None


@dataclass(frozen=True, kw_only=True)
class HopSettings:
    """The hop layer around the session and tunnel cores."""

    #: Shared secret hop sessions must prove, both ways (``None``: none).
    secret: str | None
    #: Origin connections all answered sessions of one client address share
    #: (a quarter of ``--max-connections``; 0 = no share, unlimited).
    address_connections: int
    #: Connect and read timeout of the discovery hello.
    hello_timeout: float
    #: ``--cluster-secret`` and ``--advertise``: this instance is one of a cluster.
    cluster: ClusterSettings | None = None


@dataclass(frozen=True, kw_only=True)
class RouteSettings:
    """What the router needs to decide who answers a request."""

    #: Where origin-form requests go; ``None`` on a forward proxy.
    upstream: URL | None
    #: A client gateway without an upstream: absolute-form and CONNECT are served.
    forward_proxy: bool
    #: ``--upgrade auto``: the gateway's hop paths (hello, sessions) exist.
    hop_upgrade: bool
    tls: bool
    #: Serve status details to any client, not only to direct loopback ones.
    public_status: bool
    #: Origins (normalised, see :func:`normal_origin`) allowed to open hop sessions.
    allowed_origins: frozenset[str] = frozenset()
    #: ``--allow-credentials``: CORS answers let pages send cookies with hop requests.
    allow_credentials: bool = False


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every typed piece one gateway hands its layers; see the module docstring."""

    role: Role
    listener: ListenerSettings
    client: ClientSettings
    routes: RouteSettings
    forward: ForwardSettings
    hop: HopSettings
    session: SessionSettings
    tunnel: TunnelConfig
    ladder: LadderSettings
    admin: AdminSettings = AdminSettings()

    @property
    def mode(self) -> str:
        """What ``/.hopgate/status`` calls this gateway's place in the path."""
        if self.routes.forward_proxy:
            return "forward-proxy"
        return "sidecar" if self.role == "server" else "reverse"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def derive(config: Config) -> Settings:
    """The one reading of ``config`` for the layers (see the module docstring)."""
    return Settings(
        role=config.role,
        listener=ListenerSettings(
            host=config.listen_host,
            port=config.listen_port,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            max_clients=config.max_clients,
            header_timeout=config.header_timeout,
            keepalive_timeout=config.keepalive_timeout,
            shutdown_grace=config.shutdown_grace,
        ),
        client=ClientSettings(
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            upstream_timeout=config.upstream_timeout,
            ca_file=config.ca_file,
        ),
        routes=RouteSettings(
            upstream=config.upstream,
            forward_proxy=config.forward_proxy,
            hop_upgrade=config.upgrade == "auto",
            tls=config.tls,
            public_status=config.public_status,
            allowed_origins=frozenset(normal_origin(o) for o in config.allowed_origins),
            allow_credentials=config.allow_credentials,
        ),
        forward=ForwardSettings(
            via_name=config.via_name,
            preserve_host=config.preserve_host,
            connect_timeout=config.connect_timeout,
            upstream_timeout=config.upstream_timeout,
            session_connections=config.session_connections,
            poll_ahead=parse_rules(config.poll_ahead),
            max_ws_message=config.max_message_size,
        ),
        hop=HopSettings(
            secret=config.hop_secret,
            # One address's sessions cannot take every origin connection.
            address_connections=config.max_connections // 4,
            hello_timeout=config.connect_timeout,
            cluster=_cluster_settings(config),
        ),
        session=_session_settings(config),
        tunnel=_tunnel(config),
        ladder=LadderSettings(),
        admin=AdminSettings(
            listen=(
                parse_listen(config.admin_listen, config.role)
                if config.admin_listen is not None
                else None
            ),
            ready_unreachable=config.ready_unreachable,
        ),
    )


def _session_settings(config: Config) -> SessionSettings:
    """Hop sessions of a gateway: they carry tunnel batches, see ``TUNNEL_SESSION_MESSAGE``."""
    return SessionSettings(
        hold_time=config.hold_time,
        resume_grace=config.resume_grace,
        max_sessions=config.max_sessions,
        max_sessions_per_client=config.max_sessions_per_client,
        session_create_rate=config.session_create_rate,
        max_session_posts=config.max_session_posts,
        max_message_size=config.max_message_size,
        max_session_message=TUNNEL_SESSION_MESSAGE,
        buffer_bytes=config.session_buffer,
        heartbeat=config.heartbeat,
        stall_timeout=config.stall_timeout,
        connect_timeout=config.connect_timeout,
        # A stopping gateway waits for the close handshake within its grace.
        close_timeout=min(MAX_SESSION_CLOSE, config.shutdown_grace),
    )


def _cluster_settings(config: Config) -> ClusterSettings | None:
    """An instance of a cluster forwards its held GETs: it waits a hold time and more."""
    if config.cluster_secret is None or config.advertise is None:
        return None
    return ClusterSettings(
        secret=config.cluster_secret,
        advertise=config.advertise,
        # A held GET and a POST per session, at most.
        max_forwards=2 * config.max_sessions,
        connect_timeout=config.connect_timeout,
        read_timeout=config.hold_time + config.connect_timeout,
        max_message=_session_settings(config).max_batch_bytes,
        ca_file=config.ca_file,
    )


def _tunnel(config: Config) -> TunnelConfig:
    """The tunnel limits of this gateway's end of every hop session, opened or accepted.

    The opening end needs them too: ``--max-streams`` is where its stream gate
    starts (lowered only if the peer refuses), and ``--session-reassembly``
    and ``--max-unread-bytes`` bound what the answering peer can make it hold.
    """
    return TunnelConfig(
        # An endpoint WebSocket message may be as large as a session message.
        max_ws_message=min(config.max_message_size, MAX_TUNNEL_WS_MESSAGE),
        max_streams=config.max_streams,
        session_reassembly=config.session_reassembly,
        max_unread=config.max_unread_bytes,
        session_window=SESSION_WINDOW,
    )


def normal_origin(origin: str) -> str:
    """An ``Origin`` as compared: no surrounding blanks, no trailing slash, lower case."""
    return origin.strip().rstrip("/").lower()
