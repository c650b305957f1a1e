"""``hopgate doctor`` against real paths on loopback: direct, nginx's default recipe, HAProxy
with a short ``timeout tunnel``, and a plain origin that is no gateway.

The origin serves 1 MiB at ``/big`` so the downward leg of the frames step
carries a 1 MiB answer. The CLI runs as a child process (its exit status and
output are the interface); the HAProxy idle case runs the probe in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from yarl import URL

from gateway.doctor.probe import Options, run
from gateway.doctor.verdict import judge, render_human, render_json
from tests.doctor.burst_relay import BurstRelay
from tests.faultproxy import FaultProxy
from tests.helpers import FAST_SESSION, loopback_gateway
from tests.proxies import (  # noqa: F401  (proxies is a fixture)
    Proxies,
    ProxyProcess,
    proxies,
    running_haproxy,
)

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin, TLSFiles

pytestmark = pytest.mark.timeout(90)

BIG = bytes(range(256)) * 4096  # 1 MiB
#: Bound on one doctor run (its own waits are bounded by --timeout and the hold time).
RUN_TIMEOUT = 60.0


def origin_app() -> web.Application:
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="legacy app")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_route("*", "/{tail:.*}", page)
    return app


async def doctor_cli(*args: str) -> tuple[int, str]:
    """``python -m gateway doctor ARGS``: exit status and stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "doctor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    print(out.decode(), err.decode(), sep="\n")
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def server_gateway(make_origin: MakeOrigin, make_gateway: MakeGateway) -> str:
    origin = await make_origin(origin_app())
    gateway = await make_gateway("server", {"upstream": origin})
    return str(gateway.url)


async def test_direct_path_is_websocket_and_long_poll(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    url = await server_gateway(make_origin, make_gateway)
    code, out = await doctor_cli(f"{url.rstrip('/')}/big", "--json")
    report: dict[str, Any] = json.loads(out)
    assert code == 0
    assert (report["websocket"], report["long_poll"], report["idle_timeout_s"]) == (
        "ok",
        "ok",
        None,
    )
    found = report["findings"]
    assert found["down_bytes"] == len(BIG) and found["big_up_ms"] is not None
    assert all(d is not None for d in found["pong_delays"]) and not report["bursty"]
    _, human = await doctor_cli(f"{url.rstrip('/')}/big")
    assert "verdict: hop sessions run on WebSocket" in human
    assert human.count("\u2714") == 7  # tcp request hello session upgrade frames long_poll


async def test_nginx_default_recipe_refuses_the_upgrade_and_names_the_lines(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    proxies: Proxies,  # noqa: F811
) -> None:
    url = await server_gateway(make_origin, make_gateway)
    nginx = proxies.nginx(upstream=url, recipe="hopgate-default.conf")
    code, out = await doctor_cli(f"{nginx.url}/big", "--json")
    report = json.loads(out)
    assert code == 0  # long-poll carries the session
    assert report["websocket"] == "refused" and report["long_poll"] == "ok"
    assert report["proxy"] == "nginx"
    assert report["findings"]["upgrade_status"] == 400
    assert "reached the gateway as a plain GET" in report["advice"][0]
    advice = " ".join(report["advice"])
    assert (
        'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";' in advice
    )
    await doctor_cli(f"{nginx.url}/big")  # the human form, for the log


async def test_plain_origin_is_no_gateway(make_origin: MakeOrigin) -> None:
    origin = await make_origin(origin_app())
    code, out = await doctor_cli(f"{origin}/", "--json")
    report = json.loads(out)
    assert code == 1
    assert (report["gateway"], report["websocket"], report["long_poll"]) == (
        False,
        "refused",
        "failed",
    )
    assert "hopgate server" in report["advice"][0]


def haproxy_with_tunnel_timeout(
    upstream: str, seconds: int
) -> contextlib.AbstractContextManager[ProxyProcess]:
    """``deploy/haproxy/hopgate.cfg`` with only ``timeout tunnel`` changed."""
    return running_haproxy(upstream, [("timeout tunnel 1h", f"timeout tunnel {seconds}s")])


async def test_haproxy_short_tunnel_timeout_is_measured(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    url = await server_gateway(make_origin, make_gateway)
    with haproxy_with_tunnel_timeout(url, 3) as haproxy:
        options = Options(url=URL(f"{haproxy.url}/big"), idle_test=6.0)
        async with asyncio.timeout(RUN_TIMEOUT):
            report = judge(await run(options))
    print(render_human(report), render_json(report), sep="\n")
    assert report.websocket == "ok" and report.long_poll == "ok" and report.exit_code == 0
    assert report.idle_timeout_s is not None and 2.5 <= report.idle_timeout_s <= 4.5
    assert any("timeout tunnel" in line for line in report.advice)


async def test_frames_held_after_the_101_mean_blocked(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    url = URL(await server_gateway(make_origin, make_gateway))
    assert url.port is not None
    async with FaultProxy("127.0.0.1", url.port) as relay:
        relay.blackhole_after_101 = True
        options = Options(url=URL(f"{relay.url}/big"), timeout=3.0)
        async with asyncio.timeout(RUN_TIMEOUT):
            report = judge(await run(options))
    print(render_human(report))
    assert report.findings.upgrade_status == 101
    assert (report.websocket, report.long_poll, report.exit_code) == ("blocked", "ok", 0)
    assert "buffers or filters" in report.advice[0]


async def test_frames_released_in_bursts_are_reported(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    url = URL(await server_gateway(make_origin, make_gateway))
    assert url.port is not None
    async with BurstRelay(url.port, period=1.0) as relay:
        async with asyncio.timeout(RUN_TIMEOUT):
            report = judge(await run(Options(url=URL(f"{relay.url}/big"))))
    print(render_human(report))
    assert relay.upgraded >= 1
    assert report.websocket == "ok" and report.bursty
    assert any("bursts" in line for line in report.advice)


async def test_hop_secret_is_required_and_used(
    make_origin: MakeOrigin, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    origin = await make_origin(origin_app())
    gateway = await make_gateway(
        "server", {"upstream": origin, "hop_secret": "s3cret-hop-secret-value"}
    )
    url = f"{str(gateway.url).rstrip('/')}/big"
    code, out = await doctor_cli(url, "--json")
    report = json.loads(out)
    assert code == 1 and report["findings"]["session_status"] == 403
    assert "--hop-secret" in report["advice"][0]
    secret = tmp_path / "secret"
    secret.write_text("s3cret-hop-secret-value\n")
    code, out = await doctor_cli(url, "--json", "--hop-secret-file", str(secret))
    assert code == 0 and json.loads(out)["websocket"] == "ok"


async def test_https_gateway_certificate_checked_with_ca_file(
    make_origin: MakeOrigin, make_gateway: MakeGateway, tls_files: TLSFiles
) -> None:
    origin = await make_origin(origin_app())
    gateway = await make_gateway(
        "server", {"upstream": origin, "tls_cert": tls_files.cert, "tls_key": tls_files.key}
    )
    url = f"{str(gateway.url).rstrip('/')}/big"
    assert url.startswith("https://")
    code, out = await doctor_cli(url, "--json")
    report = json.loads(out)
    assert code == 1 and "certificate" in report["findings"]["tls_error"]
    assert "--ca-file" in report["advice"][0]
    code, out = await doctor_cli(url, "--ca-file", str(tls_files.ca))
    assert code == 0 and "\u2714 tls       certificate verified" in out


async def test_idle_test_says_when_the_gateway_heartbeat_hides_the_path_limit(
    make_origin: MakeOrigin,
) -> None:
    origin = await make_origin(origin_app())
    session = dataclasses.replace(FAST_SESSION, heartbeat=1.0, stall_timeout=5.0)
    async with loopback_gateway("server", {"upstream": origin}, session=session) as gateway:
        options = Options(url=URL(f"{str(gateway.url).rstrip('/')}/big"), idle_test=3.0)
        async with asyncio.timeout(RUN_TIMEOUT):
            report = judge(await run(options))
    print(render_human(report))
    assert report.idle_timeout_s is None and report.websocket == "ok"
    longest = report.findings.idle_longest_silence
    assert longest is not None and 0.5 <= longest <= 2.0
    assert "heartbeat broke the silence" in report.steps[-1].figure


async def test_a_relay_refusing_upgrades_itself_is_named(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    url = URL(await server_gateway(make_origin, make_gateway))
    assert url.port is not None
    async with FaultProxy("127.0.0.1", url.port) as relay:
        relay.refuse_upgrades = True
        async with asyncio.timeout(RUN_TIMEOUT):
            report = judge(await run(Options(url=URL(f"{relay.url}/big"))))
    print(render_human(report))
    assert (report.websocket, report.long_poll, report.exit_code) == ("refused", "ok", 0)
    assert relay.upgrades_refused == 1
    assert "before the gateway answered the handshake itself (400" in report.advice[0]
