"""python-socketio (server and polling client, both unmodified) through hopgate.

::

    socket.io clients -> hopgate client -> [nginx | HopPath] -> hopgate server -> socket.io server
        (polling only)                   hop                                       (aiohttp)

The scenario itself lives in ``sio_scenario`` so it can be rerun with the hop
in every state: plain (``--upgrade never``), a long-poll session through
nginx's default recipe, and over a ``HopPath`` (see ``tests.e2e``) with the
session on a WebSocket, on long-poll, and switched between them mid-stream.
``test_scenario_without_gateways`` is the control: if it fails, the scenario
or the library is at fault, not the gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from gateway.server import Gateway
from gateway.transports.handshake import SESSION_PATH
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)

from .harness import (
    VARIANTS,
    Gateways,
    Variant,
    gateways_fixture,  # noqa: F401  (the ``gateways`` fixture)
    hop_path,
    transport,
    until,
)
from .sio_scenario import Scenario, SioOrigin, make_origin_app, run_scenario

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

SCENARIO = Scenario(clients=3, messages=25, broadcasts=25, interval=0.1)
TRANSPORTS = ("plain", "long-poll", "websocket")
NGINX_REQUEST = re.compile(r'"[A-Z]+ (\S+) HTTP/1\.[01]"')


async def hop_status(gateway: Gateway) -> dict[str, Any]:
    """The client gateway's view of its upstream hop (from ``/.hopgate/status``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/.hopgate/status") as resp,
    ):
        doc = json.loads(await resp.text())
    upstream: dict[str, Any] = doc["upstreams"][0]
    return upstream


async def start_origin(make_origin: MakeOrigin) -> tuple[SioOrigin, str]:
    origin = make_origin_app(SCENARIO)
    return origin, await make_origin(origin.app)


async def test_scenario_without_gateways(make_origin: MakeOrigin) -> None:
    origin, url = await start_origin(make_origin)
    result = await run_scenario(url, origin, SCENARIO)
    assert result.problems() == []


@pytest.mark.parametrize(
    ("upgrade", "expected_transports"),
    [
        # --upgrade never: the hop is plain HTTP forwarding, whatever the peer.
        ("never", ("plain",)),
        # --upgrade auto (the default): whatever the gateways negotiate.
        ("auto", TRANSPORTS),
    ],
    ids=["upgrade-never", "upgrade-auto"],
)
async def test_scenario_through_gateways(
    upgrade: str,
    expected_transports: tuple[str, ...],
    make_origin: MakeOrigin,
    make_gateway: MakeGateway,
) -> None:
    origin, url = await start_origin(make_origin)
    server = await make_gateway("server", {"upstream": url, "upgrade": upgrade})
    client = await make_gateway("client", {"upstream": server.url, "upgrade": upgrade})
    result = await run_scenario(client.url, origin, SCENARIO)
    assert result.problems() == []
    hop = await hop_status(client)
    assert hop["transport"] in expected_transports, hop
    assert hop["requests"] > 0, hop


async def test_scenario_through_gateways_and_nginx(
    make_origin: MakeOrigin,
    proxies: Proxies,  # noqa: F811  (set up before ``gateways``, so nginx outlives them)
    gateways: Gateways,
) -> None:
    """nginx's default recipe between the gateways: the hop is a long-poll session.

    nginx drops the hop-by-hop note and the ``Upgrade`` header, so the client
    gateway finds the server gateway by the hello and the hop rides held
    ``/.hopgate/session`` polls through nginx.  Production session timings.
    """
    origin, url = await start_origin(make_origin)
    server = await gateways("server", {"upstream": url}, session=None)
    nginx = proxies.nginx(server.url)
    client = await gateways("client", {"upstream": nginx.url}, session=None)
    await until(lambda: transport(client) == "long-poll", "a long-poll hop through nginx")
    logged_before = len(nginx.log_text("access.log"))
    result = await run_scenario(client.url, origin, SCENARIO)
    assert result.problems() == []
    hop = await hop_status(client)
    assert (hop["transport"], hop["peer"]) == ("long-poll", "gateway"), hop
    # The refused upgrade counts as a fallback, and status says why.
    assert (hop["upgrades"], hop["fallbacks"]) == (1, 1), hop
    assert hop["transitions"][0]["reason"] == "upgrade_refused", hop
    assert hop["requests"] >= SCENARIO.clients * 2, hop
    # What crossed nginx during the scenario: session polls and posts, and
    # not one socket.io request of its own. The hop streams (a GET and a POST
    # each carrying many batches), which nginx logs once they end: stop first.
    # nginx writes the line when it sees the connection close, a moment later.
    await client.stop()

    def streams_logged() -> bool:
        log = nginx.log_text("access.log")[logged_before:]
        return len([p for p in NGINX_REQUEST.findall(log) if "stream=1" in p]) >= 2

    await until(streams_logged, "nginx to log the hop's streamed GET and POST", timeout=10)
    log = nginx.log_text("access.log")[logged_before:]
    paths = NGINX_REQUEST.findall(log)
    assert all(p.startswith(f"{SESSION_PATH}/") for p in paths), paths
    assert "/socket.io/" not in log


# ------------------------------------------------------- the hop upgraded (part 8)

#: Long enough for the switched variant's four switches to happen mid-stream.
SWITCHED = Scenario(clients=3, messages=50, broadcasts=50, interval=0.1)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_scenario_over_a_hop_session(
    variant: Variant, make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """The socket.io scenario with the hop on websocket, on long-poll, and switched mid-stream.

    Every ``up``, ``echo`` and ``news`` message id arrives exactly once and in
    order (``problems()``); ``HopPath.check`` asserts the transports the
    client gateway's status went through and its upgrade/fallback counters.
    """
    scenario = SWITCHED if variant == "switched" else SCENARIO
    origin = make_origin_app(scenario)
    path = await hop_path(variant, gateways, await make_origin(origin.app))
    total = scenario.clients * scenario.messages
    path.progress = lambda: (sum(len(ups) for ups in origin.received.values()), total)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(run_scenario(path.client.url, origin, scenario))
        tasks.create_task(path.switch())
    result = running.result()
    assert result.problems() == []
    await path.check()
