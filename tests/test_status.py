"""``GET /.hopgate/status``: answered by every gateway itself, never forwarded."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from gateway import __version__
from gateway.status import STATUS_PATH, GatewayStats, status_refusal

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(30)


class Origin:
    """Records every path it is asked for; ``/hold`` waits until released."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        if request.path == "/hold":
            self.holding.set()
            await self.release.wait()
        return web.Response(text="origin")


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
        assert doc["streams"] == {"active": 0}
        assert doc["sessions"] == {"active": 0}
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
            "last_error": "",
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
            assert await resp.text() == "origin"
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
            "last_error": "",
        }
    ]
    assert doc["streams"] == {"active": 3}
    assert doc["version"] == __version__
    assert doc["uptime_s"] >= 0


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
