"""Forward-proxy mode for plain ``http://``: a legacy client sets the gateway as its proxy.

Requests arrive in absolute form (``GET http://origin/path``); the gateway
forwards them to whatever origin they name.  A gateway with an upstream must
refuse the same requests: it is never an open proxy.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.server import Gateway
from gateway.status import STATUS_PATH
from tests.conftest import MakeOrigin
from tests.helpers import running_gateway

LIMIT = 10.0


class Origin:
    """An aiohttp origin that answers every request with what it received, as JSON."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []
        self.url = ""

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        record: dict[str, object] = {
            "method": request.method,
            "path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("latin-1"),
        }
        self.seen.append(record)
        return web.Response(
            text=json.dumps(record), content_type="application/json", headers={"X-Origin": "yes"}
        )


@pytest.fixture
async def origin(make_origin: MakeOrigin) -> Origin:
    server = Origin()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", server.echo)
    server.url = await make_origin(app)
    return server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def forward_proxy() -> AsyncIterator[Gateway]:
    async with running_gateway(shutdown_grace=1.0) as gateway:
        yield gateway


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods_and_bodies_reach_the_named_origin(
    origin: Origin, forward_proxy: Gateway, session: aiohttp.ClientSession, method: str
) -> None:
    body = b"" if method in ("GET", "DELETE", "OPTIONS") else b"payload for " + method.encode()
    url = URL(f"{origin.url}/items/7?q=a%2Fb", encoded=True)
    async with (
        asyncio.timeout(LIMIT),
        session.request(method, url, data=body, proxy=forward_proxy.url) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Origin"] == "yes"
        assert "hopgate" in resp.headers["Via"]
        record = await resp.json()
    assert record["method"] == method
    assert record["path"] == "/items/7?q=a%2Fb"
    assert record["body"] == body.decode()


async def test_headers_are_forwarded_with_via_and_forwarded_for(
    origin: Origin, forward_proxy: Gateway, session: aiohttp.ClientSession
) -> None:
    headers = {"Cookie": "sid=42", "Authorization": "Bearer t0k", "X-App": "legacy"}
    async with (
        asyncio.timeout(LIMIT),
        session.get(f"{origin.url}/h", headers=headers, proxy=forward_proxy.url) as resp,
    ):
        seen = (await resp.json())["headers"]
    assert seen["cookie"] == "sid=42"
    assert seen["authorization"] == "Bearer t0k"
    assert seen["x-app"] == "legacy"
    assert seen["via"] == "1.1 hopgate"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["host"] == origin.url.removeprefix("http://")
    assert "proxy-connection" not in seen


async def test_large_upload_and_download_are_streamed_whole(
    origin: Origin, forward_proxy: Gateway, session: aiohttp.ClientSession
) -> None:
    body = bytes(range(256)) * (8 * 1024)  # 2 MiB
    async with (
        asyncio.timeout(LIMIT),
        session.post(f"{origin.url}/up", data=io.BytesIO(body), proxy=forward_proxy.url) as resp,
    ):
        record = await resp.json()
    assert record["body"].encode("latin-1") == body


async def test_status_path_of_another_host_is_forwarded_not_answered(
    origin: Origin, forward_proxy: Gateway, session: aiohttp.ClientSession
) -> None:
    async with (
        asyncio.timeout(LIMIT),
        session.get(f"{origin.url}{STATUS_PATH}", proxy=forward_proxy.url) as resp,
    ):
        record = await resp.json()
    assert record["path"] == STATUS_PATH
    assert len(origin.seen) == 1


async def test_unreachable_origin_gets_502(
    forward_proxy: Gateway, session: aiohttp.ClientSession
) -> None:
    async with (
        asyncio.timeout(LIMIT),
        session.get("http://127.0.0.1:9/x", proxy=forward_proxy.url) as resp,
    ):
        assert resp.status == 502
        assert "could not connect" in await resp.text()


@pytest.mark.parametrize("role", ["server", "client"])
async def test_gateway_with_upstream_refuses_absolute_form(
    origin: Origin, session: aiohttp.ClientSession, role: str
) -> None:
    """Sidecar and reverse gateways forward only to their upstream: not an open proxy."""
    async with (
        running_gateway(role, upstream="http://127.0.0.1:9") as gateway,
        asyncio.timeout(LIMIT),
        session.get(f"{origin.url}/secret", proxy=gateway.url) as resp,
    ):
        assert resp.status == 400
        assert "not an open proxy" in await resp.text()
    assert origin.seen == []


async def test_forward_proxy_refuses_origin_form_with_a_hint(
    forward_proxy: Gateway, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT), session.get(f"{forward_proxy.url}/x") as resp:
        assert resp.status == 400
        assert "http_proxy=" in await resp.text()
