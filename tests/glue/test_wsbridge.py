"""The WebSocket bridge (``glue/wsbridge.py``) on the chain: gathered writes, bounded holding.

client -> entry gateway == hop session ==> server gateway -> origin, both
gateways in this process, so a test can look at what the server gateway holds
for a stream: its tunnel's unconsumed WebSocket bytes (``reassembly_bytes``)
and the buffer of the transport towards the origin.
"""

from __future__ import annotations

import asyncio
import gc
import struct
from collections.abc import Sequence

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.core.tunnel import TunnelConfig
from gateway.glue import wsbridge
from tests.glue.chain import TRANSPORTS, BuildChain, Origin, serve
from tests.helpers import until

pytestmark = pytest.mark.timeout(90)

MESSAGE = 64 * 1024


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_burst_leaves_in_gathered_writes_in_order(
    build_chain: BuildChain,
    origin: tuple[Origin, str],
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[int] = []  # messages per write that went out
    send, write = wsbridge.send_frames, wsbridge.write_frames_now

    async def sending(ws: wsbridge.Peer, messages: Sequence[bytes | str]) -> bool:
        sent = await send(ws, messages)
        batches.extend([len(messages)] if sent else [])
        return sent

    def writing(ws: wsbridge.Peer, messages: Sequence[bytes | str]) -> bool:
        written = write(ws, messages)
        batches.extend([len(messages)] if written else [])
        return written

    monkeypatch.setattr(wsbridge, "send_frames", sending)
    monkeypatch.setattr(wsbridge, "write_frames_now", writing)
    chain = await build_chain(origin[1], transport)
    n = 3000
    async with chain.client.ws_connect(chain.url + "/ws") as ws:
        for i in range(n):  # text and binary interleaved: each keeps its type
            if i % 3:
                await ws.send_bytes(b"b%d" % i)
            else:
                await ws.send_str(f"t{i}")
        got = []
        async with asyncio.timeout(30):
            while len(got) < n:
                msg = await ws.receive()
                got.append((msg.type, msg.data))
    expected = [
        (WSMsgType.BINARY, b"echo b%d" % i) if i % 3 else (WSMsgType.TEXT, f"echo t{i}")
        for i in range(n)
    ]
    assert got == expected
    # Both gateways wrote: the server's towards the origin, the entry's back to the client.
    assert sum(batches) == 2 * n
    assert max(batches) > 1, "every message was written on its own"


async def _stalling_origin(go: asyncio.Event, seen: list[int]) -> tuple[web.ServerRunner, str]:
    """An origin WebSocket that reads nothing until ``go``, then records each message's index."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await go.wait()
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                seen.append(struct.unpack_from("!I", msg.data)[0])
        return ws

    return await serve(handler)


def _towards_origin(port: int) -> aiohttp.ClientWebSocketResponse:
    """The server gateway's WebSocket to the origin (the only client one to that port)."""
    found = [
        ws
        for ws in gc.get_objects()
        if isinstance(ws, aiohttp.ClientWebSocketResponse)
        and not ws.closed
        and ws._response.url.port == port
    ]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_origin_that_stops_reading_stalls_its_stream_with_bounded_holding(
    build_chain: BuildChain, transport: str
) -> None:
    go, seen = asyncio.Event(), []
    runner, url = await _stalling_origin(go, seen)
    try:
        chain = await build_chain(url, transport)
        sent = 0
        n = 2000  # 125 MiB: far beyond what the socket buffers on the way take

        async with chain.client.ws_connect(chain.url + "/ws") as ws:

            async def send_all() -> None:
                nonlocal sent
                for i in range(n):
                    await ws.send_bytes(struct.pack("!I", i) + bytes(MESSAGE - 4))
                    sent += 1

            sender = asyncio.create_task(send_all())
            try:
                before = -1
                for _ in range(60):  # at most 30 s: until nothing more went for 1 s
                    if sent == before:
                        break
                    before = sent
                    await asyncio.sleep(0.5)
                    await asyncio.sleep(0.5)
                assert 0 < sent < n, f"the sender never stalled: {sent} sent"
                # The bridge's own holding: credited, in the transport towards
                # the origin, which it fills only to its high-water mark and one
                # gathered write; the rest waits uncredited in the tunnel, within
                # the core's bound (the window, grown up to max_stream_window while
                # large messages flowed, and unfinished messages' chunks credited
                # ahead within session_reassembly).
                origin_ws = _towards_origin(int(url.rsplit(":", 1)[1]))
                buffered = origin_ws._writer.transport.get_write_buffer_size()
                assert buffered <= 64 * 1024 + wsbridge.GATHER_BYTES + MESSAGE, buffered
                config = TunnelConfig()
                unconsumed = chain.up.tunnel.reassembly_bytes
                assert unconsumed <= config.session_reassembly + config.max_stream_window
                go.set()
                async with asyncio.timeout(60):
                    await sender
                await until(lambda: len(seen) == n, "every message at the origin", 60)
            finally:
                sender.cancel()
        assert seen == list(range(n)), "lost, duplicated or reordered"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_close_without_a_code_reaches_the_client_as_1000(
    build_chain: BuildChain, transport: str
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        assert request.transport is not None
        request.transport.write(b"\x88\x00")  # Close, no status code (RFC 6455 7.1.5: 1005)
        await ws.receive()
        return ws

    runner, url = await serve(handler)
    try:
        chain = await build_chain(url, transport)
        async with chain.client.ws_connect(chain.url + "/ws") as ws:
            await ws.send_str("close now")
            msg = await ws.receive(timeout=10)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1000, msg
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_burst_of_tiny_messages_is_not_taken_for_a_receiver_that_does_not_read(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    # 30,000 messages of a few bytes fit one window many times over: they arrive
    # by thousands per session message, more than MAX_STREAM_BACKLOG events if
    # they waited in the mailbox for the bridge's task.
    chain = await build_chain(origin[1], transport)
    n = 30_000
    async with chain.client.ws_connect(chain.url + "/ws") as ws:
        for i in range(n):
            await ws.send_bytes(b"%d" % i)
        got = []
        async with asyncio.timeout(60):
            while len(got) < n:
                msg = await ws.receive()
                assert msg.type is WSMsgType.BINARY, msg
                got.append(msg.data)
    assert got == [b"echo %d" % i for i in range(n)]
