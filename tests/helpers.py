"""Small helpers shared by test modules (fixtures live in conftest.py).

Child processes (gateways, proxies) and free ports are in ``tests.processes``,
the bounded waits ``until`` is built on in ``tests.waiting``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway.config import build_config
from gateway.core.ladder import LadderSettings
from gateway.server import Gateway
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


@contextlib.asynccontextmanager
async def running_gateway(role: str = "client", **settings: object) -> AsyncIterator[Gateway]:
    """An in-process gateway on 127.0.0.1:0 for the body of an ``async with``.

    Shutdown grace defaults to 1 s so a test's teardown never waits long.
    """
    settings = {"listen": "127.0.0.1:0", "shutdown_grace": 1.0, **settings}
    config = build_config(role, settings)  # type: ignore[arg-type]
    async with Gateway(config) as gateway:
        yield gateway


async def until(predicate: Predicate, what: str = "the condition", timeout: float = 15.0) -> None:
    """Poll until ``predicate()`` holds (it may be async); fail the test naming ``what`` if not."""
    if not await eventually(predicate, timeout):
        pytest.fail(f"timed out after {timeout}s waiting for {what}")
