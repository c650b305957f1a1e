"""A legacy long-poll application: the kind of app hopgate exists for, and its client.

**Origin** (``python bench/legacy_app.py origin``): one event stream.

* ``GET /poll?since=N`` answers the events from index N on (JSON ``{"events":
  [...], "next": M}``) at once if there are any, else holds the request until
  one is published (at most ``--hold`` seconds, then ``{"events": [], "next":
  N}``). ``since=-1`` answers ``{"events": [], "next": <now>}`` at once: where a
  new client starts. ``max=K`` caps the events per answer.
* ``GET /poll?since=N&fast=1``: the "as fast as it can" stream: event N is
  made on demand and answered at once (one event per poll), so a client's
  events/s is its poll round trips per second: the per-request cost of the
  path, which is what the rows with this mode measure.
* ``POST /publish`` appends one event (the body, if JSON, is its ``data``);
  ``POST /ticker?rate=R`` publishes R events/s from inside the origin (0 stops
  it), so the publisher's own requests do not load the measured path.

Every event is ``{"id": N, "t": <time.time() when published>, "data": "..."}``
(about 100 bytes): a client's delivery latency is its receive time minus ``t``
(same machine, same clock).

**Client** (``python bench/legacy_app.py run --url URL``): ``clients``
pollers, each in a loop (GET, parse, next GET), with the headers a browser
sends (a 400-byte cookie, a browser user agent, accept headers). ``fast``
mode counts deliveries; ``paced`` mode (the origin's ticker at ``rate``)
records every event's latency.

**Paths**: ``run --path direct|websocket|long-poll [--rtt-ms 50]`` starts the
origin and, for the hop paths, ``hopgate client`` -> ``hopgate server``
(``--tree`` picks the source tree) with ``bench/suite_net.py`` on the hop:
for ``long-poll`` it refuses WebSocket upgrades, the only way to keep a hop
on long-poll (``--upgrade never`` gives a plain hop, no session at all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]

EVENT_DATA = "x" * 48
#: What a browser sends with every poll (issue 13 item 4: realistic headers).
BROWSER_HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    ),
    "Accept": "application/json, text/plain, */*",
    "Accept-Language": "en-GB,en;q=0.9,de;q=0.8",
    "Accept-Encoding": "gzip, deflate, br",
    "Cookie": "session=" + "c0ffee" * 65 + "; theme=dark",  # ~400 bytes
    "Referer": "https://app.example/inbox",
}


# ----------------------------------------------------------------------- origin


class Origin:
    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.events: list[dict[str, object]] = []
        self.changed = asyncio.Event()
        self.ticker: asyncio.Task[None] | None = None
        #: Polls being held right now (``GET /held``: the memory row waits on it).
        self.held = 0

    def publish(self, data: object = EVENT_DATA) -> None:
        self.events.append({"id": len(self.events), "t": time.time(), "data": data})
        self.changed.set()
        self.changed = asyncio.Event()

    async def poll(self, request: web.Request) -> web.Response:
        query = request.query
        since = int(query.get("since", "0"))
        if "fast" in query:
            event = {"id": since, "t": time.time(), "data": EVENT_DATA}
            return _json({"events": [event], "next": since + 1})
        if since < 0 or since > len(self.events):
            return _json({"events": [], "next": len(self.events)})
        if since == len(self.events):
            self.held += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), self.hold)
            finally:
                self.held -= 1
        limit = int(query.get("max", "1000"))
        batch = self.events[since : since + limit]
        return _json({"events": batch, "next": since + len(batch)})

    async def publish_handler(self, request: web.Request) -> web.Response:
        body = await request.read()
        data: object = EVENT_DATA
        with contextlib.suppress(ValueError):
            data = json.loads(body) if body else EVENT_DATA
        self.publish(data)
        return _json({"id": len(self.events) - 1})

    async def ticker_handler(self, request: web.Request) -> web.Response:
        rate = float(request.query.get("rate", "0"))
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        if rate > 0:
            self.ticker = asyncio.create_task(self._tick(rate))
        return _json({"rate": rate})

    async def held_handler(self, request: web.Request) -> web.Response:
        return web.Response(text=str(self.held))

    async def _tick(self, rate: float) -> None:
        """Publishes on an absolute schedule, so a late tick does not slow the rate."""
        loop = asyncio.get_running_loop()
        period = 1 / rate
        due = loop.time()
        while True:
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.publish()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/poll", self.poll)
        app.router.add_post("/publish", self.publish_handler)
        app.router.add_post("/ticker", self.ticker_handler)
        app.router.add_get("/held", self.held_handler)
        return app


def _json(doc: object) -> web.Response:
    return web.Response(
        body=json.dumps(doc).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def serve_origin(port: int, hold: float) -> None:
    runner = web.AppRunner(Origin(hold).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


# ----------------------------------------------------------------------- client


@dataclass
class Deliveries:
    """What the pollers saw: counts, and latencies (s) in paced mode."""

    events: int = 0
    polls: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""


async def poller(
    http: aiohttp.ClientSession, url: str, seen: Deliveries, until: float, fast: bool
) -> None:
    """One legacy client: poll, read, poll again, until ``until`` (loop time)."""
    loop = asyncio.get_running_loop()
    since = 0 if fast else -1
    suffix = "&fast=1" if fast else ""
    while loop.time() < until:
        try:
            async with http.get(f"{url}/poll?since={since}{suffix}") as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET /poll: {resp.status} {body[:200]!r}")
            doc = json.loads(body)
        except (aiohttp.ClientError, RuntimeError, ValueError, TimeoutError) as exc:
            seen.errors += 1
            seen.first_error = seen.first_error or f"{type(exc).__name__}: {exc}"
            if seen.errors > 100:
                raise RuntimeError(f"too many failed polls; first: {seen.first_error}") from exc
            await asyncio.sleep(0.05)
            continue
        now = time.time()
        seen.polls += 1
        events = doc["events"]
        seen.events += len(events)
        if not fast and since >= 0:
            seen.latencies.extend(now - event["t"] for event in events)
        since = doc["next"]


def client_session(limit: int = 0, timeout: float = 60.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        headers=BROWSER_HEADERS,
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
    )


async def run_clients(
    url: str, clients: int, duration: float, *, rate: float = 0.0, origin_url: str = ""
) -> Deliveries:
    """``clients`` pollers for ``duration`` s; ``rate`` > 0: the origin ticks (paced mode)."""
    seen = Deliveries()
    fast = rate <= 0
    async with client_session() as http:
        if not fast:
            await _ticker(http, origin_url or url, 0)
            # Every poller first learns where the stream is, then waits in a held poll.
        loop = asyncio.get_running_loop()
        until = loop.time() + duration + (0 if fast else 0.5)
        tasks = [asyncio.create_task(poller(http, url, seen, until, fast)) for _ in range(clients)]
        try:
            if not fast:
                await asyncio.sleep(0.5)
                await _ticker(http, origin_url or url, rate)
            await asyncio.wait_for(asyncio.gather(*tasks), duration + 70)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not fast:
                await _ticker(http, origin_url or url, 0)
    return seen


async def _ticker(http: aiohttp.ClientSession, origin_url: str, rate: float) -> None:
    async with http.post(f"{origin_url}/ticker?rate={rate}") as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /ticker on {origin_url}: {resp.status}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ----------------------------------------------------------------------- CLI


async def _run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.suite_procs import hop_path, python_child, running

    rtt = args.rtt_ms / 1000
    with (
        running(python_child("legacy_app.py", "origin")) as origin,
        hop_path(args.path, origin.announced, args.tree, rtt) as route,
    ):
        seen = await run_clients(
            route.url, args.clients, args.duration, rate=args.rate, origin_url=origin.announced
        )
    print(f"{args.path}: {seen.events} events in {seen.polls} polls, {seen.errors} errors")
    if args.rate > 0:
        p50, p99 = (percentile(seen.latencies, q) * 1e3 for q in (0.5, 0.99))
        print(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    else:
        print(f"{seen.events / args.duration:.0f} deliveries/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    origin = sub.add_parser("origin", help="serve the legacy origin")
    origin.add_argument("--port", type=int, default=0)
    origin.add_argument("--hold", type=float, default=20.0, help="longest held poll, s")
    run = sub.add_parser("run", help="start origin (+ gateways) and run clients")
    run.add_argument("--path", choices=("direct", "websocket", "long-poll"), default="direct")
    run.add_argument("--clients", type=int, default=1)
    run.add_argument("--duration", type=float, default=5.0)
    run.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as it can)")
    run.add_argument("--rtt-ms", type=float, default=0.0)
    run.add_argument("--tree", type=Path, default=ROOT)
    args = parser.parse_args()
    if args.command == "origin":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_origin(args.port, args.hold))
    else:
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
