"""Where a setting comes from: flag > environment > config file > default.

``gateway.config_sources``: the variable and file key of every ``SETTINGS`` row
(parametrized over the table, so a flag added later is covered), precedence,
and errors that name the variable, or the file, key and value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.cli import build_parser, flags_given
from gateway.config import SETTINGS, ConfigError, Setting, build_config
from gateway.config_sources import (
    BOOLEANS,
    Loaded,
    env_name,
    every_setting,
    file_key,
    from_environment,
    load_config,
)

if TYPE_CHECKING:
    from tests.conftest import TLSFiles


def test_names_follow_the_long_flag_name() -> None:
    by_name = {setting.name: setting for setting in every_setting()}
    assert env_name(by_name["listen"]) == "HOPGATE_LISTEN"
    assert env_name(by_name["upstream"]) == "HOPGATE_UPSTREAM"
    assert env_name(by_name["hop_secret_file"]) == "HOPGATE_HOP_SECRET_FILE"
    assert env_name(by_name["allowed_origins"]) == "HOPGATE_ALLOWED_ORIGIN"
    assert file_key(by_name["allowed_origins"]) == "allowed-origin"
    assert file_key(by_name["upstream_timeout"]) == "upstream-timeout"
    assert {s.name for s in SETTINGS} < set(by_name)  # the table's rows are all there


def sample(setting: Setting, default: Any, tls_files: TLSFiles, tmp_path: Path) -> Any:
    """A valid value of ``setting`` other than ``default``, as a caller of ``build_config``
    gives it."""
    kind = setting.kind
    if setting.name == "listen":
        return "127.0.0.1:7123"
    if setting.name == "upstream":
        return "http://127.0.0.1:9001/base"
    if kind in ("seconds", "rate"):
        return float(default) + 1.5
    if kind in ("count", "bytes"):
        return int(default) * 2 + 3
    if kind == "flag":
        return not default
    if kind == "path":
        known = {"tls_cert": tls_files.cert, "tls_key": tls_files.key, "ca_file": tls_files.ca}
        if setting.name in known:
            return str(known[setting.name])
        path = tmp_path / f"{setting.name}.txt"
        path.write_text("s3cret from a file\n")
        return str(path)
    if kind == "choice":
        return next(choice for choice in setting.choices if choice != default)
    if kind == "rules":
        return ["GET /poll since=json:next", "engineio /socket.io/"]
    if setting.repeatable:
        return ["https://a.example", "https://b.example"]
    if setting.metavar and "PORT" in setting.metavar:
        return "127.0.0.1:7999"
    return "changed, 16+ bytes long"  # long enough for a secret


def as_text(setting: Setting, value: Any) -> str:
    """``value`` as an environment variable spells it."""
    if setting.kind == "flag":
        return "yes" if value else "off"
    if setting.kind == "rules":
        return "; ".join(value)
    if setting.repeatable:
        return ", ".join(value)
    return str(value)


UPSTREAM = "http://127.0.0.1:9"
UPSTREAM_ENV = {"HOPGATE_UPSTREAM": UPSTREAM}


def programmatic(setting: Setting, tls_files: TLSFiles, tmp_path: Path) -> dict[str, Any]:
    """Settings that change ``setting`` (and its partner, for the TLS pair) from the default."""
    defaults = build_config("server", {"upstream": UPSTREAM})
    default = getattr(defaults, setting.name, None)
    values = {"upstream": UPSTREAM, setting.name: sample(setting, default, tls_files, tmp_path)}
    if setting.name in ("tls_cert", "tls_key"):
        values.update(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    if setting.name in ("cluster_secret", "cluster_secret_file", "advertise"):
        # They go together: a secret of 16 bytes or more, and this instance's URL.
        values["advertise"] = "http://10.0.0.5:8080"
        if setting.name != "cluster_secret_file":
            values["cluster_secret"] = "a cluster secret of 32 bytes...."
    return values


def setting_id(setting: Setting) -> str:
    return setting.name


@pytest.mark.parametrize("setting", every_setting(), ids=setting_id)
def test_every_setting_round_trips_through_its_variable(
    setting: Setting, tls_files: TLSFiles, tmp_path: Path
) -> None:
    values = programmatic(setting, tls_files, tmp_path)
    by_name = {s.name: s for s in every_setting()}
    environ = {env_name(by_name[name]): as_text(by_name[name], v) for name, v in values.items()}
    environ["PATH"] = "/usr/bin"  # not ours: left alone
    loaded = load_config("server", {}, environ)
    expected = build_config("server", values)
    assert loaded.config == expected
    assert loaded.config != build_config("server", {"upstream": UPSTREAM})
    assert loaded.warnings == ()


@pytest.mark.parametrize("setting", every_setting(), ids=setting_id)
def test_every_setting_round_trips_through_its_file_key(
    setting: Setting, tls_files: TLSFiles, tmp_path: Path
) -> None:
    values = programmatic(setting, tls_files, tmp_path)
    by_name = {s.name: s for s in every_setting()}
    path = tmp_path / "hopgate.toml"
    path.write_text(
        "".join(f"{file_key(by_name[name])} = {json.dumps(v)}\n" for name, v in values.items())
    )
    assert load_config("server", {}, {}, path).config == build_config("server", values)


def from_sources(
    tmp_path: Path, argv: list[str], environ: dict[str, str], toml: str | None
) -> Loaded:
    """What ``hopgate server ARGV`` loads with ``environ`` and, if given, a config file."""
    if toml is not None:
        path = tmp_path / "hopgate.toml"
        path.write_text(toml + "\n")
        argv = [*argv, "--config", str(path)]
    args = build_parser().parse_args(["server", "--upstream", UPSTREAM, *argv])
    return load_config("server", flags_given(args), environ, args.config)


PRECEDENCE = [
    # field read, file line, environment, flags; then the value at each level:
    # default, file, file+environment, file+environment+flag
    (
        "upstream_timeout",
        "upstream-timeout = 100",
        {"HOPGATE_UPSTREAM_TIMEOUT": "200"},
        ["--upstream-timeout", "300"],
        (600.0, 100.0, 200.0, 300.0),
    ),
    (
        "allowed_origins",
        'allowed-origin = ["https://file.example"]',
        {"HOPGATE_ALLOWED_ORIGIN": "https://env.example,https://env2.example"},
        ["--allowed-origin", "https://flag.example"],
        (
            (),
            ("https://file.example",),
            ("https://env.example", "https://env2.example"),
            ("https://flag.example",),
        ),
    ),
    (
        "preserve_host",
        "preserve-host = true",
        {"HOPGATE_PRESERVE_HOST": "off"},
        ["--preserve-host"],
        (False, True, False, True),
    ),
    (
        "public_status",
        "public-status = false",
        {"HOPGATE_PUBLIC_STATUS": "1"},
        ["--no-public-status"],
        (False, False, True, False),
    ),
    (
        "listen_port",
        'listen = "127.0.0.1:7001"',
        {"HOPGATE_LISTEN": "127.0.0.1:7002"},
        ["--listen", "127.0.0.1:7003"],
        (8080, 7001, 7002, 7003),
    ),
]


@pytest.mark.parametrize(
    ("field", "toml", "environ", "argv", "expected"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE]
)
def test_flag_beats_environment_beats_file_beats_default(
    tmp_path: Path,
    field: str,
    toml: str,
    environ: dict[str, str],
    argv: list[str],
    expected: tuple[Any, Any, Any, Any],
) -> None:
    levels = [
        from_sources(tmp_path, [], {}, None),
        from_sources(tmp_path, [], {}, toml),
        from_sources(tmp_path, [], environ, toml),
        from_sources(tmp_path, argv, environ, toml),
    ]
    assert tuple(getattr(level.config, field) for level in levels) == expected


def test_the_environment_alone_beats_the_default(tmp_path: Path) -> None:
    loaded = from_sources(tmp_path, [], {"HOPGATE_MAX_SESSIONS": "7"}, None)
    assert loaded.config.max_sessions == 7


@pytest.mark.parametrize("word", sorted(BOOLEANS))
def test_boolean_words(word: str) -> None:
    environ = {"HOPGATE_UPSTREAM": UPSTREAM, "HOPGATE_PRESERVE_HOST": word.upper()}
    config = load_config("server", {}, environ).config
    assert config.preserve_host is (word in ("1", "true", "yes", "on"))


def test_an_empty_variable_is_not_set() -> None:
    config = load_config("client", {}, {"HOPGATE_UPSTREAM": "", "HOPGATE_VIA_NAME": "  "}).config
    assert config.upstream is None
    assert config.via_name == "hopgate"


def test_hopgate_config_names_the_file_and_the_flag_wins(tmp_path: Path) -> None:
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text(f'upstream = "{UPSTREAM}"\nvia-name = "one"\n')
    two.write_text(f'upstream = "{UPSTREAM}"\nvia-name = "two"\n')
    assert load_config("server", {}, {"HOPGATE_CONFIG": str(one)}).config.via_name == "one"
    loaded = load_config("server", {}, {"HOPGATE_CONFIG": str(one)}, two)
    assert loaded.config.via_name == "two"
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config("server", {}, {"HOPGATE_CONFIG": str(missing)})
    assert str(info.value) == f"HOPGATE_CONFIG='{missing}': config file {missing} does not exist"


def test_a_hop_secret_from_a_higher_source_replaces_the_file_of_a_lower_one(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from the file\n")
    path = tmp_path / "hopgate.toml"
    path.write_text(f'upstream = "{UPSTREAM}"\nhop-secret-file = "{secret}"\n')
    config = load_config("server", {"hop_secret": "from a flag, 16+ bytes"}, {}, path).config
    assert (config.hop_secret, config.hop_secret_file) == ("from a flag, 16+ bytes", None)
    both = tmp_path / "both.toml"
    both.write_text(f'upstream = "{UPSTREAM}"\nhop-secret = "x"\nhop-secret-file = "{secret}"\n')
    with pytest.raises(ConfigError, match="not both"):
        load_config("server", {}, {}, both)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("allowed-origins", "unknown key 'allowed-origins' (did you mean 'allowed-origin'?)"),
        ("upstream_timeout", "unknown key 'upstream_timeout' (did you mean 'upstream-timeout'?)"),
        ("upstream-timout", "unknown key 'upstream-timout' (did you mean 'upstream-timeout'?)"),
        ("listen_port", "unknown key 'listen_port' (did you mean 'listen'? it takes HOST:PORT)"),
        ("listen_host", "unknown key 'listen_host' (did you mean 'listen'?"),
        ("role", "unknown key 'role' (the role is the command: hopgate server or hopgate client)"),
        ("config", "unknown key 'config' (a config file cannot name another"),
        ("zzzz", "unknown key 'zzzz' (the keys are the long flag names"),
    ],
)
def test_an_unknown_file_key_is_refused_with_the_closest_name(
    tmp_path: Path, key: str, message: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'upstream = "{UPSTREAM}"\n{key} = 19099\n')
    with pytest.raises(ConfigError) as info:
        load_config("server", {}, {}, path)
    assert str(info.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('upstream-timeout = "long"', 'upstream-timeout = "long": not a number of seconds'),
        ("shutdown-grace = 0", "shutdown-grace = 0: must be a positive number of seconds"),
        ("max-sessions = 0", "max-sessions = 0: must be at least 1"),
        ('listen = "1.2.3.4:x"', 'listen = "1.2.3.4:x": the port must be a number'),
        ('allowed-origin = "https://a"', 'allowed-origin = "https://a": not a list of origins'),
        ("preserve-host = 1", "preserve-host = 1: not true or false"),
        ('upgrade = "always"', 'upgrade = "always": must be one of auto, never'),
        ('ca-file = "/nope.pem"', 'ca-file = "/nope.pem": no such file'),
    ],
)
def test_file_errors_name_the_file_the_key_and_the_value(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "hopgate.toml"
    path.write_text(f'upstream = "{UPSTREAM}"\n{line}\n')
    with pytest.raises(ConfigError) as info:
        load_config("server", {}, {}, path)
    assert str(info.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HOPGATE_UPSTREAM_TIMEOUT", "ten", "not a number of seconds"),
        ("HOPGATE_MAX_SESSIONS", "2.5", "not a whole number"),
        ("HOPGATE_MAX_SESSIONS", "0", "must be at least 1"),
        ("HOPGATE_PRESERVE_HOST", "maybe", "not a boolean: use 1/0, true/false, yes/no or on/off"),
        ("HOPGATE_UPGRADE", "sometimes", "must be one of auto, never"),
        ("HOPGATE_UPSTREAM", "ftp://x", "give an absolute http:// or https:// URL"),
        ("HOPGATE_LISTEN", "host:http", "the port must be a number"),
        ("HOPGATE_HOP_SECRET_FILE", "/nonexistent/secret", "no such file"),
    ],
)
def test_environment_errors_name_the_variable_and_the_value(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("server", {}, {"HOPGATE_UPSTREAM": UPSTREAM, variable: value})
    assert str(info.value).startswith(f"{variable}={value!r}: {message}")


def test_a_flag_error_names_the_flag_even_when_the_environment_has_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^--shutdown-grace must be a positive"):
        load_config(
            "server", {"shutdown_grace": 0.0}, {"HOPGATE_SHUTDOWN_GRACE": "3"} | UPSTREAM_ENV
        )


def test_a_variable_close_to_a_setting_is_warned_about_others_are_left_alone() -> None:
    environ = {
        **UPSTREAM_ENV,
        "HOPGATE_ALLOWED_ORIGINS": "https://a.example",
        "HOPGATE_LISTEN_PORT": "19099",
        "HOPGATE_FUZZ_CASES": "30",  # the test suite's own knobs share the prefix
        "HOPGATE_FUZZ_SEED": "7",
        "HOPGATE_MEMORY_TEST_MB": "200",
    }
    loaded = load_config("server", {}, environ)
    assert loaded.config.allowed_origins == ()
    assert loaded.config.listen_port == 8080
    assert loaded.warnings == (
        "HOPGATE_ALLOWED_ORIGINS is set but is no hopgate setting (ignored): "
        "did you mean HOPGATE_ALLOWED_ORIGIN?",
        "HOPGATE_LISTEN_PORT is set but is no hopgate setting (ignored): "
        "did you mean HOPGATE_LISTEN?",
    )


def test_from_environment_reads_only_settings() -> None:
    got = from_environment({"HOPGATE_VIA_NAME": "edge", "HOME": "/root", "HOPGATE_CONFIG": "x"})
    assert got.values == {"via_name": "edge"}
    assert got.where == {"via_name": "HOPGATE_VIA_NAME='edge'"}
