"""The legacy Comet chat server on its own: poll/send semantics and limits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.demo.comet import make_app

Client = TestClient[Any, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

HOLD = 0.5


@pytest.fixture
async def chat(aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(make_app(hold=HOLD, history=5, max_body=256, max_held=2))


async def send(chat: Client, text: str, sender: str = "ann", **extra: Any) -> dict[str, Any]:
    resp = await chat.post("/send", json={"from": sender, "text": text, **extra})
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def poll(chat: Client, since: int) -> dict[str, Any]:
    resp = await chat.get("/poll", params={"since": since})
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def test_poll_returns_at_once_when_messages_exist(chat: Client) -> None:
    await send(chat, "one")
    await send(chat, "two", sender="bob")
    async with asyncio.timeout(HOLD / 2):
        doc = await poll(chat, 0)
    assert [(m["id"], m["from"], m["text"]) for m in doc["messages"]] == [
        (1, "ann", "one"),
        (2, "bob", "two"),
    ]
    assert doc["next"] == 2
    assert all(isinstance(m["ts"], float) for m in doc["messages"])


async def test_since_returns_only_newer_messages(chat: Client) -> None:
    for text in "abc":
        await send(chat, text)
    async with asyncio.timeout(1):
        doc = await poll(chat, 2)
    assert [m["id"] for m in doc["messages"]] == [3]
    assert doc["next"] == 3


async def test_poll_holds_then_returns_empty(chat: Client) -> None:
    await send(chat, "old")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(HOLD * 4):
        doc = await poll(chat, 1)
    assert doc == {"messages": [], "next": 1}
    assert loop.time() - started >= HOLD * 0.9


async def test_held_poll_is_woken_by_send(chat: Client) -> None:
    loop = asyncio.get_running_loop()
    held = asyncio.create_task(poll(chat, 0))
    await asyncio.sleep(0.1)
    assert not held.done()
    started = loop.time()
    await send(chat, "wake up")
    async with asyncio.timeout(HOLD / 2):
        doc = await held
    assert loop.time() - started < HOLD / 2
    assert [m["text"] for m in doc["messages"]] == ["wake up"]


async def test_since_ahead_of_server_resyncs(chat: Client) -> None:
    await send(chat, "x")
    async with asyncio.timeout(HOLD / 2):
        doc = await poll(chat, 99)
    assert doc == {"messages": [], "next": 1}


async def test_history_is_a_ring_buffer(chat: Client) -> None:
    for i in range(8):
        await send(chat, f"m{i}")
    async with asyncio.timeout(1):
        doc = await poll(chat, 0)
    assert [m["id"] for m in doc["messages"]] == [4, 5, 6, 7, 8]


async def test_client_msg_id_makes_a_retried_send_idempotent(chat: Client) -> None:
    first = await send(chat, "once", client_msg_id="c-1")
    again = await send(chat, "once", client_msg_id="c-1")
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["id"] == first["id"] and again["client_msg_id"] == "c-1"
    async with asyncio.timeout(1):
        doc = await poll(chat, 0)
    assert [m["client_msg_id"] for m in doc["messages"]] == ["c-1"]


async def test_oversized_message_is_413(chat: Client) -> None:
    resp = await chat.post("/send", json={"from": "ann", "text": "x" * 1000})
    assert resp.status == 413
    assert "too large" in (await resp.json())["error"]


async def test_bad_requests_are_400(chat: Client) -> None:
    assert (await chat.get("/poll", params={"since": "-1"})).status == 400
    assert (await chat.post("/send", data=b"not json")).status == 400
    assert (await chat.post("/send", json={"from": "", "text": "x"})).status == 400


async def test_too_many_held_polls_is_503(chat: Client) -> None:
    held = [asyncio.create_task(poll(chat, 0)) for _ in range(2)]
    await asyncio.sleep(0.1)
    resp = await chat.get("/poll", params={"since": 0})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    await send(chat, "release")
    async with asyncio.timeout(1):
        await asyncio.gather(*held)


async def test_poll_and_send_answers_are_not_cached(chat: Client) -> None:
    await send(chat, "x")
    resp = await chat.get("/poll", params={"since": 0})
    assert resp.headers["Cache-Control"] == "no-store"
    resp = await chat.post("/send", json={"from": "ann", "text": "y"})
    assert resp.headers["Cache-Control"] == "no-store"


async def test_index_page_is_a_plain_long_poll_client(chat: Client) -> None:
    resp = await chat.get("/")
    assert resp.status == 200
    page = await resp.text()
    assert "poll?since=" in page and "hopgate" not in page.lower()


async def test_shutdown_releases_held_polls() -> None:
    """A held poll must not keep a stopping server waiting for the full hold."""
    runner = web.AppRunner(make_app(hold=30), shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/poll?since=0"))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(3):
            await runner.cleanup()
            resp = await held
            assert (await resp.json())["messages"] == []
