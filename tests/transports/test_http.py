"""The shared aiohttp helpers (``gateway.transports.http``) and ``TaskSet``, on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.transports.http import (
    BodyTooLarge,
    is_websocket_upgrade,
    offers_websocket,
    read_bounded,
    request_body,
    sendable,
    text_error,
)
from gateway.transports.tasks import TaskSet
from tests.transports.conftest import StartLowLevel

pytestmark = pytest.mark.timeout(30)


async def test_request_body_answers_100_continue_outside_the_response_body(
    low_level_server: StartLowLevel,
) -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        seen["body"] = b"".join([chunk async for chunk in request_body(request)])
        # Nothing of the response is written yet: an error could still be a 500.
        seen["output_size"] = request.writer.output_size
        return web.Response(text="done")

    port = await low_level_server(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b"done")
    assert seen == {"body": b"hello", "output_size": 0}


@pytest.mark.parametrize(
    ("body", "declare", "want"),
    [
        (b"x" * 10, True, b"x" * 10),  # exactly the limit passes
        (b"x" * 11, True, "body of 11 bytes exceeds 10"),  # refused unread
        (b"x" * 11, False, "body exceeds 10 bytes"),  # chunked: refused as it came
    ],
)
async def test_read_bounded_serves_client_responses_and_server_requests(
    low_level_server: StartLowLevel, body: bytes, declare: bool, want: bytes | str
) -> None:
    server_side: list[bytes | str] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        try:
            got = await read_bounded(request.content, 10, declared=request.content_length)
            server_side.append(got)
        except BodyTooLarge as exc:
            server_side.append(str(exc))
        response = web.StreamResponse()
        if declare:
            response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    async def upload() -> AsyncIterator[bytes]:
        yield body

    port = await low_level_server(handler)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/", data=body if declare else upload()) as resp,
    ):
        try:
            client_side: bytes | str = await read_bounded(
                resp.content, 10, declared=resp.content_length
            )
        except BodyTooLarge as exc:
            client_side = str(exc)
    assert client_side == want
    assert server_side == [want]


@pytest.mark.parametrize(
    ("upgrade", "offered"),
    [("websocket", True), ("WebSocket", True), ("h2c, websocket/13", True), ("h2c", False)],
)
def test_offers_websocket_reads_the_upgrade_tokens(upgrade: str, offered: bool) -> None:
    assert offers_websocket(CIMultiDict(Upgrade=upgrade)) is offered
    assert not offers_websocket(CIMultiDict())


def test_websocket_upgrade_needs_get_connection_and_upgrade() -> None:
    def request(method: str, **headers: str) -> web.Request:
        return make_mocked_request(method, "/", headers=headers)

    assert is_websocket_upgrade(
        request("GET", Connection="keep-alive, Upgrade", Upgrade="websocket")
    )
    assert is_websocket_upgrade(request("GET", Connection="upgrade", Upgrade="h2c, WebSocket/13"))
    assert not is_websocket_upgrade(request("GET", Upgrade="websocket"))
    assert not is_websocket_upgrade(request("POST", Connection="upgrade", Upgrade="websocket"))
    assert not is_websocket_upgrade(request("GET", Connection="upgrade", Upgrade="h2c"))


@pytest.mark.parametrize(
    ("code", "sent"),
    [(None, 1001), (0, 1000), (1005, 1000), (1006, 1001), (1015, 1001), (1000, 1000), (4000, 4000)],
)
def test_sendable_close_codes(code: int | None, sent: int) -> None:
    assert sendable(code) == sent


def test_text_error_is_plain_text_marked_and_never_cached() -> None:
    response = text_error(405, "hop sessions take GET and POST", Allow="GET, POST")
    assert response.status == 405
    assert response.text == "hopgate: hop sessions take GET and POST\n"
    assert response.content_type == "text/plain"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Hopgate-Error"] == "1"
    assert response.headers["Allow"] == "GET, POST"


async def test_task_set_holds_waits_and_cancels() -> None:
    tasks = TaskSet()
    done = asyncio.Event()
    finished: list[str] = []

    async def quick() -> str:
        await done.wait()
        finished.append("quick")
        return "quick"

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append("cancelled")

    first = tasks.spawn(quick(), name="quick")
    tasks.spawn(forever())
    assert len(tasks) == 2 and first.get_name() == "quick"
    done.set()
    assert await first == "quick"
    await asyncio.sleep(0)  # the done callback runs
    assert len(tasks) == 1
    await asyncio.wait_for(tasks.cancel_all(), 5)
    assert finished == ["quick", "cancelled"] and len(tasks) == 0


async def test_task_set_wait_skips_the_calling_task() -> None:
    tasks = TaskSet()

    async def closes_its_owner() -> str:
        await tasks.wait()  # would wait for itself without the skip (bounded below)
        return "closed"

    assert await asyncio.wait_for(tasks.spawn(closes_its_owner()), 5) == "closed"
