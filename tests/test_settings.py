"""``gateway.settings.derive``: every setting a user gives reaches the piece its layer takes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser, settings_from_args
from gateway.config import SETTINGS, Config, Setting, build_config
from gateway.core.tunnel import TunnelConfig
from gateway.glue.origin import ForwardSettings
from gateway.settings import CONFIG_ONLY, MAX_TUNNEL_WS_MESSAGE, Settings, derive
from gateway.transports.session_settings import TUNNEL_SESSION_MESSAGE

BASE: dict[str, Any] = {"upstream": "http://127.0.0.1:9"}


def changed_value(setting: Setting, default: Any, tmp_path: Path) -> Any:
    """A valid value for ``setting`` other than ``default``."""
    kind = setting.kind
    if kind in ("seconds", "rate"):
        return float(default) + 1.5
    if kind == "count":
        return int(default) + 3
    if kind == "bytes":
        return int(default) * 2
    if kind == "flag":
        return not default
    if kind == "path":
        path = tmp_path / f"{setting.name}.pem"
        path.write_text("not read by derive")
        return str(path)
    if kind == "choice":
        return next(choice for choice in setting.choices if choice != default)
    if kind == "origins":
        return ["https://app.example"]
    if kind == "rules":
        return ["GET /poll since=json:next"]
    assert kind == "text", kind
    return "changed, 16+ bytes long"  # long enough for a secret


def with_setting(setting: Setting, tmp_path: Path) -> Config:
    default = getattr(build_config("server", BASE), setting.name)
    values = {**BASE, setting.name: changed_value(setting, default, tmp_path)}
    if setting.name in ("tls_cert", "tls_key"):  # they go together
        values["tls_cert"] = values["tls_key"] = values[setting.name]
    if setting.name == "admin_listen":  # HOST:PORT
        values["admin_listen"] = "127.0.0.1:9090"
    if setting.name in ("cluster_secret", "cluster_secret_file", "advertise"):
        # They go together: a secret of 16 bytes or more and an http(s) URL.
        values.update(cluster_secret="a cluster secret of 32 bytes....", advertise="http://h:1")
        if setting.name == "cluster_secret_file":
            del values["cluster_secret"]
            Path(values[setting.name]).write_text("a cluster secret from a file....\n")
    return build_config("server", values)


def differences(a: Settings, b: Settings) -> list[str]:
    """The pieces (and fields) in which two derived settings differ."""
    found = []
    for piece in dataclasses.fields(a):
        left, right = getattr(a, piece.name), getattr(b, piece.name)
        if left == right:
            continue
        if dataclasses.is_dataclass(left):
            found += [
                f"{piece.name}.{f.name}"
                for f in dataclasses.fields(left)
                if getattr(left, f.name) != getattr(right, f.name)
            ]
        else:
            found.append(piece.name)
    return found


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_reaches_a_piece_unless_declared_config_only(
    setting: Setting, tmp_path: Path
) -> None:
    baseline = derive(build_config("server", BASE))
    changed = differences(baseline, derive(with_setting(setting, tmp_path)))
    if setting.name in CONFIG_ONLY:
        assert changed == [], f"{setting.name} reaches {changed}: drop it from CONFIG_ONLY"
    else:
        assert changed, (
            f"{setting.option} reaches no piece of Settings: derive it in gateway/settings.py "
            "(or say in CONFIG_ONLY who reads it from the Config)"
        )


def test_config_only_names_real_settings() -> None:
    assert set(CONFIG_ONLY) <= {s.name for s in SETTINGS}


def test_a_changed_value_lands_in_its_piece(tmp_path: Path) -> None:
    """Each flag's value, as the CLI parses it, arrives where its layer reads it."""
    args = build_parser().parse_args(
        [
            "server",
            "--upstream",
            "http://127.0.0.1:9/base",
            "--hold-time",
            "5",
            "--resume-grace",
            "7",
            "--max-sessions",
            "3",
            "--max-message-size",
            "1000000",
            "--session-buffer",
            "262144",
            "--max-streams",
            "9",
            "--session-reassembly",
            "131072",
            "--max-unread-bytes",
            "70000",
            "--max-connections",
            "100",
            "--session-connections",
            "5",
            "--connect-timeout",
            "4",
            "--shutdown-grace",
            "3",
            "--hop-secret",
            "s3cret-hop-secret",
            "--allowed-origin",
            "HTTPS://App.Example/",
            "--header-timeout",
            "2",
            "--via-name",
            "edge-7",
            "--preserve-host",
            "--upstream-timeout",
            "45",
        ]
    )
    s = derive(build_config("server", settings_from_args(args)))
    assert (s.session.hold_time, s.session.resume_grace, s.session.max_sessions) == (5.0, 7.0, 3)
    assert (s.session.max_message_size, s.session.buffer_bytes) == (1_000_000, 262_144)
    assert s.session.max_session_message == TUNNEL_SESSION_MESSAGE
    assert s.session.connect_timeout == 4.0
    assert s.session.close_timeout == 3.0  # within the shutdown grace
    assert s.tunnel == TunnelConfig(
        max_ws_message=1_000_000,
        max_streams=9,
        session_reassembly=131072,
        max_unread=70000,
        session_window=8 * 1024 * 1024,
    )
    assert (s.forward.session_connections, s.hop.address_connections) == (5, 25)
    assert (s.hop.secret, s.hop.hello_timeout) == ("s3cret-hop-secret", 4.0)
    assert s.client.max_connections == 100 and s.client.connect_timeout == 4.0
    assert (s.listener.header_timeout, s.listener.shutdown_grace) == (2.0, 3.0)
    assert s.routes.allowed_origins == frozenset({"https://app.example"})
    assert s.forward == ForwardSettings(
        via_name="edge-7",
        preserve_host=True,
        connect_timeout=4.0,
        upstream_timeout=45.0,
        session_connections=5,
        max_ws_message=1_000_000,
    )
    assert s.client.upstream_timeout == 45.0
    assert str(s.routes.upstream) == "http://127.0.0.1:9/base"
    assert (s.routes.forward_proxy, s.routes.hop_upgrade, s.mode) == (False, True, "sidecar")


def test_defaults() -> None:
    s = derive(build_config("client", {}))
    assert s.session.hold_time == 25.0 < 30 and s.session.resume_grace == 60.0
    assert s.session.core_config().max_buffer_bytes == 4 * 1024 * 1024
    assert s.session.close_timeout == 10.0
    assert s.mode == "forward-proxy" and s.routes.forward_proxy
    assert s.hop.address_connections == 1024 // 4
    assert derive(build_config("client", {"upstream": "http://a"})).mode == "reverse"
    never = derive(build_config("server", {**BASE, "upgrade": "never"}))
    assert not never.routes.hop_upgrade


def test_the_tunnel_message_ceiling_holds_for_any_message_size() -> None:
    huge = build_config("server", {**BASE, "max_message_size": 2 * MAX_TUNNEL_WS_MESSAGE})
    assert derive(huge).tunnel.max_ws_message == MAX_TUNNEL_WS_MESSAGE


def test_settings_are_frozen_and_replace_gives_a_new_one() -> None:
    s = derive(build_config("server", BASE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.role = "client"  # type: ignore[misc]
    faster = s.replace(ladder=dataclasses.replace(s.ladder, retry_initial=0.1))
    assert faster.ladder.retry_initial == 0.1 and s.ladder.retry_initial == 1.0
    assert faster.session is s.session
