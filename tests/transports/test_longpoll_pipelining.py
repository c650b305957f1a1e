"""Long-poll with several requests in flight: numbered GETs (``poll``/``seen``), numbered POSTs.

A held GET is always waiting at the server (issue 13 item 1): the client keeps
the next GET in flight before it reads the previous answer, and POSTs without
waiting for the previous one's round trip. These tests drive the wire by hand
to pin the server's rules: data goes to GETs in number order, a GET's stale
``last`` replays nothing still on its way, POSTs are fed in number order.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp

from gateway.core.session.frames import (
    FLAG_FIN,
    Data,
    FrameDecoder,
    Hello,
    encode_ack,
    encode_data,
    encode_hello,
    new_packer,
)
from gateway.transports.handshake import SESSION_PATH, TOKEN_HEADER, decode_token
from tests.transports.conftest import (
    FAST,
    MakePair,
    StartServer,
    create_session,
    settings_for,
)

Frames = list[object]


def _payloads(frames: Frames) -> list[bytes]:
    return [f.payload for f in frames if isinstance(f, Data)]


class _Wire:
    """GETs and POSTs of one long-poll epoch, by hand."""

    def __init__(self, http: aiohttp.ClientSession, url: str, sid: str, token: str) -> None:
        self.http, self.url, self.sid, self.token = http, url + SESSION_PATH + "/" + sid, sid, token

    async def get(self, last: int, poll: int, seen: int) -> Frames:
        params = {"last": str(last), "epoch": "1", "poll": str(poll), "seen": str(seen)}
        async with self.http.get(self.url, params=params, headers={TOKEN_HEADER: self.token}) as r:
            assert r.status == 200, await r.text()
            return list(FrameDecoder().decode(await r.read()))

    async def post(self, number: int, body: bytes) -> int:
        params = {"epoch": "1", "post": str(number)}
        headers = {TOKEN_HEADER: self.token, "Content-Type": "application/octet-stream"}
        async with self.http.post(self.url, params=params, data=body, headers=headers) as r:
            await r.read()
            return r.status


async def test_data_goes_to_gets_in_number_order_and_a_stale_last_replays_nothing(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, hold_time=5.0))
    sid, token = await create_session(http, handle.url)
    server, _ = await handle.next_session()
    wire = _Wire(http, handle.url, sid, token)
    async with asyncio.timeout(10):
        first = await wire.get(0, poll=1, seen=0)  # attaches: the HELLO comes at once
        assert any(isinstance(f, Hello) for f in first)
        # GET 3 overtakes GET 2: data waits for 2, the order the client reads answers in.
        third = asyncio.create_task(wire.get(0, poll=3, seen=1))
        await asyncio.sleep(0.1)
        server.send(b"m1")
        await asyncio.sleep(0.2)
        assert not third.done(), "GET 3 answered before GET 2"
        second = asyncio.create_task(wire.get(0, poll=2, seen=1))
        assert _payloads(await second) == [b"m1"]
        await asyncio.sleep(0.1)
        assert not third.done(), "GET 3 took m1 again"
        server.send(b"m2")
        assert _payloads(await third) == [b"m2"]
        # GET 4 was sent after answer 2 was read (last=1) while answer 3 was on its
        # way: m2 must not come again.
        fourth = asyncio.create_task(wire.get(1, poll=4, seen=2))
        await asyncio.sleep(0.2)
        assert not fourth.done(), "a stale last= replayed m2 still in flight"
        server.send(b"m3")
        assert _payloads(await fourth) == [b"m3"]
        # Answer 4 is lost on the way: GET 5 read 4 (seen=4) yet lacks m3, so m3 comes again.
        assert _payloads(await wire.get(2, poll=5, seen=4)) == [b"m3"]
    assert server.core.buffered_frames == 1  # m3 waits for the next last=


async def test_posts_are_fed_in_number_order(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, hold_time=5.0))
    sid, token = await create_session(http, handle.url)
    _, inbox = await handle.next_session()
    wire = _Wire(http, handle.url, sid, token)
    packer = new_packer()
    raw_token = decode_token(token)
    hello = encode_hello(packer, 1, sid, 0, raw_token)
    async with asyncio.timeout(10):
        # POST 2 arrives first: it waits for POST 1 instead of being discarded as a gap.
        later = asyncio.create_task(wire.post(2, encode_data(packer, 2, FLAG_FIN, b"m2")))
        await asyncio.sleep(0.2)
        assert not later.done() and inbox.messages == []
        assert await wire.post(1, hello + encode_data(packer, 1, FLAG_FIN, b"m1")) == 200
        assert await later == 200
        await inbox.wait_for(2)
    assert inbox.messages == [b"m1", b"m2"]
    assert await wire.post(99, b"") == 400  # far beyond what may be in flight


async def test_a_post_waiting_its_turn_goes_on_once_the_one_before_is_fed(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Even when that one leaves the session nothing to send (a bare ACK): no hold_time wait."""
    # No timer of the session's fires during the test: only feeding POST 2 can wake POST 3.
    quiet = {"heartbeat": 30.0, "stall_timeout": 30.0, "retransmit_timeout": 30.0}
    handle = await start_server(replace(FAST, hold_time=5.0, **quiet))
    sid, token = await create_session(http, handle.url)
    _, inbox = await handle.next_session()
    wire = _Wire(http, handle.url, sid, token)
    packer = new_packer()
    hello = encode_hello(packer, 1, sid, 0, decode_token(token))
    async with asyncio.timeout(10):
        assert await wire.post(1, hello + encode_data(packer, 1, FLAG_FIN, b"m1")) == 200
        await inbox.wait_for(1)
        # (POST 1's answer carried the server's HELLO and ACK: nothing is left due)
        later = asyncio.create_task(wire.post(3, encode_data(packer, 2, FLAG_FIN, b"m2")))
        await asyncio.sleep(0.2)
        assert not later.done()
        assert await wire.post(2, encode_ack(packer, 0)) == 200
    async with asyncio.timeout(1):  # not the 5 s a POST waits for its turn at most
        assert await later == 200
        await inbox.wait_for(2)
    assert inbox.messages == [b"m1", b"m2"]


async def test_a_busy_long_poll_session_delivers_each_message_once_in_order(
    make_pair: MakePair,
) -> None:
    """Both ends sending at once: several GETs and POSTs in flight the whole time."""
    pair = await make_pair("long-poll", settings_for("long-poll"))
    count = 400
    async with asyncio.timeout(30):
        for i in range(count):
            pair.client.send(f"up {i}".encode())
            pair.server.send(f"down {i}".encode())
            if i % 7 == 0:
                await asyncio.sleep(0.001)
        await pair.server_inbox.wait_for(count, timeout=25)
        await pair.client_inbox.wait_for(count, timeout=25)
    assert pair.server_inbox.messages == [f"up {i}".encode() for i in range(count)]
    assert pair.client_inbox.messages == [f"down {i}".encode() for i in range(count)]
    assert pair.client.transport == "long-poll"
