"""What idle hop sessions cost a gateway, and whether it gives the memory back.

Starts a ``hopgate server`` subprocess, opens N hop sessions over loopback
with a client that does only the session-creation POST (no transport ever
attaches, so every session is idle), and reads the server's VmRSS from
``/proc/PID/status``:

    baseline     after a few warm-up sessions
    open         after N more sessions          -> KB per idle session
    expired      after every session expired    (resume_grace, no transport)

It also prints how long the N creations took. The per-address limits are
switched off (``--max-sessions-per-client 0``, a huge ``--session-create-rate``)
unless ``--keep-limits`` is given, so one loopback client can open them all;
``--sources K`` spreads the client over 127.0.0.1 .. 127.0.0.K instead.

Usage:  .venv/bin/python bench/idle_sessions.py [--sessions 10000] [--grace 30]
        [--tree PATH]   # the gateway source tree to run (default: this checkout)

Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import running_gateway_process, unlimited_sessions  # noqa: E402


async def open_sessions(url: str, count: int, concurrency: int, sources: int) -> dict[int, int]:
    """``count`` creation POSTs; returns how many got each status."""
    statuses: dict[int, int] = {}
    clients = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max(1, concurrency // sources), local_addr=(f"127.0.0.{k + 1}", 0)
            )
        )
        for k in range(sources)
    ]
    queue = iter(range(count))

    async def worker(client: aiohttp.ClientSession) -> None:
        for _ in queue:
            async with client.post(url) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    try:
        await asyncio.gather(*(worker(clients[i % sources]) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.close()
    return statuses


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--grace", type=float, default=30.0, help="--resume-grace of the server")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--keep-limits", action="store_true")
    parser.add_argument("--tree", "--repo", type=Path, default=ROOT, help="gateway source tree")
    args = parser.parse_args()

    flags = ["--upstream", "http://127.0.0.1:9", "--resume-grace", str(args.grace)]
    if args.keep_limits:
        flags += ["--max-sessions", str(args.sessions + 100)]
    else:
        flags += unlimited_sessions(args.sessions + 100)
    tree = args.tree.resolve()
    with running_gateway_process("server", *flags, log_level="warning", tree=tree) as server:
        url = f"{server.url}/.hopgate/session"
        await open_sessions(url, 20, 4, 1)
        await asyncio.sleep(0.5)
        base = server.rss_kib()
        started = time.monotonic()
        statuses = await open_sessions(url, args.sessions, args.concurrency, args.sources)
        took = time.monotonic() - started
        opened = statuses.get(200, 0)
        after = server.rss_kib()
        print(f"sessions asked {args.sessions}, answers {dict(sorted(statuses.items()))}")
        print(f"created {opened} in {took:.2f} s ({opened / took:.0f}/s)")
        print(f"RSS baseline {base / 1024:.1f} MiB, with sessions {after / 1024:.1f} MiB")
        if opened:
            print(f"per idle session: {(after - base) / opened:.1f} KB")
        if took > args.grace:
            print("warning: creation took longer than --grace; early sessions already expired")
        wait = args.grace + 5 - (time.monotonic() - started - took)
        await asyncio.sleep(max(wait, 0))
        expired = server.rss_kib()
        print(
            f"RSS after expiry {expired / 1024:.1f} MiB "
            f"({(expired - base) / 1024:+.1f} MiB over baseline)"
        )


if __name__ == "__main__":
    asyncio.run(main())
