"""The ``hopgate`` command: help, version, TOML config, errors, signals.

``main(argv)`` is called in-process where only the exit status and output
matter; a real child process is used where the process itself is the subject
(exit codes on signals, refusing connections after SIGTERM).
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from gateway import __version__, cli
from gateway.cli import build_parser, main, settings_from_args
from gateway.config import Config, build_config
from gateway.process import GC_THRESHOLDS
from tests.waiting import eventually

if TYPE_CHECKING:
    from tests.conftest import MakeOrigin, SpawnGateway

pytestmark = pytest.mark.timeout(60)

HOPGATE = [sys.executable, "-m", "gateway"]


def config_from(argv: list[str]) -> Config:
    """What ``main(argv)`` would run, without running it."""
    args = build_parser().parse_args(argv)
    return build_config(args.command, settings_from_args(args))


# ------------------------------------------------------------ help, version


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hopgate {__version__}"


@pytest.mark.parametrize("command", ["script", "module"])
def test_version_from_the_installed_command(command: str) -> None:
    script = Path(sys.executable).parent / "hopgate"
    argv = [str(script)] if command == "script" else HOPGATE
    done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == f"hopgate {__version__}"


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("server", "client", "demo", "--version", "long-poll", "examples:"):
        assert word in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: hopgate" in capsys.readouterr().out


@pytest.mark.parametrize("role", ["server", "client"])
def test_role_help_documents_every_flag(role: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([role, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--config",
        "--listen",
        "--upstream",
        "--tls-cert",
        "--tls-key",
        "--ca-file",
        "--upstream-timeout",
        "--shutdown-grace",
        "--log-level",
        "--preserve-host",
    ):
        assert flag in out, flag
    assert "default 600" in out  # held polls: the upstream timeout is long
    assert "127.0.0.1" in out


# ------------------------------------------------------------- config/flags


def test_defaults_listen_on_loopback() -> None:
    server = config_from(["server", "--upstream", "http://127.0.0.1:9"])
    client = config_from(["client"])
    assert (server.listen_host, server.listen_port) == ("127.0.0.1", 8080)
    assert (client.listen_host, client.listen_port) == ("127.0.0.1", 8000)
    assert client.forward_proxy


def test_every_flag_reaches_the_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    config = config_from(
        [
            "client",
            "--listen", "0.0.0.0:7000",
            "--upstream", "https://next.example:8443/base",
            "--upgrade", "never",
            "--log-level", "debug",
            "--ca-file", str(ca),
            "--upstream-timeout", "900",
            "--connect-timeout", "3.5",
            "--shutdown-grace", "2",
            "--preserve-host",
            "--via-name", "edge-1",
            "--max-connections", "50",
            "--hop-secret", "s3cret-hop-secret",
            "--allowed-origin", "https://a.example",
            "--allowed-origin", "https://b.example",
        ]
    )  # fmt: skip
    assert config == Config(
        role="client",
        listen_host="0.0.0.0",
        listen_port=7000,
        upstream=config.upstream,
        upgrade="never",
        log_level="debug",
        ca_file=ca,
        upstream_timeout=900.0,
        connect_timeout=3.5,
        shutdown_grace=2.0,
        preserve_host=True,
        via_name="edge-1",
        max_connections=50,
        hop_secret="s3cret-hop-secret",
        allowed_origins=("https://a.example", "https://b.example"),
    )
    assert str(config.upstream) == "https://next.example:8443/base"


def test_toml_file_mirrors_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "hopgate.toml"
    path.write_text(
        'listen = "127.0.0.1:7100"\n'
        'upstream = "http://127.0.0.1:9000"\n'
        "upstream-timeout = 1200\n"
        "shutdown-grace = 3\n"
        "preserve-host = true\n"
        'via-name = "from-file"\n'
        'allowed-origin = ["https://app.example"]\n'
    )
    config = config_from(["server", "--config", str(path)])
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 7100)
    assert str(config.upstream) == "http://127.0.0.1:9000"
    assert config.upstream_timeout == 1200.0
    assert config.shutdown_grace == 3.0
    assert config.preserve_host is True
    assert config.via_name == "from-file"
    assert config.allowed_origins == ("https://app.example",)


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hopgate.toml"
    path.write_text(
        'listen = "127.0.0.1:7100"\nupstream = "http://127.0.0.1:9000"\n'
        'via-name = "from-file"\nupstream-timeout = 1200\n'
    )
    config = config_from(
        ["server", "--config", str(path), "--listen", ":7200", "--via-name", "from-flag"]
    )
    assert config.listen_port == 7200
    assert config.via_name == "from-flag"
    assert config.upstream_timeout == 1200.0  # not given as a flag: the file's value
    assert str(config.upstream) == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("toml", "argv", "message"),
    [
        (
            'upstream = "http://127.0.0.1:9"\nupstream-timout = 5\n',
            [],
            "unknown key 'upstream-timout' (did you mean 'upstream-timeout'?)",
        ),
        ('upstream = "http://127.0.0.1:9"\nupstream-timeout = "long"\n', [], "upstream-timeout"),
        ("upstream = \n", [], "is not valid TOML"),
        ("", [], "needs --upstream"),
        ('upstream = "ftp://x"\n', [], 'hopgate.toml: upstream = "ftp://x": give an absolute'),
        ('upstream = "http://127.0.0.1:9"\n', ["--listen", "1.2.3.4:x"], "port must be a number"),
        ('upstream = "http://127.0.0.1:9"\n', ["--tls-cert", "/nope.pem"], "--tls-key go together"),
        ('upstream = "http://127.0.0.1:9"\n', ["--ca-file", "/nope.pem"], "/nope.pem: no such"),
        ('upstream = "http://127.0.0.1:9"\n', ["--shutdown-grace", "0"], "--shutdown-grace must"),
    ],
)
def test_config_errors_exit_2_with_a_helpful_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, argv: list[str], message: str
) -> None:
    path = tmp_path / "hopgate.toml"
    path.write_text(toml)
    assert main(["server", "--config", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hopgate server: error: ")
    assert message in err
    assert "Traceback" not in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err


def test_bad_flag_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["server", "--upstream", "http://x", "--upgrade", "sometimes"])
    assert info.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_config_error_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('upstream = "http://127.0.0.1:9"\nlisten-on = "0.0.0.0:1"\n')
    done = subprocess.run(
        [*HOPGATE, "server", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert f"{path}: unknown key 'listen-on' (did you mean 'listen'?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_exits_1_naming_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                *HOPGATE,
                "server",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                "http://127.0.0.1:9",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_config_file_drives_a_real_gateway(
    tmp_path: Path, make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"via": request.headers.get("Via"), "path": request.raw_path})

    origin = await make_origin(echo)
    path = tmp_path / "hopgate.toml"
    path.write_text(f'upstream = "{origin}"\nvia-name = "from-file"\nlisten = "127.0.0.1:1"\n')
    gw = spawn_gateway("server", "--config", str(path))  # the helper's --listen :0 wins
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/cfg") as resp:
        assert await resp.json() == {"via": "1.1 from-file", "path": "/cfg"}


# ------------------------------------------------------------------ signals


class HeldOrigin:
    """``/hold`` answers ``answer_after`` seconds after it started holding."""

    def __init__(self, answer_after: float) -> None:
        self.answer_after = answer_after
        self.holding = asyncio.Event()
        self.ended: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.holding.set()
        try:
            await asyncio.sleep(self.answer_after)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("answered")
        return web.Response(text="held answer")


async def wait_exit(proc: subprocess.Popen[str], timeout: float) -> int:
    exited = await eventually(lambda: proc.poll() is not None, timeout, interval=0.05)
    assert exited, "gateway did not exit"
    return proc.returncode


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_signal_lets_a_held_request_finish_within_the_grace(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, signum: int
) -> None:
    origin = HeldOrigin(answer_after=2.0)
    gw = spawn_gateway(
        "server", "--upstream", await make_origin(origin.handle), "--shutdown-grace", "8"
    )
    async with aiohttp.ClientSession() as session:
        held = asyncio.ensure_future(session.get(f"{gw.url}/hold"))
        await asyncio.wait_for(origin.holding.wait(), 5)
        signalled = time.monotonic()
        gw.send_signal(signum)
        await asyncio.sleep(0.5)
        # The listener stays open while the held request is in flight (peers'
        # polls and posts of draining sessions still arrive); ready says 503.
        async with session.get(f"{gw.url}/.hopgate/ready") as ready:
            assert ready.status == 503, "ready did not turn 503 on the signal"
        async with await asyncio.wait_for(held, 10) as resp:
            assert resp.status == 200
            assert await resp.text() == "held answer"
    assert await wait_exit(gw.proc, 5) == 0
    elapsed = time.monotonic() - signalled
    assert elapsed < 6, f"took {elapsed:.1f}s to exit after the held request finished"
    assert origin.ended == ["answered"]
    log = gw.output()
    assert f"{signal.Signals(signum).name} received" in log
    assert "stopped" in log


async def test_held_request_is_ended_when_the_grace_runs_out(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    origin = HeldOrigin(answer_after=60.0)
    gw = spawn_gateway(
        "server", "--upstream", await make_origin(origin.handle), "--shutdown-grace", "1"
    )
    async with aiohttp.ClientSession() as session:
        held = asyncio.ensure_future(session.get(f"{gw.url}/hold"))
        await asyncio.wait_for(origin.holding.wait(), 5)
        signalled = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientError):
            async with await asyncio.wait_for(held, 10) as resp:
                await resp.read()
        ended_after = time.monotonic() - signalled
    assert await wait_exit(gw.proc, 5) == 0
    assert 0.8 <= ended_after < 4, ended_after
    for _ in range(40):
        if origin.ended:
            break
        await asyncio.sleep(0.05)
    assert origin.ended == ["cancelled"]


async def test_second_signal_exits_at_once(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    origin = HeldOrigin(answer_after=60.0)
    gw = spawn_gateway(
        "server", "--upstream", await make_origin(origin.handle), "--shutdown-grace", "30"
    )
    async with aiohttp.ClientSession() as session:
        held = asyncio.ensure_future(session.get(f"{gw.url}/hold"))
        await asyncio.wait_for(origin.holding.wait(), 5)
        gw.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert gw.proc.poll() is None  # still waiting for the held request
        second = time.monotonic()
        gw.send_signal(signal.SIGINT)
        assert await wait_exit(gw.proc, 5) == 1
        assert time.monotonic() - second < 3
        held.cancel()
    assert "second signal" in gw.output()


async def test_status_of_a_subprocess_gateway(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    async def never(request: web.Request) -> web.Response:
        raise AssertionError("status must not be forwarded")

    origin = await make_origin(never)
    gw = spawn_gateway("server", "--upstream", origin)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gw.url}/.hopgate/status") as resp,
    ):
        doc = json.loads(await resp.text())
    assert doc["role"] == "server"
    assert doc["version"] == __version__
    assert doc["upstreams"][0]["url"] == origin


async def test_limit_flags_reach_the_running_gateway(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    """``--max-clients``, ``--header-timeout`` and ``--public-status`` given on the command line."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    origin = await make_origin(ok)
    gw = spawn_gateway(
        "server",
        "--upstream",
        origin,
        "--max-clients",
        "7",
        "--header-timeout",
        "1",
        "--keepalive-timeout",
        "30",
        "--public-status",
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed, nothing sent
    finally:
        writer.close()
    assert 0.8 < time.monotonic() - started < 3
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gw.url}/.hopgate/status", headers={"Via": "1.1 proxy"}) as resp,
    ):
        assert resp.status == 200  # --public-status
        doc = json.loads(await resp.text())
    assert doc["clients"]["max"] == 7
    assert doc["clients"]["head_timeouts"] == 1


# ------------------------------------------------------------ the collector


def test_a_gateway_serves_with_fewer_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """What exists before it serves is frozen, young collections are rarer, malloc tuned.

    (What ``tune_malloc`` does is tested in ``test_process.py``, in a child process.)
    """
    seen: dict[str, object] = {"malloc": "not tuned"}

    async def recording(config: Config, **_: object) -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(cli, "serve", recording)
    monkeypatch.setattr(cli, "tune_malloc", lambda: seen.update(malloc="tuned") or True)
    monkeypatch.setattr(cli, "setup_logging", lambda *_: None)
    saved = gc.get_threshold()
    try:
        assert main(["server", "--upstream", "http://127.0.0.1:9"]) == 0
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
    assert seen["threshold"] == GC_THRESHOLDS != saved
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000
    assert seen["malloc"] == "tuned"
