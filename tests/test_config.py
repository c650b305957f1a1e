"""``Config``: defaults, parsing of listen/upstream, TOML files, and the error messages.

Where a value comes from (flag > environment > file > default) is
``tests/test_config_sources.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from yarl import URL

from gateway.config import (
    SETTINGS,
    Config,
    ConfigError,
    build_config,
    parse_listen,
    parse_upstream,
)
from gateway.config_sources import (
    from_file,
)

if TYPE_CHECKING:
    pass

UP = {"upstream": "http://127.0.0.1:9000"}


def test_defaults_of_a_server() -> None:
    config = build_config("server", dict(UP))
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 8080
    assert config.upstream == URL("http://127.0.0.1:9000")
    assert config.upstream_timeout >= 600
    assert config.upgrade == "auto"
    assert config.shutdown_grace > 0
    assert not config.tls
    assert not config.forward_proxy
    assert config.listen_url() == "http://127.0.0.1:8080"


def test_defaults_of_a_client_without_upstream_is_a_forward_proxy() -> None:
    config = build_config("client", {})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8000)
    assert config.forward_proxy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9", ("127.0.0.1", 9)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":7000", ("127.0.0.1", 7000)),
        ("7001", ("127.0.0.1", 7001)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::]", ("::", 8080)),
        ("  10.0.0.1:65535 ", ("10.0.0.1", 65535)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value, "server") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("host:http", "the port must be a number"),
        ("127.0.0.1:70000", "outside 0-65535"),
        ("[::1:80", "missing ']'"),
    ],
)
def test_parse_listen_errors_name_the_value(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_listen(value, "client")
    assert repr(value) in str(info.value)


def test_ipv6_listen_url_is_bracketed() -> None:
    config = build_config("server", {**UP, "listen": "[::1]:0"})
    assert config.listen_url(4321) == "http://[::1]:4321"


@pytest.mark.parametrize(
    "value", ["ftp://example.com", "example.com:80", "/relative", "http://", "http://h/?q=1"]
)
def test_parse_upstream_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match="--upstream"):
        parse_upstream(value)


def test_parse_upstream_accepts_https_and_a_base_path() -> None:
    assert parse_upstream(" https://chat.example.com/comet/ ") == URL(
        "https://chat.example.com/comet/"
    )


def test_server_without_upstream_says_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="needs --upstream"):
        build_config("server", {})


def test_unknown_settings_are_reported_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*upstream_timout"):
        build_config("server", {**UP, "upstream_timout": 5})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"upgrade": "always"}, "--upgrade must be"),
        ({"log_level": "loud"}, "--log-level must be"),
        ({"upstream_timeout": 0}, "--upstream-timeout must be a positive"),
        ({"connect_timeout": -1}, "--connect-timeout must be a positive"),
        ({"shutdown_grace": 0}, "--shutdown-grace must be a positive"),
        ({"hop_secret": "s3cret"}, "--hop-secret is shorter than 16 bytes; make one with: "),
        ({"tls_cert": "/nonexistent/cert.pem"}, "--tls-cert and --tls-key go together"),
        (
            {"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"},
            "--tls-cert /nonexistent/cert.pem: no such file",
        ),
        ({"ca_file": "/nonexistent/ca.pem"}, "--ca-file /nonexistent/ca.pem: no such file"),
        ({"upstream_timeout": "ten"}, "upstream-timeout"),
        ({"max_connections": "many"}, "max-connections"),
        ({"max_connections": 2.5}, "max-connections"),
        ({"max_connections": -1}, "max-connections"),
        ({"preserve_host": "yes"}, "preserve-host"),
        ({"via_name": 7}, "via-name"),
        ({"allowed_origins": "https://a.example"}, "allowed-origin"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_flag(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config("server", {**UP, **settings})


def test_numbers_may_be_given_as_integers() -> None:
    config = build_config("server", {**UP, "upstream_timeout": 900, "shutdown_grace": 2})
    assert config.upstream_timeout == 900.0
    assert config.shutdown_grace == 2.0


def test_none_values_mean_not_given() -> None:
    config = build_config("server", {**UP, "upstream_timeout": None, "listen": None})
    assert config.upstream_timeout == Config(role="server").upstream_timeout
    assert config.listen_port == 8080


def test_config_is_frozen_and_replace_makes_a_copy() -> None:
    config = build_config("server", dict(UP))
    with pytest.raises(AttributeError):
        config.listen_port = 1  # type: ignore[misc]
    other = config.replace(listen_port=1)
    assert (config.listen_port, other.listen_port) == (8080, 1)


def test_file_keys_are_the_long_flag_names(tmp_path: Path) -> None:
    path = tmp_path / "hopgate.toml"
    path.write_text(
        'upstream = "http://127.0.0.1:9000"\n'
        "upstream-timeout = 900\n"
        "preserve-host = true\n"
        'allowed-origin = ["https://a.example", "https://b.example"]\n'
    )
    settings = from_file(path).values
    assert settings == {
        "upstream": "http://127.0.0.1:9000",
        "upstream_timeout": 900.0,
        "preserve_host": True,
        "allowed_origins": ("https://a.example", "https://b.example"),
    }
    config = build_config("server", settings)
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.preserve_host is True


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        from_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("upstream = \n")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid TOML"):
        from_file(bad)


def test_edge_limit_defaults_and_values() -> None:
    config = build_config("server", dict(UP))
    assert (config.max_clients, config.header_timeout, config.keepalive_timeout) == (0, 10.0, 75.0)
    assert config.public_status is False
    tuned = build_config(
        "server",
        {
            **UP,
            "max_clients": 50,
            "header_timeout": 2,
            "keepalive_timeout": 5.5,
            "public_status": True,
        },
    )
    assert (tuned.max_clients, tuned.header_timeout, tuned.keepalive_timeout) == (50, 2.0, 5.5)
    assert tuned.public_status is True


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_clients": -1}, "--max-clients"),
        ({"header_timeout": 0}, "--header-timeout"),
        ({"keepalive_timeout": -5}, "--keepalive-timeout"),
        ({"header_timeout": "10"}, "--header-timeout"),
        ({"public_status": "yes"}, "--public-status"),
    ],
)
def test_edge_limit_errors_name_the_flag(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config("server", {**UP, **settings})


def test_every_setting_is_a_config_field_and_its_help_states_the_real_default() -> None:
    """One table drives flags, file keys and type checks; its help must not drift."""
    import dataclasses
    import re

    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    assert len({s.option for s in SETTINGS}) == len(SETTINGS)
    for setting in SETTINGS:
        assert setting.name in defaults, setting.name
        stated = re.search(r"\(default ([0-9.]+)", setting.help)
        if setting.kind in ("seconds", "rate", "count", "bytes"):
            assert stated is not None, f"{setting.option} help states no default"
            assert float(stated.group(1)) == defaults[setting.name], setting.option
