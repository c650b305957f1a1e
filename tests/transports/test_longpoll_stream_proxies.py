"""Streamed long-poll through real nginx, HAProxy and squid (``longpoll_stream``).

The shipped recipes pass streamed answers and request bodies as they come:
the session stays on streams. nginx told to buffer either makes the client
fall back to one batch per request for the session, losing nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.transports.aiohttp_internals import never_resend
from gateway.transports.connector import SessionConnector
from gateway.transports.handshake import SESSION_PATH
from gateway.transports.longpoll_client import LongPollClient
from gateway.transports.longpoll_stream import StreamClient
from gateway.transports.session_settings import SessionSettings
from tests.proxies import Proxies, proxies  # noqa: F401
from tests.transports.conftest import (
    Inbox,
    Pair,
    ServerHandle,
    StartRaw,
    StartServer,
    settings_for,
)
from tests.transports.test_longpoll_stream import exchange, exchange_more

SETTINGS = settings_for("long-poll")


async def test_a_buffering_nginx_makes_the_client_fall_back_losing_nothing(
    start_server: StartServer,
    proxies: Proxies,  # noqa: F811
) -> None:
    """nginx reading request bodies whole before passing them on: plain long-polls, sticky."""
    settings = replace(SETTINGS, connect_timeout=1.0)
    handle = await start_server(settings)
    changes = [("proxy_request_buffering off;", "proxy_request_buffering on;")]
    nginx = proxies.nginx(upstream=handle.url, changes=changes)
    await _through(nginx.url, handle, settings, expect_streams=False)


async def test_a_proxy_buffering_whole_answers_makes_the_client_fall_back(
    start_server: StartServer, start_raw: StartRaw, http: aiohttp.ClientSession
) -> None:
    """A proxy passing on only whole requests and answers (an antivirus proxy): fall back.

    (nginx with ``proxy_buffering on`` still passes a streamed answer's
    bytes as they come, so the buffering here is a Python proxy's.)
    """
    settings = replace(SETTINGS, connect_timeout=1.0)
    handle = await start_server(settings)

    async def buffering(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-hopgate")}
        async with http.request(
            request.method, handle.url + request.path_qs, data=body, headers=headers
        ) as resp:
            answer = await resp.read()
            kept = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-hopgate")}
            return web.Response(status=resp.status, body=answer, headers=kept)

    url = await start_raw(buffering)
    await _through(url, handle, settings, expect_streams=False)


async def test_a_slow_creating_post_does_not_hide_a_proxy_holding_marks(
    start_server: StartServer, start_raw: StartRaw, http: aiohttp.ClientSession
) -> None:
    """The session-creating POST slowed 0.6 s (a loaded machine), the mark's echo held 0.8 s.

    1.5 x 0.6 s + 0.1 s would pass that echo; the first streamed POST's head came
    at once, so the mark is held to that instead and the client falls back.
    """
    handle = await start_server(SETTINGS)
    held: list[bool] = []

    async def slow_create_holding_the_echo(request: web.BaseRequest) -> web.StreamResponse:
        streamed = "stream" in request.query
        if request.method == "POST" and request.path == SESSION_PATH:
            await asyncio.sleep(0.6)
        body = request.content.iter_any() if streamed else await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-hopgate")}
        async with http.request(
            request.method, handle.url + request.path_qs, data=body, headers=headers
        ) as resp:
            kept = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-hopgate")}
            answer = web.StreamResponse(status=resp.status, headers=kept)
            await answer.prepare(request)
            sent = 0
            async for piece in resp.content.iter_any():
                if streamed and request.method == "GET" and not held and sent + len(piece) > 4:
                    cut = max(0, 4 - sent)  # the GET's own mark passes at once
                    await answer.write(piece[:cut])
                    piece, sent = piece[cut:], 4
                    await asyncio.sleep(0.8)  # the first echo, late
                    held.append(True)
                await answer.write(piece)
                sent += len(piece)
            await answer.write_eof()
            return answer

    url = await start_raw(slow_create_holding_the_echo)
    await _through(url, handle, SETTINGS, expect_streams=False)
    assert held, "the proxy held no echo back: the test probed nothing"


async def test_haproxy_holding_small_chunks_makes_the_client_fall_back(
    start_server: StartServer,
    proxies: Proxies,  # noqa: F811
) -> None:
    """HAProxy without ``option http-no-delay`` passes streamed chunks ~200 ms late: fall back."""
    handle = await start_server(SETTINGS)
    proxy = proxies.haproxy(handle.url, [("    option http-no-delay\n", "")])
    await _through(proxy.url, handle, SETTINGS, expect_streams=False)


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_shipped_reverse_proxies_carry_streams(
    start_server: StartServer,
    proxies: Proxies,  # noqa: F811
    kind: str,
) -> None:
    handle = await start_server(SETTINGS)
    proxy = proxies.reverse(kind, handle.url)
    await _through(proxy.url, handle, SETTINGS, expect_streams=True)


async def test_squid_carries_streams(
    start_server: StartServer,
    proxies: Proxies,  # noqa: F811
) -> None:
    handle = await start_server(SETTINGS)
    squid = proxies.squid()
    await _through(handle.url, handle, SETTINGS, expect_streams=True, http_proxy=squid.url)


async def _through(
    url: str,
    handle: ServerHandle,
    settings: SessionSettings,
    *,
    expect_streams: bool,
    http_proxy: str | None = None,
) -> None:
    async with aiohttp.ClientSession(proxy=http_proxy) as http:
        never_resend(http)
        connector = SessionConnector(URL(url), http, settings, prefer="long-poll")
        client = await asyncio.wait_for(connector.connect(), 10)
        try:
            server, server_inbox = await handle.next_session()
            client_inbox = Inbox()
            client_inbox.attach(client)
            pair = Pair(connector, client, client_inbox, server, server_inbox, handle, None)
            await exchange(pair, 150)
            await exchange_more(pair, 150, 50)
            assert connector.streams is expect_streams
            kind = StreamClient if expect_streams else LongPollClient
            assert type(client.current) is kind
        finally:
            await connector.close()
