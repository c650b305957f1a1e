"""Where each setting comes from: a flag, an environment variable, a config file, a default.

Precedence, highest first: **flag > environment > config file > default**,
per setting: a flag given replaces the variable's and the file's value
whole, a repeatable flag's list included.  Every name follows from the one
``SETTINGS`` table (plus ``--listen`` and ``--upstream``), so a flag added
there has its variable and its file key the same day:

* flag ``--allowed-origin``; variable ``HOPGATE_ALLOWED_ORIGIN`` (``HOPGATE_``
  + the long flag name upper-cased, ``-`` -> ``_``); file key
  ``allowed-origin`` (the long flag name).  ``HOPGATE_CONFIG`` names the
  file when ``--config`` does not.
* A variable's text is read as the flag's argument would be.  A boolean
  takes ``1/0``, ``true/false``, ``yes/no``, ``on/off`` (any case); a
  repeatable flag takes its values separated by commas and/or whitespace;
  an empty variable counts as not set.
* A file value has the flag's shape in TOML: a number, a string, ``true``
  or ``false``, a list of strings for a repeatable flag.  Any other key is
  an error that names the closest valid key; so are ``role`` (the role is
  the command) and the internal field names (``listen_port``).
* A ``HOPGATE_`` variable that is no setting is not an error (the tests'
  own knobs share the prefix) but one close to a setting's name is warned
  about.

Errors name the flag, or the variable and its value, or the file, key and
value the setting came from.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import SETTINGS, Config, build_config
from gateway.config_values import KIND_TEXT, ConfigError, Role, Setting, typed
from gateway.startup_checks import check_ca_file, server_tls_context

__all__ = [
    "ADDRESSES",
    "CONFIG_VARIABLE",
    "ENV_PREFIX",
    "Loaded",
    "Sourced",
    "env_name",
    "every_setting",
    "file_key",
    "from_environment",
    "from_file",
    "layered",
    "load_config",
]

ENV_PREFIX = "HOPGATE_"
CONFIG_VARIABLE = "HOPGATE_CONFIG"

#: The two settings outside ``SETTINGS`` (their help depends on the role).
ADDRESSES: tuple[Setting, ...] = (
    Setting("listen", "text", "address to accept connections on", "HOST:PORT"),
    Setting("upstream", "text", "where requests go", "URL"),
)

BOOLEANS: dict[str, bool] = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}

#: What one variable's text is read with, by kind (others: the text itself).
_PARSE: dict[str, type] = {
    "seconds": float,
    "rate": float,
    "count": int,
    "bytes": int,
    "path": Path,
}

#: Settings that say the same thing: the one from a higher source drops the other.
_EITHER: tuple[frozenset[str], ...] = (frozenset({"hop_secret", "hop_secret_file"}),)

#: Keys a file may not have, and why (instead of a "did you mean").
_NOT_KEYS = {
    "role": "the role is the command: hopgate server or hopgate client",
    "config": "a config file cannot name another; --config and HOPGATE_CONFIG name the file",
}


def every_setting() -> tuple[Setting, ...]:
    """Every setting a flag, a variable and a file key can give."""
    return ADDRESSES + SETTINGS


def file_key(setting: Setting) -> str:
    """``allowed-origin``: the long flag name, the key in a config file."""
    return setting.option.removeprefix("--")


def env_name(setting: Setting) -> str:
    """``HOPGATE_ALLOWED_ORIGIN``: ``HOPGATE_`` + the long flag name, upper case, ``_``."""
    return ENV_PREFIX + file_key(setting).upper().replace("-", "_")


@dataclass
class Sourced:
    """Settings keyed by ``Config`` field name, and where each came from.

    ``where`` is what an error about the setting starts with (the variable
    and its value, or the file, key and value); a flag has none, as the
    error names the flag already.
    """

    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Loaded:
    config: Config
    #: Things to tell the user that do not stop the gateway (a mistyped variable).
    warnings: tuple[str, ...] = ()


def load_config(
    role: Role,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> Loaded:
    """The checked ``Config`` from the flags given, the environment and the config file.

    ``flags`` holds the flags given (``None`` for one not given), keyed by
    ``Config`` field name as ``gateway.cli`` parses them.  The TLS files are
    loaded once here so a wrong one stops the start with its name.
    """
    merged = gather(flags, environ, config_file)
    try:
        config = build_config(role, merged.values)
        if config.tls_cert is not None and config.tls_key is not None:
            server_tls_context(config.tls_cert, config.tls_key)
        if config.ca_file is not None:
            check_ca_file(config.ca_file)
    except ConfigError as exc:
        where = merged.where.get(exc.name or "")
        if where is None:
            raise
        raise ConfigError(f"{where}: {exc.reason}", name=exc.name, reason=exc.reason) from None
    return Loaded(config, tuple(merged.warnings))


def gather(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None = None
) -> Sourced:
    """The file, the environment and the flags, each over the one before."""
    env = from_environment(environ)
    file = from_file(config_file) if config_file is not None else Sourced()
    named = environ.get(CONFIG_VARIABLE, "").strip()
    if config_file is None and named:
        try:
            file = from_file(Path(named))
        except ConfigError as exc:
            raise ConfigError(f"{CONFIG_VARIABLE}={named!r}: {exc}") from None
    given = Sourced({key: value for key, value in flags.items() if value is not None})
    return layered(file, env, given)


def layered(*sources: Sourced) -> Sourced:
    """``sources`` merged, lowest precedence first; a later source's value wins whole."""
    out = Sourced()
    for source in sources:
        out.warnings += source.warnings
        for name, value in source.values.items():
            for group in _EITHER:
                if name in group:
                    for other in group - {name} - set(source.values):
                        out.values.pop(other, None)
                        out.where.pop(other, None)
            out.values[name] = value
            out.where.pop(name, None)
            if name in source.where:
                out.where[name] = source.where[name]
    return out


def from_environment(environ: Mapping[str, str]) -> Sourced:
    """The ``HOPGATE_*`` variables that name a setting; an empty one is not set."""
    out = Sourced()
    known = {env_name(setting): setting for setting in every_setting()}
    for variable, raw in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_VARIABLE:
            continue
        setting = known.get(variable)
        if setting is None:
            out.warnings += _unknown_variable(variable, known)
        elif raw.strip():
            where = f"{variable}={raw!r}"
            out.values[setting.name] = _from_text(setting, raw, where)
            out.where[setting.name] = where
    return out


def _from_text(setting: Setting, raw: str, where: str) -> Any:
    """A variable's text as the flag's argument would be read."""
    text = raw.strip()
    if setting.kind == "flag":
        if text.lower() not in BOOLEANS:
            reason = "not a boolean: use 1/0, true/false, yes/no or on/off"
            raise ConfigError(f"{where}: {reason}", name=setting.name, reason=reason)
        return BOOLEANS[text.lower()]
    if setting.kind == "rules":  # a rule has spaces: rules are separated by ; or newlines
        return [part.strip() for part in re.split(r"[;\n]+", text) if part.strip()]
    if setting.repeatable:
        return [part for part in re.split(r"[\s,]+", text) if part]
    try:
        return _PARSE.get(setting.kind, str)(text)
    except ValueError:
        reason = f"not {KIND_TEXT.get(setting.kind, 'valid')}"
        raise ConfigError(f"{where}: {reason}", name=setting.name, reason=reason) from None


def _unknown_variable(variable: str, known: Mapping[str, Setting]) -> list[str]:
    suffix = variable.removeprefix(ENV_PREFIX)
    names = [name.removeprefix(ENV_PREFIX) for name in [*known, CONFIG_VARIABLE]]
    close = difflib.get_close_matches(suffix, names, n=1, cutoff=0.7)
    if suffix in ("LISTEN_HOST", "LISTEN_PORT"):
        close = ["LISTEN"]
    if not close:
        return []
    hint = f"did you mean {ENV_PREFIX}{close[0]}?"
    return [f"{variable} is set but is no hopgate setting (ignored): {hint}"]


def from_file(path: Path) -> Sourced:
    """A TOML config file: its keys are the long flag names, its values the flags' shapes."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    keys = {file_key(setting): setting for setting in every_setting()}
    out = Sourced()
    for key, value in raw.items():
        setting = keys.get(key)
        if setting is None:
            raise ConfigError(f"{path}: unknown key {key!r} ({_instead(key, list(keys))})")
        where = f"{path}: {key} = {json.dumps(value, default=str)}"
        try:
            out.values[setting.name] = typed(setting, value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.reason}", name=exc.name, reason=exc.reason) from None
        out.where[setting.name] = where
    return out


def _instead(key: str, valid: list[str]) -> str:
    """What to write instead of the unknown file key ``key``."""
    if key in _NOT_KEYS:
        return _NOT_KEYS[key]
    spelled = key.replace("_", "-").lower()
    if spelled in ("listen-host", "listen-port"):
        return "did you mean 'listen'? it takes HOST:PORT"
    close = [spelled] if spelled in valid else difflib.get_close_matches(spelled, valid, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "the keys are the long flag names: see hopgate server --help"
