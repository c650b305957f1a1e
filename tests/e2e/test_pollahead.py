"""Poll-ahead end to end: unmodified long-poll apps through two gateways with ``--poll-ahead``.

::

    legacy clients -> hopgate client ══ HopPath ══> hopgate server --poll-ahead RULE -> origin

The demo Comet chat with ``GET /poll since=json:next`` and python-socketio
(Engine.IO polling) with ``engineio``: every message exactly once, in
order, with the hop on a WebSocket, on long-poll and switched mid-stream
(a prediction is in flight at every switch); the status counters show the
predictions were used. Then the edge cases: a poll with a cursor the
gateway did not predict gets the origin's full answer, a client that leaves
mid-stream, a close packet, a cut hop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import engineio
import pytest
from aiohttp import web

from gateway.demo.comet import ROOM, make_app
from gateway.glue.pollahead import WINDOW
from gateway.server import Gateway
from tests.conftest import MakeOrigin

from .harness import (
    HOLD,
    VARIANTS,
    Chat,
    ChatRun,
    Gateways,
    HopPath,
    Variant,
    count_sends,
    gateways_fixture,  # noqa: F401  (the ``gateways`` fixture)
    hop_path,
    run_chat,
    until,
)
from .sio_scenario import Scenario, make_origin_app, run_scenario

pytestmark = pytest.mark.timeout(90)

COMET_RULE = "GET /poll since=json:next"


async def ahead_path(variant: Variant, gateways: Gateways, origin_url: str, rule: str) -> HopPath:
    """``harness.hop_path`` with the server gateway predicting ``rule``'s polls."""
    return await hop_path(variant, gateways, origin_url, poll_ahead=(rule,))


async def status(gw: Gateway) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(10),
        http.get(f"{gw.url}/.hopgate/status") as resp,
    ):
        doc: dict[str, Any] = json.loads(await resp.text())
    return doc


def bound_session(n: int) -> aiohttp.ClientSession:
    """A client session from its own loopback address 127.0.0.N: one client, one identity."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0)))


async def run_chat_apart(base_url: str, chat: Chat, timeout: float = 40.0) -> ChatRun:
    """``harness.run_chat`` with each client on its own address (see ``bound_session``)."""
    sessions = [bound_session(i + 2) for i in range(chat.clients)]
    return await run_chat(base_url, chat, timeout=timeout, sessions=sessions)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_comet_chat_with_poll_ahead(
    variant: Variant, make_origin: MakeOrigin, gateways: Gateways
) -> None:
    chat = Chat(messages=35 if variant == "switched" else 20)
    app = make_app(hold=HOLD)
    room, sends = app[ROOM], count_sends(app)
    path = await ahead_path(variant, gateways, await make_origin(app), COMET_RULE)
    path.progress = lambda: (room.last_id, chat.total)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(run_chat_apart(path.client.url, chat))
        tasks.create_task(path.switch())
    assert running.result().problems(room.last_id, sends[0]) == []
    await path.check()
    client, server = (
        (await status(path.client))["poll_ahead"],
        (await status(path.server))["poll_ahead"],
    )
    assert server["made"] > chat.clients, server
    assert client["used"] > chat.clients, client
    assert server["used"] == client["used"], (server, client)


SIO = Scenario(clients=3, messages=25, broadcasts=25, interval=0.05)
#: Sized for the longest hop stall ``switched`` makes: the WebSocket black-holed until the
#: client gateway's watchdog demotes it. With poll-ahead that gateway often has nothing
#: unacked then (its clients' polls are answered from held answers, not sent), so only its
#: unanswered heartbeat PING shows the stall: up to heartbeat + stall_timeout, 1 s + 1 s
#: here (measured 1.0-1.8 s; 0.45-0.65 s without poll-ahead, whose polls are in flight).
#: Unmodified python-engineio must stay inside its own limits across that: at most 16
#: packets in one payload (the ups a client batches into one POST; what the origin queued)
#: and a PONG within ping_timeout of the origin's PING. At 0.1 s and ping_timeout 2 it did
#: not: a 1.6 s stall gave 16-packet POSTs and the origin dropped clients whose PONG was late.
SWITCHED_SIO = Scenario(
    clients=3, messages=50, broadcasts=50, interval=0.2, ping_interval=1, ping_timeout=4
)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_socketio_polling_with_the_engineio_dialect(
    variant: Variant, make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """Unmodified python-socketio both ends, polling only: each message once, in order."""
    scenario = SIO if variant != "switched" else SWITCHED_SIO
    origin = make_origin_app(scenario)
    path = await ahead_path(variant, gateways, await make_origin(origin.app), "engineio")
    total = scenario.clients * scenario.messages
    path.progress = lambda: (sum(len(ups) for ups in origin.received.values()), total)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(run_scenario(path.client.url, origin, scenario, timeout=45))
        tasks.create_task(path.switch())
    problems = running.result().problems()
    assert problems == [], "\n".join(problems)
    await path.check()
    client = (await status(path.client))["poll_ahead"]
    server = (await status(path.server))["poll_ahead"]
    assert client["used"] > 3 * 5, (client, server)
    assert server["made"] >= client["used"], (client, server)


# ------------------------------------------------------------------ edge cases (demo chat)


async def poll(http: aiohttp.ClientSession, url: str, since: int) -> dict[str, Any]:
    async with http.get(f"{url}/poll", params={"since": str(since)}) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
    return doc


async def send(url: str, text: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/send", json={"from": "t", "text": text}) as resp,
    ):
        assert resp.status == 200


async def chained(
    gateways: Gateways, make_origin: MakeOrigin, rule: str = COMET_RULE
) -> tuple[HopPath, str]:
    """A websocket hop with ``rule``; returns it and the origin's URL (for sends)."""
    origin = await make_origin(make_app(hold=HOLD))
    return await ahead_path("websocket", gateways, origin, rule), origin


async def test_an_unpredicted_cursor_gets_the_origins_full_answer(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    path, origin = await chained(gateways, make_origin)
    client = path.client
    async with bound_session(2) as http:
        for i in range(3):
            await send(origin, f"m{i}")
        doc = await poll(http, client.url, 0)  # announces since=3
        assert [m["id"] for m in doc["messages"]] == [1, 2, 3]
        await until(lambda: client.stats.poll_ahead.made >= 1, "the prediction accepted")
        await send(origin, "m3")
        await until(lambda: client.stats.poll_ahead.made >= 2, "the predicted answer pushed")
        again = await poll(http, client.url, 1)  # not the predicted cursor
        assert [m["id"] for m in again["messages"]] == [2, 3, 4]
        assert again["next"] == 4
        await until(lambda: client.stats.poll_ahead.dropped >= 1, "the held answer dropped")
        assert client.stats.poll_ahead.used == 0
        # The chain is gone: the next poll travels as usual and gets what is new.
        await send(origin, "m4")
        fresh = await poll(http, client.url, 4)
        assert [m["text"] for m in fresh["messages"]] == ["m4"]
    await path.check()


async def test_a_client_that_leaves_finds_its_answer_when_it_returns(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """The pushed answer waits for the client's next poll; unused, it expires after hold=."""
    path, origin = await chained(gateways, make_origin, COMET_RULE + " hold=2")
    client, server = path.client, path.server
    async with bound_session(3) as http:
        doc = await poll(http, client.url, 0)
        await until(lambda: server.stats.poll_ahead.made >= 1, "the predicted poll issued")
    # The client is gone (its connections closed); an event comes.
    await send(origin, "while away")
    await until(lambda: client.stats.poll_ahead.made >= 2, "the answer pushed and held")
    async with bound_session(3) as http:
        back = await poll(http, client.url, doc["next"])
    assert [m["text"] for m in back["messages"]] == ["while away"]
    assert client.stats.poll_ahead.used == 1
    # Now it leaves for good: the next pushed answer expires, and its chain ends.
    await send(origin, "nobody reads this")
    await until(lambda: client.stats.poll_ahead.expired >= 1, "the held answers to expire")
    await until(lambda: server.stats.poll_ahead.chains == 0, "the server's chain to end")
    assert client.stats.poll_ahead.chains == 0
    await path.check()


def eager_origin() -> tuple[web.Application, list[int]]:
    """``GET /poll?since=N`` answered at once with event N and ``next`` N+1; the cursors
    polled, in order. A chain on it fills its window as fast as the hop carries answers."""
    polled: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        since = int(request.query["since"])
        polled.append(since)
        return web.json_response({"messages": [{"id": since}], "next": since + 1})

    app = web.Application()
    app.router.add_get("/poll", handle)
    return app, polled


async def test_a_full_window_pauses_the_chain_until_the_client_takes_an_answer(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """A client that stops polling for a while (its hop stalled) finds WINDOW answers held;
    the first one it takes sends the next poll to the origin at once. Ending the chain
    instead left the origin unpolled until the client had drained them all: an Engine.IO
    origin then answered everything queued meanwhile in one payload, over
    python-engineio's 16 packets, and the client dropped its session."""
    app, polled = eager_origin()
    path = await ahead_path("websocket", gateways, await make_origin(app), COMET_RULE + " hold=5")
    server, client = path.server.stats.poll_ahead, path.client.stats.poll_ahead
    async with bound_session(5) as http:
        assert (await poll(http, path.client.url, 0))["next"] == 1
        await until(lambda: server.made >= WINDOW, "the window to fill")
        await asyncio.sleep(0.3)  # the chain is paused: nothing more reaches the origin
        assert (server.made, polled) == (WINDOW, list(range(WINDOW + 1)))
        assert [m["id"] for m in (await poll(http, path.client.url, 1))["messages"]] == [1]
        await until(lambda: server.made > WINDOW, "the chain to go on at the first USED")
        assert len(polled) < WINDOW + 4  # at the client's pace, not drained ahead of it
        for since in range(2, 3 * WINDOW):
            doc = await poll(http, path.client.url, since)
            assert ([m["id"] for m in doc["messages"]], doc["next"]) == ([since], since + 1)
        # Each cursor reached the origin once, in order; every answer the client took was
        # a held one (its polls after the first never went to the origin).
        await until(lambda: server.used == 3 * WINDOW - 1, "the last USED")
        assert polled == list(range(len(polled)))
        assert client.used == server.used == 3 * WINDOW - 1
    # The client left: its held answers expire (hold=5) and the paused chain ends.
    await until(lambda: server.chains == 0 and client.chains == 0, "the chain to end")
    assert client.expired >= 1
    await path.check()


async def test_the_hop_cut_while_a_prediction_is_in_flight(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """The session resumes and delivers the pushed answer: the waiting poll gets it, once."""
    path, origin = await chained(gateways, make_origin)
    client = path.client
    async with bound_session(4) as http:
        doc = await poll(http, client.url, 0)
        await until(lambda: path.server.stats.poll_ahead.made >= 1, "the predicted poll issued")
        waiting = asyncio.create_task(poll(http, client.url, doc["next"]))
        await asyncio.sleep(0.2)
        assert path.proxy.cut() >= 1
        await send(origin, "across the cut")
        got = await asyncio.wait_for(waiting, 15)
        assert [m["text"] for m in got["messages"]] == ["across the cut"]
        await send(origin, "after")
        nxt = await poll(http, client.url, got["next"])
        assert [m["text"] for m in nxt["messages"]] == ["after"]
    assert client.stats.poll_ahead.used >= 1


async def test_socketio_client_closing_ends_the_chain(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """A close packet (disconnect) ends the chain on both gateways; nothing is left held."""
    scenario = Scenario(clients=2, messages=5, broadcasts=5, interval=0.05)
    origin = make_origin_app(scenario)
    path = await ahead_path("websocket", gateways, await make_origin(origin.app), "engineio")
    result = await run_scenario(path.client.url, origin, scenario)
    assert result.problems() == []
    server, client = path.server.stats.poll_ahead, path.client.stats.poll_ahead
    await until(lambda: server.chains == 0, "the server's chains to end")
    await until(lambda: client.chains == 0 and client.held_bytes == 0, "nothing held")
    assert client.used > 0


async def test_python_engineio_polling_both_ends(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """Unmodified python-engineio (no socket.io on top): messages both ways, once, in order."""
    server = engineio.AsyncServer(async_mode="aiohttp", ping_interval=1, ping_timeout=2)
    app = web.Application()
    server.attach(app)
    got_up: list[int] = []
    peers: list[str] = []

    @server.on("connect")
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        peers.append(sid)

    @server.on("message")
    async def up(sid: str, data: str) -> None:
        got_up.append(int(data))

    path = await ahead_path("websocket", gateways, await make_origin(app), "engineio")
    client = engineio.AsyncClient()
    got_down: list[int] = []

    @client.on("message")
    def down(data: str) -> None:
        got_down.append(int(data))

    await client.connect(path.client.url, transports=["polling"])
    try:
        await until(lambda: len(peers) == 1, "the connection")
        for n in range(1, 41):
            await server.send(peers[0], str(n))
            await client.send(str(n))
            await asyncio.sleep(0.02 if n % 5 else 0.3)  # bursts, and held polls between
        await until(lambda: len(got_down) >= 40 and len(got_up) >= 40, "every message")
        await asyncio.sleep(0.5)
    finally:
        await client.disconnect()
    assert got_down == list(range(1, 41))
    assert got_up == list(range(1, 41))
    assert path.client.stats.poll_ahead.used > 5
