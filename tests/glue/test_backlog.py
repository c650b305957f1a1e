"""A peer flooding tiny messages at an endpoint that does not read (issue 7 item 2).

Windows count payload bytes, so empty WebSocket messages cost the peer no
credit: without a bound the answering gateway would queue an event per
message in the stream's Mailbox for as long as the origin does not read.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.core.tunnel.errors import ResetCode
from gateway.glue.driver import BACKLOG_REASON, MAX_STREAM_BACKLOG
from tests.conftest import MakeGateway, MakeOrigin
from tests.hostile import payloads
from tests.hostile import peer as hp


async def stalled_origin(make_origin: MakeOrigin) -> str:
    async def stall(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await asyncio.sleep(30)  # never reads: its socket buffers fill
        return ws

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/stall", stall)
    app.router.add_get("/echo", echo)
    return await make_origin(app)


async def fill_until_stalled(peer: hp.HostilePeer, sid: int) -> int:
    """Send 64 KiB messages as credit allows until none comes for a second."""
    stream, chunk, sent = peer.streams[sid], b"f" * 65536, 0
    for _ in range(2000):  # 128 MiB at most; loopback buffers stall far earlier
        if stream.credit < len(chunk):
            before = stream.credit
            if not await peer.until(lambda b=before: stream.credit > b, 1.0):
                return sent
            continue
        stream.credit -= len(chunk)
        await peer.send(hp.message(sid, chunk))
        sent += len(chunk)
    raise AssertionError("the stalled origin took 128 MiB")


async def test_empty_messages_to_a_stalled_endpoint_reset_only_their_stream(
    make_gateway: MakeGateway, make_origin: MakeOrigin
) -> None:
    gw = await make_gateway("server", {"upstream": await stalled_origin(make_origin)})
    async with hp.HostilePeer(gw.url, timeout=20) as peer:
        [chat] = await payloads.open_websockets(peer, 1, "/echo")
        [evil] = await payloads.open_websockets(peer, 1, "/stall")
        filled = await fill_until_stalled(peer, evil)
        empty = hp.message(evil, b"")
        sent = 0
        while sent < 100_000 and peer.streams[evil].reset is None:
            await peer.send(empty * 10_000)
            sent += 10_000
            await asyncio.sleep(0.01)
        assert await peer.until(lambda: peer.streams[evil].reset is not None, 5)
        reset = peer.streams[evil].reset
        assert reset is not None and reset[2:4] == [ResetCode.TOO_LARGE, BACKLOG_REASON], reset
        assert sent <= 2 * MAX_STREAM_BACKLOG + 20_000, f"{sent} sent after {filled} filled"
        await peer.send(hp.message(chat, b"still here"))
        assert await peer.until(lambda: b"echo:still here" in peer.streams[chat].body, 5)
        assert peer.closed is None
