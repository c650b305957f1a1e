"""One frozen ``Config`` for a gateway, and the ``SETTINGS`` table of its flags.

The CLI only builds a ``Config``; everything that runs takes one.  Keeping the
settings in a single immutable object means a test can start a gateway with
exactly the settings a user would get from the same flags.

Each ``SETTINGS`` row is a flag (``--upstream-timeout``), an environment
variable (``HOPGATE_UPSTREAM_TIMEOUT``) and a config-file key
(``upstream-timeout``): ``gateway.config_sources`` reads those three and
``build_config`` here checks what they give.  How one value is typed and
parsed lives in ``gateway.config_values``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from gateway.config_values import (
    DEFAULT_PORTS,
    ConfigError,
    Kind,
    Role,
    Setting,
    check_admin_listen,
    check_cluster,
    check_poll_ahead,
    check_secret_length,
    invalid,
    parse_listen,
    parse_upstream,
    read_secret_file,
    typed,
)

__all__ = [
    "DEFAULT_PORTS",
    "SETTINGS",
    "Config",
    "ConfigError",
    "Kind",
    "Role",
    "Setting",
    "build_config",
    "parse_listen",
    "parse_upstream",
    "read_secret_file",
]

UpgradeMode = Literal["auto", "never"]
EventLoop = Literal["auto", "asyncio", "uvloop"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of one gateway process.  See ``hopgate <role> --help``."""

    role: Role
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    #: ``None`` on a client means forward-proxy mode.
    upstream: URL | None = None
    upgrade: UpgradeMode = "auto"
    log_level: str = "info"
    #: "text" (lines a person reads) or "json" (one object per line; gateway.logs).
    log_format: str = "text"
    #: auto: uvloop when it is installed (``hopgate[fast]``), else asyncio's own loop.
    event_loop: EventLoop = "auto"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Extra CA bundle used to verify ``https://`` upstreams (system CAs still apply).
    ca_file: Path | None = None
    #: How long an upstream may take to send the next byte (a held poll waits this long).
    upstream_timeout: float = 600.0
    connect_timeout: float = 10.0
    #: On SIGINT/SIGTERM: how long held requests may finish before they are ended.
    shutdown_grace: float = 10.0
    #: Send the client's ``Host`` upstream instead of the upstream's own host.
    preserve_host: bool = False
    #: Name this gateway gives itself in ``Via``.
    via_name: str = "hopgate"
    #: Concurrent upstream (origin) connections of each of the gateway's two pools
    #: (the lean one for plain ``http://`` requests, aiohttp's for the rest; 0 = unlimited).
    max_connections: int = 1024
    #: Shared secret hop sessions must prove (issue 4); ``None`` = none required.
    hop_secret: str | None = None
    #: File the hop secret was read from (``--hop-secret-file``); ``hop_secret`` holds it.
    hop_secret_file: Path | None = None
    #: Secret the instances of one cluster share (issue 9); ``None`` = not clustered.
    cluster_secret: str | None = None
    #: File the cluster secret was read from; ``cluster_secret`` holds it.
    cluster_secret_file: Path | None = None
    #: ``scheme://host:port`` the other instances of the cluster reach this one on.
    advertise: str | None = None
    #: Origins allowed to open browser sessions (JS shim); empty = same-origin only.
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    #: CORS answers to allowed origins say ``Access-Control-Allow-Credentials: true``.
    allow_credentials: bool = False
    #: Server: poll endpoints whose next request it issues itself (docs/howto/poll-ahead.md).
    poll_ahead: tuple[str, ...] = field(default_factory=tuple)
    #: Hop sessions: longest a long-poll GET is held (RFC 6202: under 30 s).
    hold_time: float = 25.0
    #: Hop sessions: how long a session waits for its peer to come back.
    resume_grace: float = 60.0
    #: Hop sessions one gateway serves at once (503 beyond).
    max_sessions: int = 1000
    #: Largest message a hop session or an endpoint's WebSocket carries, in bytes.
    max_message_size: int = 16 * 1024 * 1024
    #: Replay buffer per hop session, in bytes (backpressure beyond).
    session_buffer: int = 4 * 1024 * 1024
    #: Hop sessions: seconds of silence before a PING (lowered per upstream when a path
    #: is seen to close idle WebSockets sooner; gateway.core.idle).
    heartbeat: float = 20.0
    #: Hop sessions: the longest a transport may go without an ack or pong while one is due
    #: before it counts as stalled (sooner after a few observed round trips).
    stall_timeout: float = 15.0
    # -- limits on what a peer can make this gateway hold (docs/topics/security.md) --
    #: Inbound connections held at once (0 = derived from the descriptor limit).
    max_clients: int = 0
    #: A request head must arrive in full within this long.
    header_timeout: float = 10.0
    #: An idle keep-alive connection is closed after this long.
    keepalive_timeout: float = 75.0
    #: Serve status details to clients that are not on loopback (or came through a proxy).
    public_status: bool = False
    #: ``HOST:PORT`` of a second listener serving only metrics, status, ready, live.
    admin_listen: str | None = None
    #: ``/.hopgate/ready`` says 503 once the upstream has answered only 502/504 this long.
    ready_unreachable: float = 30.0
    #: Streams one hop session may have open at once.
    max_streams: int = 256
    #: Origin connections one hop session may hold at once (further streams wait).
    session_connections: int = 128
    #: Bytes of unfinished endpoint WebSocket messages one hop session may hold.
    session_reassembly: int = 16 * 1024 * 1024
    #: Response bytes read from the origin and not yet taken by the peer, per session.
    max_unread_bytes: int = 4 * 1024 * 1024
    #: Long-poll POSTs one hop session may have in flight at once.
    max_session_posts: int = 4
    #: Hop sessions one client address may hold at once (0 = no per-address limit).
    max_sessions_per_client: int = 100
    #: New hop sessions per second one client address may open (bursts of the same size).
    session_create_rate: float = 10.0

    @property
    def forward_proxy(self) -> bool:
        """A client with no upstream acts as an HTTP forward proxy."""
        return self.role == "client" and self.upstream is None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def listen_url(self, port: int | None = None) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{scheme}://{host}:{self.listen_port if port is None else port}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def build_config(role: Role, settings: dict[str, Any]) -> Config:
    """Turn loosely typed settings into a checked ``Config``.

    ``settings`` is keyed by ``Config`` field name (``gateway.config_sources``
    maps flags, variables and file keys to these), with ``listen`` and
    ``upstream`` as strings; ``None`` means not given.  Unknown keys are
    reported rather than ignored, so a typo is caught.
    """
    values: dict[str, Any] = {"role": role}
    settings = {k: v for k, v in settings.items() if v is not None}
    listen = settings.pop("listen", None)
    host, port = parse_listen(str(listen), role) if listen else ("127.0.0.1", DEFAULT_PORTS[role])
    values.update(listen_host=host, listen_port=port)
    upstream = settings.pop("upstream", None)
    if upstream:
        values["upstream"] = parse_upstream(str(upstream))
    unknown = sorted(set(settings) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    for key, value in settings.items():
        values[key] = typed(_BY_NAME[key], value)
    if values.get("hop_secret_file") is not None:
        if values.get("hop_secret") is not None:
            raise ConfigError("give --hop-secret or --hop-secret-file, not both")
        values["hop_secret"] = read_secret_file(values["hop_secret_file"])
    if values.get("hop_secret") is not None:
        check_secret_length(values["hop_secret"], "hop_secret")
    check_cluster(values)
    config = Config(**values)
    _check(config)
    return config


_HOP = "hop sessions"
_LIMITS = "limits"
_CLUSTER = "cluster"

#: Every setting except ``listen`` and ``upstream`` (whose help depends on the role).
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "upgrade",
        "choice",
        "auto (default): upgrade the hop to the next gateway to a WebSocket or "
        "long-poll session when it is a gateway; never: plain HTTP forwarding only",
        choices=("auto", "never"),
    ),
    Setting("log_level", "choice", "how much to log (default info)", choices=LOG_LEVELS),
    Setting(
        "log_format",
        "choice",
        "text (default): lines a person reads; json: one JSON object per line for a log "
        "shipper (time, level, logger, event, session, upstream, transport, reason)",
        choices=LOG_FORMATS,
    ),
    Setting(
        "event_loop",
        "choice",
        "auto (default): uvloop when installed (pip install 'hopgate[fast]'), else "
        "asyncio; asyncio or uvloop: that one",
        choices=("auto", "asyncio", "uvloop"),
    ),
    Setting("tls_cert", "path", "listen with TLS: certificate chain", "PEM"),
    Setting("tls_key", "path", "listen with TLS: private key", "PEM"),
    Setting(
        "ca_file",
        "path",
        "extra CA certificates trusted for https:// upstreams (system CAs still apply)",
        "PEM",
    ),
    Setting(
        "upstream_timeout",
        "seconds",
        "longest wait for the next byte from upstream, so held polls survive (default 600)",
    ),
    Setting("connect_timeout", "seconds", "upstream connect timeout (default 10)"),
    Setting(
        "shutdown_grace",
        "seconds",
        "on SIGINT/SIGTERM, time held requests get to finish (default 10)",
    ),
    Setting(
        "preserve_host",
        "flag",
        "send the client's Host header upstream instead of the upstream's host",
    ),
    Setting("via_name", "text", "name used in the Via header (default hopgate)", "NAME"),
    Setting(
        "max_connections",
        "count",
        "origin connections each of the gateway's two pools holds at once (plain "
        "http:// requests; WebSockets, https and hop sessions); requests beyond wait "
        "up to --connect-timeout (default 1024; 0 = unlimited)",
    ),
    Setting(
        "hop_secret",
        "text",
        "shared secret both gateways of a hop must know before a session is opened, "
        "at least 16 bytes (make one: python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'); any user can read a command line, "
        "so prefer --hop-secret-file",
        "SECRET",
    ),
    Setting(
        "hop_secret_file",
        "path",
        "read the hop secret from FILE (keeps it out of the command line and "
        "of a world-readable config; surrounding whitespace is ignored)",
        "FILE",
    ),
    Setting(
        "cluster_secret",
        "text",
        "make this instance one of a cluster behind a load balancer without affinity: "
        "instances sharing SECRET pass each other's hop-session requests on (needs "
        "--advertise; prefer --cluster-secret-file, the command line shows in ps)",
        "SECRET",
        group=_CLUSTER,
    ),
    Setting(
        "cluster_secret_file",
        "path",
        "read the cluster secret from FILE (surrounding whitespace is ignored)",
        "FILE",
        group=_CLUSTER,
    ),
    Setting(
        "advertise",
        "text",
        "with a cluster secret: the scheme://host:port the other instances reach this one "
        "on; the ids of its sessions name it",
        "URL",
        group=_CLUSTER,
    ),
    Setting(
        "allowed_origins",
        "origins",
        "browser Origin allowed to open sessions (repeatable; default same origin)",
        "ORIGIN",
        flag="--allowed-origin",
    ),
    Setting(
        "allow_credentials",
        "flag",
        "let allowed origins' pages send cookies with hop-session requests "
        "(CORS Access-Control-Allow-Credentials; default off)",
    ),
    Setting(
        "poll_ahead",
        "rules",
        "server: a poll endpoint whose next request this gateway issues itself and pushes the "
        "answer down the hop (repeatable): 'METHOD PATH PARAM=json:FIELD', "
        "'METHOD PATH PARAM=header:NAME' or 'engineio [PATH]'; see docs/howto/poll-ahead.md",
        "RULE",
    ),
    Setting(
        "hold_time",
        "seconds",
        "longest a long-poll GET is held (default 25; keep under 30)",
        group=_HOP,
    ),
    Setting(
        "resume_grace",
        "seconds",
        "how long a session waits for its peer to reconnect (default 60)",
        group=_HOP,
    ),
    Setting(
        "max_sessions",
        "count",
        "hop sessions this gateway serves at once; more get 503 (default 1000)",
        group=_HOP,
    ),
    Setting(
        "max_message_size",
        "bytes",
        "largest message a hop session or an endpoint's WebSocket carries; "
        "a bigger one closes the WebSocket with 1009 (default 16777216)",
        group=_HOP,
    ),
    Setting(
        "session_buffer",
        "bytes",
        "replay buffer per hop session; senders wait beyond it (default 4194304)",
        group=_HOP,
    ),
    Setting(
        "heartbeat",
        "seconds",
        "a hop session sends a PING after this much silence, to stay inside proxies' idle "
        "timeouts; lowered per upstream when the path is seen to close idle WebSockets "
        "sooner (default 20)",
        group=_HOP,
    ),
    Setting(
        "stall_timeout",
        "seconds",
        "upper bound on how long a hop transport may go without an ack or pong while one "
        "is due before the session moves off it; it usually moves after a few round "
        "trips, 0.5 s at least (default 15)",
        group=_HOP,
    ),
    Setting(
        "max_clients",
        "count",
        "inbound connections held at once; more are closed at once "
        "(default 0 = derived from the open-file limit)",
        group=_LIMITS,
    ),
    Setting(
        "header_timeout",
        "seconds",
        "a request head must arrive in full within this long (default 10)",
        group=_LIMITS,
    ),
    Setting(
        "keepalive_timeout",
        "seconds",
        "close an idle keep-alive connection after this long (default 75)",
        group=_LIMITS,
    ),
    Setting(
        "public_status",
        "flag",
        "serve /.hopgate/status details to any client, not only to loopback ones",
        group=_LIMITS,
    ),
    Setting(
        "admin_listen",
        "text",
        "also serve /.hopgate/metrics, status, ready and live (only those) on this "
        "address, to anyone who can reach it: choose a private address (default none)",
        "HOST:PORT",
    ),
    Setting(
        "ready_unreachable",
        "seconds",
        "/.hopgate/ready answers 503 once every request to the upstream has got "
        "502/504 for this long (default 30)",
    ),
    Setting(
        "max_streams",
        "count",
        "streams (tunnelled requests and WebSockets, held polls too) one hop session may "
        "have open; set it on both gateways (default 256)",
        group=_LIMITS,
    ),
    Setting(
        "session_connections",
        "count",
        "origin connections one hop session may hold, a held poll's for as long as it is "
        "held; its further streams wait (default 128)",
        group=_LIMITS,
    ),
    Setting(
        "session_reassembly",
        "bytes",
        "bytes of unfinished WebSocket messages one hop session may hold (default 16777216)",
        group=_LIMITS,
    ),
    Setting(
        "max_unread_bytes",
        "bytes",
        "response bytes read from the origin but not yet taken by the peer, per hop "
        "session; reading from the origin pauses beyond it (default 4194304)",
        group=_LIMITS,
    ),
    Setting(
        "max_session_posts",
        "count",
        "long-poll POSTs one hop session may have in flight; more get 429 (default 4)",
        group=_LIMITS,
    ),
    Setting(
        "max_sessions_per_client",
        "count",
        "hop sessions one client address may hold at once (default 100; 0 = no limit)",
        group=_LIMITS,
    ),
    Setting(
        "session_create_rate",
        "rate",
        "new hop sessions per second one client address may open, in bursts of the "
        "same size (default 10)",
        "PER_SECOND",
        group=_LIMITS,
    ),
)

_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


#: Lower bounds: (settings, the least value, what the flag must be).
_AT_LEAST: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("max_connections",), 0, "must be 0 (unlimited) or a positive number"),
    (
        ("max_clients", "max_sessions_per_client"),
        0,
        "must be 0 (automatic/unlimited) or a positive number",
    ),
    (
        ("max_sessions", "max_streams", "session_connections", "max_session_posts"),
        1,
        "must be at least 1",
    ),
    (("session_reassembly", "max_unread_bytes"), 64 * 1024, "must be at least 65536 bytes"),
    (("max_message_size",), 1, "must be a positive number of bytes"),
    (("session_buffer",), 128 * 1024, "must be at least 131072 bytes (two fragments)"),
)


def _check(config: Config) -> None:
    if config.role == "server" and config.upstream is None:
        raise ConfigError(
            "hopgate server needs --upstream URL (or HOPGATE_UPSTREAM, or upstream = "
            "in the --config file): the legacy server it sits in front of"
        )
    check_poll_ahead(config.poll_ahead, config.role)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    for name in ("tls_cert", "tls_key", "ca_file"):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            raise ConfigError(
                f"--{name.replace('_', '-')} {path}: no such file", name=name, reason="no such file"
            )
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.choices and value not in setting.choices:
            raise invalid(setting.name, f"must be one of {', '.join(setting.choices)}")
        if setting.kind in ("seconds", "rate") and not value > 0:
            unit = " of seconds" if setting.kind == "seconds" else ""
            raise invalid(setting.name, f"must be a positive number{unit}")
    if config.admin_listen is not None:
        check_admin_listen(config.admin_listen, config.role)
    for names, least, reason in _AT_LEAST:
        for name in names:
            if getattr(config, name) < least:
                raise invalid(name, reason)
