"""``hopgate server`` configured from the environment, and the messages of the command line:
a subcommand's own usage for a bad flag, an unresolvable ``--listen`` host, the help.

Real child processes where the process is the subject (its environment, its exit status).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from gateway.cli import main
from tests.processes import LISTENING, GatewayProcess, gateway_command

if TYPE_CHECKING:
    from tests.conftest import MakeOrigin

pytestmark = pytest.mark.timeout(60)


def run_hopgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command(*args),
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd()), **(env or {})},
    )


@pytest.mark.parametrize("role", ["server", "client"])
def test_a_bad_flag_prints_the_usage_of_its_subcommand(
    role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([role, "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: hopgate {role} [-h]")
    assert "--upstream-timeout SECONDS" in err  # this command's flags, not the top level's
    assert err.rstrip().endswith(f"hopgate {role}: error: unrecognized arguments: --bogus")


def test_a_mistyped_flag_gets_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["server", "--upsteam", "http://127.0.0.1:9"])
    assert "unrecognized arguments: --upsteam http://127.0.0.1:9 (did you mean --upstream?)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("role", ["server", "client"])
def test_help_says_every_flag_is_also_a_variable(
    role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([role, "--help"])
    out = capsys.readouterr().out
    assert "every flag can also be set as HOPGATE_<FLAG>" in out
    assert "HOPGATE_CONFIG" in out
    assert "Precedence: flag > environment > config file > default." in out
    assert "--preserve-host, --no-preserve-host" in out
    assert 'allowed-origin = ["https://app.example"]' in out


def test_an_unresolvable_listen_host_is_named_as_such() -> None:
    done = run_hopgate(
        "server", "--upstream", "http://127.0.0.1:9", "--listen", "nosuchhost.invalid:19094"
    )
    assert done.returncode == 1
    assert (
        "hopgate server: error: cannot listen on nosuchhost.invalid:19094: the host "
        "'nosuchhost.invalid' could not be resolved" in done.stderr
    )
    assert "pick another" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_variable_error_exits_2_naming_the_variable() -> None:
    done = run_hopgate("server", env={"HOPGATE_UPSTREAM": "http://127.0.0.1:9",
                                      "HOPGATE_SHUTDOWN_GRACE": "soon"})  # fmt: skip
    assert done.returncode == 2
    assert (
        "hopgate server: error: HOPGATE_SHUTDOWN_GRACE='soon': not a number of seconds\n"
    ) in done.stderr, done.stderr


def test_a_server_without_upstream_says_where_to_give_it() -> None:
    done = run_hopgate("server")
    assert done.returncode == 2
    assert "needs --upstream URL (or HOPGATE_UPSTREAM, or upstream = in the --config file)" in (
        done.stderr
    )


async def test_a_server_configured_by_the_environment_forwards(
    tmp_path: Path, make_origin: MakeOrigin
) -> None:
    """HOPGATE_UPSTREAM, HOPGATE_LISTEN, HOPGATE_VIA_NAME and a HOPGATE_CONFIG file, no flag."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"via": request.headers.get("Via"), "path": request.raw_path})

    origin = await make_origin(echo)
    path = tmp_path / "hopgate.toml"
    path.write_text('via-name = "from-file"\nupstream-timeout = 30\n')
    env = {
        "HOPGATE_UPSTREAM": origin,
        "HOPGATE_LISTEN": "127.0.0.1:0",
        "HOPGATE_VIA_NAME": "from-env",  # beats the file's
        "HOPGATE_CONFIG": str(path),
        "HOPGATE_ALLOWED_ORIGINS": "https://a.example",  # a near miss: warned about
    }
    gw = GatewayProcess.start(
        gateway_command("server", python=sys.executable), env=env, announce=LISTENING
    )
    try:
        gw.url = gw.wait_announced()
        async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/env") as resp:
            assert resp.status == 200
            assert await resp.json() == {"via": "1.1 from-env", "path": "/env"}
    finally:
        gw.stop()
    assert (
        "hopgate server: warning: HOPGATE_ALLOWED_ORIGINS is set but is no hopgate setting "
        "(ignored): did you mean HOPGATE_ALLOWED_ORIGIN?" in gw.output()
    )
