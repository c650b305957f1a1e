"""The session transports end to end: a real SessionServer and SessionConnector on loopback.

Every test runs once per transport (``transport`` fixture).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import replace

import aiohttp

from gateway.core.session.frames import Data, FrameDecoder, Hello
from gateway.transports.errors import SessionClosedError
from gateway.transports.handshake import SESSION_PATH, TOKEN_HEADER
from gateway.transports.hopsession import HopSession
from tests.transports.conftest import (
    FAST,
    Inbox,
    Kind,
    MakePair,
    StartServer,
    create_session,
    settings_for,
    wait_transport,
)


async def test_connects_on_the_preferred_transport(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport)
    assert pair.client.transport == transport
    await wait_transport(pair.server, transport)
    assert pair.client.session_id == pair.server.session_id
    assert pair.client.is_client and not pair.server.is_client
    assert pair.connector.upgrades == (1 if transport == "websocket" else 0)


async def test_many_messages_both_ways_in_order(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport)
    count = 3000
    for i in range(count):
        assert pair.client.send(f"c{i}") is True
        assert pair.server.send(f"s{i}".encode()) is True
    await pair.server_inbox.wait_for(count)
    await pair.client_inbox.wait_for(count)
    assert pair.server_inbox.messages == [f"c{i}" for i in range(count)]
    assert pair.client_inbox.messages == [f"s{i}".encode() for i in range(count)]


async def test_text_and_binary_keep_their_type(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport)
    sent: list[bytes | str] = ["héllo ☃", b"\x00\xffbinary", "", b"", "x" * 70_000]
    for item in sent:
        pair.client.send(item)
        pair.server.send(item)
    await pair.server_inbox.wait_for(len(sent))
    await pair.client_inbox.wait_for(len(sent))
    assert pair.server_inbox.messages == sent
    assert pair.client_inbox.messages == sent
    assert [type(m) for m in pair.server_inbox.messages] == [type(m) for m in sent]


async def test_multi_fragment_messages_up_to_a_few_mib(
    make_pair: MakePair, transport: Kind
) -> None:
    pair = await make_pair(transport)
    sizes = [64 * 1024 + 1, 1024 * 1024, 3 * 1024 * 1024 + 7]
    blobs = [os.urandom(n) for n in sizes]
    for blob in blobs:
        await pair.client.drain()
        assert pair.client.send(blob)
        await pair.server.drain()
        assert pair.server.send(blob)
    await pair.server_inbox.wait_for(len(blobs), timeout=20)
    await pair.client_inbox.wait_for(len(blobs), timeout=20)
    digest = [hashlib.sha256(b).hexdigest() for b in blobs]
    assert [hashlib.sha256(m).hexdigest() for m in pair.server_inbox.messages] == digest  # type: ignore[arg-type]
    assert [hashlib.sha256(m).hexdigest() for m in pair.client_inbox.messages] == digest  # type: ignore[arg-type]


async def _send_all(hop: HopSession, inbox_of_sender: Inbox, messages: list[bytes]) -> int:
    """Send everything, waiting on on_writable when the buffer is full; returns refusals."""
    refusals = 0
    for message in messages:
        while not hop.send(message):
            refusals += 1
            before = inbox_of_sender.writable_calls
            await inbox_of_sender.wait_until(lambda b=before: inbox_of_sender.writable_calls > b)
    return refusals


async def test_backpressure_send_refuses_then_on_writable(
    make_pair: MakePair, transport: Kind
) -> None:
    settings = settings_for(transport, buffer_bytes=128 * 1024, buffer_frames=64)
    pair = await make_pair(transport, settings)
    messages = [i.to_bytes(4, "big") + os.urandom(8 * 1024) for i in range(400)]  # ~3.2 MiB
    refusals = await asyncio.wait_for(
        _send_all(pair.client, pair.client_inbox, messages), timeout=20
    )
    assert refusals > 0, "a 128 KiB buffer must refuse a 3 MiB burst"
    assert pair.client_inbox.writable_calls > 0
    await pair.server_inbox.wait_for(len(messages), timeout=20)
    assert pair.server_inbox.messages == messages


async def test_drain_waits_for_room(make_pair: MakePair, transport: Kind) -> None:
    settings = settings_for(transport, buffer_bytes=128 * 1024, buffer_frames=64)
    pair = await make_pair(transport, settings)
    sent = 0
    async with asyncio.timeout(20):
        for i in range(300):
            await pair.server.drain()
            assert pair.server.send(os.urandom(4096) + str(i).encode())
            sent += 1
    await pair.client_inbox.wait_for(sent, timeout=20)


async def test_cut_mid_traffic_resumes_without_loss(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport, proxy=True)
    assert pair.proxy is not None
    total = 4000

    async def pump(hop: HopSession, prefix: str) -> None:
        for i in range(total):
            while not hop.send(f"{prefix}{i}"):
                await hop.drain()
            if i % 50 == 0:
                await asyncio.sleep(0.005)

    async def cutter() -> None:
        for _ in range(3):
            await asyncio.sleep(0.15)
            pair.proxy.cut()  # type: ignore[union-attr]

    async with asyncio.timeout(30):
        await asyncio.gather(pump(pair.client, "c"), pump(pair.server, "s"), cutter())
    await pair.server_inbox.wait_for(total, timeout=20)
    await pair.client_inbox.wait_for(total, timeout=20)
    assert pair.server_inbox.messages == [f"c{i}" for i in range(total)]
    assert pair.client_inbox.messages == [f"s{i}" for i in range(total)]
    await wait_transport(pair.client, transport)


async def test_expiry_after_resume_grace_tells_both_ends(
    make_pair: MakePair, transport: Kind
) -> None:
    settings = settings_for(transport, resume_grace=1.0, hold_time=0.3, reconnect_max=0.2)
    pair = await make_pair(transport, settings, proxy=True)
    assert pair.proxy is not None
    pair.client.send("before")
    await pair.server_inbox.wait_for(1)
    pair.proxy.drop_new = True
    pair.proxy.cut()
    client_close = await pair.client_inbox.wait_closed(timeout=10)
    server_close = await pair.server_inbox.wait_closed(timeout=10)
    assert client_close[0] == 4000 and "expired" in client_close[1]
    assert server_close[0] == 4000 and "expired" in server_close[1]
    assert pair.client.closed and pair.server.closed
    try:
        pair.client.send("after")
    except SessionClosedError as exc:
        assert exc.code == 4000
    else:
        raise AssertionError("send on an expired session must raise")
    assert pair.handle.server.registry.get(pair.server.session_id) is None


async def test_graceful_close_from_the_client(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport)
    for i in range(100):
        pair.client.send(f"m{i}")
    async with asyncio.timeout(10):
        await pair.client.close(1000, "bye")
    assert pair.client_inbox.closed == (1000, "bye")
    code, reason = await pair.server_inbox.wait_closed()
    assert (code, reason) == (1000, "bye")
    assert pair.server_inbox.messages == [f"m{i}" for i in range(100)]
    assert await pair.server.wait_closed() == (1000, "bye")


async def test_graceful_close_from_the_server(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport)
    pair.server.send(b"last words")
    async with asyncio.timeout(10):
        await pair.server.close(1001, "going away")
    assert await pair.client_inbox.wait_closed() == (1001, "going away")
    assert pair.client_inbox.messages == [b"last words"]
    async with asyncio.timeout(5):
        while len(pair.handle.server.registry):
            await asyncio.sleep(0.01)


async def test_server_close_ends_every_session(make_pair: MakePair, transport: Kind) -> None:
    pair = await make_pair(transport)
    await wait_transport(pair.server, transport)
    async with asyncio.timeout(10):
        await pair.handle.server.close()
    code, _ = await pair.client_inbox.wait_closed()
    assert code == 1001


# -- long-poll wire details (one transport only by nature) ----------------------------------


async def test_newer_held_get_releases_the_older_and_nothing_is_lost(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, hold_time=5.0))
    sid, token = await create_session(http, handle.url)
    server, _ = await handle.next_session()
    url = handle.url + SESSION_PATH + "/" + sid

    async def poll(last: int) -> list[object]:
        params = {"last": str(last), "epoch": "1"}
        async with http.get(url, params=params, headers={TOKEN_HEADER: token}) as r:
            assert r.status == 200
            return FrameDecoder().decode(await r.read())

    def payloads(frames: list[object]) -> list[bytes]:
        return [f.payload for f in frames if isinstance(f, Data)]

    async with asyncio.timeout(10):
        first = await poll(0)  # attaches long-poll: the server's HELLO comes at once
        assert any(isinstance(f, Hello) for f in first)
        older = asyncio.create_task(poll(0))
        await asyncio.sleep(0.2)
        assert not older.done(), "nothing to send: the GET is held"
        newer = asyncio.create_task(poll(0))
        released = await older  # the newer GET released it, with what it had (nothing)
        assert payloads(released) == []
        assert not newer.done()
        server.send(b"m1")
        assert payloads(await newer) == [b"m1"]
        # That answer is lost on the way: the next poll still says last=0, m1 comes again.
        assert payloads(await poll(0)) == [b"m1"]
        held = asyncio.create_task(poll(1))
        await asyncio.sleep(0.1)
        server.send(b"m2")
        assert payloads(await held) == [b"m2"]
    assert server.core.buffered_frames == 1  # m2 is acked by the next poll only
