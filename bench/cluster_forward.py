"""Tunnelled requests/s through a cluster instance that forwards internally vs one reached directly.

Two ``hopgate server`` processes of one cluster (``--cluster-secret-file``,
``--advertise``) before one origin, a real HAProxy in front of them, and a
``hopgate client`` process whose hop goes through that HAProxy::

    direct     client gw -> HAProxy -> instance 1 (owner)              -> origin
    forwarded  client gw -> HAProxy -> instance 2 -> instance 1 (owner) -> origin
               (session creation still goes to instance 1; every request
               of the session, /.hopgate/session/{id}..., goes to instance 2,
               which passes it to the owner named in the id)

Both paths go through the same HAProxy, so the only difference is the
internal extra hop. Each runs with the hop on a WebSocket (instance 2
splices frames) and on long-poll (HAProxy refuses upgrades; instance 2
passes every held GET and POST on). Small GETs, 1 and ``--concurrency`` at
a time, all numbers from one run on one machine.

A second table is steadier on a shared machine: the two instances and a
client in this one process, one session POST (an empty batch) after another
straight to the owner and through instance 2; the CPU time of the process per
request is the cost of the internal hop, whatever else the machine runs.

Usage:  .venv/bin/python bench/cluster_forward.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.hop_requests import measure, origin
from gateway.config import build_config
from gateway.server import Gateway
from gateway.transports.handshake import SESSION_HEADER, SESSION_PATH, TOKEN_HEADER
from tests.processes import GatewayProcess, free_port, start_gateway
from tests.proxies import running_splitter


@contextlib.contextmanager
def instances(origin_url: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two server processes sharing a cluster secret (read from a 0600 file)."""
    with tempfile.TemporaryDirectory() as folder:
        secret = Path(folder) / "cluster.secret"
        secret.write_text(secrets.token_urlsafe(32))
        secret.chmod(0o600)
        started: list[GatewayProcess] = []
        try:
            for _ in range(2):
                port = free_port()
                flags = (
                    "--upstream", origin_url,
                    "--cluster-secret-file", str(secret),
                    "--advertise", f"http://127.0.0.1:{port}",
                )  # fmt: skip
                started.append(
                    start_gateway("server", *flags, listen=f"127.0.0.1:{port}", log_level="warning")
                )
            yield started[0], started[1]
        finally:
            for gw in started:
                gw.stop()


def status(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/.hopgate/status", timeout=5) as answer:
        document: dict[str, object] = json.loads(answer.read())
        return document


def wait_for_hop(client: GatewayProcess, transport: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = "none"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(client.url + "/poll", timeout=5).read()
        upstreams = status(client.url)["upstreams"]
        seen = str(upstreams[0]["transport"]) if upstreams else "none"  # type: ignore[index]
        if seen == transport:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the hop stayed on {seen!r}, not {transport!r}")


async def cpu_per_session_post(requests: int) -> dict[str, float]:
    """Microseconds of this process's CPU per session POST: direct vs through instance 2."""
    gateways: list[Gateway] = []
    secret = secrets.token_urlsafe(32)
    for _ in range(2):
        port = free_port()
        config = build_config(
            "server",
            {
                "upstream": "http://127.0.0.1:9",
                "listen": f"127.0.0.1:{port}",
                "cluster_secret": secret,
                "advertise": f"http://127.0.0.1:{port}",
            },
        )
        gateways.append(Gateway(config))
        await gateways[-1].start()
    one, two = gateways
    costs: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{one.url}{SESSION_PATH}") as answer:
                session_id, token = answer.headers[SESSION_HEADER], answer.headers[TOKEN_HEADER]
            headers = {TOKEN_HEADER: token, "Content-Type": "application/octet-stream"}
            for name, gw in (("direct", one), ("forwarded", two)) * 2:
                url = f"{gw.url}{SESSION_PATH}/{session_id}?epoch=1"
                start = time.process_time()
                for _ in range(requests):
                    async with http.post(url, data=b"", headers=headers) as answer:
                        assert answer.status == 200, answer.status
                        await answer.read()
                cost = (time.process_time() - start) / requests * 1e6
                costs[name] = min(costs.get(name, cost), cost)
    finally:
        for gw in gateways:
            await gw.stop()
    return costs


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_path(
    origin_url: str, forwarded: bool, transport: str, requests: int, concurrency: int
) -> tuple[dict[int, float], float, int]:
    """Requests/s at 1 and ``concurrency``, the instances' CPU ms per request, and how
    many requests instance 2 passed on.

    CPU time is the steadier figure on a shared machine: requests/s moves with
    whatever else runs, the CPU an instance spends per request much less.
    """
    with (
        instances(origin_url) as (one, two),
        running_splitter(
            one.port, two.port, to_second=forwarded, long_poll=transport == "long-poll"
        ) as router,
    ):
        client = start_gateway("client", "--upstream", router.url, log_level="info")
        try:
            await asyncio.to_thread(wait_for_hop, client, transport)
            before = cpu_seconds(one.pid) + cpu_seconds(two.pid)
            rates = {c: await measure(client.url, requests, c) for c in (1, concurrency)}
            # ``measure`` sends every request twice (warm-up, then timed), at both levels.
            cpu_ms = (cpu_seconds(one.pid) + cpu_seconds(two.pid) - before) * 1000 / (4 * requests)
        finally:
            client.stop()
        cluster = status(two.url)["cluster"]
        return rates, cpu_ms, int(cluster["forwarded"])  # type: ignore[index]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    runner, origin_url = await origin()
    c = args.concurrency
    print(f"{'hop':<10} {'path':<10} {'1 at a time':>14} {f'{c} at a time':>14} {'x direct':>9}"
          f" {'cpu ms/req':>11} {'passed on':>10}")  # fmt: skip
    try:
        for transport in ("websocket", "long-poll"):
            base: dict[int, float] = {}
            for forwarded in (False, True):
                rates, cpu_ms, passed = await run_path(
                    origin_url, forwarded, transport, args.requests, c
                )
                base = base or rates
                name = "forwarded" if forwarded else "direct"
                print(
                    f"{transport:<10} {name:<10} {rates[1]:>10.0f} r/s {rates[c]:>10.0f} r/s "
                    f"{rates[c] / base[c]:>9.2f} {cpu_ms:>11.2f} {passed:>10}",
                    flush=True,
                )
    finally:
        await runner.cleanup()
    costs = await cpu_per_session_post(args.requests)
    print(
        f"\none process, session POSTs one after another: direct {costs['direct']:.0f} us CPU, "
        f"through instance 2 {costs['forwarded']:.0f} us CPU per request "
        f"(+{costs['forwarded'] - costs['direct']:.0f} us for the internal hop)"
    )


if __name__ == "__main__":
    asyncio.run(main())
