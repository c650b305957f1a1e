"""Attacks on the HTTP edge of a gateway process, with figures (issue 7, items 3 and 5).

Runs ``python -m gateway`` from ``--tree`` (a pristine clone for the
"before" figures, this checkout for "after"; ``--pythonpath`` is its old
name) against a real aiohttp origin on loopback, and prints one line of
figures per attack:

* ``slowloris``: N connections each sending one byte of a request head a
  second; how many the gateway closed, and when.
* ``fdlimit``: the gateway under ``prlimit --nofile=LIMIT``; N idle sockets,
  then a legitimate client; how many of its requests were answered, and how
  many log lines (and "Too many open files" lines) the gateway wrote.
* ``targets``: odd request targets (``m://``, ``HTTP://``, ``OPTIONS *``...)
  to a sidecar and a client gateway; the status each got and whether the
  origin or another host (a listener on 127.0.0.1:80, needs root) saw anything.

    python bench/edge_attacks.py --tree /tmp/before-edge targets
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.processes import GatewayProcess, start_gateway  # noqa: E402


@contextlib.asynccontextmanager
async def origin(port: int = 0) -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.raw_path} Host={request.host}")
        return web.Response(text=f"origin:{port}\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def raw(port: int, data: bytes, timeout: float = 5.0) -> str:
    """Send ``data``; the status line of the answer (or what happened instead)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    except (OSError, TimeoutError) as exc:
        return f"connect failed: {type(exc).__name__}"
    try:
        writer.write(data)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.decode("latin-1").strip() or "closed without answer"
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}"
    finally:
        writer.close()


# ------------------------------------------------------------------- slowloris


async def slowloris(args: argparse.Namespace) -> None:
    async with origin() as (url, _):
        gw = start_gateway("server", "--upstream", url, *args.gateway_args, tree=args.tree)
        try:
            await _slowloris(gw.port, args.connections, args.duration)
        finally:
            gw.stop()


async def _slowloris(port: int, count: int, duration: float) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 10_000
    closed_at: list[float] = []
    started = time.monotonic()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(int(duration) + 1):
                writer.write(head[i : i + 1])
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except TimeoutError:
                    continue
                if not data:
                    raise ConnectionResetError
                if data:  # the gateway answered (408?) and will close
                    continue
        except OSError:
            closed_at.append(time.monotonic() - started)
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    closed = sorted(closed_at)
    when = f", first at {closed[0]:.1f}s, last at {closed[-1]:.1f}s" if closed else ""
    print(f"slowloris: {len(closed)} of {count} connections closed within {duration:g}s{when}")


# --------------------------------------------------------------------- fdlimit


async def fdlimit(args: argparse.Namespace) -> None:
    async with origin() as (url, seen):
        gw = start_gateway(
            "server", "--upstream", url, *args.gateway_args, tree=args.tree, nofile=args.nofile
        )
        try:
            await _fdlimit(gw, args.connections, args.duration, seen)
        finally:
            gw.stop()


async def _fdlimit(gw: GatewayProcess, count: int, duration: float, seen: list[str]) -> None:
    before = len(gw.lines)
    idle: list[asyncio.StreamWriter] = []
    refused = 0
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 2)
            idle.append(writer)
        except (OSError, TimeoutError):
            refused += 1
    started = time.monotonic()
    answers: list[str] = []
    while time.monotonic() - started < duration:
        answers.append(
            await raw(gw.port, b"GET /legit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5)
        )
        await asyncio.sleep(1.0)
    lines = gw.lines[before:]
    emfile = sum("Too many open files" in line for line in lines)
    ok = sum(a.startswith("HTTP/1.1 200") for a in answers)
    print(
        f"fdlimit: {count} idle sockets ({refused} refused at connect); legitimate client "
        f"answered 200 {ok} of {len(answers)} times in {duration:g}s "
        f"(origin saw {sum('/legit' in s for s in seen)}); gateway log: {len(lines)} lines, "
        f"{emfile} 'Too many open files'; answers: {sorted(set(answers))}"
    )
    for line in [x for x in lines if "hopgate.access" not in x][:5]:
        print("  gateway:", line.rstrip()[:160])
    for writer in idle:
        writer.close()


# --------------------------------------------------------------------- targets

CASES: Sequence[tuple[str, bytes]] = (
    ("origin-form", b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"),
    (
        "m:// (scheme glued onto the upstream)",
        b"GET t://127.0.0.1:19099/leak HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    ("HTTP://evil/.hopgate/status", b"GET HTTP://evil/.hopgate/status HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("HTTP://evil/x", b"GET HTTP://evil/x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("//x", b"GET //x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("authority-form GET", b"GET evil:80 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("CONNECT", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n"),
    (
        "status via XFF",
        b"GET /.hopgate/status HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    ),
    ("status from loopback", b"GET /.hopgate/status HTTP/1.1\r\nHost: x\r\n\r\n"),
)


async def targets(args: argparse.Namespace) -> None:
    async with origin() as (url, seen), origin(80) as (_, leaked):
        # "http://localhos" + "t://..." = "http://localhost://...": host localhost, port 80.
        glued = start_gateway(
            "server", "--upstream", "http://localhos", "--upgrade", "never", tree=args.tree
        )
        sidecar = start_gateway("server", "--upstream", url, tree=args.tree)
        client = start_gateway("client", "--upstream", sidecar.url, tree=args.tree)
        try:
            for name, gw in (
                ("sidecar upstream http://localhos", glued),
                ("sidecar with port", sidecar),
                ("client gateway", client),
            ):
                for case, data in CASES:
                    seen.clear()
                    leaked.clear()
                    answer = await raw(gw.port, data)
                    print(
                        f"targets: {name:34} {case:38} -> {answer:40} origin saw {seen} "
                        f"other host (127.0.0.1:80) saw {leaked}"
                    )
            errors = sum(
                "Error handling request" in line or "Traceback" in line
                for p in (glued, sidecar, client)
                for line in p.lines
            )
            print(f"targets: tracebacks in the gateways' logs: {errors}")
        finally:
            for p in (client, sidecar, glued):
                p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tree",
        "--pythonpath",
        type=Path,
        default=REPO,
        help="source tree of the gateway under test (default: this checkout)",
    )
    parser.add_argument("--connections", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("attack", choices=("slowloris", "fdlimit", "targets"))
    parser.add_argument("gateway_args", nargs="*")
    args = parser.parse_args()
    if args.attack == "slowloris":
        args.connections = args.connections or 200
        args.duration = args.duration or 30
        asyncio.run(slowloris(args))
    elif args.attack == "fdlimit":
        args.connections = args.connections or 1100
        args.duration = args.duration or 25
        asyncio.run(fdlimit(args))
    else:
        asyncio.run(targets(args))


if __name__ == "__main__":
    main()
