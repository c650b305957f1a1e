"""Paths that fight back, item 3: a black-holed WebSocket, a burst over the stream limit, a stop.

* A real chain (``bench/blackhole.py``: legacy client -> ``hopgate client``
  -> a FaultProxy that black-holes the upgraded connection -> ``hopgate
  server`` -> origin, the gateways as processes) at 100 POSTs/s: traffic
  is back within a few round trips (the figure is printed; the bound is
  generous for 2 shared cores), no request answered 503, none lost or
  delivered twice.
* More requests than ``--max-streams`` at once: the rest wait for a stream
  (none refused); past the waiting cap a 503 with ``Retry-After``; a wait
  that outlasts ``--connect-timeout`` goes plain, delivered once. With
  both gateways' limits raised, the opening one keeps to its own.
* A server stopped under a few hundred WebSocket sessions logs no
  ``Task exception was never retrieved``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from bench.blackhole import run, shutdown_tracebacks
from gateway.config import Role, build_config
from gateway.config_sources import load_config
from gateway.config_values import ConfigError
from gateway.core.tunnel import TunnelConfig
from gateway.glue.streamgate import QUEUE_FACTOR
from gateway.settings import derive
from tests.conftest import MakeOrigin
from tests.e2e.harness import Gateways, gateways_fixture  # noqa: F401 - the fixture
from tests.helpers import until
from tests.status_page import status_document, warm_until_hop

pytestmark = pytest.mark.timeout(120)


async def test_a_black_holed_websocket_fails_over_fast_and_no_request_is_refused() -> None:
    args = argparse.Namespace(rate=100.0, before=1.0, after=4.0, stall_timeout=None, tree=None)
    results = await run(args)
    print("\n".join(results.lines()))  # the figures, for the report (-s)
    assert results.failover_s is not None and results.failover_s < 3.0
    assert results.statuses == {200: 500}, results.statuses
    assert (results.lost, results.duplicated) == (0, 0)


class HeldOrigin:
    """Holds every request until ``release`` is set; counts what arrived and how many at once."""

    def __init__(self, hold: float | None = None) -> None:
        self.hold = hold
        self.release = asyncio.Event()
        self.seen: Counter[str] = Counter()
        self.now = self.peak = 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/warm":  # warm_until_hop's requests
            return web.Response(text="warm")
        self.seen[request.path_qs] += 1
        if request.path == "/quick":
            return web.Response(text="quick")
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            if self.hold is not None:
                await asyncio.sleep(self.hold)
            else:
                await asyncio.wait_for(self.release.wait(), 30)
        finally:
            self.now -= 1
        return web.Response(text="ok")


async def chain(
    gateways: Gateways, origin_url: str, max_streams: int, **client: object
) -> tuple[str, aiohttp.ClientSession]:
    """client gateway -> server gateway (``max_streams``) -> origin; hop upgraded.

    The client gateway keeps its default limit: it learns the server's from
    the first refusal.
    """
    limits = {"upstream": origin_url, "max_streams": max_streams}
    server = await gateways("server", limits, session=None)
    proxy = await gateways.proxy(server)
    gw = await gateways("client", {"upstream": proxy.url, **client}, session=None)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    entry = await warm_until_hop(http, gw.url)
    assert entry["transport"] != "plain"
    return gw.url, http


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")


async def test_requests_over_the_stream_limit_wait_for_a_stream(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    origin = HeldOrigin(hold=0.2)
    url, http = await chain(gateways, await make_origin(origin.handle), max_streams=4)
    async with http:
        answers = await asyncio.gather(*(get(http, f"{url}/r?n={n}") for n in range(40)))
    assert [status for status, _ in answers] == [200] * 40
    assert origin.peak <= 4
    assert all(origin.seen[f"/r?n={n}"] == 1 for n in range(40)), origin.seen


async def test_past_the_waiting_cap_a_clear_503_with_retry_after(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    origin = HeldOrigin()
    url, http = await chain(gateways, await make_origin(origin.handle), max_streams=1)
    cap = QUEUE_FACTOR * TunnelConfig().max_streams  # 1024 may wait
    extra = 6
    async with http:
        tasks = [asyncio.create_task(get(http, f"{url}/r?n={n}")) for n in range(1 + cap + extra)]
        await until(lambda: sum(t.done() for t in tasks) >= extra, "the refusals", timeout=30)
        await asyncio.sleep(0.5)  # and no more
        refused = [t.result() for t in tasks if t.done()]
        origin.release.set()
        answers = await asyncio.gather(*tasks)
    assert refused == [(503, "1")] * extra, Counter(refused)
    statuses = Counter(status for status, _ in answers)
    assert statuses == {200: 1 + cap, 503: extra}, statuses
    assert len(origin.seen) == 1 + cap and set(origin.seen.values()) == {1}


async def test_a_wait_longer_than_the_connect_timeout_goes_plain_once(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    origin = HeldOrigin(hold=3.0)
    url, http = await chain(
        gateways, await make_origin(origin.handle), max_streams=1, connect_timeout=0.5
    )
    async with http:
        first = asyncio.create_task(get(http, f"{url}/first"))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await get(http, f"{url}/quick")
        took = loop.time() - started
        assert not first.done()
        assert await first == (200, None)
    assert second == (200, None)
    assert took < 2.5  # not after the first request's stream: it went plain
    assert origin.seen == {"/first": 1, "/quick": 1}


async def test_the_opening_gateway_keeps_to_its_own_max_streams(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """Both gateways set past the defaults: every held poll reaches the origin at once.

    The opening side's gate used to start at the default 256 whatever its
    ``--max-streams`` said, so the 24 past it waited ``--connect-timeout``
    at the client gateway.
    """
    origin = HeldOrigin()
    n, limits = 280, {"max_streams": 300, "session_connections": 300}
    # A quarter of --max-connections is one address's share of origin connections.
    upstream = {"upstream": await make_origin(origin.handle), "max_connections": 1200, **limits}
    server = await gateways("server", upstream, session=None)
    gw = await gateways(
        "client", {"upstream": server.url, "connect_timeout": 60, **limits}, session=None
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        assert (await warm_until_hop(http, gw.url))["transport"] == "websocket"
        tasks = [asyncio.create_task(get(http, f"{gw.url}/r?n={i}")) for i in range(n)]
        try:
            await until(lambda: origin.now == n, f"{n} polls held at the origin", timeout=20)
        finally:
            origin.release.set()
        answers = await asyncio.gather(*tasks)
    assert answers == [(200, None)] * n
    assert len(origin.seen) == n and set(origin.seen.values()) == {1}


async def test_a_limit_that_holds_requests_up_is_counted_and_named_once(
    make_origin: MakeOrigin, gateways: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """Streams past --max-streams (client) and past --session-connections (server).

    Both show in the status and the metrics while they wait, and each
    gateway logs one WARNING naming its flag, not one per request.
    """
    caplog.set_level(logging.WARNING, logger="hopgate")
    origin = HeldOrigin()
    upstream = {"upstream": await make_origin(origin.handle), "session_connections": 2}
    server = await gateways("server", upstream, session=None)
    client = {"upstream": server.url, "max_streams": 4, "connect_timeout": 60}
    gw = await gateways("client", client, session=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def waiting_is(expected: tuple[int, int]) -> bool:
            opening = (await status_document(http, gw.url))["streams"]
            answering = (await status_document(http, server.url))["streams"]
            return (opening["waiting_for_stream"], answering["waiting_for_origin"]) == expected

        assert (await warm_until_hop(http, gw.url))["transport"] == "websocket"
        tasks = [asyncio.create_task(get(http, f"{gw.url}/r?n={i}")) for i in range(7)]
        try:
            await until(lambda: waiting_is((3, 2)), "3 waiting for a stream, 2 for the origin")
            assert origin.now == 2
            async with http.get(f"{server.url}/.hopgate/metrics") as resp:
                metrics = await resp.text()
            assert 'hopgate_streams_waiting{for="origin_connection"} 2.0' in metrics, metrics
        finally:
            origin.release.set()
        assert await asyncio.gather(*tasks) == [(200, None)] * 7
        assert await waiting_is((0, 0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    named = [w for w in warnings if "--max-streams" in w or "--session-connections" in w]
    assert len(named) == 2, warnings
    assert sum("raise --max-streams on both gateways" in w for w in named) == 1, named
    assert sum("raise --session-connections" in w for w in named) == 1, named
    assert len(origin.seen) == 7 and set(origin.seen.values()) == {1}


async def test_stopping_a_server_under_hundreds_of_websocket_sessions_logs_no_task_tracebacks() -> (
    None
):
    opened, tracebacks = await shutdown_tracebacks(300, None)
    assert opened == 300
    assert tracebacks == 0


@pytest.mark.parametrize("role", ["client", "server"])
def test_stall_timeout_is_a_flag_and_reaches_the_sessions(role: Role) -> None:
    base = {"upstream": "http://127.0.0.1:9"}
    assert derive(build_config(role, base)).session.stall_timeout == 15.0
    config = load_config(role, base, {"HOPGATE_STALL_TIMEOUT": "2.5"}).config
    assert derive(config).session.core_config().stall_timeout == 2.5
    with pytest.raises(ConfigError, match="stall-timeout"):
        build_config(role, {**base, "stall_timeout": 0})
