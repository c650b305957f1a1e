"""The rows of ``python -m bench``: what each figure runs, in which processes.

Three sections, each a function returning plain JSON-able dicts:

* ``messages``: issue 13's first table: raw aiohttp WebSocket, python-engineio
  WebSocket and polling, hop session over WebSocket and over long-poll (and
  raw aiohttp through one bare TCP relay, bursts, round trips and sizes: the
  floor under a path with one more process, as a hop's server gateway is; and
  through one bare WebSocket relay, ``bench/bare_ws_relay.py``: that process
  made of aiohttp's WebSocket server and client and nothing else); every
  client is a ``bench/suite_msgload.py`` process, every server its own process
  (``suite_anchor_server.py``; ``hopgate server`` from ``--tree`` in front of
  it for the hop kinds), plus the 50 ms RTT one-way latency through the relay;
* ``legacy``: the second table: ``bench/legacy_app.py`` direct, through a
  WebSocket hop and through a long-poll hop (and the plain hop, ``--upgrade
  never``, rates only: the CPU-per-request comparison at 1 and 100 clients;
  two bare TCP relays in a row, ``bench/bare_relay.py``: the rates of a path
  that only moves bytes through two processes, the floor under any pair of
  Python gateways; one ``hopgate server`` with no hop: its two HTTP edges,
  which every hop path crosses, alone; a bare WebSocket pair,
  ``bench/bare_tunnel.py``: two aiohttp processes carrying each request whole
  over one WebSocket, no session or tunnel: a minimal gateway pair on
  aiohttp's stock pieces);
* ``memory``: idle RSS per hop session, per raw aiohttp WebSocket, and per
  held legacy long-poll through both gateways.

A figure that fails is ``{"failed": "why"}``; the section goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.legacy_app import Deliveries, client_session, percentile, run_clients
from bench.suite_procs import (
    ALLOCATOR_ENV,
    BENCH,
    GATEWAY_FLAGS,
    ChildProcess,
    Route,
    cpu_seconds,
    gateway,
    hop_path,
    net_path,
    python_child,
    refusing_path,
    running,
)
from bench.suite_report import RELAYED, WS_RELAYED
from tests.processes import proc_status_kib

MSG_KINDS = ("raw", "eio-ws", "eio-poll", "hop-ws", "hop-lp")
LEGACY_PATHS = ("direct", "websocket", "long-poll")
Result = dict[str, Any]


@dataclass(frozen=True)
class Scale:
    """How big each figure is: ``full`` (the issue's sizes), ``quick``, ``tiny`` (the test)."""

    burst: int
    turns: int
    rtt: int
    #: Bytes per message size in ``sizes`` (three bursts of a third each). 256 MiB in
    #: ``full``: with 64 MiB a 64 KiB burst lasted 15-40 ms, and python-engineio's rate
    #: spread 708-1,564 MB/s over five runs (1,315-1,677 with 256 MiB, 2026-12-04).
    size_bytes: int
    ticks: int
    figure_timeout: float
    duration: float
    many: int
    rate: float
    rtt_s: float
    idle_sessions: int
    raw_sockets: int
    held_polls: int
    keep_samples: int = 4000
    #: Message kinds side by side instead of one after another: only for the smoke test.
    parallel: bool = False


SCALES = {
    "full": Scale(
        20_000, 10_000, 2_000, 256 << 20, 500, 30, 8, 100, 100, 0.05, 10_000, 10_000, 1_000
    ),
    "quick": Scale(3_000, 2_000, 300, 1 << 20, 100, 8, 2, 100, 100, 0.05, 1_000, 1_000, 300),
    "tiny": Scale(300, 200, 50, 128 << 10, 30, 2, 0.5, 10, 50, 0.05, 100, 100, 30, parallel=True),
}


def failed(exc: BaseException) -> Result:
    why = "did not finish in time" if isinstance(exc, TimeoutError) else str(exc).strip()
    return {"failed": f"{type(exc).__name__}: {why.splitlines()[0][:300] if why else ''}"}


async def figure(name: str, make: Callable[[], Awaitable[Result]], timeout: float) -> Result:
    """One row, bounded in time; a failure is reported and returned, never raised."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            result = await make()
    except Exception as exc:  # the suite goes on whatever one row did
        result = failed(exc)
        print(f"  {name}: failed: {result['failed']}", flush=True)
        if not isinstance(exc, TimeoutError):
            traceback.print_exc(limit=3)
    else:
        print(f"  {name}: {summary(result)} ({time.monotonic() - started:.0f} s)", flush=True)
    return result


def summary(result: Result) -> str:
    shown = {k: v for k, v in result.items() if not k.startswith("samples") and k != "latencies"}
    text = json.dumps(shown, default=str)
    return text if len(text) < 300 else text[:297] + "..."


# ------------------------------------------------------------------ messages


def msgload(
    kind: str,
    url: str,
    tree: Path,
    scale: Scale,
    figures: list[str],
    cpu: list[int],
    sizes: tuple[int, ...] = (),
) -> Result:
    """Runs ``suite_msgload.py`` (with ``tree`` first on its path) and reads its JSON.

    ``sizes``: the message sizes of the ``sizes`` figure (default: its own list).
    """
    args = [
        sys.executable, str(BENCH / "suite_msgload.py"), "--kind", kind, "--url", url,
        "--figures", *figures, "--burst", str(scale.burst), "--turns", str(scale.turns),
        "--rtt", str(scale.rtt), "--bytes", str(scale.size_bytes), "--ticks", str(scale.ticks),
        "--tick-rate", str(scale.rate), "--timeout", str(scale.figure_timeout),
    ]  # fmt: skip
    for pid in cpu:
        args += ["--cpu-pid", str(pid)]
    if sizes:
        args += ["--sizes", *map(str, sizes)]
    limit = scale.figure_timeout * (len(figures) + 4) + 30
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", **ALLOCATOR_ENV}
    done = subprocess.run(args, capture_output=True, text=True, timeout=limit, env=env, cwd=tree)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"suite_msgload {kind} exited {done.returncode}: {' | '.join(tail)}")
    result: Result = json.loads(lines[-1])
    return result


async def messages(tree: Path, scale: Scale) -> dict[str, Result]:
    """The five columns of the message table, then the 50 ms RTT one-way latencies."""
    out: dict[str, Result] = {}
    figures = ["burst", "turns", "rtt", "sizes"]
    limit = scale.figure_timeout * 9 + 60
    with contextlib.ExitStack() as stack:
        anchor = stack.enter_context(running(python_child("suite_anchor_server.py")))
        server = stack.enter_context(gateway("server", "--upstream", anchor.announced, tree=tree))
        refusing = stack.enter_context(refusing_path(server.url.removeprefix("http://")))
        urls = {"hop-ws": server.url, "hop-lp": refusing}

        async def one(column: str, kind: str, url: str, wanted: list[str]) -> None:
            cpu = [server.pid] if kind.startswith("hop") else [anchor.pid]
            out[column] = await figure(
                f"messages {column}",
                lambda: asyncio.to_thread(msgload, kind, url, tree, scale, wanted, cpu),
                limit,
            )

        def own(kind: str) -> Awaitable[None]:
            return one(kind, kind, urls.get(kind, anchor.announced), figures)

        if scale.parallel:
            rtt = asyncio.create_task(rtt_rows(tree, scale))
            await asyncio.gather(*(own(kind) for kind in MSG_KINDS))
        else:
            for kind in MSG_KINDS:
                await own(kind)
        # The floor under the hop columns' one extra process: raw aiohttp through a relay
        # that only copies bytes (bursts and sizes, the rows whose targets count bytes/s,
        # and the round trip, which crosses that extra process twice).
        relay = stack.enter_context(
            running(
                python_child("bare_relay.py", "--target", anchor.announced.removeprefix("http://"))
            )
        )
        await one(RELAYED, "raw", relay.announced, ["burst", "rtt", "sizes"])
        # And where the hop columns' gateway ends one WebSocket and opens another: the
        # same done with aiohttp's stock WebSocket pieces and nothing else.
        ws_relay = stack.enter_context(
            running(python_child("bare_ws_relay.py", "--target", anchor.announced))
        )
        await one(WS_RELAYED, "raw", ws_relay.announced, ["burst", "rtt", "sizes"])
    name = f"messages at {scale.rtt_s * 1e3:.0f} ms RTT"
    if scale.parallel:
        out["rtt"] = await figure(name, lambda: rtt, limit * 2)
    else:
        out["rtt"] = await figure(name, lambda: rtt_rows(tree, scale), limit * 2)
    return out


async def rtt_rows(tree: Path, scale: Scale) -> Result:
    """One-way (server -> client) latency of stamped messages at ``rate``/s over a delayed path."""
    out: Result = {}
    with contextlib.ExitStack() as stack:
        anchor = stack.enter_context(running(python_child("suite_anchor_server.py")))
        server = stack.enter_context(gateway("server", "--upstream", anchor.announced, tree=tree))
        hop = server.url.removeprefix("http://")
        delayed = stack.enter_context(
            net_path(anchor.announced.removeprefix("http://"), scale.rtt_s)
        )
        ws_path = stack.enter_context(net_path(hop, scale.rtt_s))
        lp_path = stack.enter_context(net_path(hop, scale.rtt_s, True))
        urls = {"hop-ws": ws_path.url, "hop-lp": lp_path.url}

        async def one(kind: str) -> None:
            # At 100 messages/s each, the five clients run side by side without loading the CPU.
            try:
                url = urls.get(kind, delayed.url)
                got = await asyncio.to_thread(msgload, kind, url, tree, scale, ["ticks"], [])
                out[kind] = got.get("ticks", got)
            except Exception as exc:  # one kind failing leaves the others
                out[kind] = failed(exc)

        await asyncio.gather(*(one(kind) for kind in MSG_KINDS))
    return out


# ------------------------------------------------------------------- legacy


def _gateway_cpu(route: Route) -> float:
    return sum(cpu_seconds(gw.pid) for gw in route.gateways)


#: The rate and latency figures of the legacy table are measured in this many
#: rounds, every path once per round (the first path of a round rotating): on
#: this shared machine the same path's rate moved 2x between runs minutes
#: apart (direct, 1 client: 2,504, 3,631 and 4,861 events/s), so a path
#: measured after the others drifted would skew its ratio.
LEGACY_ROUNDS = 4


@dataclass
class _Fast:
    """One path's as-fast-as-it-can rounds, summed."""

    events: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0

    def result(self, gateways: bool) -> Result:
        result: Result = {"per_s": self.events / self.seconds, "errors": self.errors}
        if gateways and self.events:
            result["gateway_cpu_us"] = self.cpu / self.events * 1e6
        return result


async def _fast(route: Route, clients: int, seconds: float, into: _Fast) -> None:
    cpu = _gateway_cpu(route)
    seen = await run_clients(route.url, clients, seconds)
    into.cpu += _gateway_cpu(route) - cpu
    into.events += seen.events
    into.errors += seen.errors
    into.seconds += seconds


def _latency(seen: Deliveries, keep: int) -> Result:
    lat = seen.latencies
    if not lat:
        raise RuntimeError(f"no event delivered ({seen.errors} failed polls: {seen.first_error})")
    step = max(1, len(lat) // keep)
    return {
        "p50_ms": percentile(lat, 0.5) * 1e3,
        "p99_ms": percentile(lat, 0.99) * 1e3,
        "events": len(lat),
        "samples_ms": [round(v * 1e3, 2) for v in sorted(lat)[::step]],
    }


async def _paced(route: Route, origin: str, clients: int, scale: Scale) -> Result:
    seen = Deliveries()
    await _paced_into(seen, route, origin, clients, scale, scale.duration)
    return _latency(seen, scale.keep_samples)


async def _paced_into(
    into: Deliveries, route: Route, origin: str, clients: int, scale: Scale, seconds: float
) -> None:
    """``clients`` paced pollers for ``seconds``, their deliveries added to ``into``."""
    seen = await run_clients(route.url, clients, seconds, rate=scale.rate, origin_url=origin)
    into.latencies += seen.latencies
    into.errors += seen.errors
    into.first_error = into.first_error or seen.first_error


async def _interleaved(
    name: str,
    routes: dict[str, Route],
    measure: Callable[[str, Route], Awaitable[Any]],
    finish: Callable[[str], Result],
    timeout: float,
) -> dict[str, Result]:
    """``measure`` every route once per round for LEGACY_ROUNDS rounds, then ``finish`` each.

    A path that fails a round is left out of the later ones and reports that failure.
    """
    kinds = list(routes)
    failures: dict[str, Result] = {}
    started = time.monotonic()
    for n in range(LEGACY_ROUNDS):
        shift = n % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            if kind in failures:
                continue
            try:
                async with asyncio.timeout(timeout / LEGACY_ROUNDS):
                    await measure(kind, routes[kind])
            except Exception as exc:  # the other paths go on
                failures[kind] = failed(exc)
                print(f"  legacy {kind} {name}: failed: {failures[kind]['failed']}", flush=True)
    out: dict[str, Result] = {}
    took = time.monotonic() - started
    for kind in kinds:
        try:
            out[kind] = failures.get(kind) or finish(kind)
        except Exception as exc:
            out[kind] = failed(exc)
        print(f"  legacy {kind} {name}: {summary(out[kind])} ({took:.0f} s, all paths)", flush=True)
    return out


async def _bytes(route: Route, origin: str, scale: Scale) -> Result:
    assert route.net is not None
    await asyncio.sleep(0.3)
    up0, down0 = await asyncio.to_thread(route.net.counts)
    seen = await run_clients(route.url, 1, scale.duration, rate=scale.rate, origin_url=origin)
    up1, down1 = await asyncio.to_thread(route.net.counts)
    if not seen.latencies:
        raise RuntimeError("no event delivered")
    total = (up1 - up0) + (down1 - down0)
    return {"bytes_per_event": total / len(seen.latencies), "up": up1 - up0, "down": down1 - down0}


async def legacy(tree: Path, scale: Scale) -> dict[str, Result]:
    """The legacy table: every path up at once, its rate and latency rows interleaved."""
    out: dict[str, Result] = {
        kind: {} for kind in (*LEGACY_PATHS, "plain", "relays", "edges", "bare-ws")
    }
    limit = scale.duration * 3 + 90
    with running(python_child("legacy_app.py", "origin")) as origin_proc:
        origin = origin_proc.announced
        with contextlib.ExitStack() as stack:
            routes: dict[str, Route] = {}
            for kind in out:
                try:
                    routes[kind] = stack.enter_context(hop_path(kind, origin, tree))
                except Exception as exc:  # the path itself did not come up
                    out[kind]["failed"] = failed(exc)["failed"]
                    print(f"  legacy {kind}: failed: {out[kind]['failed']}", flush=True)
            await _legacy_rates(out, routes, origin, scale, limit)
        for kind in LEGACY_PATHS:
            if "failed" not in out[kind]:
                await _legacy_link(out[kind], kind, origin, tree, scale, limit)
    return out


async def _legacy_rates(
    out: dict[str, Result], routes: dict[str, Route], origin: str, scale: Scale, limit: float
) -> None:
    """Rows ``one`` and ``many`` (every path) and ``paced`` (not plain), interleaved.

    Plain forwarding runs the rate rows for its CPU per request, which the
    tunnelled requests' is compared with at both loads.
    """
    part = scale.duration / LEGACY_ROUNDS

    async def rate_row(key: str, clients: int, name: str) -> None:
        fast = {kind: _Fast() for kind in routes}
        rows = await _interleaved(
            name,
            routes,
            lambda kind, route: _fast(route, clients, part, fast[kind]),
            lambda kind: fast[kind].result(bool(routes[kind].gateways)),
            limit,
        )
        for kind, row in rows.items():
            out[kind][key] = row

    await rate_row("one", 1, "1 client")
    await rate_row("many", scale.many, f"{scale.many} clients")
    hops = {kind: route for kind, route in routes.items() if kind != "plain"}
    paced = {kind: Deliveries() for kind in hops}
    rows = await _interleaved(
        f"{scale.many} x {scale.rate:.0f}/s",
        hops,
        lambda kind, route: _paced_into(paced[kind], route, origin, scale.many, scale, part),
        lambda kind: _latency(paced[kind], scale.keep_samples),
        limit,
    )
    for kind, row in rows.items():
        out[kind]["paced"] = row


async def _legacy_link(
    row: Result, kind: str, origin: str, tree: Path, scale: Scale, limit: float
) -> None:
    """Rows ``bytes`` and ``rtt``: one path process on the link, without delay, then with."""
    try:
        with hop_path(kind, origin, tree, scale.rtt_s, start_fast=True) as route:
            row["bytes"] = await figure(
                f"legacy {kind} bytes", lambda: _bytes(route, origin, scale), limit
            )
            assert route.net is not None
            await asyncio.to_thread(route.net.switch_delay)
            row["rtt"] = await figure(
                f"legacy {kind} {scale.rtt_s * 1e3:.0f} ms RTT",
                lambda: _paced(route, origin, 1, scale),
                limit,
            )
    except Exception as exc:  # the path itself did not come up
        row["failed"] = failed(exc)["failed"]
        print(f"  legacy {kind}: failed: {row['failed']}", flush=True)


# ------------------------------------------------------------------- memory


def _rss(*procs: ChildProcess) -> int:
    return sum(proc_status_kib(p.pid, "VmRSS") for p in procs)


async def idle_sessions(tree: Path, scale: Scale) -> Result:
    from bench.idle_sessions import open_sessions

    n = scale.idle_sessions
    flags = ("--upstream", "http://127.0.0.1:9", "--resume-grace", "600", *GATEWAY_FLAGS)
    with gateway("server", *flags, tree=tree) as server:
        url = f"{server.url}/.hopgate/session"
        await open_sessions(url, 20, 4, 1)
        await asyncio.sleep(0.5)
        base = _rss(server)
        statuses = await open_sessions(url, n, 32, 1)
        await asyncio.sleep(0.5)
        opened = statuses.get(200, 0)
        if not opened:
            raise RuntimeError(f"no session opened: {statuses}")
        return {"kb_per": (_rss(server) - base) / opened, "opened": opened}


async def raw_sockets(scale: Scale) -> Result:
    n = scale.raw_sockets
    with running(python_child("suite_anchor_server.py")) as anchor:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            first = [await http.ws_connect(anchor.announced + "/ws") for _ in range(20)]
            await asyncio.sleep(0.5)
            base = _rss(anchor)
            sockets = []
            for start in range(0, n, 200):
                batch = range(start, min(n, start + 200))
                sockets += await asyncio.gather(
                    *(http.ws_connect(anchor.announced + "/ws") for _ in batch)
                )
            await asyncio.sleep(0.5)
            per = (_rss(anchor) - base) / len(sockets)
            for ws in [*first, *sockets]:
                ws._response.connection and ws._response.connection.transport.abort()  # type: ignore[union-attr]
    return {"kb_per": per, "opened": len(sockets)}


async def held_polls(tree: Path, scale: Scale, kind: str) -> Result:
    """RSS of both gateways per held legacy long-poll (the origin holds them for 120 s)."""
    n = scale.held_polls
    with (
        running(python_child("legacy_app.py", "origin", "--hold", "120")) as origin,
        # Past --max-streams (256) polls would queue at the client gateway, then go plain;
        # past --session-connections (128) or --max-connections (1024) the server
        # gateway's requests to the origin queue.
        hop_path(kind, origin.announced, tree, flags=_unqueued(n)) as route,
    ):
        await asyncio.sleep(0.5)
        base = _rss(*route.gateways)
        async with client_session(timeout=150) as http:
            async with http.get(f"{route.url}/poll?since=-1") as resp:
                since = json.loads(await resp.read())["next"]
            tasks = [asyncio.create_task(_hold(http, route.url, since)) for _ in range(n)]
            try:
                held = await _until_held(origin.announced, n, 90)
                await asyncio.sleep(0.5)
                # Per poll sent: the ones that did not reach the origin are held in a gateway.
                per = (_rss(*route.gateways) - base) / n
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return {"kb_per": per, "sent": n, "held": held}


def _unqueued(n: int) -> tuple[str, ...]:
    room = str(n + 100)
    return ("--max-streams", room, "--session-connections", room, "--max-connections", "0")


async def _hold(http: aiohttp.ClientSession, url: str, since: int) -> None:
    async with http.get(f"{url}/poll?since={since}") as resp:
        await resp.read()


async def _until_held(origin: str, n: int, timeout: float) -> int:
    """How many polls the origin holds once all ``n`` arrived or it stopped growing (10 s).

    A gateway may hold some back (its stream gate, its connection limit): the
    row says how many got through.
    """
    deadline = time.monotonic() + timeout
    held, last, still = 0, -1, 0
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and held < n and still < 50:
            async with http.get(f"{origin}/held") as resp:
                held = int(await resp.text())
            still = still + 1 if held == last else 0
            last = held
            await asyncio.sleep(0.2)
    if held < min(n, 100):
        raise RuntimeError(f"only {held} of {n} polls reached the origin in {timeout:.0f} s")
    return held


async def memory(tree: Path, scale: Scale) -> dict[str, Result]:
    limit = 240.0
    return {
        "idle_session": await figure(
            "memory idle hop sessions", lambda: idle_sessions(tree, scale), limit
        ),
        "raw_socket": await figure(
            "memory raw aiohttp WebSockets", lambda: raw_sockets(scale), limit
        ),
        "held_websocket": await figure(
            "memory held polls, WebSocket hop", lambda: held_polls(tree, scale, "websocket"), limit
        ),
        "held_long-poll": await figure(
            "memory held polls, long-poll hop", lambda: held_polls(tree, scale, "long-poll"), limit
        ),
    }
