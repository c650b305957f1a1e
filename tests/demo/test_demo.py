"""``hopgate demo``: the legacy client, the ledger, and whole runs through two gateways."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.demo.comet import make_app
from gateway.demo.ledger import Ledger, percentile
from gateway.demo.legacy_client import ChatMessage, LegacyChatClient
from gateway.demo.runner import run
from gateway.demo.stack import hop_transport

MakeServer = Callable[..., Awaitable[TestServer]]
HOPGATE = Path(sys.executable).with_name("hopgate")


def msg(msg_id: int, sender: str, cid: str | None) -> ChatMessage:
    return ChatMessage(id=msg_id, sender=sender, text="t", ts=0.0, client_msg_id=cid)


# ---------------------------------------------------------------- ledger (no event loop)


def test_ledger_counts_each_other_client_once() -> None:
    ledger = Ledger(["a", "b", "c"], prefix="p")
    record = ledger.sending("a", "p-1", "hi", now=10.0)
    assert ledger.received("a", msg(1, "a", "p-1"), now=10.001) is None  # own echo
    assert ledger.received("b", msg(1, "a", "p-1"), now=10.002) is None
    assert ledger.received("c", msg(1, "a", "p-1"), now=10.004) is record
    totals = ledger.totals(now=11.0, final=True)
    assert (totals.sent, totals.delivered, totals.expected) == (1, 2, 2)
    assert (totals.lost, totals.duplicated, totals.reordered) == (0, 0, 0)
    assert abs(record.worst_latency - 0.004) < 1e-9


def test_ledger_flags_duplicates_reordering_and_loss() -> None:
    ledger = Ledger(["a", "b"], prefix="p")
    ledger.sending("a", "p-1", "x", now=0.0)
    ledger.sending("a", "p-2", "y", now=0.0)
    ledger.sending("a", "p-3", "z", now=0.0)
    ledger.received("b", msg(2, "a", "p-2"), now=0.1)
    ledger.received("b", msg(2, "a", "p-2"), now=0.1)
    ledger.received("b", msg(1, "a", "p-1"), now=0.1)
    live = ledger.totals(now=1.0)
    assert (live.duplicated, live.reordered, live.in_flight, live.lost) == (1, 1, 1, 0)
    assert ledger.totals(now=100.0).lost == 1
    assert ledger.totals(now=1.0, final=True).lost == 1
    assert not ledger.totals(now=1.0, final=True).ok


def test_ledger_ignores_messages_from_outside_the_demo() -> None:
    ledger = Ledger(["a", "b"], prefix="p")
    assert ledger.received("b", msg(1, "browser", None), now=0.0) is None
    assert ledger.foreign == 1 and ledger.delivered == 0


def test_percentile_and_hop_transport() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    status = {"upstreams": [{"url": "http://h:1", "transport": "websocket"}]}
    assert hop_transport(status, "http://h:1/") == "websocket"
    assert hop_transport(status, "http://other") == "websocket"
    assert hop_transport({}, "http://h:1") == "?"


# ---------------------------------------------------------------- legacy client vs comet


async def test_legacy_client_sends_and_receives(aiohttp_server: MakeServer) -> None:
    server = await aiohttp_server(make_app(hold=5))
    url = str(server.make_url("/"))
    got: list[ChatMessage] = []
    arrived = asyncio.Event()

    def on_message(message: ChatMessage) -> None:
        got.append(message)
        if len(got) == 2:
            arrived.set()

    async with LegacyChatClient(url, "ann", on_message) as ann, LegacyChatClient(url, "bob") as bob:
        ann.start()
        receipt = await bob.send("hello", client_msg_id="b-1")
        await bob.send("again")
        async with asyncio.timeout(3):
            await arrived.wait()
    assert receipt.id == 1 and not receipt.duplicate
    assert [(m.id, m.sender, m.text) for m in got] == [(1, "bob", "hello"), (2, "bob", "again")]
    assert got[0].client_msg_id == "b-1"


async def test_legacy_client_retries_after_errors(aiohttp_server: MakeServer) -> None:
    """A 503 (server full) is retried with backoff instead of ending the loop."""
    answers = [web.Response(status=503, text="busy")]

    async def poll(request: web.Request) -> web.Response:
        if answers:
            return answers.pop()
        message = {"id": 1, "from": "x", "text": "y", "ts": 1.0}
        return web.json_response({"messages": [message], "next": 1})

    app = web.Application()
    app.router.add_get("/poll", poll)
    server = await aiohttp_server(app)
    got = asyncio.Event()
    client = LegacyChatClient(str(server.make_url("/")), "ann", lambda m: got.set())
    async with client:
        client.start()
        async with asyncio.timeout(3):
            await got.wait()
    assert client.errors == 1


# ---------------------------------------------------------------- whole demo runs


async def test_run_two_clients_delivers_everything() -> None:
    out = io.StringIO()
    async with asyncio.timeout(20):
        result = await run(clients=2, duration=3.0, interval=0.3, plain=True, out=out)
    t = result.totals
    assert t.sent > 0
    assert t.delivered == t.sent * (t.clients - 1) == t.expected
    assert (t.lost, t.duplicated, t.reordered, t.send_errors) == (0, 0, 0, 0)
    assert t.latency_p95 is not None and t.latency_p95 < 1.0
    assert result.path.gw_hop in ("plain", "long-poll", "websocket")
    text = out.getvalue()
    assert "==[" in text and "client gw" in text and "sidecar" in text
    assert "Summary:" in text and "0 lost" in text


async def test_run_can_be_stopped_like_ctrl_c() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.5, stop.set)
    async with asyncio.timeout(20):
        result = await run(clients=3, interval=0.2, plain=True, out=io.StringIO(), stop=stop)
    assert result.totals.sent > 0 and result.totals.ok
    assert result.elapsed < 10


async def test_run_with_upgrade_never_and_live_screen() -> None:
    out = io.StringIO()
    async with asyncio.timeout(20):
        result = await run(
            clients=2, duration=1.0, interval=0.2, upgrade="never", plain=False, out=out
        )
    assert result.totals.ok and result.path.gw_hop == "plain"
    assert "\x1b[H" in out.getvalue() and out.getvalue().count("\x1b[?25h") == 1


def test_hopgate_demo_subprocess() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [str(HOPGATE), "demo", "--duration", "3", "--plain"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-> 2/2" in proc.stdout
    assert " 0 lost" in proc.stdout and "Summary:" in proc.stdout
    assert "\x1b[" not in proc.stdout
