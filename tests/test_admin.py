"""``/.hopgate/ready`` and ``/.hopgate/live``, and the ``--admin-listen`` listener."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from gateway.admin import LIVE_PATH, METRICS_PATH, READY_PATH, Health
from gateway.config import ConfigError, build_config
from gateway.status import STATUS_PATH, GatewayStats, RequestRecord
from tests.helpers import HoldingOrigin
from tests.processes import free_port
from tests.waiting import eventually

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin
    from tests.processes import SpawnGateway

pytestmark = pytest.mark.timeout(60)

#: A client that did not come straight from loopback, as far as status is concerned.
PROXIED = {"X-Forwarded-For": "203.0.113.9"}


Origin = HoldingOrigin


async def get(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **headers: str
) -> tuple[int, str, dict[str, str]]:
    async with http.request(method, url, headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


# ------------------------------------------------------------------ health, pure


def record(status: int, target: str = "/x") -> RequestRecord:
    return RequestRecord("plain", "GET", target, status, 0.01, "127.0.0.1")


def test_ready_until_the_upstream_answers_only_502_or_504_for_the_threshold() -> None:
    now = [100.0]
    stats = GatewayStats(role="server", mode="sidecar")
    health = Health(stats, watch_upstream=True, unreachable_after=30.0, clock=lambda: now[0])
    stats.record(record(502))
    now[0] += 30.0
    assert health.why_not() is None  # not longer than the threshold yet
    stats.record(record(504))
    stats.record(record(200, "/.hopgate/status"))  # our own paths tell nothing
    now[0] += 0.5
    why = health.why_not()
    assert why is not None and "502/504 for 30 s" in why and "--ready-unreachable 30" in why
    stats.record(record(503))  # the upstream answered (overloaded, but reachable)
    assert health.ready
    stats.record(record(502))
    now[0] += 31
    assert not health.ready
    health.drain()
    assert health.why_not() == "draining: the gateway is shutting down"


def test_a_forward_proxy_watches_no_upstream() -> None:
    stats = GatewayStats(role="client", mode="forward-proxy")
    health = Health(stats, watch_upstream=False, unreachable_after=1.0, clock=lambda: 0.0)
    assert stats.observers == []
    assert health.ready


@pytest.mark.parametrize("value", ["127.0.0.1:", "127.0.0.1:port", "[::1", "127.0.0.1:70000"])
def test_admin_listen_needs_host_and_port(value: str) -> None:
    with pytest.raises(ConfigError, match="--admin-listen") as caught:
        build_config("server", {"upstream": "http://127.0.0.1:9", "admin_listen": value})
    assert value in str(caught.value)


# ------------------------------------------------------------------ on the main listener


async def test_ready_and_live_answer_anyone_and_are_never_forwarded(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = Origin()
    gw = await make_gateway("server", {"upstream": await make_origin(origin.handle)})
    async with aiohttp.ClientSession() as http:
        status, body, headers = await get(http, gw.url + READY_PATH, **PROXIED)
        assert (status, body) == (200, '{"ready": true}\n')
        assert headers["Content-Type"].startswith("application/json")
        assert headers["Cache-Control"] == "no-store"
        assert (await get(http, gw.url + LIVE_PATH, **PROXIED))[:2] == (200, '{"live": true}\n')
        status, body, _ = await get(http, gw.url + READY_PATH, "HEAD")
        assert (status, body) == (200, "")
        for path in (READY_PATH, LIVE_PATH):
            status, _, headers = await get(http, gw.url + path, "POST")
            assert status == 405 and headers["Allow"] == "GET, HEAD"
        gw.drain()
        status, body, _ = await get(http, gw.url + READY_PATH)
        assert status == 503 and '"ready": false' in body and "draining" in body
        assert (await get(http, gw.url + LIVE_PATH))[0] == 200
    assert origin.paths == []


async def test_not_ready_while_the_upstream_is_unreachable(make_gateway: MakeGateway) -> None:
    """Every request gets the gateway's 502 (connection refused): 503 after the threshold."""
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await make_gateway("server", {"upstream": dead, "ready_unreachable": 0.3})
    async with aiohttp.ClientSession() as http:
        assert (await get(http, gw.url + "/a"))[0] == 502
        assert (await get(http, gw.url + READY_PATH))[0] == 200
        started = time.monotonic()

        async def unready() -> bool:
            await get(http, gw.url + "/again")  # still 502
            return (await get(http, gw.url + READY_PATH))[0] == 503

        assert await eventually(unready, 10)
        assert time.monotonic() - started >= 0.25
        status, body, _ = await get(http, gw.url + READY_PATH)
        assert status == 503 and "--ready-unreachable 0.3" in body


# ------------------------------------------------------------------ the admin listener


async def test_admin_listener_serves_its_four_paths_to_anyone_and_404s_the_rest(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = Origin()
    gw = await make_gateway(
        "server", {"upstream": await make_origin(origin.handle), "admin_listen": "127.0.0.1:0"}
    )
    admin = gw.admin_url
    assert admin is not None and admin != gw.url and admin.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as http:
        for path in (METRICS_PATH, STATUS_PATH, READY_PATH, LIVE_PATH):
            status, body, _ = await get(http, admin + path, **PROXIED)
            assert status == 200, (path, body)
        assert "hopgate_build_info" in (await get(http, admin + METRICS_PATH))[1]
        status, body, _ = await get(http, admin + "/anything")
        assert status == 404 and METRICS_PATH in body and gw.url in body
        # The main listener keeps its rules: metrics only to loopback, the rest forwarded.
        assert (await get(http, gw.url + METRICS_PATH, **PROXIED))[0] == 403
        assert (await get(http, gw.url + "/anything"))[1] == "origin /anything"
    assert origin.paths == ["/anything"]


async def test_a_busy_admin_port_names_the_flag(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    first = await make_gateway(
        "server", {"upstream": await make_origin(Origin().handle), "admin_listen": "127.0.0.1:0"}
    )
    assert first.admin is not None
    with pytest.raises(OSError, match="pick another --admin-listen port"):
        await make_gateway(
            "server",
            {"upstream": "http://127.0.0.1:9", "admin_listen": f"127.0.0.1:{first.admin.port}"},
        )


async def test_sigterm_makes_a_real_server_unready_while_live_during_the_grace(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    """SIGTERM with a request held: ready 503 and live 200 on the admin listener until it exits."""
    origin = Origin()
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    gw = spawn_gateway(
        "server",
        "--upstream",
        await make_origin(origin.handle),
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--shutdown-grace",
        "20",
    )
    async with aiohttp.ClientSession() as http:
        assert (await get(http, admin + READY_PATH))[0] == 200
        held = asyncio.create_task(get(http, gw.url + "/hold"))
        await asyncio.wait_for(origin.holding.wait(), 10)
        gw.send_signal(signal.SIGTERM)

        async def unready() -> bool:
            return (await get(http, admin + READY_PATH))[0] == 503

        assert await eventually(unready, 10)
        status, body, _ = await get(http, admin + READY_PATH)
        assert status == 503 and "draining" in body
        assert (await get(http, admin + LIVE_PATH))[0] == 200
        # The main listener stays open while it drains, and says the same.
        assert (await get(http, gw.url + READY_PATH))[0] == 503
        assert gw.alive()  # still in its grace, for the held request
        origin.release.set()
        assert (await asyncio.wait_for(held, 10))[:2] == (200, "origin /hold")
    assert await asyncio.to_thread(gw.wait, 15) == 0
    assert "admin endpoints (metrics, status, ready, live) on" in gw.output()
