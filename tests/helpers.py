"""Small helpers shared by test modules (fixtures live in conftest.py).

Child processes (gateways, proxies) and free ports are in ``tests.processes``,
the bounded waits ``until`` is built on in ``tests.waiting``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.config import Role, build_config
from gateway.core.ladder import LadderSettings
from gateway.server import Gateway
from gateway.settings import derive
from gateway.transports.session_settings import SessionSettings
from tests.waiting import Predicate, eventually

#: Back-off short enough for a test; a legacy peer is never asked twice during one.
FAST_LADDER = LadderSettings(retry_initial=0.2, retry_max=1.0, legacy_recheck=600.0)
#: Hop session timings short enough for a test: a WebSocket re-probe within
#: about a second, a stalled one caught in one, a lost frame resent after one.
FAST_SESSION = SessionSettings(
    hold_time=2.0,
    resume_grace=20.0,
    heartbeat=1.0,
    stall_timeout=1.0,
    retransmit_timeout=1.0,
    close_timeout=2.0,
    probe_timeout=0.5,
    connect_timeout=3.0,
    reprobe_initial=0.3,
    reprobe_max=1.0,
)
#: ``dataclasses.replace(FAST_SESSION, **NO_REPROBE)``: never re-probe a
#: WebSocket (keeps a long-poll test on long-poll).
NO_REPROBE = {"reprobe_initial": 3600.0, "reprobe_max": 3600.0}


def loopback_gateway(
    role: Role,
    settings: dict[str, Any] | None = None,
    *,
    ladder: LadderSettings | None = None,
    session: SessionSettings | None = None,
) -> Gateway:
    """A ``Gateway`` (not started) on ``127.0.0.1:0`` from CLI-style settings.

    The config is built as the CLI builds it (``build_config``); ``ladder`` /
    ``session`` replace the back-off and hop session timings derived from it
    (``FAST_LADDER`` / ``FAST_SESSION`` for a test that waits on them). The
    one way every fixture and helper here makes an in-process gateway.
    """
    config = build_config(role, {"listen": "127.0.0.1:0", **(settings or {})})
    derived = derive(config)
    if ladder is not None:
        derived = derived.replace(ladder=ladder)
    if session is not None:
        derived = derived.replace(session=session)
    return Gateway(config, settings=derived)


@contextlib.asynccontextmanager
async def running_gateway(role: Role = "client", **settings: Any) -> AsyncIterator[Gateway]:
    """An in-process gateway on 127.0.0.1:0 for the body of an ``async with``.

    Shutdown grace defaults to 1 s so a test's teardown never waits long.
    """
    async with loopback_gateway(role, {"shutdown_grace": 1.0, **settings}) as gateway:
        yield gateway


async def until(predicate: Predicate, what: str = "the condition", timeout: float = 15.0) -> None:
    """Poll until ``predicate()`` holds (it may be async); fail the test naming ``what`` if not."""
    if not await eventually(predicate, timeout):
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


def upstream_json(gw: Gateway) -> dict[str, Any]:
    """A gateway's one upstream entry, as its status page would serve it, read in-process."""
    [doc] = gw.stats.as_json()["upstreams"]
    assert isinstance(doc, dict)
    return doc


class HoldingOrigin:
    """An origin that records every target it is asked for; ``/hold`` waits until released.

    For tests of what a gateway answers itself (status, metrics, ready):
    ``paths`` stays empty when nothing was forwarded.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        if request.path == "/hold":
            self.holding.set()
            await self.release.wait()
        return web.Response(text=f"origin {request.path}")
