"""Issue 7 items 2-4 for ``bench/attacks.py``: what a peer can make a gateway hold.

Memory (unfinished WebSocket messages, never-read responses, stalled POSTs),
connections (slowloris, held polls, descriptors) and sessions (idle ones,
one address filling ``--max-sessions``). Each attack returns a ``Row``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attack_lab import (  # noqa: E402
    Ctx,
    MiB,
    Row,
    established_to,
    get_status,
    mib,
    open_fds,
    rss_mib,
    watch_rss,
)

from tests.hostile import payloads  # noqa: E402
from tests.hostile import peer as hp  # noqa: E402
from tests.processes import (  # noqa: E402
    GatewayProcess,
    unlimited_sessions,
)
from tests.status_page import active_sessions, warm_until_hop  # noqa: E402
from tests.waiting import eventually  # noqa: E402


async def attack_ws_reassembly(ctx: Ctx) -> Row:
    """Item 2: many WS streams each holding an unfinished message."""
    n, size = ctx.s["ws_streams"], ctx.s["ws_message"]
    gw = ctx.lab.sidecar()  # default flags: 256 streams fit --max-streams
    base = rss_mib(gw)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_rss(gw, ctx.rss_cap, stop))
    started = time.monotonic()
    sent_total = 0
    resets = 0
    async with hp.HostilePeer(gw.url, timeout=20) as peer:
        live = await payloads.open_websockets(peer, n)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ctx.s["time_cap"]):
                sent_total = await payloads.push_unfinished(peer, live, size, stop=stop)
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.0)
        resets = sum(1 for s in peer.streams.values() if s.reset)
        closed = peer.closed
    stop.set()
    peak = await watcher
    capped = peak > ctx.rss_cap
    after = f"> cap {mib(ctx.rss_cap)}" if capped else mib(peak)
    return Row(
        "ws_reassembly",
        "unfinished WS messages in one session",
        f"{n} WS streams x unfinished {size // MiB} MiB message: RSS {mib(base)} -> {after} MiB "
        f"in {elapsed:.1f} s; {sent_total / MiB:,.0f} MiB accepted; {resets} streams reset; "
        f"session {'closed ' + str(closed) if closed else 'open'}",
        {
            "rss_before": base,
            "rss_peak": peak,
            "capped": capped,
            "seconds": elapsed,
            "accepted_mib": sent_total / MiB,
            "resets": resets,
        },
    )


async def attack_unread(ctx: Ctx) -> Row:
    """Item 2: streaming responses the peer never reads."""
    ns, nst, secs = ctx.s["unread_sessions"], ctx.s["unread_streams"], ctx.s["unread_seconds"]
    gw = ctx.lab.sidecar()
    base = rss_mib(gw)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_rss(gw, ctx.rss_cap, stop))
    peers = []
    samples = []
    try:
        for _ in range(ns):
            p = hp.HostilePeer(gw.url, timeout=20)
            await p.connect()
            peers.append(p)
            sids = [p.sid() for _ in range(nst)]
            for i in range(0, nst, 64):
                await p.send(
                    *(hp.open_http(s, "GET", "/stream", [("Host", "x")]) for s in sids[i : i + 64])
                )
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs and not stop.is_set():
            await asyncio.sleep(1.0)
            samples.append(rss_mib(gw))
    finally:
        for p in peers:
            await p.aclose()
    stop.set()
    peak = await watcher
    growing = len(samples) >= 3 and samples[-1] > samples[len(samples) // 2] + 8
    capped = peak > ctx.rss_cap
    return Row(
        "unread",
        "never-read streaming responses",
        f"{ns} sessions x {nst} never-read streaming responses: RSS {mib(base)} -> "
        f"{'> cap ' + mib(ctx.rss_cap) if capped else mib(peak)} MiB in {secs:.0f} s"
        f"{', still growing' if growing else ', flat'}",
        {"rss_before": base, "rss_peak": peak, "growing": growing, "capped": capped},
    )


async def attack_stalled_posts(ctx: Ctx) -> Row:
    """Item 2: many session POST bodies that never finish."""
    n, size = ctx.s["posts"], ctx.s["post_bytes"]
    gw = ctx.lab.sidecar()
    created = await hp.create_session(ctx.http, gw.url)
    url = f"{gw.url}{hp.SESSION_PATH}/{created.session_id}?epoch=1"
    base = rss_mib(gw)
    head = (
        f"POST {url.split(str(gw.port), 1)[1]} HTTP/1.1\r\nHost: x\r\n"
        f"{hp.TOKEN_HEADER}: {created.token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    writers = []
    statuses: list[int | None] = []
    body = b"\x00" * (size - 1)  # the last byte never comes
    try:
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(head)
            writers.append((reader, writer))

        async def push(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                for i in range(0, size - 1, 1 << 20):
                    writer.write(body[i : i + (1 << 20)])
                    await writer.drain()
            # an early answer (429/413) means the body was refused
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.5):
                    answer = await reader.read(200)
                    statuses.append(hp.status_of(answer))

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ctx.s["time_cap"]):
                await asyncio.gather(*(push(r, w) for r, w in writers))
        await asyncio.sleep(1.0)
        after = rss_mib(gw)
    finally:
        for _, w in writers:
            w.close()
    refused = sum(1 for s in statuses if s is not None and s >= 400)
    answers: dict[str, int] = {}
    for status in statuses:
        answers[str(status)] = answers.get(str(status), 0) + 1
    return Row(
        "stalled_posts",
        "stalled long-poll POSTs on one session",
        f"{n} stalled {size // MiB} MiB session POSTs: +{mib(after - base)} MiB "
        f"(RSS {mib(base)} -> {mib(after)}); answered early with 4xx: {refused}/{n} "
        f"{answers if refused else ''}",
        {"delta_mib": after - base, "refused": refused},
    )


async def attack_slowloris(ctx: Ctx) -> Row:
    """Item 3: connections that send a request head a byte a second."""
    n, secs = ctx.s["slowloris"], ctx.s["slowloris_seconds"]
    gw = ctx.lab.sidecar()
    conns = []
    for _ in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", gw.port))
    closed_at: list[float] = []
    t0 = time.monotonic()
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000
    alive = list(range(n))
    i = 0
    while alive and time.monotonic() - t0 < secs:
        still = []
        for k in alive:
            r, w = conns[k]
            try:
                w.write(head[i : i + 1])
                await w.drain()
                if r.at_eof():
                    raise ConnectionResetError
                still.append(k)
            except (ConnectionError, OSError):
                closed_at.append(time.monotonic() - t0)
        alive = still
        i += 1
        # notice a close without waiting for the next write to fail
        for k in list(alive):
            r, _w = conns[k]
            try:
                data = await asyncio.wait_for(r.read(4096), 0.001)
            except TimeoutError:
                continue
            except (ConnectionError, OSError):
                data = b""
            if data == b"" or data.startswith(b"HTTP/"):
                closed_at.append(time.monotonic() - t0)
                alive.remove(k)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - (i - 1))))
    for _r, w in conns:
        w.close()
    if closed_at:
        closed_at.sort()
        fig = (
            f"{n} slowloris: {len(closed_at)} closed, first after {closed_at[0]:.0f} s, "
            f"last after {closed_at[-1]:.0f} s (watched {secs:.0f} s)"
        )
    else:
        fig = f"{n} slowloris: none closed in {secs:.0f} s"
    return Row(
        "slowloris",
        "slowloris (a byte a second)",
        fig,
        {"closed": len(closed_at), "first": closed_at[0] if closed_at else None},
    )


async def attack_held_polls(ctx: Ctx) -> Row:
    """Item 3: held polls through many sessions pin origin connections and descriptors.

    Run with the defaults of the tree, and with ``--max-connections 0`` (no
    gateway-wide pool limit, the default before 4b9eac4) to show the
    per-session bound on its own.
    """
    parts = []
    numbers: dict[str, Any] = {}
    for label, extra in (("defaults", ()), ("--max-connections 0", ("--max-connections", "0"))):
        fig, nums = await held_polls_once(ctx, extra)
        parts.append(f"{label}: {fig}")
        numbers[label] = nums
        ctx.lab.stop_gateways()
        await asyncio.sleep(2.0)
    ns, nst = ctx.s["poll_sessions"], ctx.s["poll_streams"]
    return Row(
        "held_polls",
        "held polls through many sessions",
        f"{ns} sessions x {nst} held polls: " + "; ".join(parts),
        numbers,
    )


async def held_polls_once(ctx: Ctx, extra: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    ns, nst = ctx.s["poll_sessions"], ctx.s["poll_streams"]
    nofile = 20000
    gw = ctx.lab.sidecar(
        *unlimited_sessions(100000),
        *extra,
        nofile=nofile,
    )
    base_fds = open_fds(gw)
    peers = []
    refused_sessions = 0
    try:
        async with asyncio.timeout(ctx.s["time_cap"]):
            for _ in range(ns):
                p = hp.HostilePeer(gw.url, timeout=10)
                try:
                    await p.connect()
                except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError):
                    refused_sessions += 1
                    await p.aclose()
                    continue
                peers.append(p)
                sids = [p.sid() for _ in range(nst)]
                for i in range(0, nst, 64):
                    await p.send(
                        *(
                            hp.open_http(s, "GET", "/hold?s=300", [("Host", "x")])
                            for s in sids[i : i + 64]
                        )
                    )
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    await asyncio.sleep(3.0)
    origin_conns = established_to(ctx.lab.origin_port)
    fds = open_fds(gw)
    emfile = gw.count("Too many open files")
    status_ok = False
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            status, _ = await get_status(ctx.http, gw.url + "/legit")
            status_ok = status == 200
    for p in peers:
        with contextlib.suppress(Exception):
            await p.aclose()
    fig = (
        f"{origin_conns:,} origin connections, sidecar descriptors {base_fds} -> {fds:,} of "
        f"{nofile:,}; sessions refused {refused_sessions}; 'Too many open files' lines "
        f"{emfile:,}; legit request then: {'ok' if status_ok else 'failed'}"
    )
    return fig, {
        "origin_connections": origin_conns,
        "fds": fds,
        "emfile": emfile,
        "legit_ok": status_ok,
    }


async def attack_fd_lockout(ctx: Ctx) -> Row:
    """Item 3: at a descriptor limit of 1,024, 1,100 idle sockets lock legitimate clients out."""
    gw = ctx.lab.sidecar(nofile=1024)
    socks = []
    for _ in range(1100):
        try:
            socks.append(socket.create_connection(("127.0.0.1", gw.port), timeout=2))
        except OSError:
            break
    await asyncio.sleep(2.0)
    lines_before = gw.line_count
    t0 = time.monotonic()
    ok = 0
    for _ in range(5):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                status, _ = await get_status(ctx.http, gw.url + "/legit")
                ok += status == 200
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))
    floods = gw.count("Too many open files")
    log_rate = (gw.line_count - lines_before) / max(0.1, time.monotonic() - t0)
    for s in socks:
        s.close()
    return Row(
        "fd_lockout",
        "idle sockets at a descriptor limit of 1,024",
        f"1,100 idle sockets (limit 1,024): legit requests ok {ok}/5; 'Too many open files' "
        f"lines {floods:,} (log {log_rate:,.0f} lines/s)",
        {"legit_ok": ok, "emfile_lines": floods},
    )


async def attack_idle_sessions(ctx: Ctx) -> Row:
    """Item 4: idle sessions cost, creation time, and RSS after expiry."""
    parts = []
    numbers: dict[str, Any] = {}
    for n, grace in zip(ctx.s["idle_sessions"], ctx.s["idle_grace"], strict=True):
        gw = ctx.lab.sidecar(*unlimited_sessions(n + 10), "--resume-grace", str(grace))
        await asyncio.sleep(0.5)
        base = rss_mib(gw)
        t0 = time.monotonic()
        made, refused, capped = await create_idle_sessions(ctx, gw, n)
        created_s = time.monotonic() - t0
        peak = rss_mib(gw)
        active = left = await live_sessions(ctx, gw)

        async def none_left(gw: GatewayProcess = gw) -> bool:
            nonlocal left
            left = await live_sessions(ctx, gw)
            return left == 0

        # wait for every session to expire (no transport for --resume-grace)
        await eventually(none_left, grace + 30, interval=2.0)
        await asyncio.sleep(2.0)
        after = rss_mib(gw)
        per = (peak - base) * 1024 / max(made, 1)
        cap_txt = f"> cap after {made:,}: " if capped else ""
        parts.append(
            f"{n:,} idle sessions: {cap_txt}{per:,.0f} KB each (RSS {mib(base)} -> "
            f"{mib(peak)} MiB, {active:,} live), created in {created_s:.1f} s"
            f"{', refused ' + str(refused) if refused else ''}; RSS after expiry "
            f"{mib(after)} MiB ({left} left)"
        )
        numbers[str(n)] = {
            "kb_each": per,
            "create_s": created_s,
            "rss_base": base,
            "rss_peak": peak,
            "rss_after_expiry": after,
            "made": made,
            "capped": capped,
            "left": left,
        }
        gw.stop()
    return Row("idle_sessions", "idle hop sessions", "; ".join(parts), numbers)


async def create_idle_sessions(
    ctx: Ctx, gw: GatewayProcess, n: int
) -> tuple[int, dict[int, int], bool]:
    """``n`` creation POSTs, 16 at a time: (made, refusals by status, stopped at the RSS cap)."""
    made = 0
    refused: dict[int, int] = {}
    capped = False
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        nonlocal made, capped
        async with sem:
            if capped:
                return
            c = await hp.create_session(ctx.http, gw.url)
            if c.status == 200:
                made += 1
            else:
                refused[c.status] = refused.get(c.status, 0) + 1
            if made % 200 == 0 and rss_mib(gw) > ctx.rss_cap:
                capped = True

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ctx.s["time_cap"] * 2):
            await asyncio.gather(*(one() for _ in range(n)))
    return made, refused, capped


async def live_sessions(ctx: Ctx, gw: GatewayProcess) -> int:
    """The gateway's active hop sessions; -1 when its status page does not answer."""
    with contextlib.suppress(Exception):
        return await active_sessions(ctx.http, gw.url)
    return -1


async def attack_fill_sessions(ctx: Ctx) -> Row:
    """Item 4: one address fills --max-sessions; a legitimate client gateway then."""
    gw = ctx.lab.sidecar()  # defaults: --max-sessions 1000
    t0 = time.monotonic()
    made = 0
    statuses: dict[int, int] = {}
    # The attacker comes from 127.0.0.2, the legitimate gateway from 127.0.0.1.
    attacker = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, local_addr=("127.0.0.2", 0))
    )

    async def one() -> None:
        nonlocal made
        c = await hp.create_session(attacker, gw.url)
        statuses[c.status] = statuses.get(c.status, 0) + 1
        made += c.status == 200

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(one() for _ in range(1100)))
    finally:
        await attacker.close()
    fill_s = time.monotonic() - t0
    full = statuses.get(503, 0) > 0
    client = ctx.lab.gateway("client", "--upstream", gw.url)
    up: dict[str, Any] = {"transport": "?", "last_error": ""}
    with contextlib.suppress(Exception):
        up = await warm_until_hop(ctx.http, client.url, timeout=10)
    transport, err = up["transport"], up["last_error"]
    legit = f"{transport}" + (f" ({err[:60]})" if err and transport == "plain" else "")
    return Row(
        "fill_sessions",
        "--max-sessions filled from one address",
        f"1,100 session creations from one address (127.0.0.2) in {fill_s:.1f} s: "
        f"{made} opened, answers {dict(sorted(statuses.items()))}; --max-sessions "
        f"{'filled' if full else 'not filled'}; legit client gateway then: {legit}",
        {"made": made, "statuses": statuses, "filled": full, "legit_transport": transport},
    )
