"""Inbound connections: head deadline, keep-alive, the connection cap, bounded logging.

Raw sockets against running gateways with short limits (``header_timeout``
of 1 s and the like), and one gateway process under ``prlimit --nofile=1024``
with 1,100 idle sockets, the case that used to lock every client out.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from gateway.edges.inbound import AcceptErrorFilter, IntervalLog
from gateway.server import Gateway
from tests.processes import start_gateway
from tests.waiting import eventually

if TYPE_CHECKING:
    from tests.conftest import MakeGateway, MakeOrigin

pytestmark = pytest.mark.timeout(60)

GET = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


async def hello(request: web.Request) -> web.Response:
    if request.path == "/slow":
        await asyncio.sleep(1.5)
    if request.path == "/hold":
        await asyncio.sleep(30)
    return web.Response(text="ok")


async def connect(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """Everything the gateway sent before closing, or None if still open after ``seconds``."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(4096):
                data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


# ---------------------------------------------------------------- the log


def test_interval_log_reports_a_count_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    due: list[tuple[float, Callable[[], None]]] = []
    counter = IntervalLog(
        "things",
        interval=10.0,
        clock=lambda: now[0],
        schedule=lambda delay, flush: due.append((now[0] + delay, flush)),
    )

    def advance(to: float) -> None:
        for when, flush in sorted(due, key=lambda d: d[0]):
            if when <= to:
                due.remove((when, flush))
                now[0] = when
                flush()
        now[0] = to

    with caplog.at_level(logging.WARNING, logger="hopgate.inbound"):
        for i in range(1000):
            advance(i * 0.015)  # 1,000 events in 15 s
            counter.record()
        advance(60.0)
    assert counter.total == 1000
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "= 1 things",
        "= 666 things in the last 10s",
        "= 333 things in the last 10s",
    ]
    assert due == []


def test_accept_errors_are_counted_not_logged_each(caplog: pytest.LogCaptureFixture) -> None:
    passed_on: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    try:
        handler = AcceptErrorFilter(
            IntervalLog("accept failures"), lambda _loop, ctx: passed_on.append(ctx)
        )
        emfile = OSError(errno.EMFILE, "Too many open files")
        with caplog.at_level(logging.WARNING, logger="hopgate.inbound"):
            for _ in range(10_000):
                handler(
                    loop, {"message": "socket.accept() out of system resource", "exception": emfile}
                )
            handler(loop, {"message": "something else", "exception": ValueError("x")})
    finally:
        loop.close()
    assert handler.counter.total == 10_000
    assert len(caplog.records) == 1
    assert [c["message"] for c in passed_on] == ["something else"]


# ------------------------------------------------------------- head deadline


async def test_slowloris_connections_are_closed_after_header_timeout(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = await make_origin(hello)
    gw = await make_gateway("server", {"upstream": origin, "header_timeout": 1.0})
    drips = [await connect(gw) for _ in range(20)]
    silent = [await connect(gw) for _ in range(5)]
    started = time.monotonic()
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100

    async def drip(writer: asyncio.StreamWriter) -> None:
        for i in range(len(head)):
            if writer.is_closing():
                return
            writer.write(head[i : i + 1])
            await asyncio.sleep(0.2)

    dripping = [asyncio.create_task(drip(w)) for _, w in drips]
    try:
        answers = await asyncio.gather(*(closed_within(r, 3.0) for r, _ in drips + silent))
    finally:
        for task in dripping:
            task.cancel()
        for _, writer in drips + silent:
            writer.close()
    elapsed = time.monotonic() - started
    assert all(a is not None for a in answers), "a connection outlived --header-timeout"
    assert elapsed < 2.5
    assert all(a is not None and a.startswith(b"HTTP/1.1 408 ") for a in answers[:20])
    assert all(a == b"" for a in answers[20:])  # nothing sent, nothing said
    assert gw.inbound is not None and gw.inbound.head_timeouts.total == 25


async def test_kept_alive_connection_and_held_request_outlive_header_timeout(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = await make_origin(hello)
    gw = await make_gateway(
        "server", {"upstream": origin, "header_timeout": 1.0, "keepalive_timeout": 10.0}
    )
    reader, writer = await connect(gw)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # handled for 1.5 s
        assert b" 200 " in await read_response(reader)
        await asyncio.sleep(1.6)  # idle between requests: keep-alive, not a slow head
        writer.write(GET)
        assert b" 200 " in await read_response(reader)
    finally:
        writer.close()


async def test_idle_keep_alive_ends_after_keepalive_timeout(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = await make_origin(hello)
    gw = await make_gateway("server", {"upstream": origin, "keepalive_timeout": 1.0})
    reader, writer = await connect(gw)
    try:
        writer.write(GET)
        await read_response(reader)
        assert await closed_within(reader, 3.0) == b""
    finally:
        writer.close()


async def test_a_slow_head_after_keep_alive_gets_header_timeout_from_its_first_byte(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = await make_origin(hello)
    gw = await make_gateway(
        "server", {"upstream": origin, "header_timeout": 1.0, "keepalive_timeout": 30.0}
    )
    reader, writer = await connect(gw)
    try:
        writer.write(GET)
        await read_response(reader)
        writer.write(b"GET / HTTP/1.1\r\n")  # and never the rest
        started = time.monotonic()
        answer = await closed_within(reader, 3.0)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 2.0
    finally:
        writer.close()


async def test_kept_alive_requests_share_one_head_timer_and_a_later_head_gets_its_full_time(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    """No timer made and cancelled per request; the one pending re-arms for a later head."""
    origin = await make_origin(hello)
    gw = await make_gateway(
        "server", {"upstream": origin, "header_timeout": 1.0, "keepalive_timeout": 30.0}
    )
    assert gw.inbound is not None
    reader, writer = await connect(gw)
    try:
        timers = []
        for _ in range(5):
            writer.write(GET)
            assert b" 200 " in await read_response(reader)
            (guard,) = gw.inbound._by_inner.values()
            timers.append(guard._deadline)
        assert timers[0] is not None and all(t is timers[0] for t in timers)
        await asyncio.sleep(0.6)  # the pending timer is due 0.4 s from now
        writer.write(b"GET / HTTP/1.1\r\n")  # and never the rest
        started = time.monotonic()
        answer = await closed_within(reader, 3.0)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 ")
        assert 0.9 < time.monotonic() - started < 2.0
    finally:
        writer.close()


# ------------------------------------------------------------------ the cap


async def test_idle_sockets_at_the_cap_make_room_for_a_real_client(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    origin = await make_origin(hello)
    gw = await make_gateway(
        "server", {"upstream": origin, "max_clients": 4, "header_timeout": 30.0}
    )
    idle = [await connect(gw) for _ in range(10)]
    try:
        # The six oldest were closed to make room for the newer ones.
        evicted = await asyncio.gather(*(closed_within(r, 2.0) for r, _ in idle[:6]))
        assert evicted == [b""] * 6
        reader, writer = await connect(gw)
        writer.write(GET)
        assert b" 200 " in await read_response(reader)
        writer.close()
        async with aiohttp.ClientSession() as http, http.get(gw.url + "/.hopgate/status") as resp:
            clients = (await resp.json())["clients"]
    finally:
        for _, w in idle:
            w.close()
    assert clients["max"] == 4
    assert clients["evicted"] >= 7
    assert clients["refused"] == 0


async def test_beyond_the_cap_with_every_connection_busy_is_503_at_once(
    make_origin: MakeOrigin, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    origin = await make_origin(hello)
    gw = await make_gateway("server", {"upstream": origin, "max_clients": 2})
    held = [await connect(gw) for _ in range(2)]
    for _, writer in held:
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gw.inbound is not None
    inbound = gw.inbound
    await eventually(lambda: inbound.figures()["busy"] >= 2, timeout=5)
    with caplog.at_level(logging.WARNING, logger="hopgate.inbound"):
        answers = []
        for _ in range(10):
            reader, writer = await connect(gw)
            answers.append(await closed_within(reader, 2.0))
            writer.close()
    for _, writer in held:
        writer.close()
    assert all(a is not None and a.startswith(b"HTTP/1.1 503 ") for a in answers)
    assert all(a is not None and b"--max-clients" in a for a in answers)
    assert inbound.refusals.total == 10
    refusal_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal_lines) == 1


async def test_every_connection_goes_through_the_guard(
    make_origin: MakeOrigin, make_gateway: MakeGateway
) -> None:
    """Fails loudly if aiohttp stops building connections through ``web.Server.__call__``."""
    gw = await make_gateway("server", {"upstream": await make_origin(hello), "max_clients": 50})
    inbound = gw.inbound
    assert inbound is not None
    sockets = [await connect(gw) for _ in range(5)]
    try:
        await eventually(lambda: inbound.active >= 5, timeout=5)
        assert inbound.active == 5
    finally:
        for _, w in sockets:
            w.close()


# ------------------------------------------------------------ descriptors


def derived(soft: int, hard: int) -> str:
    code = "from gateway.edges.inbound import derive_max_clients; print(derive_max_clients(0))"
    out = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_max_clients_zero_is_half_the_raised_descriptor_limit() -> None:
    assert derived(1024, 1024) == "(512, 1024)"
    assert derived(1024, 4096) == "(2048, 4096)"


async def test_1100_idle_sockets_under_nofile_1024_do_not_lock_a_client_out(
    make_origin: MakeOrigin,
) -> None:
    """Before: every legitimate request timed out and 134k+ log lines in 25 s."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1500 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    origin = await make_origin(hello)
    gw = await asyncio.to_thread(
        start_gateway,
        "server",
        "--upstream",
        origin,
        "--upgrade",
        "never",
        nofile=1024,
    )
    idle: list[asyncio.StreamWriter] = []
    try:
        before = len(gw.lines)
        for _ in range(1100):
            _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            idle.append(writer)
        answered = 0
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"{gw.url}/ok", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    answered += r.status == 200
        await asyncio.sleep(1.0)
        lines = gw.lines[before:]
    finally:
        for writer in idle:
            writer.close()
        await asyncio.to_thread(gw.stop)
    assert answered == 5
    assert sum("Too many open files" in line for line in lines) <= 2
    assert len(lines) < 40, "".join(lines[:40])


async def test_malformed_request_lines_are_counted_not_logged_with_tracebacks(
    make_origin: MakeOrigin, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logs each unparseable request with a traceback; a peer could fill the disk."""
    gw = await make_gateway("server", {"upstream": await make_origin(hello)})
    with caplog.at_level(logging.DEBUG):
        for i in range(50):
            reader, writer = await connect(gw)
            writer.write(b"GET evil:%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            answer = await closed_within(reader, 5.0)
            writer.close()
            assert answer is not None and answer.startswith(b"HTTP/1.")
            assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == 1
