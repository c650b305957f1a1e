"""python-socketio (server and polling client, both unmodified) through hopgate.

::

    socket.io clients -> hopgate client -> [nginx] -> hopgate server -> socket.io server
        (polling only)                  hop                              (aiohttp)

The scenario itself lives in ``sio_scenario`` so it can be rerun with the hop
upgraded.  ``test_scenario_without_gateways`` is the control: if it fails,
the scenario or the library is at fault, not the gateway.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from gateway.server import Gateway
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)

from .sio_scenario import Scenario, SioOrigin, make_origin_app, run_scenario

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

SCENARIO = Scenario(clients=3, messages=25, broadcasts=25, interval=0.1)
TRANSPORTS = ("plain", "long-poll", "websocket")


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
    make_gateway: MakeGateway,
    proxies: Proxies,  # noqa: F811
) -> None:
    """nginx's default recipe between the gateways: the hop cannot be a WebSocket."""
    origin, url = await start_origin(make_origin)
    server = await make_gateway("server", {"upstream": url})
    nginx = proxies.nginx(server.url)
    client = await make_gateway("client", {"upstream": nginx.url})
    result = await run_scenario(client.url, origin, SCENARIO)
    assert result.problems() == []
    hop = await hop_status(client)
    assert hop["transport"] in ("plain", "long-poll"), hop
    assert nginx.log_text("access.log").count("/socket.io/") >= hop["requests"], hop
