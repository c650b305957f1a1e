"""Issue 7 items 2-4: everything a peer can make a gateway hold is bounded.

RSS is measured on a gateway running as its own process (``spawn_gateway``);
the other bounds are counted on in-process gateways. Scales are small (the
full figures come from ``bench/attacks.py --scale full``) but each attack
here is far beyond the bound it checks, so the test fails without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
import pytest

from tests.conftest import MakeGateway
from tests.hostile import payloads
from tests.hostile import peer as hp
from tests.hostile.origin import MiB, Origin
from tests.processes import SpawnGateway, proc_status_kib, unlimited_sessions
from tests.status_page import active_sessions, warm_until_hop
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(90)


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid) / 1024


@pytest.mark.parametrize(
    ("unread_streams", "websockets"),
    [(64, 192), (0, 256)],
    ids=["unread-and-websockets", "all-websockets"],
)
async def test_one_hostile_session_stays_within_64_mib_and_a_neighbour_sees_every_message(
    spawn_gateway: SpawnGateway, origin: Origin, unread_streams: int, websockets: int
) -> None:
    """Every stream the defaults allow (--max-streams 256), each holding what it can."""
    gw = spawn_gateway("server", "--upstream", origin.url, "--shutdown-grace", "1")
    async with hp.HostilePeer(gw.url) as neighbour, hp.HostilePeer(gw.url, timeout=20) as evil:
        [chat] = await payloads.open_websockets(neighbour, 1)
        await asyncio.sleep(0.5)
        base = rss_mib(gw.pid)
        peak = base
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_mib(gw.pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        # Streaming responses the attacker never reads (no WINDOW, ever) ...
        unread = [evil.sid() for _ in range(unread_streams)]
        if unread:
            await evil.send(*(hp.open_http(s, "GET", "/stream", [("Host", "x")]) for s in unread))
        # ... and WebSocket messages of 15 MiB that never finish (as in the issue;
        # streams beyond --session-connections may wait for an origin connection).
        sockets = await payloads.open_websockets(evil, websockets, timeout=3.0)
        flood = asyncio.create_task(payloads.push_unfinished(evil, sockets, 15 * MiB, stop=stop))
        for i in range(50):
            await neighbour.send(hp.message(chat, f"m{i}".encode()))
            await asyncio.sleep(0.02)
        echoed = neighbour.streams[chat]
        got_all = await neighbour.until(lambda: echoed.body.count(b"echo:") >= 50, 20)
        t0 = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.shield(flood)
        print(f"flood ended after {time.monotonic() - t0:.1f} s")
        await asyncio.sleep(1.0)
        stop.set()
        pushed = await flood
        await sampler
    print(f"one hostile session: RSS {base:.0f} -> {peak:.0f} MiB, {pushed / MiB:.0f} MiB taken")
    assert got_all, f"the neighbour got {echoed.body.count(b'echo:')} of 50 echoes"
    assert peak - base <= 64, f"one hostile session pushed RSS {base:.0f} -> {peak:.0f} MiB"


async def test_concurrent_session_posts_beyond_the_limit_get_429(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "max_session_posts": 4})
    async with aiohttp.ClientSession() as http:
        created = await hp.create_session(http, gw.url)
    path = f"{hp.SESSION_PATH}/{created.session_id}?epoch=1"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{hp.TOKEN_HEADER}: {created.token}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
    )
    stalled = []
    try:
        for _ in range(4):  # four bodies that never finish
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(head.format(n=1 << 20).encode() + b"\x00" * 1000)
            await writer.drain()
            stalled.append((reader, writer))
        await asyncio.sleep(0.3)
        answer = await hp.async_raw_exchange(
            "127.0.0.1", gw.port, head.format(n=0).encode(), timeout=5
        )
        assert hp.status_of(answer) == 429, answer[:200]
    finally:
        for _, writer in stalled:
            writer.close()


async def test_one_address_cannot_fill_max_sessions(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway(
        "server",
        {
            "upstream": origin.url,
            "max_sessions": 50,
            "max_sessions_per_client": 5,
            "session_create_rate": 1000.0,
        },
    )
    attacker = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=attacker) as http:
        answers = [(await hp.create_session(http, gw.url)).status for _ in range(20)]
    assert answers[:5] == [200] * 5
    assert set(answers[5:]) == {429}, answers
    async with aiohttp.ClientSession() as http:  # another address still gets in
        assert (await hp.create_session(http, gw.url)).status == 200


async def test_session_creation_is_rate_limited_per_address(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "session_create_rate": 2.0})
    async with aiohttp.ClientSession() as http:
        answers = [(await hp.create_session(http, gw.url)).status for _ in range(6)]
        assert answers.count(200) <= 3 and 429 in answers, answers
        await asyncio.sleep(1.2)
        assert (await hp.create_session(http, gw.url)).status == 200  # the bucket refills


async def test_a_legit_gateway_upgrades_while_one_address_hammers_session_creation(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    server = await make_gateway("server", {"upstream": origin.url, "max_sessions": 100})
    attacker = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=16)
    async with aiohttp.ClientSession(connector=attacker) as http:
        statuses = await asyncio.gather(*(hp.create_session(http, server.url) for _ in range(300)))
    opened = sum(1 for c in statuses if c.status == 200)
    assert opened < 100, f"one address opened {opened} of 100 sessions"
    client = await make_gateway("client", {"upstream": server.url})
    async with aiohttp.ClientSession() as http:
        hop = await warm_until_hop(http, client.url, timeout=20)
    assert hop["transport"] != "plain", f"the legit gateway stayed plain: {hop['last_error']}"


async def test_slowloris_is_closed_after_the_header_timeout(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "header_timeout": 1.0})
    conns = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(10)]
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    closed_after: list[float] = []
    t0 = time.monotonic()
    alive = list(range(len(conns)))
    i = 0
    while alive and time.monotonic() - t0 < 6.0:
        for k in list(alive):
            reader, writer = conns[k]
            try:
                writer.write(head[i : i + 1])
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    data = await asyncio.wait_for(reader.read(4096), 0.01)
                    if data == b"" or data.startswith(b"HTTP/"):
                        raise ConnectionResetError
            except (ConnectionError, OSError):
                closed_after.append(time.monotonic() - t0)
                alive.remove(k)
        i += 1
        await asyncio.sleep(0.2)
    for _, writer in conns:
        writer.close()
    assert not alive, f"{len(alive)} of 10 slowloris connections still open after 6 s"
    assert max(closed_after) < 4.0, closed_after


async def test_inbound_connections_beyond_max_clients_are_closed(
    make_gateway: MakeGateway, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "max_clients": 16})
    caplog.set_level(logging.INFO, logger="hopgate")
    caplog.clear()
    conns = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(200)]
    await asyncio.sleep(1.0)
    closed = 0
    for reader, _writer in conns:
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            data = await asyncio.wait_for(reader.read(1), 0.05)
            closed += data == b""
    for _, writer in conns:
        writer.close()
    assert closed >= 184, f"only {closed} of 184 connections beyond --max-clients were closed"
    refusals = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refusals) <= 3, f"refusals logged per socket: {len(refusals)} records"
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/after") as resp:
        assert resp.status == 200


async def test_idle_keepalive_connections_are_closed(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "keepalive_timeout": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        t0 = time.monotonic()
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
        assert time.monotonic() - t0 < 4.0
    finally:
        writer.close()


async def test_held_polls_of_one_session_hold_a_bounded_number_of_origin_connections(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "session_connections": 8})
    async with hp.HostilePeer(gw.url) as peer:
        sids = [peer.sid() for _ in range(40)]
        await peer.send(*(hp.open_http(s, "GET", "/hold?s=3", [("Host", "x")]) for s in sids))
        await asyncio.sleep(1.5)
        assert 0 < origin.peak_held <= 8, f"{origin.peak_held} origin connections held"
        assert peer.closed is None


async def test_stream_opens_are_capped_per_session(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    """Held: thousands of OPENs in one session, at most --max-streams of them live."""
    gw = await make_gateway("server", {"upstream": origin.url, "max_streams": 32})
    async with hp.HostilePeer(gw.url, timeout=20) as peer:
        sids = [peer.sid() for _ in range(1000)]
        for i in range(0, 1000, 100):
            await peer.send(
                *(hp.open_http(s, "GET", "/hold?s=5", [("Host", "x")]) for s in sids[i : i + 100])
            )
        await peer.until(lambda: sum(1 for s in sids if peer.streams[s].reset) >= 968, 15)
        resets = sum(1 for s in sids if peer.streams[s].reset)
    assert resets >= 968
    assert len([p for p in origin.paths() if p.startswith("/hold")]) <= 32


async def test_idle_sessions_are_small_created_in_constant_time_and_given_back(
    spawn_gateway: SpawnGateway, origin: Origin
) -> None:
    n = 10_000
    gw = spawn_gateway(
        "server",
        "--upstream",
        origin.url,
        *unlimited_sessions(n + 10),
        "--resume-grace",
        "3",
        "--shutdown-grace",
        "1",
    )
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as http:
        await hp.create_session(http, gw.url)  # warm up
        await asyncio.sleep(3.5)
        base = rss_mib(gw.pid)
        times = []
        for batch in range(3):
            t0 = time.monotonic()
            made = await asyncio.gather(*(hp.create_session(http, gw.url) for _ in range(n // 3)))
            times.append(time.monotonic() - t0)
            assert all(c.status == 200 for c in made), batch
        peak = rss_mib(gw.pid)

        async def all_expired() -> bool:
            return await active_sessions(http, gw.url) == 0

        expired = await eventually(all_expired, timeout=20, interval=1.0)
        # The gateway trims freed memory once the expiry sweep has settled
        # (about a second after the last session went): wait for it, bounded.
        await eventually(lambda: rss_mib(gw.pid) - base <= 50, timeout=10, interval=0.5)
        after = rss_mib(gw.pid)
    each_kib = (peak - base) * 1024 / n
    assert each_kib <= 16, f"an idle session costs {each_kib:.0f} KiB"
    assert times[2] < 3 * times[0] + 0.5, f"creation slows down with the count: {times}"
    assert expired, "sessions still active 20 s after their --resume-grace"
    assert after - base <= 50, f"RSS after expiry {after:.0f} MiB, baseline {base:.0f} MiB"
