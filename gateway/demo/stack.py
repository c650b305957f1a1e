"""The demo's servers: the legacy chat origin and the two gateways in front of it.

Each hop's transport is read from the gateways' own ``/.hopgate/status``
documents rather than assumed, so the path shows whatever the gateways
actually negotiated (``plain``, ``long-poll`` or ``websocket``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import Config, Role, UpgradeMode, build_config
from gateway.demo.comet import make_app
from gateway.server import Gateway
from gateway.status import STATUS_PATH

__all__ = [
    "SHUTDOWN_GRACE",
    "Path",
    "Stack",
    "bracket",
    "fetch_status",
    "hop_transport",
    "read_path",
    "start_stack",
]

#: Gateways and the chat server give held requests this long on shutdown.
SHUTDOWN_GRACE = 2.0


@dataclass
class Stack:
    """The running servers: chat origin, sidecar gateway, client gateway."""

    comet_url: str
    sidecar: Gateway
    client_gw: Gateway


@contextlib.asynccontextmanager
async def start_stack(upgrade: UpgradeMode, hold: float) -> AsyncIterator[Stack]:
    """Start comet server, sidecar and client gateway; stop them in reverse order."""
    runner = web.AppRunner(
        make_app(hold=hold), handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        comet_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with (
            Gateway(_gateway_config("server", comet_url, upgrade)) as sidecar,
            Gateway(_gateway_config("client", sidecar.url, upgrade)) as client_gw,
        ):
            yield Stack(comet_url=comet_url, sidecar=sidecar, client_gw=client_gw)
    finally:
        await runner.cleanup()


def _gateway_config(role: Role, upstream: str, upgrade: UpgradeMode) -> Config:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstream": upstream,
        "upgrade": upgrade,
        "shutdown_grace": SHUTDOWN_GRACE,
    }
    return build_config(role, settings)


@dataclass(frozen=True)
class Path:
    """The path as the gateways report it; a transport is ``"?"`` until known."""

    client_gw: str
    sidecar: str
    comet: str
    gw_hop: str = "?"
    origin_hop: str = "?"

    def render(self, clients: int) -> str:
        return (
            f"{clients} legacy clients --[http]--> client gw {self.client_gw} "
            f"=={bracket(self.gw_hop)}==> sidecar {self.sidecar} "
            f"=={bracket(self.origin_hop)}==> comet {self.comet}"
        )


def bracket(transport: str) -> str:
    return f"[{transport}]"


def hop_transport(status: dict[str, Any], upstream: str) -> str:
    """The transport a gateway's status reports for ``upstream`` (its first, failing that)."""
    upstreams = [u for u in status.get("upstreams", []) if isinstance(u, dict)]
    for entry in upstreams:
        if str(entry.get("url", "")).rstrip("/") == upstream.rstrip("/"):
            return str(entry.get("transport", "?"))
    return str(upstreams[0].get("transport", "?")) if upstreams else "?"


async def fetch_status(session: aiohttp.ClientSession, gateway_url: str) -> dict[str, Any]:
    """One gateway's ``/.hopgate/status``; ``{}`` if it cannot be read right now."""
    try:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with session.get(gateway_url + STATUS_PATH, timeout=timeout) as resp:
            doc = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


async def read_path(session: aiohttp.ClientSession, stack: Stack) -> Path:
    client_status = await fetch_status(session, stack.client_gw.url)
    sidecar_status = await fetch_status(session, stack.sidecar.url)
    return Path(
        client_gw=_hostport(stack.client_gw.url),
        sidecar=_hostport(stack.sidecar.url),
        comet=_hostport(stack.comet_url),
        gw_hop=hop_transport(client_status, stack.sidecar.url),
        origin_hop=hop_transport(sidecar_status, stack.comet_url),
    )


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1]
