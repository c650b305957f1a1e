"""Gateway CPU per request (or per 64 KiB message) of several source trees, in one run.

A change that saves 5% of a request's CPU is invisible in two runs of
``request_cost.py`` made minutes apart: this machine's speed drifts more than
that between them. Here every tree's path (client gateway -> hop -> server
gateway, in front of one shared ``legacy_app.py`` origin) is up at once, and
the legacy client drives each in turn for a short block, the order rotating
every round, so all trees share the drift; the medians of the blocks are
compared. ``--plain`` adds the first tree's plain forwarding (``--upgrade
never``) as the issue's baseline; ``--bare`` adds the bare WebSocket pair
(``bare_tunnel.py``: aiohttp's stock pieces, no session, no tunnel), what a
hop costs before anything hopgate does.

    .venv/bin/python bench/compare_trees.py --tree /tmp/before --tree . [--plain]

Each line: CPU per request of the client gateway and of the server gateway
(``/proc``, user + system), both together, requests per second, and the
ratio of "both" to the first tree's.

``--row large`` compares 64 KiB messages instead: each tree's ``hopgate
server`` in front of one shared ``suite_anchor_server.py``, the suite's
``suite_msgload.py`` (from that tree: the hop client is the tree's code too)
sending ``--mib`` MiB of 64 KiB messages per block; each line gives MB/s and
the server gateway's CPU seconds per GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.legacy_app import run_clients  # noqa: E402
from bench.suite_procs import (  # noqa: E402
    cpu_seconds,
    gateway,
    hop_path,
    python_child,
    refusing_path,
    running,
)
from bench.suite_rows import SCALES, msgload  # noqa: E402

__all__ = ["compare", "compare_large", "main"]

KINDS = ("websocket", "long-poll", "plain")
#: The message size of ``--row large`` (issue 13's 64 KiB row).
LARGE = 64 * 1024


def _names(kind: str, trees: list[Path]) -> list[str]:
    """One key per tree; a tree given twice (an A/A run) gets ``#N``."""
    names: list[str] = []
    for number, tree in enumerate(trees, 1):
        name = f"{kind} {tree}"
        names.append(f"{name} #{number}" if name in names else name)
    return names


def _rotations(names: list[str], rounds: int) -> list[list[str]]:
    """Every name once per round, starting one further each round: all share the drift."""
    return [names[turn % len(names) :] + names[: turn % len(names)] for turn in range(rounds)]


async def compare(
    trees: list[Path],
    *,
    kind: str = "websocket",
    plain: bool = False,
    bare: bool = False,
    rounds: int = 8,
    seconds: float = 1.5,
    clients: int = 1,
) -> dict[str, Any]:
    """Per path (``KIND TREE``): medians of CPU us per request and of requests/s."""
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(running(python_child("legacy_app.py", "origin")))
        paths = {}
        for name, tree in zip(_names(kind, trees), trees, strict=True):
            paths[name] = stack.enter_context(hop_path(kind, origin.announced, tree))
        if plain and kind != "plain":
            paths[f"plain {trees[0]}"] = stack.enter_context(
                hop_path("plain", origin.announced, trees[0])
            )
        if bare:
            paths["bare-ws pair"] = stack.enter_context(
                hop_path("bare-ws", origin.announced, trees[0])
            )
        for route in paths.values():  # warm: connections, the hop, the origin's caches
            await run_clients(route.url, clients, min(seconds, 0.7))
        blocks: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
        order = list(paths)
        for turn in _rotations(order, rounds):
            for name in turn:
                route = paths[name]
                pids = [process.pid for process in route.gateways]
                before = [cpu_seconds(pid) for pid in pids]
                seen = await run_clients(route.url, clients, seconds)
                after = [cpu_seconds(pid) for pid in pids]
                if not seen.events:
                    raise RuntimeError(f"{name}: no request went through in {seconds:g} s")
                client, server = (
                    (b - a) * 1e6 / seen.events for a, b in zip(before, after, strict=True)
                )
                blocks[name].append((client, server, seen.events / seconds))
    result: dict[str, Any] = {}
    for name, rows in blocks.items():
        result[name] = {
            "client_gw_cpu_us": statistics.median(r[0] for r in rows),
            "server_gw_cpu_us": statistics.median(r[1] for r in rows),
            "cpu_us": statistics.median(r[0] + r[1] for r in rows),
            "per_s": statistics.median(r[2] for r in rows),
            "blocks": len(rows),
        }
    return _add_ratios(result, "cpu_us")


def compare_large(
    trees: list[Path], *, kind: str = "websocket", rounds: int = 8, mib: int = 256
) -> dict[str, Any]:
    """Per tree: medians of MB/s and of the server gateway's CPU s per GiB of 64 KiB messages."""
    load = "hop-lp" if kind == "long-poll" else "hop-ws"
    with contextlib.ExitStack() as stack:
        anchor = stack.enter_context(running(python_child("suite_anchor_server.py")))
        targets: dict[str, tuple[Path, int, str]] = {}
        for name, tree in zip(_names(kind, trees), trees, strict=True):
            server = stack.enter_context(
                gateway("server", "--upstream", anchor.announced, tree=tree)
            )
            url = server.url
            if kind == "long-poll":
                url = stack.enter_context(refusing_path(url.removeprefix("http://")))
            targets[name] = (tree, server.pid, url)
        blocks: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        for turn in _rotations(list(targets), rounds):
            for name in turn:
                tree, pid, url = targets[name]
                before = cpu_seconds(pid)
                mb_s = _send_large(load, url, tree, mib)
                blocks[name].append((mb_s, (cpu_seconds(pid) - before) * 1024 / mib))
    result: dict[str, Any] = {}
    for name, rows in blocks.items():
        result[name] = {
            "mb_s": statistics.median(r[0] for r in rows),
            "server_gw_cpu_s_per_gib": statistics.median(r[1] for r in rows),
            "blocks": len(rows),
        }
    return _add_ratios(result, "mb_s")


def _send_large(load: str, url: str, tree: Path, mib: int) -> float:
    """MB/s of ``mib`` MiB of 64 KiB messages sent by ``suite_msgload.py`` of ``tree``."""
    scale = dataclasses.replace(SCALES["full"], size_bytes=mib << 20, figure_timeout=120)
    result = msgload(load, url, tree, scale, ["sizes"], [], sizes=(LARGE,))
    return float(result["sizes"]["mb_s"][str(LARGE)])


def _add_ratios(result: dict[str, Any], key: str) -> dict[str, Any]:
    """Each entry's ``key`` as ``x_first``, a ratio to the first entry's."""
    first = next(iter(result.values()))[key]
    for figures in result.values():
        figures["x_first"] = figures[key] / first if first else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gateway CPU per request of several source trees, measured in turn in one "
        "run so that they share the machine's drift.",
    )
    parser.add_argument(
        "--tree", action="append", type=Path, required=True,
        help="a source tree whose gateways run (repeat; the first is the baseline)",
    )  # fmt: skip
    parser.add_argument(
        "--row", choices=("requests", "large"), default="requests",
        help="requests: the legacy app's CPU per request (default); large: 64 KiB messages",
    )  # fmt: skip
    parser.add_argument("--kind", choices=KINDS, default="websocket", help="the hop's transport")
    parser.add_argument(
        "--mib", type=int, default=256, help="--row large: MiB sent per block (default 256)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="add the first tree's plain forwarding"
    )
    parser.add_argument(
        "--bare", action="store_true",
        help="add the bare WebSocket pair (bench/bare_tunnel.py: no session, no tunnel)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=8, help="blocks per path (default 8)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of a block")
    parser.add_argument("--clients", type=int, default=1, help="legacy clients (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1 or args.mib < 1:
        parser.error("--rounds, --clients and --mib must be at least 1, --seconds above 0")
    if args.row == "large" and (args.kind == "plain" or args.bare or args.plain):
        parser.error(
            "--row large runs over a hop: --kind websocket or long-poll, no --plain/--bare"
        )
    trees = [tree.resolve() for tree in args.tree]
    for tree in trees:
        if not (tree / "gateway" / "__main__.py").exists():
            parser.error(f"--tree {tree}: no gateway package there (a hopgate checkout?)")
    lines: Callable[[str, dict[str, Any]], str]
    if args.row == "large":
        result = compare_large(trees, kind=args.kind, rounds=args.rounds, mib=args.mib)
        title = f"64 KiB messages, {args.rounds} blocks of {args.mib} MiB per tree, medians"

        def lines(name: str, f: dict[str, Any]) -> str:
            return (
                f"{name:40s} {f['mb_s']:7.0f} MB/s  server gw "
                f"{f['server_gw_cpu_s_per_gib']:5.2f} s CPU per GiB  x{f['x_first']:.2f}"
            )
    else:
        result = asyncio.run(
            compare(
                trees, kind=args.kind, plain=args.plain, bare=args.bare, rounds=args.rounds,
                seconds=args.seconds, clients=args.clients,
            )
        )  # fmt: skip
        title = f"{args.clients} client(s), {args.rounds} blocks of {args.seconds:g} s, medians"

        def lines(name: str, f: dict[str, Any]) -> str:
            return (
                f"{name:40s} client gw {f['client_gw_cpu_us']:5.0f}  server gw "
                f"{f['server_gw_cpu_us']:5.0f}  both {f['cpu_us']:5.0f} us/request  "
                f"{f['per_s']:6.0f}/s  x{f['x_first']:.2f}"
            )

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(title)
    for name, figures in result.items():
        print(lines(name, figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
