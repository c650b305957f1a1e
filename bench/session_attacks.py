"""Hostile hop-session peers against a real ``hopgate server``: the figures of issue 7.

Each attack runs against a fresh server subprocess on loopback with default
flags (plus ``--hop-secret`` where the attack needs one) and prints what it
got:

    fill        one address opens sessions as fast as it can until refused;
                then a legitimate client from another address tries once
    posts       30 POSTs on one session, each declaring 8 MiB and stalling
                one byte short; the server's RSS growth
    numbers     malformed numbers in hop requests (hop-secret time stamp,
                ``epoch=``, ``last=``): the statuses
    replay      the same hop-secret header sent twice: the statuses

Usage:  .venv/bin/python bench/session_attacks.py [--tree PATH] [attack ...]

``--tree`` (or ``--repo``) runs another checkout's gateway (e.g. a pristine
clone, for the "before" figures); the hop-secret header is made by that
checkout's own sending code. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import (  # noqa: E402
    auth_header_in_tree,
    proc_status_kib,
    running_gateway_process,
)

MiB = 1024 * 1024
SESSION_PATH = "/.hopgate/session"

#: The sidecar's hop secret (a gateway refuses one under 16 bytes).
HOP_SECRET = "bench-hop-secret-0123"


@contextlib.asynccontextmanager
async def server(tree: Path, *flags: str) -> AsyncIterator[tuple[str, int]]:
    """A quiet ``hopgate server`` subprocess of ``tree``; yields (base URL, pid)."""
    flags = ("--upstream", "http://127.0.0.1:9", *flags)
    with running_gateway_process("server", *flags, log_level="error", tree=tree) as gw:
        yield gw.url, gw.pid


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid) / 1024


def client_from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=64))


async def create(http: aiohttp.ClientSession, base: str, **headers: str) -> tuple[int, str]:
    async with http.post(base + SESSION_PATH, headers=headers) as resp:
        body = await resp.read()
        return resp.status, (body.decode("utf-8", "replace").strip() if resp.status != 200 else "")


# -- attacks --------------------------------------------------------------------------


async def fill(repo: Path) -> None:
    async with server(repo) as (base, _pid), client_from("127.0.0.1") as attacker:
        started = time.monotonic()
        statuses: dict[int, int] = {}
        first_refusal = None
        while time.monotonic() - started < 5:
            results = await asyncio.gather(*(create(attacker, base) for _ in range(100)))
            for status, text in results:
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200 and first_refusal is None:
                    first_refusal = (round(time.monotonic() - started, 2), status, text[:100])
            if statuses.get(200, 0) >= 1000:
                break
        took = time.monotonic() - started
        print(f"fill: one address, {took:.2f} s: {dict(sorted(statuses.items()))}")
        print(f"      first refusal at {first_refusal}")
        async with client_from("127.0.0.2") as legit:
            status, text = await create(legit, base)
        print(f"      then a client gateway from 127.0.0.2: {status} {text[:100]}")


async def posts(repo: Path) -> None:
    async with server(repo) as (base, pid), aiohttp.ClientSession() as http:
        async with http.post(base + SESSION_PATH) as resp:
            sid, token = resp.headers["X-Hopgate-Session"], resp.headers["X-Hopgate-Token"]
        port = int(base.rsplit(":", 1)[1])
        before = rss_mib(pid)
        declared = 8 * MiB
        writers = []
        answers: list[bytes] = []

        async def stall() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            head = (
                f"POST {SESSION_PATH}/{sid}?epoch=1 HTTP/1.1\r\nHost: x\r\n"
                f"X-Hopgate-Token: {token}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode()
            writer.write(head)
            chunk = b"\0" * (256 * 1024)
            with contextlib.suppress(OSError):
                for _ in range(declared // len(chunk) - 1):
                    writer.write(chunk)
                    await writer.drain()
                writer.write(chunk[:-1])  # one byte short: the body never completes
                await writer.drain()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2):
                    answers.append(await reader.read(200))

        started = time.monotonic()
        await asyncio.gather(*(stall() for _ in range(30)))
        await asyncio.sleep(1)
        peak = rss_mib(pid)
        codes: dict[str, int] = {}
        for answer in answers:
            code = answer[9:12].decode() if answer else "none"
            codes[code] = codes.get(code, 0) + 1
        pending = 30 - len(answers)
        print(
            f"posts: 30 stalled 8 MiB POSTs on one session: RSS {before:.0f} -> {peak:.0f} MiB "
            f"(+{peak - before:.0f} MiB) after {time.monotonic() - started:.1f} s; answered "
            f"within 2 s: {codes}, still held: {pending}"
        )
        await asyncio.sleep(30)
        for writer in writers:
            writer.close()
        print(f"      30 s later: RSS {rss_mib(pid):.0f} MiB")


async def numbers(repo: Path) -> None:
    async with (
        server(repo, "--hop-secret", HOP_SECRET) as (base, _pid),
        aiohttp.ClientSession() as http,
    ):
        for label, stamp in (("'²'", "²"), ("5000 digits", "9" * 5000)):
            value = f"v1 {stamp} {'0' * 64}"
            status, _ = await create(http, base, **{"X-Hopgate-Auth": value})
            value2 = f"v2 {stamp} {'0' * 32} {'0' * 64}"
            status2, _ = await create(http, base, **{"X-Hopgate-Auth": value2})
            print(f"numbers: hop-secret time stamp {label}: v1 -> {status}, v2 -> {status2}")
    async with server(repo) as (base, _pid), aiohttp.ClientSession() as http:
        async with http.post(base + SESSION_PATH) as resp:
            sid, token = resp.headers["X-Hopgate-Session"], resp.headers["X-Hopgate-Token"]
        for query in ("epoch=%C2%B2&last=0", "epoch=1&last=%C2%B2", "epoch=1&last=" + "9" * 5000):
            url = f"{base}{SESSION_PATH}/{sid}?{query}"
            async with http.get(url, headers={"X-Hopgate-Token": token}) as resp:
                print(f"numbers: GET ?{query[:40]}: {resp.status}")


async def replay(repo: Path) -> None:
    async with (
        server(repo, "--hop-secret", HOP_SECRET) as (base, _pid),
        aiohttp.ClientSession() as http,
    ):
        header = auth_header_in_tree(HOP_SECRET, tree=repo)
        first = await create(http, base, **{"X-Hopgate-Auth": header})
        second = await create(http, base, **{"X-Hopgate-Auth": header})
        print(f"replay: header {header.split()[0]} sent twice: {first[0]}, then {second}")
        old = auth_header_in_tree(HOP_SECRET, age=120, tree=repo)
        print(f"replay: a 120 s old proof: {await create(http, base, **{'X-Hopgate-Auth': old})}")


ATTACKS = {"fill": fill, "posts": posts, "numbers": numbers, "replay": replay}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", "--repo", type=Path, default=ROOT, help="gateway source tree")
    parser.add_argument("attacks", nargs="*", help=f"any of {', '.join(ATTACKS)} (default all)")
    args = parser.parse_args()
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(sorted(unknown))}")
    repo = args.tree.resolve()
    for name in args.attacks or ATTACKS:
        await ATTACKS[name](repo)


if __name__ == "__main__":
    asyncio.run(main())
