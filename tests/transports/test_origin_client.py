"""The lean origin client against real origins on loopback (aiohttp, or raw sockets for
what aiohttp will not send: a close-delimited body, a body cut mid-way)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from gateway.transports import origin_client
from gateway.transports.origin_client import (
    OriginConnectError,
    OriginPool,
    OriginResponse,
    fields_head,
    request_head,
)
from tests.conftest import MakeOrigin

pytestmark = pytest.mark.timeout(30)


def _pool(limit: int = 8, connect_timeout: float = 5.0) -> OriginPool:
    return OriginPool(limit=limit, connect_timeout=connect_timeout, read_timeout=5.0)


async def _body(response: OriginResponse) -> bytes:
    data = bytearray()
    async for chunk in response.content.iter_any():
        data += chunk
    return bytes(data)


async def _get(pool: OriginPool, url: str, method: str = "GET") -> tuple[int, bytes]:
    response = await pool.request(method, URL(url), CIMultiDict(), None)
    try:
        return response.status, await _body(response)
    finally:
        response.release()


@contextlib.asynccontextmanager
async def _raw_origin(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def test_content_length_and_chunked_bodies_reuse_one_connection(
    make_origin: MakeOrigin,
) -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport)
        if request.path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one ", b"two ", b"three"):
                await response.write(part)
            await response.write_eof()
            return response
        return web.Response(body=b"x" * 5000)

    base = await make_origin(handler)
    pool = _pool()
    assert await _get(pool, base + "/fixed") == (200, b"x" * 5000)
    assert await _get(pool, base + "/chunked") == (200, b"one two three")
    assert await _get(pool, base + "/fixed") == (200, b"x" * 5000)
    assert len(peers) == 3 and peers[0] is peers[1] is peers[2]  # one keep-alive connection
    assert pool.open_connections == 1
    pool.close()
    assert pool.open_connections == 0


async def test_head_204_and_304_have_no_body_and_keep_the_connection(
    make_origin: MakeOrigin,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        status = {"/none": 204, "/same": 304}.get(request.path, 200)
        return web.Response(status=status, body=b"hello" if status == 200 else None)

    base = await make_origin(handler)
    pool = _pool()
    assert await _get(pool, base + "/", "HEAD") == (200, b"")
    assert await _get(pool, base + "/none") == (204, b"")
    assert await _get(pool, base + "/same") == (304, b"")
    assert await _get(pool, base + "/") == (200, b"hello")  # framing still right after them
    assert pool.open_connections == 1
    pool.close()


async def test_a_close_delimited_body_is_read_to_the_end_and_not_pooled() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    async with _raw_origin(answer) as base:
        pool = _pool()
        assert await _get(pool, base + "/") == (200, b"until the end")
        assert pool.open_connections == 0


async def test_an_origin_closing_mid_body_raises_from_the_body() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async with _raw_origin(answer) as base:
        pool = _pool()
        response = await pool.request("GET", URL(base + "/"), CIMultiDict(), None)
        with pytest.raises(aiohttp.ClientPayloadError):
            await _body(response)
        response.release()
        assert pool.open_connections == 0


async def test_an_origin_closing_before_the_head_is_server_disconnected() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with _raw_origin(answer) as base:
        pool = _pool()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pool.request("GET", URL(base + "/"), CIMultiDict(), None)
        assert pool.open_connections == 0


async def test_a_refused_connection_is_an_origin_connect_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = _pool()
    with pytest.raises(OriginConnectError) as caught:
        await pool.request("GET", URL(f"http://127.0.0.1:{port}/"), CIMultiDict(), None)
    assert isinstance(caught.value.os_error, ConnectionRefusedError)
    assert pool.open_connections == 0


async def test_a_connection_the_origin_closed_while_idle_is_not_used_again(
    make_origin: MakeOrigin,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/close" and request.transport is not None:
            asyncio.get_running_loop().call_later(0.05, request.transport.close)
        return web.Response(body=b"ok")

    base = await make_origin(handler)
    pool = _pool()
    assert await _get(pool, base + "/close") == (200, b"ok")
    await asyncio.sleep(0.3)  # the origin closed the pooled connection meanwhile
    assert await _get(pool, base + "/") == (200, b"ok")
    assert pool.open_connections == 1
    pool.close()


async def test_an_unread_body_pauses_reading_from_the_origin(make_origin: MakeOrigin) -> None:
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(400):  # 25 MiB offered
            await response.write(b"z" * 65536)
            sent += 65536
        await response.write_eof()
        return response

    base = await make_origin(handler)
    pool = OriginPool(limit=4, connect_timeout=5, read_timeout=5, read_size=16 * 1024)
    response = await pool.request("GET", URL(base + "/"), CIMultiDict(), None)
    await asyncio.sleep(0.5)
    held = response.content.total_bytes
    assert held <= 256 * 1024, f"read {held} bytes nobody took"
    assert sent < 25 * 1024 * 1024  # the origin was held back too (socket buffers only)
    assert len(await _body(response)) == 400 * 65536  # and all of it arrives once read
    response.release()
    pool.close()


async def test_the_pool_limit_makes_a_request_wait_then_times_it_out(
    make_origin: MakeOrigin,
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=b"done")

    base = await make_origin(handler)
    pool = _pool(limit=2, connect_timeout=0.3)
    held = [asyncio.create_task(_get(pool, base + f"/{i}")) for i in range(2)]
    await asyncio.sleep(0.1)
    assert pool.open_connections == 2
    with pytest.raises(aiohttp.ConnectionTimeoutError):
        await _get(pool, base + "/third")
    waiting = asyncio.create_task(_get(pool, base + "/fourth"))
    await asyncio.sleep(0.05)
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*held, waiting), 5) == [(200, b"done")] * 3
    assert pool.open_connections <= 2
    pool.close()


async def _chunks(*parts: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part
    if fail:
        raise RuntimeError("body aborted")


async def test_request_bodies_stream_chunked_or_with_their_length(
    make_origin: MakeOrigin,
) -> None:
    seen: list[tuple[str | None, str | None, bytes]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            (request.headers.get("Transfer-Encoding"), request.headers.get("Content-Length"), body)
        )
        return web.Response(body=b"got")

    base = await make_origin(handler)
    pool = _pool()
    url = URL(base + "/up")
    for headers in (CIMultiDict(), CIMultiDict({"Content-Length": "11"})):
        response = await pool.request("POST", url, headers, _chunks(b"hello ", b"world"))
        assert (response.status, await _body(response)) == (200, b"got")
        response.release()
    response = await pool.request("POST", url, CIMultiDict(), None)
    response.release()
    assert seen == [
        ("chunked", None, b"hello world"),
        (None, "11", b"hello world"),
        (None, "0", b""),
    ]
    assert pool.open_connections == 1
    pool.close()


async def test_a_failing_request_body_cuts_the_connection_without_an_end(
    make_origin: MakeOrigin,
) -> None:
    outcome: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            await request.read()
        except BaseException as exc:  # the cut cancels the handler, or its read fails
            outcome.append(type(exc).__name__)
            raise
        outcome.append("complete")
        return web.Response(body=b"got")

    base = await make_origin(handler)
    pool = _pool()
    with pytest.raises(aiohttp.ClientError):
        response = await pool.request(
            "POST", URL(base + "/up"), CIMultiDict(), _chunks(b"part", fail=True)
        )
        await _body(response)
    for _ in range(50):
        if outcome:
            break
        await asyncio.sleep(0.02)
    assert outcome and outcome[0] != "complete"
    assert pool.open_connections == 0


def test_request_head_adds_host_and_refuses_line_breaks() -> None:
    head, chunked = request_head(
        "GET", URL("http://example.test:8080/a?b=c"), CIMultiDict({"X-A": "1"}), has_body=False
    )
    assert head == b"GET /a?b=c HTTP/1.1\r\nHost: example.test:8080\r\nX-A: 1\r\n\r\n"
    assert not chunked
    head, _ = request_head("GET", URL("http://h/"), CIMultiDict({"Host": "kept"}), has_body=False)
    assert head == b"GET / HTTP/1.1\r\nHost: kept\r\n\r\n"
    with pytest.raises(ValueError, match="CR, LF"):
        request_head("GET", URL("http://h/"), CIMultiDict({"X": "a\r\nEvil: 1"}), has_body=False)


async def test_the_read_timeout_counts_from_the_last_byte_and_times_out_a_stall() -> None:
    """Each read moves the deadline on; a stall longer than read_timeout still times out."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.25)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(3):  # 0.25 s apart: each within the 0.4 s timeout, 0.75 s in all
            await asyncio.sleep(0.25)
            writer.write(b"x")
            await writer.drain()
        await asyncio.sleep(5)

    async with _raw_origin(answer) as base:
        pool = OriginPool(limit=4, connect_timeout=5, read_timeout=0.4)
        loop = asyncio.get_running_loop()
        start = loop.time()
        response = await pool.request("GET", URL(base + "/"), CIMultiDict(), None)
        got = bytearray()
        with pytest.raises(aiohttp.SocketTimeoutError):
            async for chunk in response.content.iter_any():
                got += chunk
        took = loop.time() - start
        response.close()
        assert got == b"xxx"
        assert 1.1 <= took < 2.0  # last byte at ~1.0 s, then 0.4 s of silence


async def test_keep_alive_requests_share_one_read_timer(make_origin: MakeOrigin) -> None:
    """A connection keeps one read timer over its requests, not two new ones per request."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"ok")

    base = await make_origin(handler)
    pool = _pool()
    assert await _get(pool, base + "/") == (200, b"ok")  # connected, its timer armed
    loop = asyncio.get_running_loop()
    timers = 0
    call_at, call_later = loop.call_at, loop.call_later

    def count_at(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(*args, **kwargs)

    def count_later(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_later(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "call_at", count_at)
        patch.setattr(loop, "call_later", count_later)
        for _ in range(20):
            assert await _get(pool, base + "/") == (200, b"ok")
    assert pool.open_connections == 1
    assert timers <= 2  # (aiohttp's own way: 40)
    pool.close()


_NAMES = st.sampled_from(
    [b"Host", b"host", b"Content-Length", b"transfer-encoding", b"X-A", b"\xe2\x84\xaaeep", b"Via"]
)
_VALUES = st.sampled_from(
    [b"", b"1", b"chunked", b"gzip, CHUNKED", b"\xff", b"a\rb", b"x\ny", b"\x00"]
)


@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    st.sampled_from(["GET", "POST", "HEAD"]),
    st.booleans(),
    st.sampled_from(["http://h:8080/a?b=c", "http://h/", "http://[::1]:80/x"]),
)
@settings(max_examples=400, deadline=None)
def test_fields_head_is_request_head_on_bytes(
    fields: list[tuple[bytes, bytes]], method: str, has_body: bool, url: str
) -> None:
    """The bytes head of byte pairs is the one the text head gives, refusals included."""
    text = CIMultiDict(
        (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for n, v in fields
    )
    try:
        expected: object = request_head(method, URL(url), text, has_body=has_body)
    except ValueError:
        expected = ValueError
    try:
        got: object = fields_head(method, URL(url), fields, has_body=has_body)
    except ValueError:
        got = ValueError
    assert got == expected


async def test_an_idle_connection_older_than_keepalive_is_closed_not_reused(
    make_origin: MakeOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport)
        return web.Response(body=b"ok")

    base = await make_origin(handler)
    monkeypatch.setattr(origin_client, "KEEPALIVE", 0.2)
    pool = _pool()
    for pause in (0.0, 0.0, 0.4):
        await asyncio.sleep(pause)
        assert await _get(pool, base + "/") == (200, b"ok")
    assert peers[0] is peers[1]  # reused while fresh
    assert peers[2] is not peers[1]  # idle 0.4 s > 0.2 s: a new connection
    assert pool.open_connections == 1
    pool.close()
