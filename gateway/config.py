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


_FIELDS = {f.name for f in dataclasses.fields(Config)}


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
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    for key, value in settings.items():
        values[key] = _typed(key, value)
    if values.get("hop_secret_file") is not None:
        if values.get("hop_secret") is not None:
            raise ConfigError("give --hop-secret or --hop-secret-file, not both")
        values["hop_secret"] = read_secret_file(values["hop_secret_file"])
    config = Config(**values)
    _check(config)
    return config


_SECONDS = frozenset(
    {
        "upstream_timeout",
        "connect_timeout",
        "shutdown_grace",
        "hold_time",
        "resume_grace",
        "header_timeout",
        "keepalive_timeout",
    }
)
_RATES = frozenset({"session_create_rate"})
_INTEGERS = frozenset(
    {
        "listen_port",
        "max_connections",
        "max_sessions",
        "max_message_size",
        "session_buffer",
        "max_clients",
        "max_streams",
        "session_connections",
        "session_reassembly",
        "max_unread_bytes",
        "max_session_posts",
        "max_sessions_per_client",
    }
)
_FLAGS = frozenset({"preserve_host", "public_status"})
_PATHS = frozenset({"tls_cert", "tls_key", "ca_file", "hop_secret_file"})

_KINDS = {
    **{key: "a number of seconds" for key in _SECONDS},
    **{key: "a positive number" for key in _RATES},
    **{key: "a whole number" for key in _INTEGERS},
    **{key: "true or false" for key in _FLAGS},
    **{key: "a file path" for key in _PATHS},
    "allowed_origins": "a list of origins such as [\"https://app.example\"]",
}


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


def _typed(key: str, value: Any) -> Any:
    """``value`` as the type field ``key`` holds; a TOML file can give any type."""
    flag = "--allowed-origin" if key == "allowed_origins" else "--" + key.replace("_", "-")
    wrong = ConfigError(f"{flag}: {value!r} is not {_KINDS.get(key, 'a string')}")
    if key in _SECONDS or key in _RATES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if key in _INTEGERS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if key in _FLAGS:
        if not isinstance(value, bool):
            raise wrong
        return value
    if key in _PATHS:
        if not isinstance(value, str | Path):
            raise wrong
        return Path(value)
    if key == "allowed_origins":
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
    for name in sorted(_SECONDS):
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds")
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
