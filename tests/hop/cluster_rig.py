"""Two real ``hopgate server`` instances of one cluster behind round robin, one client gateway.

Shared by the drain and failover tests: the instances are real processes
(signals and kill -9 matter), the origin and the balancer run in the test's
loop. ``owner()`` says which instance holds the client's hop session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import MakeOrigin
from tests.helpers import until
from tests.hop.balancer import RoundRobin, round_robin
from tests.processes import GatewayProcess, SpawnGateway, free_port

#: How long the origin holds /hold (a legacy long-poll).
HOLD = 2.0
CLUSTER_SECRET = "drain-and-failover-test-secret"


@dataclass
class Origin:
    """The legacy origin: /hold answers after HOLD s, /ws echoes, anything else at once."""

    seen: list[str]
    arrived: asyncio.Event

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.path}")
        self.arrived.set()
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(msg.data)
            return ws
        body = await request.read()
        if request.path.startswith("/hold"):
            await asyncio.sleep(HOLD)
        return web.Response(text=f"answered {request.path} ({len(body)} bytes)")

    def count(self, line: str) -> int:
        return self.seen.count(line)


@dataclass
class Rig:
    origin: Origin
    servers: list[GatewayProcess]
    balancer: RoundRobin
    client: GatewayProcess
    http: aiohttp.ClientSession
    #: What the hop runs on: "long-poll" when the balancer refuses WebSockets.
    transport: str = "websocket"

    async def status(self, gw: GatewayProcess) -> dict[str, Any]:
        async with self.http.get(gw.url + "/.hopgate/status") as resp:
            result: dict[str, Any] = await resp.json()
            return result

    async def hop(self) -> dict[str, Any]:
        """The client's one upstream entry (transport, session...) and its ``hop`` counters."""
        status = await self.status(self.client)
        return {**status["upstreams"][0], **status["hop"]}

    async def owner(self) -> tuple[GatewayProcess, GatewayProcess]:
        """(the instance holding the client's session, the other one)."""
        active = [(await self.status(s))["sessions"]["active"] for s in self.servers]
        assert sorted(active) == [0, 1], active
        owner = self.servers[active.index(1)]
        return owner, self.servers[1 - active.index(1)]

    async def upgraded(self, other_than: str | None = None) -> str:
        """Wait for a session on the rig's transport (another than ``other_than``); its id."""

        async def ready() -> bool:
            hop = await self.hop()
            return hop["transport"] == self.transport and hop["session"] not in (None, other_than)

        await until(ready, f"a hop session on {self.transport}", timeout=20.0)
        session: str = (await self.hop())["session"]
        return session


@contextlib.asynccontextmanager
async def cluster(
    make_origin: MakeOrigin,
    spawn_gateway: SpawnGateway,
    *,
    grace: float = 8.0,
    transport: str = "websocket",
) -> AsyncIterator[Rig]:
    origin = Origin(seen=[], arrived=asyncio.Event())
    url = await make_origin(origin.handle)
    ports = [free_port(), free_port()]
    # One cluster (issue 9 item 1): a request for the other's session, which
    # round robin sends anywhere, is passed to its owner.
    servers = await asyncio.gather(
        *(
            asyncio.to_thread(
                spawn_gateway,
                "server",
                *("--upstream", url, "--shutdown-grace", str(grace)),
                *("--cluster-secret", CLUSTER_SECRET, "--advertise", f"http://127.0.0.1:{port}"),
                listen=f"127.0.0.1:{port}",
            )
            for port in ports
        )
    )
    refuse = transport == "long-poll"
    async with round_robin([s.port for s in servers], refuse_websocket=refuse) as balancer:
        client = await asyncio.to_thread(
            spawn_gateway, "client", "--upstream", balancer.url, "--shutdown-grace", "2"
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            yield Rig(origin, list(servers), balancer, client, http, transport)
