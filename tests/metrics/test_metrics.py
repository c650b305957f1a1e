"""``GET /.hopgate/metrics``: Prometheus text from every gateway, moving with real traffic.

Each scrape is parsed with prometheus_client's own parser, so a malformed
exposition fails here rather than in someone's Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.admin import METRICS_PATH
from gateway.metrics import BUCKETS, Metrics
from gateway.server import Gateway
from gateway.status import GatewayStats, RequestRecord
from tests.faultproxy import FaultProxy
from tests.helpers import FAST_LADDER, FAST_SESSION, NO_REPROBE, loopback_gateway, until

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: Families every gateway exposes, traffic or not.
FAMILIES = {
    "hopgate_build_info",
    "hopgate_ready",
    "hopgate_requests",
    "hopgate_request_duration_seconds",
    "hopgate_hop_transport",
    "hopgate_transport_switches",
    "hopgate_upstream_requests",
    "hopgate_upstream_errors",
    "hopgate_sessions",
    "hopgate_hop_messages",
    "hopgate_hop_bytes",
    "hopgate_replay_buffer_bytes",
    "hopgate_session_resumes",
    "hopgate_probe_failures",
    "hopgate_streams",
    "hopgate_client_connections",
    "hopgate_client_connections_refused",
}


def parse(text: str) -> tuple[set[str], Samples]:
    """(family names, every sample by name and labels) of one exposition."""
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the ``name`` samples carrying ``labels`` (0 if there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url + METRICS_PATH) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        assert resp.headers["Cache-Control"] == "no-store"
        families, samples = parse(await resp.text())
    assert families >= FAMILIES
    return samples


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=f"origin {request.method} {request.path_qs} {len(body)}")


@contextlib.asynccontextmanager
async def fast_gateway(role: str, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway with the fast ladder and session timings, never re-probing a WebSocket."""
    gateway = loopback_gateway(
        role,  # type: ignore[arg-type]
        {"shutdown_grace": 1.0, **settings},
        ladder=FAST_LADDER,
        session=dataclasses.replace(FAST_SESSION, **NO_REPROBE),
    )
    async with gateway:
        yield gateway


async def send_requests(http: aiohttp.ClientSession, url: str, count: int) -> None:
    for i in range(count):
        async with http.post(f"{url}/item/{i}", data=b"x" * 1000) as resp:
            assert resp.status == 200
            assert await resp.text() == f"origin POST /item/{i} 1000"


# ------------------------------------------------------------------ the pure parts


def test_request_records_become_a_counter_and_a_histogram() -> None:
    stats = GatewayStats(role="server", mode="sidecar")
    metrics = Metrics(stats)
    for status, duration, route in [
        (200, 0.003, "plain"),
        (200, 0.2, "tunnel"),
        (502, 99.0, "tunnel"),
    ]:
        stats.record(RequestRecord(route, "GET", "/x", status, duration, "127.0.0.1"))  # type: ignore[arg-type]
    families, samples = parse(metrics.render().decode())
    assert families >= FAMILIES
    assert value(samples, "hopgate_requests_total") == 3
    assert value(samples, "hopgate_requests_total", route="tunnel", code="502") == 1
    assert value(samples, "hopgate_requests_total", route="plain", code="200") == 1
    count = "hopgate_request_duration_seconds_count"
    assert value(samples, count, route="tunnel") == 2
    assert value(samples, "hopgate_request_duration_seconds_sum", route="tunnel") == 99.2
    bucket = "hopgate_request_duration_seconds_bucket"
    assert value(samples, bucket, route="plain", le="0.005") == 1
    assert value(samples, bucket, route="tunnel", le="0.25") == 1
    assert value(samples, bucket, route="tunnel", le=repr(BUCKETS[-1])) == 1
    assert value(samples, bucket, route="tunnel", le="+Inf") == 2
    assert value(samples, "hopgate_build_info", version=__version__, role="server") == 1
    # Its own registry: a second gateway's metrics start from nothing.
    _, fresh = parse(Metrics(GatewayStats(role="server", mode="sidecar")).render().decode())
    assert value(fresh, "hopgate_requests_total") == 0


# ------------------------------------------------------------------ served, never forwarded


class Recording:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(text=f"origin {request.path}")


@pytest.mark.parametrize("role", ["server", "client", "forward-proxy"])
async def test_every_gateway_serves_metrics_and_forwards_the_origins_own(
    make_origin: MakeOrigin, make_gateway: MakeGateway, role: str
) -> None:
    origin = Recording()
    url = await make_origin(origin.handle)
    if role == "forward-proxy":
        gw = await make_gateway("client")
    else:
        gw = await make_gateway(role, {"upstream": url})  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        samples = await scrape(http, gw.url)
        if role != "forward-proxy":
            async with http.get(gw.url + "/metrics") as resp:
                assert await resp.text() == "origin /metrics"
            async with http.get(gw.url + "/.hopgate/metricsx") as resp:
                assert await resp.text() == "origin /.hopgate/metricsx"
    asked = [p for p in origin.paths if p != "/.hopgate/hello"]  # a client's discovery
    assert asked == ([] if role == "forward-proxy" else ["/metrics", "/.hopgate/metricsx"])
    assert value(samples, "hopgate_build_info", version=__version__) == 1
    assert value(samples, "hopgate_ready") == 1
    if role != "forward-proxy":
        assert value(samples, "hopgate_hop_transport", upstream=url, transport="plain") == 1
        assert value(samples, "hopgate_hop_transport", upstream=url) == 1
    # The process itself, from prometheus_client's collectors.
    assert value(samples, "process_resident_memory_bytes") > 0


@pytest.mark.parametrize(
    ("headers", "public", "status"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, False, 403),
        ({"Via": "1.1 nginx"}, False, 403),
        ({"X-Forwarded-For": "203.0.113.9"}, True, 200),
        ({}, False, 200),
    ],
)
async def test_metrics_follow_the_status_access_rule(
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
    headers: dict[str, str],
    public: bool,
    status: int,
) -> None:
    origin = Recording()
    gw = await make_gateway(
        "server", {"upstream": await make_origin(origin.handle), "public_status": public}
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + METRICS_PATH, headers=headers) as resp,
    ):
        assert resp.status == status
        text = await resp.text()
    if status == 403:
        assert "--public-status" in text and "hopgate_" not in text
    assert origin.paths == []


async def test_metrics_answer_get_only(make_origin: MakeOrigin, make_gateway: MakeGateway) -> None:
    gw = await make_gateway("server", {"upstream": await make_origin(Recording().handle)})
    async with aiohttp.ClientSession() as http, http.post(gw.url + METRICS_PATH) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"


# ------------------------------------------------------------------ moving with traffic


async def test_requests_over_a_websocket_hop_move_the_counters(make_origin: MakeOrigin) -> None:
    origin = await make_origin(echo)
    async with (
        fast_gateway("server", upstream=origin) as server,
        fast_gateway("client", upstream=server.url) as client,
        aiohttp.ClientSession() as http,
    ):
        link = client.stats.upstream(server.url)
        await until(lambda: link.transport == "websocket", "the websocket hop")
        before = await scrape(http, client.url)
        await send_requests(http, client.url, 10)
        after = await scrape(http, client.url)
        served = await scrape(http, server.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("hopgate_requests_total", route="tunnel", code="200") == 10
    assert moved("hopgate_request_duration_seconds_count", route="tunnel") == 10
    # Each request is at least one message each way, its 1000-byte body going up.
    assert moved("hopgate_hop_messages_total", direction="sent") >= 10
    assert moved("hopgate_hop_messages_total", direction="received") >= 10
    assert moved("hopgate_hop_bytes_total", direction="sent") >= 10_000
    assert moved("hopgate_hop_bytes_total", direction="received") > 0
    upstream = server.url
    assert value(after, "hopgate_hop_transport", upstream=upstream, transport="websocket") == 1
    assert value(after, "hopgate_hop_transport", upstream=upstream, transport="long-poll") == 0
    assert value(after, "hopgate_hop_transport", upstream=upstream, transport="plain") == 0
    assert value(after, "hopgate_transport_switches_total", upstream=upstream, to="websocket") >= 1
    # The sidecar serves the session and answered the requests from the tunnel.
    assert value(served, "hopgate_sessions", transport="websocket") == 1
    assert value(served, "hopgate_requests_total", route="tunnel", code="200") == 10
    assert value(served, "hopgate_hop_messages_total", direction="received") >= 10
    assert value(served, "hopgate_hop_bytes_total", direction="received") >= 10_000


async def test_requests_over_a_long_poll_hop_and_the_failed_websocket_are_counted(
    make_origin: MakeOrigin,
) -> None:
    """A proxy that refuses upgrades keeps the hop on long-poll: its probe failure counts."""
    origin = await make_origin(echo)
    async with fast_gateway("server", upstream=origin) as server:
        async with (
            FaultProxy("127.0.0.1", server.port) as proxy,
            fast_gateway("client", upstream=proxy.url) as client,
            aiohttp.ClientSession() as http,
        ):
            proxy.refuse_upgrades = True
            link = client.stats.upstream(proxy.url)
            await until(lambda: link.transport == "long-poll", "the long-poll hop")
            await send_requests(http, client.url, 5)
            samples = await scrape(http, client.url)
            served = await scrape(http, server.url)
        # The client gateway is gone: its session ended at the server, counters stay.
        await until(lambda: not list(server.stats.sessions()), "the session's end at the server")
        async with aiohttp.ClientSession() as http:
            ended = await scrape(http, server.url)
    upstream = proxy.url
    assert value(samples, "hopgate_hop_transport", upstream=upstream, transport="long-poll") == 1
    assert value(samples, "hopgate_hop_transport", upstream=upstream) == 1
    assert value(samples, "hopgate_requests_total", route="tunnel", code="200") == 5
    assert value(samples, "hopgate_probe_failures_total") >= 1
    assert value(samples, "hopgate_hop_messages_total", direction="sent") >= 5
    assert value(served, "hopgate_sessions", transport="long-poll") == 1
    for name, direction in [
        ("hopgate_hop_messages_total", "received"),
        ("hopgate_hop_bytes_total", "sent"),
    ]:
        assert (
            value(ended, name, direction=direction) >= value(served, name, direction=direction) > 0
        )
    assert value(ended, "hopgate_sessions") == 0


async def test_a_forced_demotion_and_a_cut_show_as_switch_and_resume(
    make_origin: MakeOrigin,
) -> None:
    """A WebSocket gone silent is demoted to long-poll; a cut connection is resumed."""
    origin = await make_origin(echo)
    async with (
        fast_gateway("server", upstream=origin) as server,
        FaultProxy("127.0.0.1", server.port) as proxy,
        fast_gateway("client", upstream=proxy.url) as client,
        aiohttp.ClientSession() as http,
    ):
        link = client.stats.upstream(proxy.url)
        await until(lambda: link.transport == "websocket", "the websocket hop")
        proxy.blackhole_after_101 = True
        await until(lambda: link.transport == "long-poll", "the demotion to long-poll")
        await send_requests(http, client.url, 2)
        before = await scrape(http, client.url)
        hop = client.link(proxy.url).session  # type: ignore[union-attr]
        assert hop is not None and hop.resumes == 0
        proxy.cut()
        await until(lambda: hop.resumes == 1 and hop.transport == "long-poll", "the resume")
        await send_requests(http, client.url, 2)
        after = await scrape(http, client.url)
    switches = "hopgate_transport_switches_total"
    demoted = value(
        before, switches, upstream=proxy.url, **{"from": "websocket", "to": "long-poll"}
    )
    assert demoted == 1
    assert value(before, "hopgate_hop_transport", upstream=proxy.url, transport="long-poll") == 1
    assert value(after, "hopgate_session_resumes_total") >= 1
    assert value(after, "hopgate_requests_total", route="tunnel", code="200") == 4


async def test_streams_in_flight_are_counted(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    gw = await make_gateway("server", {"upstream": await make_origin(hold), "upgrade": "never"})
    async with aiohttp.ClientSession() as http:
        held = asyncio.create_task(http.get(gw.url + "/held"))
        try:
            await until(lambda: gw.stats.active_streams == 1, "the held request")
            samples = await scrape(http, gw.url)
        finally:
            release.set()
            (await held).release()
        assert value(samples, "hopgate_streams", kind="http") == 1
        assert value(samples, "hopgate_streams", kind="websocket") == 0
        assert value(samples, "hopgate_client_connections", state="busy") >= 1
        done = await scrape(http, gw.url)
    assert value(done, "hopgate_streams", kind="http") == 0
    assert value(done, "hopgate_requests_total", route="plain", code="200") == 1
