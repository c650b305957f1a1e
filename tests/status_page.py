"""A gateway's ``GET /.hopgate/status`` as the tests and benches read it.

Over HTTP only, so it works the same for an in-process gateway and for a
child process of another source tree (``bench/attacks.py --tree``); imports
nothing from ``gateway``.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.hostile.peer import STATUS_PATH
from tests.waiting import eventually


async def status_document(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """The status page of the gateway at ``base_url`` (asserting a 200)."""
    async with http.get(base_url + STATUS_PATH) as resp:
        assert resp.status == 200, f"{base_url}{STATUS_PATH}: {resp.status}"
        doc = json.loads(await resp.read())
    assert isinstance(doc, dict)
    return doc


async def upstream_entry(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """The one upstream of a gateway: ``transport``, ``peer``, ``last_error``, counters."""
    [entry] = (await status_document(http, base_url))["upstreams"]
    assert isinstance(entry, dict)
    return entry


async def active_sessions(http: aiohttp.ClientSession, base_url: str) -> int:
    """How many hop sessions the gateway holds now."""
    return int((await status_document(http, base_url))["sessions"]["active"])


async def warm_until_hop(
    http: aiohttp.ClientSession, client_url: str, timeout: float = 20.0
) -> dict[str, Any]:
    """Send requests through a client gateway until its hop leaves ``plain``.

    A client gateway discovers and upgrades its hop once traffic flows, so a
    test that needs the hop up sends ``GET /warm`` (each answered 200) until
    it is, for at most ``timeout``. Returns the last upstream entry: its
    ``transport`` is still ``plain`` if the hop never came up.
    """
    entry: dict[str, Any] = {}

    async def on_the_hop() -> bool:
        nonlocal entry
        async with http.get(client_url + "/warm") as resp:
            assert resp.status == 200, f"GET /warm through {client_url}: {resp.status}"
        entry = await upstream_entry(http, client_url)
        return bool(entry["transport"] != "plain")

    await eventually(on_the_hop, timeout, interval=0.2)
    return entry
