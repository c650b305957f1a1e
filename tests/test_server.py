"""The gateway process's lifecycle (``gateway/server.py``): how a stop spends its grace."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from tests.conftest import MakeOrigin
from tests.helpers import HoldingOrigin, loopback_gateway

pytestmark = pytest.mark.timeout(30)

GRACE = 2.0


@pytest.mark.parametrize("role", ["server", "client"])
async def test_a_held_request_keeps_a_stop_waiting_one_grace_not_two(
    make_origin: MakeOrigin, role: str
) -> None:
    """Draining and then closing the listener share ``--shutdown-grace``.

    Supervisors are sized for one grace (systemd ``TimeoutStopSec``, ``docker
    stop -t``): a stop that took two was killed before its log was out.
    """
    origin = HoldingOrigin()
    url = await make_origin(origin.handle)
    gateway = loopback_gateway(role, {"upstream": url, "shutdown_grace": GRACE})  # type: ignore[arg-type]
    await gateway.start()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        held = asyncio.create_task(http.get(f"{gateway.url}/hold"))
        try:
            await asyncio.wait_for(origin.holding.wait(), 10)
            started = loop.time()
            await gateway.stop()
            took = loop.time() - started
        finally:
            origin.release.set()
            with contextlib.suppress(aiohttp.ClientError):
                (await held).release()
    assert GRACE - 0.1 <= took < 1.6 * GRACE, f"stop took {took:.2f} s for a {GRACE} s grace"
