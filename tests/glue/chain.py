"""The chain the glue tests run on: real gateways' pieces over real hop sessions, on loopback.

::

    test client -> downstream server (TunnelLink.forward) == hop session ==> upstream
    SessionServer (TunnelLink, opener=False) -> origin

optionally with a middle gateway whose answering links relay every stream
onto its own opening link. Each server answers with the gateway's own ``Router``
(``Gate.router``), so the downstream one falls back to plain HTTP on
``NotSent`` exactly as the gateway does; the upstream server forwards plain
requests too, so the plain path and the tunnelled path reach the origin
through the same pieces. The fixtures (``build_chain``, ``origin``) are in
``conftest.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from gateway.clients import origin_client
from gateway.config import Config
from gateway.core.tunnel import Event
from gateway.edges.forward import Forwarder
from gateway.glue.link import TunnelLink
from gateway.glue.mailbox import EndpointDone, Mailbox
from gateway.router import Relay, Router
from gateway.settings import RouteSettings, derive
from gateway.status import GatewayStats
from gateway.transports.connector import SessionConnector
from gateway.transports.endpoint import SessionServer
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings

TRANSPORTS = ["websocket", "long-poll"]
MiB = 1024 * 1024


def forwarder_for(config: Config, stats: GatewayStats) -> Forwarder:
    """A Forwarder with the client the gateway builds (``gateway.clients.origin_client``)."""
    settings = derive(config)
    return Forwarder(settings.forward, origin_client(settings.client), stats)


async def serve(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
) -> tuple[web.ServerRunner, str]:
    runner = web.ServerRunner(web.Server(handler, handler_cancellation=True), shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def session_settings(transport: str) -> SessionSettings:
    # Long-poll stays long-poll for the whole test: no WebSocket re-probe.
    return SessionSettings(reprobe_initial=3600, reprobe_max=3600, close_timeout=2)


@dataclass
class Gate:
    """One gateway's pieces: forwarder, its upstream, the links its sessions got."""

    name: str
    upstream: URL
    forwarder: Forwarder
    stats: GatewayStats
    links: list[TunnelLink] = field(default_factory=list)
    next_hop: TunnelLink | None = None
    sessions: SessionServer | None = None
    runner: web.ServerRunner | None = None
    url: str = ""
    not_sent: list[str] = field(default_factory=list)
    plain: bool = False  # downstream: skip the tunnel

    def router(self) -> Router:
        """The gateway's own Router over this gate's pieces: the same dispatch as ``Gateway``.

        Hop session paths go to ``sessions`` (when this gate listens for
        them), everything else to the upstream: over ``next_hop`` while it is
        alive, plain HTTP on ``NotSent`` (recorded in ``not_sent``).
        """
        routes = RouteSettings(
            upstream=self.upstream,
            forward_proxy=False,
            hop_upgrade=self.sessions is not None,
            tls=False,
            public_status=False,
        )
        relay = Relay(self.forwarder, self.tunnel_for, on_not_sent=self.not_sent.append)
        return Router(routes, relay=relay, stats=self.stats, sessions=self.sessions)

    def tunnel_for(self, origin_key: str) -> TunnelLink | None:
        link = self.next_hop
        return link if link is not None and link.alive and not self.plain else None

    def on_session(self, hop: HopSession) -> None:
        self.links.append(
            TunnelLink(
                hop,
                opener=False,
                forwarder=self.forwarder,
                upstream=self.upstream,
                next_hop=lambda: self.next_hop,
                peer_ip="127.0.0.1",
            )
        )


@dataclass
class Chain:
    client: aiohttp.ClientSession
    entry: Gate  # the downstream gateway the client talks to
    server: Gate  # the gateway beside the origin
    middle: Gate | None
    url: str  # where the client sends its requests
    origin: str
    connectors: list[SessionConnector]

    @property
    def down(self) -> TunnelLink:
        assert self.entry.next_hop is not None
        return self.entry.next_hop

    @property
    def up(self) -> TunnelLink:
        return self.server.links[-1]


BuildChain = Callable[..., Awaitable[Chain]]


@dataclass
class Origin:
    """An origin that records every request it saw and can hold or stream."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled_at: float = 0.0
    acks: list[asyncio.Event] = field(default_factory=lambda: [asyncio.Event() for _ in range(5)])
    ws_close: tuple[int, str] | None = None
    download_sent: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = b""
        if path.startswith("/upload"):
            digest, size = hashlib.sha256(), 0
            async for chunk in request.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
            self.record(request, b"")
            return web.json_response({"size": size, "sha256": digest.hexdigest()})
        if path == "/limited":
            self.record(request, b"")
            return web.Response(status=413, text="too big for me", headers={"X-Limit": "10"})
        body = b"".join([chunk async for chunk in request.content.iter_chunked(MiB)])
        self.record(request, body)
        if path == "/hold":
            try:
                await asyncio.sleep(float(request.query.get("s", "30")))
            except asyncio.CancelledError:
                self.cancelled_at = time.monotonic()
                self.cancelled.set()
                raise
            return web.Response(text="held and answered")
        if path == "/download":
            return await self.download(request, int(request.query["n"]))
        if path == "/sse":
            return await self.sse(request)
        if path == "/ws":
            return await self.websocket(request)
        if path == "/refuse-ws":
            return web.Response(status=403, text="no sockets for you", headers={"X-Why": "policy"})
        info = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(
            info, headers={"X-Origin": "yes", "Connection": "X-Drop", "X-Drop": "1"}
        )

    def record(self, request: web.Request, body: bytes) -> None:
        self.seen.append({"method": request.method, "path": request.raw_path, "body": body})
        self.arrived.set()

    async def download(self, request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = n
        await response.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < n:
            piece = block[: min(len(block), n - sent)]
            await response.write(piece)
            sent += len(piece)
            self.download_sent = sent
        await response.write_eof()
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, ack in enumerate(self.acks):
            await response.write(f"data: event {i}\n\n".encode())
            await asyncio.wait_for(ack.wait(), 10)
        await response.write_eof()
        return response

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",), autoclose=False)
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"origin says bye")
                    break
                await ws.send_str("echo " + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(b"echo " + msg.data)
            elif msg.type is WSMsgType.CLOSE:
                self.ws_close = (msg.data, msg.extra)
                await ws.close(code=4001, message=b"answer")
                break
            else:
                break
        return ws


def headers_of(info: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in info["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


async def first_event(
    link: TunnelLink, method: str, target: str, headers: list[tuple[str, str]] | None = None
) -> Event | EndpointDone:
    """Open a stream on ``link`` as its core allows, with no checks, and take what comes back."""
    box = Mailbox()
    sid = link.tunnel.open_http(method, target, headers or [])
    link.driver.register(sid, box)
    link.driver.flush()
    async with asyncio.timeout(5):
        return await box.next_event()
