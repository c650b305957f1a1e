"""Fixtures of the glue tests: the chain of gateways (``chain.py``) and its origin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.config import Config
from gateway.glue.link import TunnelLink
from gateway.status import GatewayStats
from gateway.transports.connector import SessionConnector
from gateway.transports.endpoint import SessionServer
from gateway.transports.session_settings import SessionSettings
from tests.conftest import MakeOrigin
from tests.glue.chain import BuildChain, Chain, Gate, Origin, forwarder_for, serve, session_settings


@pytest.fixture
async def build_chain() -> AsyncIterator[BuildChain]:
    cleanups: list[Callable[[], Awaitable[Any]]] = []

    def gate(name: str, upstream: str, **config: Any) -> Gate:
        cfg = Config(role="server", upstream=URL(upstream), **config)
        stats = GatewayStats(role="server", mode="sidecar")
        g = Gate(name, URL(upstream), forwarder_for(cfg, stats), stats)
        cleanups.append(g.forwarder.client.close)
        return g

    async def listen(g: Gate, settings: SessionSettings) -> None:
        g.sessions = SessionServer(settings, on_session=g.on_session)
        g.runner, g.url = await serve(g.router())
        sessions, runner = g.sessions, g.runner

        async def stop() -> None:
            for link in g.links:
                await link.close()
            await sessions.close()
            await runner.cleanup()

        cleanups.append(stop)

    async def connect(g: Gate, to: Gate, transport: str, settings: SessionSettings) -> None:
        http = aiohttp.ClientSession()
        connector = SessionConnector(
            URL(to.url),
            http,
            settings,
            prefer=transport,  # type: ignore[arg-type]
        )
        hop = await connector.connect()
        assert hop.transport == transport
        g.next_hop = TunnelLink(hop, opener=True, forwarder=g.forwarder, upstream=URL(to.url))
        link = g.next_hop

        async def stop() -> None:
            await link.close()
            await connector.close()
            await http.close()

        cleanups.append(stop)

    async def build(
        origin: str,
        transport: str,
        *,
        relay: bool = False,
        server_config: dict[str, Any] | None = None,
    ) -> Chain:
        settings = session_settings(transport)
        server = gate("server", origin, **(server_config or {}))
        await listen(server, settings)
        middle = None
        if relay:
            middle = gate("middle", server.url)
            await listen(middle, settings)
            await connect(middle, server, transport, settings)
        first = middle or server
        entry = gate("entry", first.url)
        await connect(entry, first, transport, settings)
        entry.runner, entry.url = await serve(entry.router())
        runner = entry.runner
        cleanups.append(runner.cleanup)
        client = aiohttp.ClientSession(auto_decompress=False)
        cleanups.append(client.close)
        return Chain(client, entry, server, middle, entry.url, origin, [])

    yield build
    for cleanup in reversed(cleanups):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await cleanup()


@pytest.fixture
async def origin(make_origin: MakeOrigin) -> tuple[Origin, str]:
    o = Origin()
    url = await make_origin(o.handle)
    return o, url
