"""Transport switches while traffic flows: upgrade, demotion, false positives, stalls."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiohttp
from yarl import URL

from gateway.core.session.rtt import STALL_FLOOR
from gateway.transports.connector import SessionConnector
from gateway.transports.errors import HandshakeRefused
from gateway.transports.handshake import SESSION_PATH, TOKEN_HEADER
from gateway.transports.hopsession import HopSession
from gateway.transports.http import capture_refusal, session_client
from tests.faultproxy import FaultProxy
from tests.transports.conftest import (
    FAST,
    NO_REPROBE,
    Inbox,
    MakePair,
    Pair,
    StartServer,
    start_proxy,
    wait_transport,
)


async def _stream(hop: HopSession, prefix: str, stop: asyncio.Event, pace: float = 0.002) -> int:
    """Send numbered messages until ``stop``; returns how many were sent."""
    sent = 0
    while not stop.is_set():
        for _ in range(20):
            if not hop.send(f"{prefix}{sent}"):
                await hop.drain()
                continue
            sent += 1
        await asyncio.sleep(pace)
    return sent


def _assert_sequence(inbox: Inbox, prefix: str, count: int) -> None:
    expected = [f"{prefix}{i}" for i in range(count)]
    got = inbox.messages
    assert len(got) == count, f"{len(got)} received, {count} sent"
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == b, f"message {i}: got {a!r}, expected {b!r} (lost, duplicated or reordered)"


async def _all_arrived_in_order(pair: Pair, up: int, down: int, timeout: float = 15.0) -> None:
    """Every message each way arrived, exactly once and in order."""
    await pair.server_inbox.wait_for(up, timeout=timeout)
    await pair.client_inbox.wait_for(down, timeout=timeout)
    _assert_sequence(pair.server_inbox, "c", up)
    _assert_sequence(pair.client_inbox, "s", down)


async def _run_with_traffic(
    client: HopSession, server: HopSession, body: object
) -> tuple[int, int]:
    stop = asyncio.Event()
    up = asyncio.create_task(_stream(client, "c", stop))
    down = asyncio.create_task(_stream(server, "s", stop))
    try:
        await body  # type: ignore[misc]
    finally:
        stop.set()
    return await up, await down


async def test_switch_lp_ws_repeatedly_while_traffic_flows(make_pair: MakePair) -> None:
    changes: list[tuple[str, str]] = []
    settings = replace(FAST, **NO_REPROBE)
    pair = await make_pair(
        "long-poll", settings, on_transport_change=lambda old, new: changes.append((old, new))
    )
    assert pair.client.transport == "long-poll"

    async def flip() -> None:
        for _ in range(3):
            await asyncio.sleep(0.15)
            assert await pair.connector.upgrade(), pair.connector.last_websocket_failure
            assert pair.client.transport == "websocket"
            await wait_transport(pair.server, "websocket")
            await asyncio.sleep(0.15)
            await pair.connector.demote()
            assert pair.client.transport == "long-poll"
            await wait_transport(pair.server, "long-poll")
        await asyncio.sleep(0.1)
        assert await pair.connector.upgrade()

    async with asyncio.timeout(30):
        up, down = await _run_with_traffic(pair.client, pair.server, flip())
    await _all_arrived_in_order(pair, up, down)
    assert up > 500 and down > 500, "traffic must really flow during the switches"
    assert pair.connector.upgrades == 4
    assert pair.connector.fallbacks == 3
    assert ("long-poll", "websocket") in changes and ("websocket", "long-poll") in changes
    assert pair.client.transport == "websocket"


def _blackhole(proxy: FaultProxy) -> None:
    proxy.blackhole_after_101 = True


def _refuse(proxy: FaultProxy) -> None:
    proxy.refuse_upgrades = True


async def test_ws_black_holed_after_101_stays_on_long_poll(make_pair: MakePair) -> None:
    pair = await make_pair("websocket", FAST, configure_proxy=_blackhole)
    connector = pair.connector
    assert pair.client.transport == "long-poll"
    assert connector.upgrades == 0 and connector.fallbacks == 1
    assert "probe" in str(connector.last_websocket_failure)

    async def reprobes_fail() -> None:
        async with asyncio.timeout(10):
            while connector.probe_failures < 3:  # two re-probes went into the hole meanwhile
                await asyncio.sleep(0.05)

    async with asyncio.timeout(20):
        up, down = await _run_with_traffic(pair.client, pair.server, reprobes_fail())
    assert pair.client.transport == "long-poll"
    await _all_arrived_in_order(pair, up, down, timeout=10.0)
    assert connector.upgrades == 0


async def test_ws_stalling_mid_session_is_demoted_then_reprobed(make_pair: MakePair) -> None:
    changes: list[tuple[str, str]] = []
    settings = replace(FAST, stall_timeout=0.5, reprobe_initial=0.5)
    pair = await make_pair(
        "websocket", settings, proxy=True, on_transport_change=lambda o, n: changes.append((o, n))
    )
    assert pair.proxy is not None and pair.client.transport == "websocket"

    async def scenario() -> None:
        await asyncio.sleep(0.2)
        pair.proxy.blackhole_after_101 = True  # type: ignore[union-attr]
        await wait_transport(pair.client, "long-poll", timeout=5)
        await asyncio.sleep(0.3)  # traffic flows on long-poll; re-probes fail into the hole
        pair.proxy.blackhole_after_101 = False  # type: ignore[union-attr]
        await wait_transport(pair.client, "websocket", timeout=10)
        await asyncio.sleep(0.2)

    async with asyncio.timeout(30):
        up, down = await _run_with_traffic(pair.client, pair.server, scenario())
    await _all_arrived_in_order(pair, up, down)
    assert ("websocket", "long-poll") in changes
    assert pair.connector.fallbacks >= 1 and pair.connector.upgrades >= 2


async def test_upgrades_refused_by_the_path_long_poll_works(make_pair: MakePair) -> None:
    pair = await make_pair("long-poll", replace(FAST, **NO_REPROBE), proxy=True)
    assert pair.proxy is not None
    pair.proxy.refuse_upgrades = True
    assert not await pair.connector.upgrade()
    failure = pair.connector.last_websocket_failure
    assert isinstance(failure, HandshakeRefused) and failure.status == 400, failure
    assert pair.proxy.upgrades_refused == 1
    assert pair.client.transport == "long-poll"
    for i in range(200):
        pair.client.send(f"c{i}")
        pair.server.send(f"s{i}")
    await pair.server_inbox.wait_for(200)
    await pair.client_inbox.wait_for(200)
    _assert_sequence(pair.server_inbox, "c", 200)
    _assert_sequence(pair.client_inbox, "s", 200)


async def test_websocket_first_falls_back_when_upgrades_are_refused(
    make_pair: MakePair,
) -> None:
    pair = await make_pair("websocket", FAST, configure_proxy=_refuse)
    assert pair.client.transport == "long-poll"
    assert pair.connector.fallbacks == 1 and pair.connector.upgrades == 0
    pair.server.send("hello over long-poll")
    await pair.client_inbox.wait_for(1)


async def test_the_hop_client_drops_the_plain_clients_refusal_middleware(
    start_server: StartServer, proxies: list[FaultProxy]
) -> None:
    """A refused upgrade is aiohttp's own error on the hop client, matched by class.

    The Gateway's plain client turns a refused handshake into ``OriginRefused``
    (its middleware); ``session_client`` shares that client's pool without the
    middleware, so the connector sees ``HandshakeRefused`` and falls back.
    """
    handle = await start_server(FAST)
    proxy = await start_proxy(proxies, handle.port)
    proxy.refuse_upgrades = True
    async with aiohttp.ClientSession(middlewares=(capture_refusal,)) as plain:
        async with session_client(plain) as http:
            connector = SessionConnector(URL(proxy.url), http, FAST)
            try:
                hop = await asyncio.wait_for(connector.connect(), timeout=10)
                assert hop.transport == "long-poll"
                failure = connector.last_websocket_failure
                assert isinstance(failure, HandshakeRefused), failure
                assert failure.status == 400 and "refused (400" in str(failure)
                server, inbox = await handle.next_session()
                hop.send("via long-poll")
                await inbox.wait_for(1)
                server.send("back")
            finally:
                await connector.close()
        assert not plain.closed and plain.connector is not None and not plain.connector.closed


async def test_a_late_request_of_an_abandoned_transport_does_not_switch_back(
    make_pair: MakePair,
) -> None:
    """A poll or POST delayed past the switch to WebSocket is stale: answered empty, no switch."""
    pair = await make_pair("long-poll", replace(FAST, **NO_REPROBE))
    old_epoch = pair.client.epoch
    assert await pair.connector.upgrade()
    await wait_transport(pair.server, "websocket")
    url = pair.handle.url + SESSION_PATH + "/" + pair.server.session_id
    assert pair.connector.route is not None
    token = pair.connector.route.headers[TOKEN_HEADER]
    async with aiohttp.ClientSession() as http:
        params = {"last": "0", "epoch": str(old_epoch)}
        async with asyncio.timeout(5):
            async with http.get(url, params=params, headers={TOKEN_HEADER: token}) as resp:
                assert resp.status == 200 and await resp.read() == b""  # at once, not held
            params = {"epoch": str(old_epoch)}
            async with http.post(url, params=params, headers={TOKEN_HEADER: token}) as resp:
                assert resp.status == 200 and await resp.read() == b""
    assert pair.server.transport == "websocket"
    pair.server.send("still on the WebSocket")
    await pair.client_inbox.wait_for(1)


async def test_a_starved_event_loop_is_not_a_stalled_websocket(make_pair: MakePair) -> None:
    """The process got no CPU for longer than the stall floor: the ack is late, the path is not."""
    pair = await make_pair("websocket", replace(FAST, **NO_REPROBE))
    for i in range(40):  # round trips observed: the stall watch sits at its floor
        pair.client.send(f"c{i}")
        await asyncio.sleep(0.005)
    await pair.server_inbox.wait_for(40)
    assert pair.client._core._live.rtt.stall_after(FAST.stall_timeout) == STALL_FLOOR
    for round_ in range(3):
        pair.client.send(f"late{round_}")  # data outstanding: the stall watch runs
        await asyncio.sleep(0)  # written at the end of the turn
        time.sleep(STALL_FLOOR + 0.3)  # no CPU for this process, as on a loaded machine
        await pair.server_inbox.wait_for(41 + round_)
        await asyncio.sleep(0.05)
    assert pair.client.transport == "websocket"
    assert (pair.connector.upgrades, pair.connector.fallbacks) == (1, 0)
    assert pair.server.transport == "websocket"
