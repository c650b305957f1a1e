"""Poll-ahead (issue 14): event delivery latency of a legacy long-poll app on a 50 ms RTT path.

::

    direct:        poller -> [50 ms RTT relay] -> origin
    gateways:      poller -> hopgate client -> [50 ms RTT relay] -> hopgate server -> origin
    poll-ahead:    the same, the server with --poll-ahead 'GET /poll since=json:next'

The origin (``bench/legacy_app.py``'s ``GET /poll?since=N``, a child process
of this script) publishes events at random gaps of 10-60 ms (the same seeded
sequence for every row); one poller loops GET /poll and records each event's
delivery latency: its receive time minus the ``t`` the origin stamped on it
(same machine, same clock). Every party is its own process; the relay is
``bench/relay.py`` behind ``bench/suite_net.py``.

Targets (issue 14): with poll-ahead p99 <= RTT/2 + 15 ms and <= 0.6 x direct
p99; gateways without it within 5 ms of direct.

    python bench/poll_ahead.py [--quick] [--tree /work/before] [--events N]

``run(quick)`` returns the rows for ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.legacy_app import Origin, percentile  # noqa: E402
from bench.suite_procs import (  # noqa: E402
    GATEWAY_FLAGS,
    gateway,
    net_path,
    python_child,
    running,
    wait_for_hop,
)

RTT = 0.050
RULE = "GET /poll since=json:next"
GAPS = (0.010, 0.060)
WARM_UP = 10
ROWS = ("direct", "gateways", "poll-ahead")


# ------------------------------------------------------------------ the origin (child)


async def _serve(port: int) -> None:
    origin = Origin(hold=20.0)
    app = origin.app()
    app.router.add_post("/burst", lambda request: _burst(origin, request))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


async def _burst(origin: Origin, request: web.Request) -> web.Response:
    """Publish ``n`` events at seeded random gaps (in the background); answers at once."""
    n, seed = int(request.query["n"]), int(request.query.get("seed", "1"))
    gaps = random.Random(seed)

    async def publish() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for _ in range(n):
            due += gaps.uniform(*GAPS)
            await asyncio.sleep(max(0.0, due - loop.time()))
            origin.publish()

    request.app.setdefault("bursts", set()).add(asyncio.create_task(publish()))
    return web.json_response({"first": len(origin.events), "n": n})


# ------------------------------------------------------------------ one row


async def _measure(url: str, origin_url: str, events: int) -> list[float]:
    """Latencies (s) of ``events`` events received by one poller at ``url``.

    ``WARM_UP`` events go first and are not counted: a stream that has been
    running a while (its first poll held, a poll-ahead chain started, every
    connection open) is what the rows compare, for every path alike.
    """
    latencies: dict[int, float] = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{url}/poll", params={"since": "-1"}) as resp:
            since = int((await resp.json())["next"])
        end = since + WARM_UP + events

        async def poll() -> None:
            nonlocal since
            while since < end:
                async with http.get(f"{url}/poll", params={"since": str(since)}) as resp:
                    doc = await resp.json()
                now = time.time()
                latencies.update((int(e["id"]), now - float(e["t"])) for e in doc["events"])
                since = int(doc["next"])

        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.3)
        for n, seed in ((WARM_UP, 2), (events, 1)):
            async with http.post(f"{origin_url}/burst", params={"n": n, "seed": seed}) as resp:
                first = int((await resp.json())["first"])
            await asyncio.sleep(n * GAPS[1] + 0.3)
        await asyncio.wait_for(poller, 30)
    return [latency for i, latency in latencies.items() if i >= first]


@contextlib.contextmanager
def _route(row: str, origin_url: str, tree: Path) -> Iterator[str]:
    origin = origin_url.removeprefix("http://")
    with contextlib.ExitStack() as stack:
        if row == "direct":
            yield stack.enter_context(net_path(origin, RTT)).url
            return
        ahead = ("--poll-ahead", RULE) if row == "poll-ahead" else ()
        server = stack.enter_context(
            gateway("server", "--upstream", origin_url, *ahead, *GATEWAY_FLAGS, tree=tree)
        )
        net = stack.enter_context(net_path(server.url.removeprefix("http://"), RTT))
        client = stack.enter_context(gateway("client", "--upstream", net.url, tree=tree))
        wait_for_hop(client.url, "websocket")
        yield client.url


def _row(row: str, events: int, tree: Path) -> dict[str, Any]:
    with (
        running(python_child("poll_ahead.py", "origin")) as origin,
        _route(row, origin.announced, tree) as url,
    ):
        got = asyncio.run(_measure(url, origin.announced, events))
    return {
        "events": len(got),
        "p50_ms": round(percentile(got, 0.50) * 1e3, 1),
        "p99_ms": round(percentile(got, 0.99) * 1e3, 1),
        "samples_ms": [round(x * 1e3, 2) for x in got],
    }


def run(quick: bool = False, tree: Path = ROOT, events: int | None = None) -> dict[str, object]:
    """Every row at 50 ms RTT; ``tree`` without poll-ahead (e.g. /work/before) skips that row."""
    n = events or (150 if quick else 600)
    has_rule = "poll_ahead" in (tree / "gateway" / "config.py").read_text()
    rows = {row: _row(row, n, tree) for row in ROWS if row != "poll-ahead" or has_rule}
    samples = {name: row.pop("samples_ms") for name, row in rows.items()}
    direct = rows["direct"]["p99_ms"]
    target = round(min(RTT * 1e3 / 2 + 15, 0.6 * direct), 1)
    lines = [
        f"Event delivery latency, {RTT * 1e3:.0f} ms RTT, events at random "
        f"{GAPS[0] * 1e3:.0f}-{GAPS[1] * 1e3:.0f} ms gaps, {n} events "
        f"(target with poll-ahead: p99 <= {target} ms)",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {row['p50_ms']} | {row['p99_ms']} |" for name, row in rows.items()),
    ]
    return {
        "rtt_ms": RTT * 1e3,
        "events": n,
        "rows": rows,
        "targets": {"poll-ahead p99 max_ms": target},
        "markdown": "\n".join(lines),
        "samples_ms": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "origin"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.command == "origin":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.port))
        return
    result = run(args.quick, args.tree, args.events)
    result.pop("samples_ms")
    print(json.dumps(result, indent=2))
    rows = result["rows"]
    assert isinstance(rows, dict)
    print(f"\n{'path':<12} {'p50 ms':>8} {'p99 ms':>8}   (RTT {RTT * 1e3:.0f} ms)")
    for name, row in rows.items():
        print(f"{name:<12} {row['p50_ms']:>8} {row['p99_ms']:>8}")


if __name__ == "__main__":
    main()
