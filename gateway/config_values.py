"""What one setting is and how one value of it is read and checked.

Split from ``gateway.config`` (which keeps the ``Config`` and the one
``SETTINGS`` table) so the table can grow a row per flag without the module
outgrowing its size.  Nothing here knows where a value came from: a
``ConfigError`` carries the setting's ``name`` and the bare ``reason``, and
``gateway.config_sources`` puts the flag, variable or file key in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from gateway.core.cluster import MIN_SECRET_BYTES, ClusterIds, normal_owner
from gateway.core.pollahead.rules import RuleError, parse_rule

Role = Literal["server", "client"]

DEFAULT_PORTS: dict[str, int] = {"server": 8080, "client": 8000}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it.

    ``name`` is the setting the error is about (a ``Config`` field, ``listen``
    or ``upstream``), when it is one; ``reason`` is the message without the
    flag and the value, for a caller that names the variable or file key the
    value came from instead.
    """

    def __init__(self, message: str, *, name: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.name = name
        self.reason = reason or message


def invalid(name: str, reason: str) -> ConfigError:
    """``--flag-name REASON`` about setting ``name``."""
    return ConfigError(f"--{name.replace('_', '-')} {reason}", name=name, reason=reason)


Kind = Literal[
    "seconds", "rate", "count", "bytes", "flag", "path", "text", "choice", "origins", "rules"
]

KIND_TEXT: dict[str, str] = {
    "seconds": "a number of seconds",
    "rate": "a positive number",
    "count": "a whole number",
    "bytes": "a whole number of bytes",
    "flag": "true or false",
    "path": "a file path",
    "text": "a string",
    "choice": "a string",
    "origins": 'a list of origins such as ["https://app.example"]',
    "rules": 'a list of rules such as ["GET /poll since=json:next"]',
}

#: Kinds whose flag may be given more than once (a list in a file).
REPEATABLE: frozenset[str] = frozenset({"origins", "rules"})


@dataclass(frozen=True)
class Setting:
    """One setting a user can give: the ``Config`` field, its flag, kind and help.

    The ``SETTINGS`` table of these drives the command line (``gateway.cli``),
    the environment variables and config-file keys (``gateway.config_sources``)
    and the type checks, so a new knob is one row there plus its ``Config``
    field.
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

    @property
    def repeatable(self) -> bool:
        return self.kind in REPEATABLE


def parse_listen(value: str, role: Role) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``[v6]:PORT`` -> (host, port)."""
    value = value.strip()
    host, port_text = "127.0.0.1", value
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise _bad_listen(value, "missing ']' after the IPv6 address")
        host, port_text = value[1:end], value[end + 1 :].lstrip(":")
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORTS[role]
    try:
        port = int(port_text)
    except ValueError:
        raise _bad_listen(value, "the port must be a number, e.g. 127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise _bad_listen(value, f"port {port} is outside 0-65535")
    return host, port


def _bad_listen(value: str, reason: str) -> ConfigError:
    return ConfigError(f"--listen {value!r}: {reason}", name="listen", reason=reason)


def parse_upstream(value: str) -> URL:
    url = URL(value.strip())
    reason = ""
    if url.scheme not in ("http", "https") or not url.host:
        reason = "give an absolute http:// or https:// URL, e.g. http://127.0.0.1:9000"
    elif url.query_string or url.fragment:
        reason = "must not carry a query or fragment"
    if reason:
        raise ConfigError(f"--upstream {value!r}: {reason}", name="upstream", reason=reason)
    return url


def read_secret_file(path: Path, name: str = "hop_secret_file") -> str:
    """The secret in ``path`` (setting ``name``): its text without surrounding whitespace.

    Lets a systemd unit keep the secret out of the command line (visible in
    ``ps``) and out of a world-readable config file (``LoadCredential=``, or a
    ``0600`` file).
    """
    reason = ""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        reason = "no such file"
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"cannot read it: {exc}"
    else:
        if not secret:
            reason = "the file is empty"
    if reason:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} {path}: {reason}", name=name, reason=reason)
    return secret


#: How to make a good cluster secret, for the error refusing a short one.
MAKE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_secret_length(secret: str, name: str) -> None:
    """Refuse a secret shorter than MIN_SECRET_BYTES, saying how to make a good one.

    What it guards can be attacked offline (a captured hop proof, a session
    id's MAC): a short secret falls to guessing.
    """
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(
            f"{flag} is shorter than {MIN_SECRET_BYTES} bytes; make one with: {MAKE_SECRET}",
            name=name,
            reason=f"shorter than {MIN_SECRET_BYTES} bytes; make one with: {MAKE_SECRET}",
        )


def check_cluster(values: dict[str, Any]) -> None:
    """The cluster settings in ``values`` (by field name) belong together; reads the file.

    A short secret is refused: the session ids' MACs are only as strong as it.
    """
    if values.get("cluster_secret_file") is not None:
        if values.get("cluster_secret") is not None:
            raise ConfigError("give --cluster-secret or --cluster-secret-file, not both")
        values["cluster_secret"] = read_secret_file(
            values["cluster_secret_file"], "cluster_secret_file"
        )
    secret, advertise = values.get("cluster_secret"), values.get("advertise")
    if secret is None:
        if advertise is not None:
            raise ConfigError(
                "--advertise only means something in a cluster: give --cluster-secret-file "
                "too (or drop --advertise)",
                name="advertise",
            )
        return
    check_secret_length(secret, "cluster_secret")
    if advertise is None:
        raise ConfigError(
            "--cluster-secret needs --advertise URL: the scheme://host:port the other "
            "instances reach this one on, e.g. --advertise http://10.0.0.5:8080",
            name="advertise",
        )
    try:
        values["advertise"] = normal_owner(advertise)
        ClusterIds(secret, advertise)
    except ValueError as exc:
        raise ConfigError(
            f"--advertise {advertise!r}: {exc}", name="advertise", reason=str(exc)
        ) from None


def check_poll_ahead(rules: tuple[str, ...], role: Role) -> None:
    """Every ``--poll-ahead`` rule reads (a bad one stops start-up, saying what a rule is)."""
    if rules and role != "server":
        raise invalid("poll_ahead", "is a hopgate server setting (the gateway beside the origin)")
    for text in rules:
        try:
            parse_rule(text)
        except RuleError as exc:
            raise ConfigError(str(exc), name="poll_ahead", reason=str(exc)) from None


def check_admin_listen(value: str, role: Role) -> None:
    """``--admin-listen`` is ``HOST:PORT`` with the port spelled out (no default is safe)."""
    if not value.strip()[-1:].isdigit():
        raise invalid("admin_listen", f"{value!r}: give HOST:PORT, e.g. 127.0.0.1:9090")
    try:
        parse_listen(value, role)
    except ConfigError as exc:
        raise invalid("admin_listen", f"{value!r}: {exc.reason}") from None


def typed(setting: Setting, value: Any) -> Any:
    """``value`` as ``setting`` holds it; a TOML file or a caller can give any type."""
    kind = setting.kind
    reason = f"not {KIND_TEXT.get(kind, 'valid')}"
    wrong = ConfigError(
        f"{setting.option}: {value!r} is {reason}", name=setting.name, reason=reason
    )
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
    if setting.repeatable:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise wrong
        return tuple(value)
    if not isinstance(value, str):
        raise wrong
    return value
