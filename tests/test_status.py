"""``GET /.hopgate/status``: answered by every gateway itself, never forwarded."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from yarl import URL

from gateway import __version__
from gateway.core.ladder import Transition
from gateway.status import (
    MAX_LISTED_PEERS,
    STATUS_PATH,
    GatewayStats,
    HopReport,
    SessionReport,
    status_refusal,
)
from gateway.transports.connector import SessionConnector
from tests.faultproxy import FaultProxy
from tests.helpers import (
    FAST_LADDER,
    FAST_SESSION,
    NO_REPROBE,
    HoldingOrigin,
    loopback_gateway,
    until,
    upstream_json,
)

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(30)


Origin = HoldingOrigin


async def status_of(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + STATUS_PATH) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        document: dict[str, Any] = await resp.json()
        return document


async def test_status_document_and_it_is_never_forwarded(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = Origin()
    origin_url = await make_origin(origin.handle)
    # Plain hops, so the document is deterministic; tests/hop covers upgraded ones.
    server = await make_gateway("server", {"upstream": origin_url, "upgrade": "never"})
    client_gw = await make_gateway("client", {"upstream": server.url, "upgrade": "never"})
    async with aiohttp.ClientSession() as session:
        server_doc = await status_of(session, server.url)
        client_doc = await status_of(session, client_gw.url)
        async with session.get(client_gw.url + STATUS_PATH + "?verbose=1") as resp:
            assert resp.status == 200
        async with session.head(server.url + STATUS_PATH) as resp:
            assert resp.status == 200
    assert origin.paths == []
    assert server_doc["role"] == "server"
    assert client_doc["role"] == "client"
    for doc in (server_doc, client_doc):
        assert doc["version"] == __version__
        assert doc["streams"] == {"active": 0, "waiting_for_stream": 0, "waiting_for_origin": 0}
        assert doc["sessions"] == {
            "active": 0,
            "by_transport": {"websocket": 0, "long-poll": 0},
            "peers": [],
            "peers_not_listed": 0,
        }
    assert server_doc["upstreams"] == [
        {
            "url": origin_url,
            "transport": "plain",
            "upgrades": 0,
            "fallbacks": 0,
            "requests": 0,
            "errors": 0,
            "peer": "unknown",
            "session": None,
            "session_transport": None,
            "session_resumes": None,
            "last_error": "",
            "transitions": [],
            "heartbeat_s": None,
            "heartbeat_learned": None,
        }
    ]
    assert [u["url"] for u in client_doc["upstreams"]] == [server.url]
    assert client_doc["upstreams"][0]["transport"] == "plain"


async def test_status_counts_active_streams_and_requests(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = Origin()
    gw = await make_gateway("server", {"upstream": await make_origin(origin.handle)})
    async with aiohttp.ClientSession() as session:
        held = asyncio.ensure_future(session.get(gw.url + "/hold"))
        await asyncio.wait_for(origin.holding.wait(), 5)
        during = await status_of(session, gw.url)
        origin.release.set()
        async with await held as resp:
            assert await resp.text() == "origin /hold"
        after = await status_of(session, gw.url)
    assert during["streams"]["active"] == 1
    assert after["streams"]["active"] == 0
    assert after["upstreams"][0]["requests"] == 1
    assert after["requests_total"] == 3
    assert origin.paths == ["/hold"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_status_answers_get_only(
    make_origin: MakeOrigin, make_gateway: MakeGateway, method: str
) -> None:
    origin = Origin()
    gw = await make_gateway("server", {"upstream": await make_origin(origin.handle)})
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.url + STATUS_PATH, data=b"{}") as resp,
    ):
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert STATUS_PATH in await resp.text()
    assert origin.paths == []


async def test_forward_proxy_client_has_a_status_with_no_upstreams(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway("client", {})
    async with aiohttp.ClientSession() as session:
        doc = await status_of(session, gw.url)
    assert doc["role"] == "client"
    assert doc["mode"] == "forward-proxy"
    assert doc["upstreams"] == []


def test_stats_json_is_plain_data() -> None:
    stats = GatewayStats(role="server", mode="sidecar")
    stats.upstream("http://a").requests += 2
    stats.upstream("http://a").errors += 1
    stats.active_streams = 3
    stats.waiting_for_stream, stats.waiting_for_origin = 4, 5
    doc = stats.as_json()
    assert doc["upstreams"] == [
        {
            "url": "http://a",
            "transport": "plain",
            "upgrades": 0,
            "fallbacks": 0,
            "requests": 2,
            "errors": 1,
            "peer": "unknown",
            "session": None,
            "session_transport": None,
            "session_resumes": None,
            "last_error": "",
            "transitions": [],
            "heartbeat_s": None,
            "heartbeat_learned": None,
        }
    ]
    assert doc["streams"] == {"active": 3, "waiting_for_stream": 4, "waiting_for_origin": 5}
    assert doc["version"] == __version__
    assert doc["uptime_s"] >= 0


def test_upstream_transitions_are_listed_with_iso_times_latest_last() -> None:
    stats = GatewayStats(role="client", mode="sidecar")
    moves = (
        Transition(0.0, "plain", "long-poll", "upgrade_refused", "WebSocket upgrade refused (400)"),
        Transition(1.5, "long-poll", "plain", "peer_closed", "session closed (1001 going away)"),
    )
    report = HopReport(transitions=moves, switches={("plain", "long-poll", "upgrade_refused"): 1})
    stats.upstream("http://a").report = lambda: report
    [entry] = stats.as_json()["upstreams"]
    assert entry["transitions"] == [
        {
            "at": "1970-01-01T00:00:00.000+00:00",
            "from": "plain",
            "to": "long-poll",
            "reason": "upgrade_refused",
            "detail": "WebSocket upgrade refused (400)",
        },
        {
            "at": "1970-01-01T00:00:01.500+00:00",
            "from": "long-poll",
            "to": "plain",
            "reason": "peer_closed",
            "detail": "session closed (1001 going away)",
        },
    ]


async def test_an_upstream_shows_its_session_redialling_then_resumed(
    make_origin: MakeOrigin,
) -> None:
    """The rung says where the hop is; ``session_transport`` whether it is connected there."""
    origin = await make_origin(HoldingOrigin().handle)
    session = dataclasses.replace(FAST_SESSION, **NO_REPROBE)
    async with (
        loopback_gateway("server", {"upstream": origin}, session=session) as server,
        FaultProxy("127.0.0.1", server.port) as proxy,
        loopback_gateway(
            "client", {"upstream": proxy.url}, ladder=FAST_LADDER, session=session
        ) as client,
    ):
        entry = upstream_json(client)
        assert entry["session_transport"] is None and entry["session_resumes"] is None

        def attached() -> object:
            return upstream_json(client)["session_transport"]

        await until(lambda: attached() == "websocket", "the WebSocket")
        first = upstream_json(client)
        assert (first["transport"], first["session_resumes"]) == ("websocket", 0), first
        proxy.drop_new = True  # the path is gone: no redial gets through
        assert proxy.cut() >= 1
        await until(lambda: attached() == "none", "the redial")
        assert upstream_json(client)["session"] == first["session"]  # the same session, waiting
        proxy.drop_new = False
        await until(lambda: attached() == upstream_json(client)["transport"], "the resume")
        back = upstream_json(client)
        assert back["session"] == first["session"] and back["session_resumes"] >= 1, back


def test_server_sessions_are_counted_by_transport_and_listed_up_to_the_bound() -> None:
    stats = GatewayStats(role="server", mode="sidecar")
    many = MAX_LISTED_PEERS + 5
    stats.active_sessions = many
    stats.sessions = lambda: [
        SessionReport(f"s{i:04d}", "websocket" if i % 2 else "long-poll", f"10.0.0.1:{i}", 0.0)
        for i in range(many)
    ]
    sessions = stats.as_json()["sessions"]
    assert sessions["active"] == many
    assert sessions["by_transport"] == {"websocket": many // 2, "long-poll": many - many // 2}
    assert len(sessions["peers"]) == MAX_LISTED_PEERS
    assert sessions["peers_not_listed"] == 5
    assert sessions["peers"][1] == {
        "peer": "10.0.0.1:1",
        "transport": "websocket",
        "session": "s0001",
        "since": "1970-01-01T00:00:00.000+00:00",
    }


async def test_server_status_shows_sessions_by_transport_and_peer(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    """One client gateway on a WebSocket, one connector held on long-poll: both listed."""
    server = await make_gateway("server", {"upstream": await make_origin(Origin().handle)})
    client = await make_gateway("client", {"upstream": server.url})
    settings = dataclasses.replace(FAST_SESSION, **NO_REPROBE)
    async with aiohttp.ClientSession() as http:
        poller = SessionConnector(URL(server.url), http, settings, prefer="long-poll")
        try:
            hop = await asyncio.wait_for(poller.connect(), 10)
            [link] = client.stats.upstreams.values()
            await until(lambda: link.transport == "websocket", "the client gateway's websocket hop")
            await until(
                lambda: (
                    {r.transport for r in server.stats.sessions()} == {"websocket", "long-poll"}
                ),
                "both sessions on their transports at the server",
            )
            doc = await status_of(http, server.url)
        finally:
            await poller.close()
    sessions = doc["sessions"]
    assert sessions["active"] == 2
    assert sessions["by_transport"] == {"websocket": 1, "long-poll": 1}
    assert sessions["peers_not_listed"] == 0
    by_transport = {p["transport"]: p for p in sessions["peers"]}
    assert by_transport["long-poll"]["session"] == hop.session_id[:6]
    assert by_transport["websocket"]["session"] == link.session
    for peer in sessions["peers"]:
        host, port = peer["peer"].rsplit(":", 1)
        assert host == "127.0.0.1" and 0 < int(port) < 65536
        assert len(peer["session"]) == 6
        since = datetime.fromisoformat(peer["since"])
        assert since.tzinfo is not None
        assert abs((datetime.now(UTC) - since).total_seconds()) < 30


# ------------------------------------------------------------ who may read it


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Via", "1.1 nginx"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9"),
        ("via", "1.1 lower-case"),
    ],
)
async def test_status_through_a_proxy_is_403_naming_public_status(
    make_origin: MakeOrigin, make_gateway: MakeGateway, header: str, value: str
) -> None:
    origin = Origin()
    gw = await make_gateway("server", {"upstream": await make_origin(origin.handle)})
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + STATUS_PATH, headers={header: value}) as resp,
    ):
        assert resp.status == 403
        text = await resp.text()
    assert "--public-status" in text
    assert "upstream" not in text.replace("configured upstream", "")
    assert "127.0.0.1" not in text and __version__ not in text
    assert origin.paths == []


async def test_public_status_serves_anyone(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = Origin()
    gw = await make_gateway(
        "server", {"upstream": await make_origin(origin.handle), "public_status": True}
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + STATUS_PATH, headers={"X-Forwarded-For": "203.0.113.9"}) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["role"] == "server"


async def test_status_through_a_client_gateway_is_refused_by_the_sidecar(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    """A forward proxy adds Via: the sidecar behind it does not tell its details."""
    origin = Origin()
    sidecar = await make_gateway(
        "server", {"upstream": await make_origin(origin.handle), "upgrade": "never"}
    )
    proxy = await make_gateway("client", {"upgrade": "never"})
    async with (
        aiohttp.ClientSession() as session,
        session.get(sidecar.url + STATUS_PATH, proxy=proxy.url) as resp,
    ):
        assert resp.status == 403


@pytest.mark.parametrize(
    ("peer", "headers", "public", "refused"),
    [
        ("127.0.0.1", [], False, False),
        ("127.8.9.10", ["Host"], False, False),
        ("::1", [], False, False),
        ("::ffff:127.0.0.1", [], False, False),
        ("192.0.2.7", [], False, True),
        ("::ffff:192.0.2.7", [], False, True),
        ("2001:db8::1", [], False, True),
        (None, [], False, True),
        ("garbage", [], False, True),
        ("127.0.0.1", ["X-Forwarded-For"], False, True),
        ("192.0.2.7", ["Via"], True, False),
    ],
)
def test_status_refusal_rules(
    peer: str | None, headers: list[str], public: bool, refused: bool
) -> None:
    reason = status_refusal(peer, headers, public=public)
    assert (reason is not None) == refused
    if reason is not None:
        assert "--public-status" in reason
