"""One frozen ``Config`` for a gateway, built from defaults, a TOML file and flags.

The CLI only builds a ``Config``; everything that runs takes one.  Keeping the
settings in a single immutable object means a test can start a gateway with
exactly the settings a user would get from the same flags.

TOML keys mirror the long flag names (``upstream-timeout`` or
``upstream_timeout`` both work); flags given on the command line win over the
file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

Role = Literal["server", "client"]
UpgradeMode = Literal["auto", "never"]
EventLoop = Literal["auto", "asyncio", "uvloop"]

DEFAULT_PORTS: dict[str, int] = {"server": 8080, "client": 8000}
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


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
    #: Concurrent upstream (origin) connections of the whole gateway (0 = unlimited).
    max_connections: int = 1024
    #: Shared secret hop sessions must prove (issue 4); ``None`` = none required.
    hop_secret: str | None = None
    #: File the hop secret was read from (``--hop-secret-file``); ``hop_secret`` holds it.
    hop_secret_file: Path | None = None
    #: Origins allowed to open browser sessions (JS shim); empty = same-origin only.
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    #: Hop sessions: longest a long-poll GET is held (RFC 6202: under 30 s).
    hold_time: float = 25.0
    #: Hop sessions: how long a session waits for its peer to come back.
    resume_grace: float = 60.0
    #: Hop sessions one gateway serves at once (503 beyond).
    max_sessions: int = 1000
    #: Largest message a hop session carries, in bytes.
    max_message_size: int = 16 * 1024 * 1024
    #: Replay buffer per hop session, in bytes (backpressure beyond).
    session_buffer: int = 4 * 1024 * 1024
    # -- limits on what a peer can make this gateway hold (docs/security.md) --
    #: Inbound connections held at once (0 = derived from the descriptor limit).
    max_clients: int = 0
    #: A request head must arrive in full within this long.
    header_timeout: float = 10.0
    #: An idle keep-alive connection is closed after this long.
    keepalive_timeout: float = 75.0
    #: Serve status details to clients that are not on loopback (or came through a proxy).
    public_status: bool = False
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


def parse_listen(value: str, role: Role) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``[v6]:PORT`` -> (host, port)."""
    value = value.strip()
    host, port_text = "127.0.0.1", value
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"--listen {value!r}: missing ']' after the IPv6 address")
        host, port_text = value[1:end], value[end + 1 :].lstrip(":")
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORTS[role]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            f"--listen {value!r}: the port must be a number, e.g. 127.0.0.1:8080"
        ) from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--listen {value!r}: port {port} is outside 0-65535")
    return host, port


def parse_upstream(value: str) -> URL:
    url = URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"--upstream {value!r}: give an absolute http:// or https:// URL, "
            "e.g. http://127.0.0.1:9000"
        )
    if url.query_string or url.fragment:
        raise ConfigError(f"--upstream {value!r}: must not carry a query or fragment")
    return url


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file; keys are normalised to ``snake_case``."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return {key.replace("-", "_"): value for key, value in raw.items()}


def build_config(role: Role, settings: dict[str, Any]) -> Config:
    """Turn loosely typed settings (from TOML and flags) into a checked ``Config``.

    ``settings`` may hold ``listen`` and ``upstream`` as strings; unknown keys
    are reported rather than ignored, so a typo in a config file is caught.
    """
    values: dict[str, Any] = {"role": role}
    settings = {k: v for k, v in settings.items() if v is not None}
    listen = settings.pop("listen", None)
    host, port = parse_listen(str(listen), role) if listen else ("127.0.0.1", DEFAULT_PORTS[role])
    values.update(listen_host=host, listen_port=port)
    upstream = settings.pop("upstream", None)
    if upstream:
        values["upstream"] = parse_upstream(str(upstream))
    settings.pop("role", None)
    unknown = sorted(set(settings) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    for key, value in settings.items():
        values[key] = _typed(_BY_NAME[key], value)
    if values.get("hop_secret_file") is not None:
        if values.get("hop_secret") is not None:
            raise ConfigError("give --hop-secret or --hop-secret-file, not both")
        values["hop_secret"] = read_secret_file(values["hop_secret_file"])
    config = Config(**values)
    _check(config)
    return config


Kind = Literal["seconds", "rate", "count", "bytes", "flag", "path", "text", "choice", "origins"]

_KIND_TEXT: dict[str, str] = {
    "seconds": "a number of seconds",
    "rate": "a positive number",
    "count": "a whole number",
    "bytes": "a whole number of bytes",
    "flag": "true or false",
    "path": "a file path",
    "text": "a string",
    "choice": "a string",
    "origins": 'a list of origins such as ["https://app.example"]',
}


@dataclass(frozen=True)
class Setting:
    """One setting a user can give: the ``Config`` field, its flag, kind and help.

    The one table below drives the command line (``gateway.cli``), the
    config file's keys and the type checks, so a new knob is one row here
    plus its ``Config`` field.
    """

    name: str
    kind: Kind
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    #: ``--help`` section: "" for the main one.
    group: str = ""
    #: The flag, when it is not ``--`` + the name with dashes.
    flag: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


_HOP = "hop sessions"
_LIMITS = "limits"

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
        "origin connections the whole gateway holds at once; requests beyond wait "
        "up to --connect-timeout (default 1024; 0 = unlimited)",
    ),
    Setting(
        "hop_secret",
        "text",
        "shared secret both gateways of a hop must know before a session is opened",
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
        "allowed_origins",
        "origins",
        "browser Origin allowed to open sessions (repeatable; default same origin)",
        "ORIGIN",
        flag="--allowed-origin",
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
        "largest message a hop session carries (default 16777216)",
        group=_HOP,
    ),
    Setting(
        "session_buffer",
        "bytes",
        "replay buffer per hop session; senders wait beyond it (default 4194304)",
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
        "max_streams",
        "count",
        "streams (tunnelled requests and WebSockets) one hop session may have open (default 256)",
        group=_LIMITS,
    ),
    Setting(
        "session_connections",
        "count",
        "origin connections one hop session may hold; its further streams wait (default 128)",
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


def read_secret_file(path: Path) -> str:
    """The hop secret in ``path``: its text without surrounding whitespace.

    Lets a systemd unit keep the secret out of the command line (visible in
    ``ps``) and out of a world-readable config file (``LoadCredential=``, or a
    ``0600`` file).
    """
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"--hop-secret-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--hop-secret-file {path}: cannot read it: {exc}") from None
    if not secret:
        raise ConfigError(f"--hop-secret-file {path}: the file is empty")
    return secret


def _typed(setting: Setting, value: Any) -> Any:
    """``value`` as ``setting`` holds it; a TOML file can give any type."""
    kind = setting.kind
    wrong = ConfigError(f"{setting.option}: {value!r} is not {_KIND_TEXT[kind]}")
    if kind in ("seconds", "rate"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if kind in ("count", "bytes"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if kind == "flag":
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind == "path":
        if not isinstance(value, str | Path):
            raise wrong
        return Path(value)
    if kind == "origins":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise wrong
        return tuple(value)
    if not isinstance(value, str):
        raise wrong
    return value


def _check(config: Config) -> None:
    if config.role == "server" and config.upstream is None:
        raise ConfigError(
            "hopgate server needs --upstream URL: the legacy server it sits in front of"
        )
    if config.upgrade not in ("auto", "never"):
        raise ConfigError(f"--upgrade must be 'auto' or 'never', not {config.upgrade!r}")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    for name in ("tls_cert", "tls_key", "ca_file"):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {path}: no such file")
    for setting in SETTINGS:
        if setting.choices and getattr(config, setting.name) not in setting.choices:
            choices = ", ".join(setting.choices)
            raise ConfigError(f"{setting.option} must be one of {choices}")
        if setting.kind == "seconds" and getattr(config, setting.name) <= 0:
            raise ConfigError(f"{setting.option} must be a positive number of seconds")
    if not config.session_create_rate > 0:
        raise ConfigError("--session-create-rate must be a positive number of sessions a second")
    if config.max_connections < 0:
        raise ConfigError("--max-connections must be 0 (unlimited) or a positive number")
    if config.max_sessions < 1:
        raise ConfigError("--max-sessions must be at least 1")
    for name in ("max_clients", "max_sessions_per_client"):
        if getattr(config, name) < 0:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be 0 (automatic/unlimited) or a positive number")
    for name in ("max_streams", "session_connections", "max_session_posts"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if config.session_reassembly < 64 * 1024:
        raise ConfigError("--session-reassembly must be at least 65536 bytes")
    if config.max_unread_bytes < 64 * 1024:
        raise ConfigError("--max-unread-bytes must be at least 65536 bytes")
    if config.max_message_size < 1:
        raise ConfigError("--max-message-size must be a positive number of bytes")
    if config.session_buffer < 128 * 1024:
        raise ConfigError("--session-buffer must be at least 131072 bytes (two fragments)")
