"""Legacy Comet traffic across upgraded hops: direct, behind real proxies, in chains.

::

    legacy chat client -> client gw ══ hop ══> [nginx | HAProxy] -> server gw -> Comet origin

The hop is a WebSocket where the path passes one (direct, nginx with the
WebSocket recipe, HAProxy) and a long-poll session where it does not (nginx's
default recipe).  Discovery through a proxy works by the well-known hello
path, since a compliant proxy drops the hop-by-hop note.  Each test checks
what a user sees: the chat works, nothing lost or duplicated, and the client
gateway's ``/.hopgate/status`` names the hop's transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.core import discovery
from gateway.demo.comet import make_app
from gateway.demo.legacy_client import ChatMessage, LegacyChatClient
from gateway.server import Gateway
from gateway.status import STATUS_PATH
from tests.helpers import until
from tests.hop.conftest import StartGateway
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)

pytestmark = pytest.mark.timeout(90)

#: How long the Comet origin holds an empty poll.
HOLD = 1.0

#: The transport a hop settles on behind each reverse proxy (None = direct).
BEHIND: dict[str | None, str] = {
    None: "websocket",
    "nginx": "long-poll",
    "nginx-ws": "websocket",
    "haproxy": "websocket",
}


async def hop_status(gw: Gateway) -> dict[str, Any]:
    """The gateway's upstream entry as ``GET /.hopgate/status`` serves it."""
    async with aiohttp.ClientSession() as http, http.get(gw.url + STATUS_PATH) as resp:
        assert resp.status == 200
        doc = await resp.json()
    [entry] = doc["upstreams"]
    assert isinstance(entry, dict)
    return entry


def transport(gw: Gateway) -> str:
    [state] = gw.stats.upstreams.values()
    return state.transport


def peer(gw: Gateway) -> str:
    [state] = gw.stats.upstreams.values()
    return state.peer


async def comet_origin(make_origin: Any) -> str:
    url: str = await make_origin(make_app(hold=HOLD))
    return url


async def chat(via: str, direct: str, rounds: int = 5) -> None:
    """``ann`` talks through ``via``, ``bob`` straight to the origin; both see everything.

    Nothing lost, nothing duplicated, order kept (the origin's ids are
    consecutive).
    """
    seen_ann: list[ChatMessage] = []
    seen_bob: list[ChatMessage] = []
    async with (
        LegacyChatClient(via, "ann", seen_ann.append) as ann,
        LegacyChatClient(direct, "bob", seen_bob.append) as bob,
    ):
        ann.start()
        bob.start()
        for i in range(rounds):
            await ann.send(f"from ann {i}")
            await bob.send(f"from bob {i}")
        total = 2 * rounds
        await until(
            lambda: len(seen_ann) >= total and len(seen_bob) >= total,
            f"{total} messages at both clients",
        )
        # One more held poll through the gateway, answered when bob speaks.
        await asyncio.sleep(HOLD / 2)
        await bob.send("last")
        await until(lambda: len(seen_ann) > total, "the message ending a held poll")
        assert ann.errors == 0
    for seen in (seen_ann, seen_bob):
        ids = [m.id for m in seen]
        assert ids == list(range(1, len(ids) + 1)), ids
    assert [m.text for m in seen_ann] == [m.text for m in seen_bob][: len(seen_ann)]


# ------------------------------------------------------------------- direct


async def test_comet_chat_over_a_websocket_hop(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = await comet_origin(make_origin)
    server = await start_gateway("server", {"upstream": origin})
    client = await start_gateway("client", {"upstream": server.url})
    await until(lambda: transport(client) == "websocket", "the websocket hop")
    before = server.stats.requests_total
    await chat(client.url, origin)
    # Every request of ann's rode the session: none hit the server's HTTP side.
    assert server.stats.requests_total == before
    status = await hop_status(client)
    assert status["transport"] == "websocket"
    assert status["peer"] == "gateway"
    assert (status["upgrades"], status["fallbacks"]) == (1, 0)
    assert status["requests"] >= 11
    assert client.stats.active_sessions == 1
    assert server.stats.active_sessions == 1


async def test_upgrade_never_stays_plain(make_origin: Any, start_gateway: StartGateway) -> None:
    origin = await comet_origin(make_origin)
    server = await start_gateway("server", {"upstream": origin})
    client = await start_gateway("client", {"upstream": server.url, "upgrade": "never"})
    before = server.stats.requests_total
    await chat(client.url, origin, rounds=3)
    await asyncio.sleep(0.5)
    status = await hop_status(client)
    assert status["transport"] == "plain"
    assert (status["upgrades"], status["peer"]) == (0, "unknown")
    assert client.stats.active_sessions == 0
    assert server.stats.active_sessions == 0
    # The server gateway saw ann's polls and sends, and no hello, no session.
    assert server.stats.requests_total - before >= 4


async def test_server_gateway_set_to_never_is_a_legacy_peer(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    """A ``--upgrade never`` gateway does not answer the hello: the hop stays plain."""
    origin = await comet_origin(make_origin)
    server = await start_gateway("server", {"upstream": origin, "upgrade": "never"})
    client = await start_gateway("client", {"upstream": server.url})
    await until(lambda: peer(client) == "legacy", "the hello to be judged")
    await chat(client.url, origin, rounds=3)
    assert transport(client) == "plain"
    assert server.stats.active_sessions == 0


# ------------------------------------------------------- behind real proxies


@pytest.mark.parametrize("proxy", ["nginx", "nginx-ws", "haproxy"])
async def test_comet_chat_through_a_reverse_proxy(
    proxy: str,
    make_origin: Any,
    start_gateway: StartGateway,
    proxies: Proxies,  # noqa: F811
) -> None:
    origin = await comet_origin(make_origin)
    server = await start_gateway("server", {"upstream": origin})
    front = proxies.reverse(proxy, server.url)
    client = await start_gateway("client", {"upstream": front.url})
    expected = BEHIND[proxy]
    await until(lambda: transport(client) == expected, f"a {expected} hop behind {proxy}")
    await chat(client.url, origin)
    status = await hop_status(client)
    assert status["transport"] == expected
    assert status["peer"] == "gateway"
    if expected == "long-poll":
        # It tried the WebSocket first: the refusal is a fallback, and says why.
        assert status["fallbacks"] == 1
        assert status["last_error"].startswith("WebSocket upgrade refused (")
        assert status["transitions"][0]["reason"] == "upgrade_refused"
    else:
        assert status["fallbacks"] == 0
    assert server.stats.active_sessions == 1
    # Found by the hello: the proxy dropped the hop-by-hop note.
    assert f"{discovery.HELLO_PATH}?nonce=" in front.logs() or proxy == "haproxy"


# ------------------------------------------------------------------- chains

CHAINS = [
    (None, None),
    ("nginx", None),
    (None, "nginx"),
    ("nginx", "haproxy"),
    ("nginx-ws", "nginx"),
]


@pytest.mark.parametrize(
    ("first", "second"), CHAINS, ids=[f"{a or 'direct'}+{b or 'direct'}" for a, b in CHAINS]
)
async def test_chain_of_three_gateways(
    first: str | None,
    second: str | None,
    make_origin: Any,
    start_gateway: StartGateway,
    proxies: Proxies,  # noqa: F811
) -> None:
    """client gw -> [proxy] -> relay gw -> [proxy] -> server gw -> origin."""
    origin = await comet_origin(make_origin)
    server = await start_gateway("server", {"upstream": origin})
    to_server = proxies.reverse(second, server.url).url if second else server.url
    # A relay looks for the next gateway like a client gateway does.
    relay = await start_gateway("client", {"upstream": to_server})
    to_relay = proxies.reverse(first, relay.url).url if first else relay.url
    client = await start_gateway("client", {"upstream": to_relay})
    await until(
        lambda: transport(client) == BEHIND[first] and transport(relay) == BEHIND[second],
        f"hops {BEHIND[first]} and {BEHIND[second]}",
    )
    before = server.stats.requests_total
    await chat(client.url, origin)
    assert (await hop_status(client))["transport"] == BEHIND[first]
    assert (await hop_status(relay))["transport"] == BEHIND[second]
    assert relay.stats.active_sessions == 2  # one accepted, one opened
    if BEHIND[second] == "websocket":
        # The relay passed ann's streams on over its own session: nothing
        # reached the server gateway as HTTP.
        assert server.stats.requests_total == before
