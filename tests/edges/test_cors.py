"""CORS on hop-session requests: a page on another origin may use an allowing gateway."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.transports.handshake import SESSION_PATH
from tests.helpers import running_gateway

PAGE = "http://127.0.0.1:1"  # the page's origin (nothing need listen there)
EVIL = "https://evil.example"
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials")


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-hopgate-token",
    }


async def test_allowed_origin_gets_preflight_and_readable_answers() -> None:
    async with (
        running_gateway("server", upstream="http://127.0.0.1:9", allowed_origins=[PAGE]) as gw,
        aiohttp.ClientSession() as http,
    ):
        url = gw.url + SESSION_PATH
        async with http.options(url, headers=_preflight(PAGE)) as resp:
            assert resp.status == 204, await resp.text()
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE
            assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST"
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "x-hopgate-token" in allowed and "content-type" in allowed
            assert "authorization" in allowed  # the shim's auth option
            assert int(resp.headers["Access-Control-Max-Age"]) > 0
            assert "Origin" in resp.headers["Vary"]
            assert "Access-Control-Allow-Credentials" not in resp.headers  # off by default
        async with http.post(url, headers={"Origin": PAGE}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE
            exposed = resp.headers["Access-Control-Expose-Headers"]
            assert "X-Hopgate-Session" in exposed and "X-Hopgate-Token" in exposed
            session_id = resp.headers["X-Hopgate-Session"]
        # A later request of the session (its preflight too) is answered the same way.
        async with http.options(f"{url}/{session_id}", headers=_preflight(PAGE)) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE


async def test_refused_origin_gets_403_naming_the_flag_and_no_cors_headers() -> None:
    async with (
        running_gateway("server", upstream="http://127.0.0.1:9", allowed_origins=[PAGE]) as gw,
        aiohttp.ClientSession() as http,
    ):
        url = gw.url + SESSION_PATH
        for method, headers in (("OPTIONS", _preflight(EVIL)), ("POST", {"Origin": EVIL})):
            async with http.request(method, url, headers=headers) as resp:
                assert resp.status == 403, method
                assert f"--allowed-origin {EVIL}" in await resp.text()
                assert not any(name in resp.headers for name in CORS_HEADERS), method


async def test_default_is_same_origin_only() -> None:
    async with (
        running_gateway("server", upstream="http://127.0.0.1:9") as gw,
        aiohttp.ClientSession() as http,
    ):
        url = gw.url + SESSION_PATH
        async with http.options(url, headers=_preflight(PAGE)) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        own = f"http://127.0.0.1:{gw.port}"
        async with http.post(url, headers={"Origin": own}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == own
        async with http.post(url) as resp:  # not a browser: no CORS to answer
            assert resp.status == 200
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.options(url) as resp:  # no Origin: not a preflight, as before
            assert resp.status == 405


async def test_allow_credentials_flag() -> None:
    async with (
        running_gateway(
            "server", upstream="http://127.0.0.1:9", allowed_origins=[PAGE], allow_credentials=True
        ) as gw,
        aiohttp.ClientSession() as http,
    ):
        url = gw.url + SESSION_PATH
        async with http.options(url, headers=_preflight(PAGE)) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        async with http.post(url, headers={"Origin": PAGE}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE


async def test_websocket_origin_is_checked_the_same_way() -> None:
    async with (
        running_gateway("server", upstream="http://127.0.0.1:9", allowed_origins=[PAGE]) as gw,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(gw.url + SESSION_PATH, headers={"Origin": PAGE}) as resp:
            session_id = resp.headers["X-Hopgate-Session"]
        url = f"{gw.url}{SESSION_PATH}/{session_id}?epoch=1"
        async with http.ws_connect(url, protocols=["hopgate.v1"], headers={"Origin": PAGE}) as ws:
            assert ws.protocol == "hopgate.v1"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, protocols=["hopgate.v1"], headers={"Origin": EVIL})
        assert refused.value.status == 403
