"""What a crash or a drain costs: ``python -m tests.hop.measure_handover kill|term``.

Two ``hopgate server`` instances of one cluster behind a round-robin TCP
balancer (tests/hop/balancer.py), a ``hopgate client``, legacy traffic: 4
senders POST /send?id=N (a body) back to back, 4 pollers GET /poll (held
0.5 s). At 3 s the instance holding the client's session gets kill -9 (or
SIGTERM); traffic runs to 9 s. Prints the time to the new session and every
answer counted (the figures in docs/topics/delivery.md).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from tests.hop.balancer import round_robin
from tests.processes import GatewayProcess, free_port, start_gateway

SECRET = "measure-handover-secret-0123456789"
FAULT_AT, RUN_FOR = 3.0, 9.0


class Traffic:
    """The legacy clients and what they were answered; the origin's arrivals."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.answers: Counter[str] = Counter()
        self.arrivals: Counter[str] = Counter()
        self.told_ok: list[str] = []
        self.stop = time.monotonic() + RUN_FOR

    async def origin(self, request: web.Request) -> web.Response:
        await request.read()
        if request.path == "/send":
            self.arrivals[request.query["id"]] += 1
            return web.Response(text="ok")
        await asyncio.sleep(0.5)
        return web.Response(text="event")

    async def one(self, method: str, path: str, body: bytes | None = None) -> bool:
        try:
            async with self.http.request(method, self.url + path, data=body) as resp:
                text = await resp.text()
                self.answers[f"{method} {resp.status} {'' if resp.ok else text[:60]}"] += 1
                return resp.status == 200
        except aiohttp.ClientError as exc:
            self.answers[f"{method} error {type(exc).__name__}"] += 1
            return False

    async def sender(self, k: int) -> None:
        for n in range(100_000):
            if time.monotonic() >= self.stop:
                return
            if await self.one("POST", f"/send?id={k}-{n}", b"hello"):
                self.told_ok.append(f"{k}-{n}")
            await asyncio.sleep(0.05)

    async def poller(self) -> None:
        while time.monotonic() < self.stop:
            await self.one("GET", "/poll")


async def status(http: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with http.get(gw.url + "/.hopgate/status") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def fault(http: aiohttp.ClientSession, mode: str, servers: list[GatewayProcess],
                client: GatewayProcess) -> float:  # fmt: skip
    """Stop the owner at FAULT_AT; seconds until the client has another session (-1: none)."""
    first = (await status(http, client))["upstreams"][0]["session"]
    active = [(await status(http, s))["sessions"]["active"] for s in servers]
    owner = servers[active.index(1)]
    await asyncio.sleep(FAULT_AT)
    owner.send_signal(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
    signalled = time.monotonic()
    while time.monotonic() - signalled < 10:
        hop = (await status(http, client))["upstreams"][0]
        if hop["session"] not in (None, first) and hop["transport"] != "plain":
            return time.monotonic() - signalled
        await asyncio.sleep(0.02)
    return -1.0


async def measure(mode: str) -> None:
    ports = [free_port(), free_port()]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        app = web.Application()
        runner = web.AppRunner(app)
        traffic = Traffic(http, "")
        app.router.add_route("*", "/{tail:.*}", traffic.origin)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        servers = [
            await asyncio.to_thread(
                start_gateway, "server", "--upstream", origin, "--shutdown-grace", "8",
                "--cluster-secret", SECRET, "--advertise", f"http://127.0.0.1:{port}",
                listen=f"127.0.0.1:{port}",
            )
            for port in ports
        ]  # fmt: skip
        async with round_robin(ports) as balancer:
            client = await asyncio.to_thread(start_gateway, "client", "--upstream", balancer.url)
            for _ in range(100):
                if (await status(http, client))["upstreams"][0]["transport"] == "websocket":
                    break
                await asyncio.sleep(0.1)
            traffic.url, traffic.stop = client.url, time.monotonic() + RUN_FOR
            loads = [traffic.sender(k) for k in range(4)] + [traffic.poller() for _ in range(4)]
            recovery, *_ = await asyncio.gather(fault(http, mode, servers, client), *loads)
            report(mode, recovery, (await status(http, client))["hop"], traffic)
            client.stop()
        for server in servers:
            server.stop()
        await runner.cleanup()


def report(mode: str, recovery: float, hop: dict[str, Any], traffic: Traffic) -> None:
    print(f"{mode}: new session after {recovery:.2f} s; hop {hop}")
    for answer, count in sorted(traffic.answers.items()):
        print(f"  {count:5d}  {answer}")
    twice = sum(1 for n in traffic.arrivals.values() if n > 1)
    missing = sum(1 for key in traffic.told_ok if traffic.arrivals[key] != 1)
    print(f"  duplicates at the origin: {twice}; told 200 but missing: {missing}")


if __name__ == "__main__":
    asyncio.run(measure(sys.argv[1] if len(sys.argv) > 1 else "kill"))
