"""How long a black-holed WebSocket hop takes to fail over, and what a legacy client sees meanwhile.

The chain, three processes plus this one::

    legacy client -> hopgate client -> FaultProxy -> hopgate server -> origin
    (this process)   (subprocess)      (here)        (subprocess)      (here)

Once the hop is on a WebSocket, the legacy client POSTs ``/msg?seq=N`` at
``--rate`` per second without waiting for answers; ``--before`` seconds
later the relay black-holes the upgraded connection (``blackhole_after_101``:
the sockets stay open, no byte passes). Printed:

    failover_s   black hole -> the first POST the origin receives after it
                 (nothing passes the WebSocket any more, so that one came on
                 long-poll or plain)
    status       how many POSTs got each status (503s included)
    p50/p99      latency of every POST, whatever its status
    lost / dup / inversions   seqs the origin never got, got twice, or got
                 after a higher one

Usage:  .venv/bin/python bench/blackhole.py [--rate 100] [--before 1] [--after 39]
        [--stall-timeout S] [--tree PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faultproxy import FaultProxy  # noqa: E402
from tests.hostile.peer import S_ACK, S_PING, HostilePeer, pack  # noqa: E402
from tests.processes import GatewayProcess, start_gateway, unlimited_sessions  # noqa: E402
from tests.status_page import upstream_entry  # noqa: E402


@dataclass
class Origin:
    """A tiny origin that records when each seq arrived."""

    arrivals: list[tuple[float, int]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        seq = int(request.query.get("seq", "-1"))
        body = await request.read()
        if seq >= 0:
            self.arrivals.append((time.monotonic(), seq))
        return web.Response(body=body or b"ok")

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, f"http://127.0.0.1:{port}"


@dataclass
class Results:
    failover_s: float | None
    statuses: dict[int, int]
    latencies: list[float]
    sent: int
    lost: int
    duplicated: int
    inversions: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def lines(self) -> list[str]:
        failover = f"{self.failover_s:.3f}" if self.failover_s is not None else "never"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return [
            f"failover_s  {failover}",
            f"sent        {self.sent}",
            f"status      {statuses}",
            f"503s        {self.statuses.get(503, 0)}",
            f"p50_s       {self.percentile(0.50):.3f}",
            f"p99_s       {self.percentile(0.99):.3f}",
            f"lost        {self.lost}",
            f"duplicated  {self.duplicated}",
            f"inversions  {self.inversions}",
        ]


async def wait_for_websocket(http: aiohttp.ClientSession, client_url: str, timeout: float) -> None:
    """Send warm-up requests until the client gateway's hop is on a WebSocket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(client_url + "/warm") as resp:
            await resp.read()
        if (await upstream_entry(http, client_url))["transport"] == "websocket":
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the hop never reached websocket within {timeout:g} s")


async def post_all(
    client_url: str, rate: float, duration: float, on_tick: tuple[float, asyncio.Event]
) -> tuple[dict[int, int], list[float], set[int]]:
    """POST at ``rate``/s for ``duration`` s without waiting; set the event at its time."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    delivered: set[int] = set()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(seq: int) -> None:
            start = time.monotonic()
            try:
                async with http.post(f"{client_url}/msg?seq={seq}", data=b"x" * 64) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0  # no answer at all
            latencies.append(time.monotonic() - start)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                delivered.add(seq)

        tasks: list[asyncio.Task[None]] = []
        begin = time.monotonic()
        count = int(rate * duration)
        at, event = on_tick
        for seq in range(count):
            due = begin + seq / rate
            if not event.is_set() and due >= begin + at:
                event.set()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)
    return statuses, latencies, delivered


async def run(args: argparse.Namespace) -> Results:
    origin = Origin()
    runner, origin_url = await origin.start()
    common = ["--shutdown-grace", "2"]
    if args.stall_timeout is not None:
        common += ["--stall-timeout", str(args.stall_timeout)]
    server: GatewayProcess | None = None
    client: GatewayProcess | None = None
    relay: FaultProxy | None = None
    try:
        server = await asyncio.to_thread(
            start_gateway, "server", "--upstream", origin_url, *common, tree=args.tree
        )
        relay = await FaultProxy("127.0.0.1", int(server.url.rsplit(":", 1)[1])).start()
        client = await asyncio.to_thread(
            start_gateway, "client", "--upstream", relay.url, *common, tree=args.tree
        )
        async with aiohttp.ClientSession() as http:
            await wait_for_websocket(http, client.url, 30.0)
        origin.arrivals.clear()
        blackhole = asyncio.Event()
        sender = asyncio.create_task(
            post_all(client.url, args.rate, args.before + args.after, (args.before, blackhole))
        )
        await blackhole.wait()
        relay.blackhole_after_101 = True
        holed_at = time.monotonic()
        statuses, latencies, delivered = await sender
        return summarize(origin.arrivals, holed_at, statuses, latencies, delivered)
    finally:
        for gw in (client, server):
            if gw is not None:
                await asyncio.to_thread(gw.stop)
        if relay is not None:
            await relay.close()
        await runner.cleanup()


def summarize(
    arrivals: list[tuple[float, int]],
    holed_at: float,
    statuses: dict[int, int],
    latencies: list[float],
    delivered: set[int],
) -> Results:
    after = [at for at, _ in arrivals if at > holed_at]
    seqs = [seq for _, seq in arrivals]
    seen: set[int] = set()
    duplicated = inversions = 0
    highest = -1
    for seq in seqs:
        if seq in seen:
            duplicated += 1
        seen.add(seq)
        if seq < highest:
            inversions += 1
        highest = max(highest, seq)
    return Results(
        failover_s=min(after) - holed_at if after else None,
        statuses=statuses,
        latencies=latencies,
        sent=sum(statuses.values()),
        lost=len(delivered - seen),
        duplicated=duplicated,
        inversions=inversions,
    )


#: Groups of peers reset one after the other after the SIGTERM.
_WAVES = 20


async def keep_talking(peer: HostilePeer, stop: asyncio.Event) -> None:
    """PING + ACK every 5 ms, so the server is writing PONGs when its sockets go."""
    nonce = 1000
    while not stop.is_set() and peer.ws is not None and not peer.ws.closed:
        nonce += 1
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await peer.ws.send_bytes(pack(S_PING, nonce) + pack(S_ACK, peer.received))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.005)


def drop_connection(peer: HostilePeer) -> None:
    """Reset the peer's TCP connection (its end of a gateway going away)."""
    if peer.ws is not None:
        response = peer.ws._response  # aiohttp keeps the socket there
        if response is not None and response.connection is not None:
            transport = response.connection.transport
            if transport is not None:
                transport.abort()


async def shutdown_tracebacks(sessions: int, tree: Path | None) -> tuple[int, int]:
    """Open ``sessions`` WebSocket hop sessions, stop the server: (opened, tracebacks).

    The peers keep the server writing (PINGs and ACKs every 5 ms); in the
    200 ms after the SIGTERM their connections reset, as thousands of hop
    WebSockets closing at once would. Counted in the server's output:
    ``Task exception was never retrieved``.
    """
    flags = ["--upstream", "http://127.0.0.1:9", "--shutdown-grace", "2"]
    server = await asyncio.to_thread(
        start_gateway, "server", *flags, *unlimited_sessions(sessions + 100), tree=tree
    )
    opened = 0
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            peers = [HostilePeer(server.url) for _ in range(sessions)]
            for peer in peers:
                await peer.connect(http)
                opened += 1
            stop = asyncio.Event()
            talkers = [asyncio.create_task(keep_talking(peer, stop)) for peer in peers]
            await asyncio.sleep(0.5)
            server.proc.terminate()
            for wave in range(_WAVES):  # resets spread over 200 ms: some meet a write
                await asyncio.sleep(0.2 / _WAVES)
                for peer in peers[wave::_WAVES]:
                    drop_connection(peer)
            await asyncio.to_thread(server.proc.wait, 30)
            stop.set()
            await asyncio.gather(*talkers)
            for peer in peers:
                await peer.aclose()
    finally:
        await asyncio.to_thread(server.stop)
    if os.environ.get("BLACKHOLE_DUMP"):
        print(server.output()[-6000:])
    return opened, server.count("Task exception was never retrieved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="POSTs per second")
    parser.add_argument("--before", type=float, default=1.0, help="seconds before the black hole")
    parser.add_argument("--after", type=float, default=39.0, help="seconds of POSTs after it")
    parser.add_argument("--stall-timeout", type=float, default=None, help="passed to both gateways")
    parser.add_argument("--tree", type=Path, default=None, help="gateway source tree to run")
    parser.add_argument(
        "--shutdown-sessions",
        type=int,
        default=0,
        help="instead: open N WebSocket hop sessions, stop the server, count tracebacks",
    )
    args = parser.parse_args()
    if args.shutdown_sessions:
        opened, count = asyncio.run(shutdown_tracebacks(args.shutdown_sessions, args.tree))
        print(f"sessions    {opened}")
        print(f"tracebacks  {count}  ('Task exception was never retrieved' on server stop)")
        return
    results = asyncio.run(run(args))
    for line in results.lines():
        print(line)


if __name__ == "__main__":
    main()
