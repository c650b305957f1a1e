"""The long-poll hop between gateways: lean answers, and POSTs that poll (issue 13 items 4, 5).

A gateway's create POST says ``X-Hopgate-Long-Poll: lean``; the server then
answers that session's GETs and POSTs without the headers a browser needs
(``no-store`` stays). The server announces ``poll-post``: a POST carrying
``poll=`` feeds its batch and is then held like the GET of that number, so a
legacy poll through the hop (its OPEN up, its answer down) costs one request.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.core.session.frames import (
    FLAG_FIN,
    Ack,
    Data,
    FrameDecoder,
    Hello,
    encode_data,
    encode_hello,
    new_packer,
)
from gateway.transports.connector import SessionConnector
from gateway.transports.endpoint import SessionServer
from gateway.transports.handshake import (
    LONG_POLL_HEADER,
    SESSION_HEADER,
    SESSION_PATH,
    TOKEN_HEADER,
    TUNNEL_HEADER,
    decode_token,
)
from gateway.transports.hopsession import HopSession
from tests.transports.conftest import (
    FAST,
    Inbox,
    MakePair,
    StartRaw,
    StartServer,
    settings_for,
)

Frames = list[object]


async def _create(http: aiohttp.ClientSession, url: str, lean: bool) -> tuple[str, str, str]:
    """(session id, token, the server's long-poll features) of a session opened by hand."""
    headers = {LONG_POLL_HEADER: "lean"} if lean else {}
    async with http.post(url + SESSION_PATH, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return (
            resp.headers[SESSION_HEADER],
            resp.headers[TOKEN_HEADER],
            resp.headers.get(LONG_POLL_HEADER, ""),
        )


class _Wire:
    """Numbered GETs and POSTs of epoch 1, by hand; each answer's frames and headers."""

    def __init__(self, http: aiohttp.ClientSession, url: str, sid: str, token: str) -> None:
        self.http, self.url, self.token = http, url + SESSION_PATH + "/" + sid, token
        self.headers: dict[str, str] = {}

    async def _read(self, resp: aiohttp.ClientResponse) -> Frames:
        assert resp.status == 200, await resp.text()
        self.headers = dict(resp.headers)
        return list(FrameDecoder().decode(await resp.read()))

    async def get(self, last: int, poll: int, seen: int) -> Frames:
        params = {"last": str(last), "epoch": "1", "poll": str(poll), "seen": str(seen)}
        async with self.http.get(self.url, params=params, headers={TOKEN_HEADER: self.token}) as r:
            return await self._read(r)

    async def post(self, body: bytes, post: int, poll: int, last: int, seen: int) -> Frames:
        params = {"epoch": "1", "post": str(post), "poll": str(poll)}
        params.update(last=str(last), seen=str(seen))
        headers = {TOKEN_HEADER: self.token}
        async with self.http.post(self.url, params=params, data=body, headers=headers) as r:
            return await self._read(r)


def _payloads(frames: Frames) -> list[bytes]:
    return [f.payload for f in frames if isinstance(f, Data)]


async def test_a_gateway_gets_lean_answers_and_a_browser_full_ones(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, hold_time=5.0))
    seen_headers = []
    for lean in (True, False):
        sid, token, features = await _create(http, handle.url, lean)
        assert set(features.split()) >= {"lean", "poll-post"}
        wire = _Wire(http, handle.url, sid, token)
        async with asyncio.timeout(10):
            assert any(isinstance(f, Hello) for f in await wire.get(0, poll=1, seen=0))
        seen_headers.append({k.lower(): v for k, v in wire.headers.items()})
    lean_headers, full_headers = seen_headers
    assert lean_headers["cache-control"] == "no-store"
    assert not {"content-type", "server", "x-content-type-options"} & set(lean_headers)
    assert full_headers["content-type"] == "application/octet-stream"
    assert full_headers["x-content-type-options"] == "nosniff"
    assert full_headers["cache-control"] == "no-store"


async def test_a_post_that_polls_is_held_in_number_order_and_answers_a_due_ack(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, hold_time=5.0, heartbeat=10.0))
    sid, token, _ = await _create(http, handle.url, lean=True)
    server, inbox = await handle.next_session()
    wire = _Wire(http, handle.url, sid, token)
    packer = new_packer()
    hello = encode_hello(packer, 1, sid, 0, decode_token(token))
    async with asyncio.timeout(10):
        await wire.get(0, poll=1, seen=0)  # attaches: the HELLO comes at once
        # POST 1 polls as number 3, overtaking GET 2: it is held, and data waits for 2.
        third = asyncio.create_task(wire.post(hello, post=1, poll=3, last=0, seen=1))
        await asyncio.sleep(0.1)
        server.send(b"m1")
        await asyncio.sleep(0.2)
        assert not third.done(), "POST/poll 3 answered before GET 2"
        assert _payloads(await wire.get(0, poll=2, seen=1)) == [b"m1"]
        server.send(b"m2")
        assert _payloads(await third) == [b"m2"]
        # Data up on a POST that polls: fed at once; with nothing coming down, the
        # ACK goes within its delay (not at hold_time) so the sender does not stall.
        started = asyncio.get_running_loop().time()
        data = encode_data(packer, 1, FLAG_FIN, b"up")
        frames = await wire.post(data, post=2, poll=4, last=2, seen=3)
    assert inbox.messages == [b"up"]
    assert [f.received for f in frames if isinstance(f, Ack)] == [1]
    assert not _payloads(frames)
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_a_request_answer_exchange_costs_one_http_request(
    start_raw: StartRaw, http: aiohttp.ClientSession
) -> None:
    """An echo ping-pong over long-poll: the question rides a POST that polls for the answer."""
    requests = 0

    def echo(hop: HopSession) -> None:
        hop.set_handlers(on_message=hop.send, on_writable=lambda: None, on_closed=lambda *_: None)

    settings = settings_for("long-poll", hold_time=5.0)
    server = SessionServer(settings, on_session=echo)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        return await server.handle(request)

    url = await start_raw(handler)
    connector = SessionConnector(URL(url), http, settings, prefer="long-poll")
    try:
        client = await asyncio.wait_for(connector.connect(), timeout=10)
        inbox = Inbox()
        inbox.attach(client)
        async with asyncio.timeout(20):
            for i in range(5):  # warm up: the poller reaches its busy floor
                client.send(b"q")
                await inbox.wait_for(i + 1)
            before = requests
            for i in range(5, 45):
                client.send(b"q")
                await inbox.wait_for(i + 1)
            used = requests - before
    finally:
        await connector.close()
        await server.close()
    assert client.transport == "long-poll" or client.closed
    # A POST up and a GET to replace the answered poll would be 80.
    assert used <= 48, f"{used} HTTP requests for 40 round trips"


async def test_upstream_only_traffic_is_acked_without_a_stall(make_pair: MakePair) -> None:
    """Nothing comes down for the ACKs to ride on: they still come, the transport stays."""
    # No heartbeat PING (and its PONG) within the test to carry an ACK either.
    pair = await make_pair("long-poll", settings_for("long-poll", heartbeat=10.0))
    epoch = pair.client.epoch
    async with asyncio.timeout(15):
        for i in range(30):  # 1.5 s, longer than stall_timeout (1 s)
            pair.client.send(f"up {i}".encode())
            await asyncio.sleep(0.05)
        await pair.server_inbox.wait_for(30)
        while pair.client.core.outstanding:
            await asyncio.sleep(0.01)
    assert pair.server_inbox.messages == [f"up {i}".encode() for i in range(30)]
    assert pair.client.epoch == epoch, "the long-poll transport was restarted (stalled)"


async def test_a_server_that_does_not_announce_poll_post_gets_plain_posts(
    start_raw: StartRaw, http: aiohttp.ClientSession
) -> None:
    """An older server (no ``poll-post`` in its create answer): POSTs carry no ``poll=``."""
    polling_posts = plain_posts = 0
    settings = settings_for("long-poll", hold_time=5.0)
    inbox = Inbox()
    server = SessionServer(settings, on_session=inbox.attach)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal polling_posts, plain_posts
        if request.method == "POST" and "post" in request.query:
            if "poll" in request.query:
                polling_posts += 1
            else:
                plain_posts += 1
        response = await server.handle(request)
        response.headers.popall(LONG_POLL_HEADER, None)  # as a server before it
        return response

    url = await start_raw(handler)
    connector = SessionConnector(URL(url), http, settings, prefer="long-poll")
    try:
        client = await asyncio.wait_for(connector.connect(), timeout=10)
        async with asyncio.timeout(10):
            for i in range(10):
                client.send(f"up {i}".encode())
                await inbox.wait_for(i + 1)
    finally:
        await connector.close()
        await server.close()
    assert inbox.messages == [f"up {i}".encode() for i in range(10)]
    assert polling_posts == 0 and plain_posts >= 10


async def test_the_server_learns_what_the_clients_tunnel_reads_from_its_create_post(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """A gateway's POST names its tunnel's features; a browser's (the shim's) names none.

    The server's tunnel sends whole answers (RESPONSE_WHOLE) only to a session
    whose client said it reads them: the shim would refuse the frame.
    """
    handle = await start_server(FAST)
    for index, (said, expected) in enumerate(
        (
            ("packed-heads whole-answers some-future-thing", {"packed-heads", "whole-answers"}),
            (None, set()),
        )
    ):
        headers = {} if said is None else {TUNNEL_HEADER: said}
        async with http.post(handle.url + SESSION_PATH, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert set(resp.headers[TUNNEL_HEADER].split()) == {"packed-heads", "whole-answers"}
        server, _ = await handle.next_session(index)
        if said is not None:
            expected.add("some-future-thing")  # unknown tokens are kept, and ignored
        assert server.peer_tunnel == expected
