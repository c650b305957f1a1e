"""Streamed long-poll between gateways (``stream``; issue 13 item 4): many batches per request.

A server announcing ``stream`` gets a streamed GET and a streamed POST from a
gateway client instead of one request per batch. These tests pin: the
feature is negotiated, a stream carries many batches, nothing is lost or
duplicated when a stream is cut, ends at its budget or falls back to plain
long-polls because the path buffers it, and real nginx, HAProxy and squid
carry it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.transports import longpoll_stream
from gateway.transports.connector import SessionConnector
from gateway.transports.handshake import LONG_POLL_HEADER, SESSION_PATH
from gateway.transports.longpoll_client import LongPollClient
from gateway.transports.longpoll_stream import StreamClient
from gateway.transports.stream_records import RecordError, RecordReader, record
from tests.transports.conftest import (
    Inbox,
    MakePair,
    Pair,
    StartRaw,
    StartServer,
    post_create,
    settings_for,
)

SETTINGS = settings_for("long-poll")


async def exchange(pair: Pair, count: int, *, gap_every: int = 25) -> None:
    """``count`` messages each way, in small bursts; both ends get each once, in order."""
    for i in range(count):
        assert pair.client.send(f"up {i}".encode())
        assert pair.server.send(f"down {i}".encode())
        if i % gap_every == 0:
            await asyncio.sleep(0.01)
    await pair.server_inbox.wait_for(count, timeout=20)
    await pair.client_inbox.wait_for(count, timeout=20)
    assert pair.server_inbox.messages == [f"up {i}".encode() for i in range(count)]
    assert pair.client_inbox.messages == [f"down {i}".encode() for i in range(count)]


def _reader(*pieces: bytes) -> aiohttp.StreamReader:
    class _Protocol:
        _reading_paused = False

        def pause_reading(self, **_: object) -> None: ...

        def resume_reading(self, **_: object) -> None: ...

    stream = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    for piece in pieces:
        stream.feed_data(piece)
    stream.feed_eof()
    return stream


async def test_records_end_cleanly_only_between_records() -> None:
    whole = record(b"one") + record(b"") + record(b"three")
    reader = RecordReader(_reader(whole), 100)
    assert [await reader.next() for _ in range(4)] == [b"one", b"", b"three", None]
    for cut in (2, len(record(b"one")) + 2):  # inside a length, inside a batch
        reader = RecordReader(_reader(whole[:cut]), 100)
        with pytest.raises(RecordError):
            while await reader.next() is not None:
                pass
    with pytest.raises(RecordError, match="larger"):
        await RecordReader(_reader(record(b"x" * 101)), 100).next()


async def test_records_split_anywhere_arrive_whole_and_hold_only_a_partial_one() -> None:
    """Records cut anywhere, or many in one piece, read the same; ``hold`` sees partial ones."""
    batches = [b"a", b"", b"b" * 300, b"c" * 7, b""]
    whole = b"".join(record(batch) for batch in batches)
    for step in (1, 3, 5, 64, len(whole)):
        stream = _reader(*(whole[at : at + step] for at in range(0, len(whole), step)))
        holds: list[int] = []
        reader = RecordReader(stream, 300, holds.append)
        got = [await reader.next() for _ in range(len(batches) + 1)]
        assert got == [*batches, None], step
        assert set(holds) <= {0, 300}, holds


async def test_the_server_offers_streams(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    handle = await start_server(SETTINGS)
    async with http.post(handle.url + SESSION_PATH, headers={LONG_POLL_HEADER: "lean"}) as resp:
        assert "stream" in resp.headers[LONG_POLL_HEADER].split()
        await resp.read()
    assert (await post_create(http, handle.url))[0] == 200


async def test_a_stream_carries_many_batches_per_request(
    http: aiohttp.ClientSession, start_raw: StartRaw, start_server: StartServer
) -> None:
    """200 exchanges each way in bursts: a handful of requests, not one per batch."""
    handle = await start_server(SETTINGS)
    requests: Counter[str] = Counter()

    async def counting(request: web.BaseRequest) -> web.StreamResponse:
        requests[request.method + (" stream" if "stream" in request.query else "")] += 1
        return await handle.server.handle(request)

    url = await start_raw(counting)
    connector = SessionConnector(URL(url), http, SETTINGS, prefer="long-poll")
    client = await connector.connect()
    try:
        assert isinstance(client.current, StreamClient)
        server, server_inbox = await handle.next_session()
        client_inbox = Inbox()
        client_inbox.attach(client)
        pair = Pair(connector, client, client_inbox, server, server_inbox, handle, None)
        await exchange(pair, 200)
        assert isinstance(client.current, StreamClient) and connector.streams
        # The create POST, then streams: far fewer than the ~16 bursts' worth of requests.
        assert requests["GET stream"] <= 3 and requests["POST stream"] <= 10, requests
        assert requests["GET"] == 0 and requests["POST"] == 1, requests
    finally:
        await connector.close()


@pytest.mark.parametrize("streams", [True, False], ids=["streamed", "plain"])
async def test_cut_streams_lose_and_duplicate_nothing(make_pair: MakePair, streams: bool) -> None:
    """Every connection cut over and over mid-exchange: each message once, in order."""
    pair = await make_pair("long-poll", SETTINGS, proxy=True, long_poll_streams=streams)
    assert type(pair.client.current) is (StreamClient if streams else LongPollClient)
    cuts = 0

    async def cutter() -> None:
        nonlocal cuts
        for _ in range(8):
            await asyncio.sleep(0.15)
            cuts += pair.proxy.cut() if pair.proxy is not None else 0

    task = asyncio.create_task(cutter())
    try:
        count = 400
        for i in range(count):
            assert pair.client.send(f"up {i}".encode())
            assert pair.server.send(f"down {i}".encode())
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        await task
        await pair.server_inbox.wait_for(count, timeout=30)
        await pair.client_inbox.wait_for(count, timeout=30)
    finally:
        task.cancel()
    assert cuts > 0
    assert pair.server_inbox.messages == [f"up {i}".encode() for i in range(count)]
    assert pair.client_inbox.messages == [f"down {i}".encode() for i in range(count)]
    assert pair.connector.streams is streams


async def test_streams_end_at_their_budget_and_lose_nothing(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams ending every 4 KiB (and at a 0.5 s hold time): each message once, in order."""
    monkeypatch.setattr(longpoll_stream, "STREAM_BYTES", 4096)
    pair = await make_pair("long-poll", replace(SETTINGS, hold_time=0.5))
    await exchange(pair, 600, gap_every=20)
    await asyncio.sleep(0.8)  # the idle streams end at hold_time and come back
    await exchange_more(pair, 600, 100)
    assert isinstance(pair.client.current, StreamClient) and pair.connector.streams


async def exchange_more(pair: Pair, start: int, count: int) -> None:
    for i in range(start, start + count):
        assert pair.client.send(f"up {i}".encode())
        assert pair.server.send(f"down {i}".encode())
    await pair.server_inbox.wait_for(start + count, timeout=20)
    await pair.client_inbox.wait_for(start + count, timeout=20)
    assert pair.server_inbox.messages == [f"up {i}".encode() for i in range(start + count)]
    assert pair.client_inbox.messages == [f"down {i}".encode() for i in range(start + count)]


async def test_a_streamed_poll_cut_before_its_answer_is_asked_again_not_a_reconnect(
    http: aiohttp.ClientSession, start_raw: StartRaw, start_server: StartServer
) -> None:
    """A streamed GET whose connection closes before any answer (a pooled keep-alive
    connection the peer had closed looks the same) is sent once more on the same
    transport: the session neither detaches nor loses or repeats a message."""
    settings = replace(SETTINGS, hold_time=0.3)
    handle = await start_server(settings)
    gets = 0

    async def dropping(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal gets
        if request.method == "GET" and "stream" in request.query:
            gets += 1
            if gets == 2:  # the first GET after the stream ended at hold_time
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError("dropped before the answer")
        return await handle.server.handle(request)

    url = await start_raw(dropping)
    connector = SessionConnector(URL(url), http, settings, prefer="long-poll")
    client = await connector.connect()
    try:
        first = client.current
        assert isinstance(first, StreamClient)
        server, server_inbox = await handle.next_session()
        client_inbox = Inbox()
        client_inbox.attach(client)
        pair = Pair(connector, client, client_inbox, server, server_inbox, handle, None)
        await exchange(pair, 50)
        for _ in range(100):  # the stream ends at hold_time; the next GET is dropped
            if gets >= 3:
                break
            await asyncio.sleep(0.05)
        assert gets >= 3
        await exchange_more(pair, 50, 50)
        assert client.current is first  # asked again, not detached and reconnected
    finally:
        await connector.close()
