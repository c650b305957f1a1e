"""TunnelLink end to end: HTTP exchanges, exactly-once and endpoint WebSockets over a session.

Every test runs on the chain of ``chain.py`` (client -> downstream gateway
== hop session ==> upstream gateway -> origin), once per session transport
(``websocket``, ``long-poll``) unless it is about something the transport
cannot change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from gateway.core.tunnel import ResetCode, StreamReset
from gateway.glue.driver import TunnelDriver
from gateway.glue.opener import NotSent
from gateway.transports.hopsession import HopSession
from tests.glue.chain import (
    TRANSPORTS,
    BuildChain,
    Chain,
    MiB,
    Origin,
    first_event,
    headers_of,
    serve,
)
from tests.helpers import until

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_request_and_response_bodies_both_ways(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _o, url = origin
    chain = await build_chain(url, transport)
    body = os.urandom(300_000)
    async with chain.client.post(chain.url + "/echo?a=1&b=%20", data=body) as resp:
        assert resp.status == 200
        info = await resp.json()
        assert resp.headers["X-Origin"] == "yes"
        assert "X-Drop" not in resp.headers  # hop-by-hop on the origin's side
        assert resp.headers.getall("Via") == ["1.1 hopgate, 1.1 hopgate"]
    assert info["raw_path"] == "/echo?a=1&b=%20"
    assert info["body_len"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert chain.entry.not_sent == []
    assert chain.down.tunnel.stream_count == 0
    await until(lambda: chain.up.tunnel.stream_count == 0)
    assert chain.entry.stats.active_streams == chain.server.stats.active_streams == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_small_exchange_costs_each_side_two_flushes(
    build_chain: BuildChain,
    origin: tuple[Origin, str],
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each side flushes once after every tunnel message it receives (what the
    # events start, an endpoint write and its credit, leaves with it), and once
    # with what it sends: the opening side its OPEN, at once; the answering side
    # head, body and end of a small answer together, which arrive from the
    # origin in one read (they took two flushes, one of them empty, before).
    _o, url = origin
    chain = await build_chain(url, transport)
    sides = {chain.down.driver: "opening", chain.up.driver: "answering"}
    flushes = dict.fromkeys(sides.values(), 0)
    flush = TunnelDriver.flush

    def counted(driver: TunnelDriver) -> None:
        if driver in sides:
            flushes[sides[driver]] += 1
        flush(driver)

    monkeypatch.setattr(TunnelDriver, "flush", counted)
    for i in range(5):
        async with chain.client.get(f"{chain.url}/small?i={i}") as resp:
            assert resp.status == 200
            assert (await resp.json())["raw_path"] == f"/small?i={i}"
    assert flushes == {"opening": 10, "answering": 10}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_origin_sees_the_same_headers_as_on_the_plain_path(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    sent = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must not pass",
        "X-End": "passes",
        "Cookie": "a=1",
        "Host": "public.example:8443",
    }
    views = []
    for plain in (True, False):
        chain.entry.plain = plain
        async with chain.client.get(chain.url + "/h", headers=sent) as resp:
            views.append(headers_of(await resp.json()))
    plain_view, tunnel_view = views
    assert tunnel_view == plain_view
    assert "x-hop" not in tunnel_view
    assert tunnel_view["x-end"] == ["passes"]
    assert tunnel_view["host"] == [URL(url).raw_authority]
    assert tunnel_view["x-forwarded-host"] == ["public.example:8443"]
    assert tunnel_view["x-forwarded-for"] == ["127.0.0.1, 127.0.0.1"]
    assert tunnel_view["via"] == ["1.1 hopgate, 1.1 hopgate"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_with_its_body(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str, method: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    data = None if method in ("GET", "HEAD") else f"body of {method}".encode()
    async with chain.client.request(method, chain.url + "/m", data=data) as resp:
        assert resp.status == 200
        raw = await resp.read()
    assert o.seen[-1]["method"] == method
    assert o.seen[-1]["body"] == (data or b"")
    if method == "HEAD":
        assert raw == b""
    else:
        assert json.loads(raw)["body_len"] == len(data or b"")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sse_events_arrive_one_by_one(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    async with chain.client.get(chain.url + "/sse") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        for i, ack in enumerate(o.acks):
            async with asyncio.timeout(5):
                line = await resp.content.readline()
                assert line == f"data: event {i}\n".encode()
                assert await resp.content.readline() == b"\n"
            ack.set()  # the origin sends the next event only now
        assert await resp.read() == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_held_poll_stays_held_as_long_as_the_origin_holds_it(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    started = time.monotonic()
    poll = asyncio.create_task(chain.client.get(chain.url + "/hold?s=3"))
    await asyncio.sleep(1)
    assert chain.entry.stats.active_streams == 1
    assert chain.server.stats.active_streams == 1
    async with asyncio.timeout(10):
        resp = await poll
    assert await resp.text() == "held and answered"
    assert time.monotonic() - started >= 2.9
    await until(lambda: chain.server.stats.active_streams == 0)
    assert chain.entry.stats.active_streams == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_abort_cancels_the_origin_request_within_a_second(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    poll = asyncio.create_task(chain.client.get(chain.url + "/hold?s=30"))
    async with asyncio.timeout(5):
        await o.arrived.wait()
    await asyncio.sleep(0.2)
    poll.cancel()
    aborted = time.monotonic()
    with contextlib.suppress(asyncio.CancelledError):
        await poll
    async with asyncio.timeout(3):
        await o.cancelled.wait()
    assert o.cancelled_at - aborted < 1.0
    await until(lambda: chain.server.stats.active_streams == 0)
    await until(lambda: chain.entry.stats.active_streams == 0)
    assert len(o.seen) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unreachable_origin_is_a_502_with_a_reason(
    build_chain: BuildChain, transport: str
) -> None:
    runner, dead = await serve(lambda r: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    await runner.cleanup()  # nothing listens there any more
    chain = await build_chain(dead, transport)
    async with chain.client.get(chain.url + "/x") as resp:
        assert resp.status == 502
        text = await resp.text()
    assert text.startswith("hopgate: could not connect to the upstream: ConnectionRefusedError")
    assert dead.rpartition(":")[2] not in text  # the port: the client is not told where
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert chain.entry.not_sent == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_origin_timeout_is_a_504(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport, server_config={"upstream_timeout": 1.0})
    async with chain.client.get(chain.url + "/hold?s=5") as resp:
        assert resp.status == 504
        assert "did not answer in time" in await resp.text()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_50_mib_each_way_with_bounded_memory(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    size = 50 * MiB
    block = os.urandom(MiB)
    base = rss_kib()
    peak = base

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kib())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())

    async def upload_body() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            yield block

    try:
        async with chain.client.post(chain.url + "/upload", data=upload_body()) as resp:
            info = await resp.json()
        assert info == {"size": size, "sha256": hashlib.sha256(block * 50).hexdigest()}
        got = 0
        async with chain.client.get(chain.url + f"/download?n={size}") as resp:
            async for chunk in resp.content.iter_chunked(MiB):
                got += len(chunk)
        assert got == size
    finally:
        sampler.cancel()
    # Everything (client, both gateways, origin) runs in this process: holding
    # either body whole would add 50 MiB.
    print(f"RSS growth {(peak - base) // 1024} MiB")
    assert (peak - base) < 30 * 1024, f"RSS grew by {(peak - base) // 1024} MiB"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stalled_download_does_not_stall_other_streams(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    stalled = await chain.client.get(chain.url + f"/download?n={40 * MiB}")
    await stalled.content.readexactly(1000)  # then stop reading
    await asyncio.sleep(0.5)  # let every buffer on the way fill up
    started = time.monotonic()
    for _ in range(20):
        async with asyncio.timeout(2):
            async with chain.client.post(chain.url + "/small", data=b"x" * 100) as resp:
                assert (await resp.json())["body_len"] == 100
    assert time.monotonic() - started < 5
    # The stalled stream is still alive and flow-controlled end to end: the
    # origin is held back by the windows and socket buffers on the way.
    assert chain.down.tunnel.stream_count == 1
    held_back = o.download_sent
    await asyncio.sleep(0.3)
    assert o.download_sent == held_back
    assert held_back < 16 * MiB, f"the origin could write {held_back // MiB} MiB"
    stalled.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_large_upload_does_not_delay_small_answers(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    block = os.urandom(MiB)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(60):
            yield block
            await asyncio.sleep(0.01)  # >= 0.6 s: a fast origin client takes 60 MiB in < 0.4 s

    upload = asyncio.create_task(chain.client.post(chain.url + "/upload", data=body()))
    await asyncio.sleep(0.3)
    worst = 0.0
    for _ in range(10):
        started = time.monotonic()
        async with chain.client.get(chain.url + "/poll") as resp:
            await resp.read()
        worst = max(worst, time.monotonic() - started)
    assert not upload.done(), "the upload should still be running"
    assert worst < 0.5, f"a small poll took {worst:.3f} s behind the upload"
    async with asyncio.timeout(60):
        resp = await upload
    assert (await resp.json())["size"] == 60 * MiB


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relay"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_early_answer_to_an_upload_arrives_whole(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str, relay: bool
) -> None:
    o, url = origin
    chain = await build_chain(url, transport, relay=relay)
    body = os.urandom(8 * MiB)
    async with chain.client.post(chain.url + "/limited", data=body) as resp:
        assert resp.status == 413
        assert resp.headers["X-Limit"] == "10"
        assert await resp.text() == "too big for me"
    async with chain.client.get(chain.url + "/after") as resp:  # the session is fine
        assert resp.status == 200
    await until(lambda: chain.down.tunnel.stream_count == 0)
    await until(lambda: chain.up.tunnel.stream_count == 0)
    assert [s["path"] for s in o.seen] == ["/limited", "/after"]


# --------------------------------------------------------------- exactly once


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_session_lost_after_the_open_left_is_a_502_never_a_resend(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    # A POST with a body: RFC 9110 lets no intermediary send it again (a
    # body-less GET would be, once: tests/hop/test_failover.py).
    poll = asyncio.create_task(chain.client.post(chain.url + "/hold?s=30", data=b"once"))
    async with asyncio.timeout(5):
        await o.arrived.wait()
    chain.down.hop.abandon(1001, "killed by the test")
    async with asyncio.timeout(5):
        resp = await poll
    assert resp.status == 502
    text = await resp.text()
    assert "lost after the request was sent; not retried" in text
    assert chain.entry.not_sent == []
    await asyncio.sleep(0.3)
    assert len(o.seen) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_not_sent_when_the_session_is_gone_and_plain_reaches_the_origin_once(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    link = chain.down
    link.hop.abandon(1001, "gone")
    request = make_mocked_request("POST", "/once", headers={"Host": "x"})
    with pytest.raises(NotSent):
        await link.forward(request, "/once", origin_key=url)
    assert link.tunnel.stream_count == 0
    # The caller's retry over plain HTTP is the first and only delivery.
    async with chain.client.post(chain.url + "/once", data=b"payload") as resp:
        assert resp.status == 200
    assert [(s["path"], s["body"]) for s in o.seen] == [("/once", b"payload")]


async def _chain_quick_to_go_plain(build_chain: BuildChain, url: str, transport: str) -> Chain:
    """A chain whose plain fallback gives up connecting after 0.5 s, not the default."""
    chain = await build_chain(url, transport)
    forwarder = chain.entry.forwarder
    forwarder.config = forwarder.config.replace(connect_timeout=0.5)
    return chain


def _session_takes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a full replay buffer would: the session is alive but takes no message."""
    monkeypatch.setattr(HopSession, "writable", property(lambda self: False))


def _assert_went_plain(chain: Chain, requests: int) -> None:
    not_sent = chain.entry.not_sent
    assert len(not_sent) == requests, not_sent
    assert all("could not take the request" in why for why in not_sent), not_sent


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_not_sent_while_the_session_cannot_take_the_open(
    build_chain: BuildChain,
    origin: tuple[Origin, str],
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    o, url = origin
    chain = await _chain_quick_to_go_plain(build_chain, url, transport)
    entry = chain.entry
    _session_takes_nothing(monkeypatch)
    async with chain.client.post(chain.url + "/fallback", data=b"abc") as resp:
        assert resp.status == 200
    monkeypatch.undo()
    _assert_went_plain(chain, 1)
    assert [s["path"] for s in o.seen] == ["/fallback"]
    assert chain.down.tunnel.stream_count == 0
    assert entry.stats.active_streams == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_busy_gets_the_session_cannot_take_go_plain_once(
    build_chain: BuildChain,
    origin: tuple[Origin, str],
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With streams in flight a GET's OPEN waits for the turn's flush; unsent, it goes plain."""
    o, url = origin
    chain = await _chain_quick_to_go_plain(build_chain, url, transport)
    entry = chain.entry
    held = asyncio.create_task(chain.client.get(chain.url + "/hold?s=30"))
    async with asyncio.timeout(5):
        await o.arrived.wait()
    _session_takes_nothing(monkeypatch)
    gets = [chain.client.get(f"{chain.url}/busy{i}") for i in range(3)]
    for resp in await asyncio.gather(*gets):
        assert resp.status == 200
        resp.release()
    monkeypatch.undo()
    _assert_went_plain(chain, 3)
    assert sorted(s["path"] for s in o.seen if not s["path"].startswith("/hold")) == [
        "/busy0",
        "/busy1",
        "/busy2",
    ]
    assert chain.down.tunnel.stream_count == 1  # the held poll's
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held
    await until(lambda: entry.stats.active_streams == 0)


@pytest.mark.parametrize("transport", ["websocket"])
async def test_a_busy_get_resumes_once_with_its_answer(
    build_chain: BuildChain,
    origin: tuple[Origin, str],
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OPEN that went with the busy turn's flush needs no step of its own to check it."""
    o, url = origin
    chain = await build_chain(url, transport)
    held = asyncio.create_task(chain.client.get(chain.url + "/hold?s=30"))
    async with asyncio.timeout(5):
        await o.arrived.wait()
    handed: list[int] = []
    opener = type(chain.down._opening)
    original = opener._hand_over

    async def counted(self: object, sid: int, box: object) -> None:
        handed.append(sid)
        await original(self, sid, box)  # type: ignore[arg-type]

    monkeypatch.setattr(opener, "_hand_over", counted)
    async with chain.client.get(chain.url + "/busy") as resp:
        assert resp.status == 200
    assert handed == []
    assert chain.entry.not_sent == []
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held


@pytest.mark.parametrize("transport", ["websocket"])
async def test_the_upstream_side_cannot_open_streams_towards_the_downstream(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    async with chain.client.get(chain.url + "/h") as resp:  # makes sure the session is up
        assert resp.status == 200
    event = await first_event(chain.up, "GET", "/from-upstream")
    assert isinstance(event, StreamReset) and event.code == ResetCode.REFUSED


# ---------------------------------------------------------------- WebSockets


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_websocket_echo_text_binary_and_close_codes(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _o, url = origin
    chain = await build_chain(url, transport)
    async with chain.client.ws_connect(chain.url + "/ws", protocols=("chat.v1", "chat.v2")) as ws:
        assert ws.protocol == "chat.v2"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo hello"
        await ws.send_bytes(b"\x00\x01" * 70_000)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.BINARY and msg.data == b"echo " + b"\x00\x01" * 70_000
        await ws.send_str("close:4321")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4321 and msg.extra == "origin says bye"
    # client-initiated close: the origin answers 4001, which comes back
    async with chain.client.ws_connect(chain.url + "/ws") as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
        async with asyncio.timeout(10):
            await ws.close(code=4000, message=b"client bye")
        assert ws.close_code == 4001
    await until(lambda: chain.entry.stats.active_websockets == 0)
    await until(lambda: chain.server.stats.active_websockets == 0)
    await until(lambda: chain.down.tunnel.stream_count == 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_websocket_refusal_by_the_origin_is_passed_back(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await chain.client.ws_connect(chain.url + "/refuse-ws")
    assert info.value.status == 403
    # and the body, with a raw request
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    async with chain.client.get(chain.url + "/refuse-ws", headers=headers) as resp:
        assert resp.status == 403
        assert resp.headers["X-Why"] == "policy"
        assert await resp.text() == "no sockets for you"
    assert chain.entry.not_sent == []
