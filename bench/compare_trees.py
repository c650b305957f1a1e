"""Gateway CPU per request of several source trees, interleaved in one run.

A change that saves 5% of a request's CPU is invisible in two runs of
``request_cost.py`` made minutes apart: this machine's speed drifts more than
that between them. Here every tree's path (client gateway -> hop -> server
gateway, in front of one shared ``legacy_app.py`` origin) is up at once, and
the legacy client drives each in turn for a short block, the order rotating
every round, so all trees share the drift; the medians of the blocks are
compared. ``--plain`` adds the first tree's plain forwarding (``--upgrade
never``) as the issue's baseline.

    .venv/bin/python bench/compare_trees.py --tree /tmp/before --tree . [--plain]

Each line: CPU per request of the client gateway and of the server gateway
(``/proc``, user + system), both together, requests per second, and the
ratio of "both" to the first tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.legacy_app import run_clients  # noqa: E402
from bench.suite_procs import cpu_seconds, hop_path, python_child, running  # noqa: E402

__all__ = ["compare", "main"]

KINDS = ("websocket", "long-poll", "plain")


async def compare(
    trees: list[Path],
    *,
    kind: str = "websocket",
    plain: bool = False,
    rounds: int = 8,
    seconds: float = 1.5,
    clients: int = 1,
) -> dict[str, Any]:
    """Per path (``KIND TREE``): medians of CPU us per request and of requests/s."""
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(running(python_child("legacy_app.py", "origin")))
        paths = {}
        for number, tree in enumerate(trees, 1):
            name = f"{kind} {tree}"
            if name in paths:  # a tree given twice: an A/A run shows the noise
                name = f"{name} #{number}"
            paths[name] = stack.enter_context(hop_path(kind, origin.announced, tree))
        if plain and kind != "plain":
            paths[f"plain {trees[0]}"] = stack.enter_context(
                hop_path("plain", origin.announced, trees[0])
            )
        for route in paths.values():  # warm: connections, the hop, the origin's caches
            await run_clients(route.url, clients, min(seconds, 0.7))
        blocks: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
        order = list(paths)
        for turn in range(rounds):
            shift = turn % len(order)
            for name in order[shift:] + order[:shift]:
                route = paths[name]
                pids = [gateway.pid for gateway in route.gateways]
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
    first = result[order[0]]["cpu_us"]
    for figures in result.values():
        figures["x_first"] = figures["cpu_us"] / first if first else None
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
    parser.add_argument("--kind", choices=KINDS, default="websocket", help="the hop's transport")
    parser.add_argument(
        "--plain", action="store_true", help="add the first tree's plain forwarding"
    )
    parser.add_argument("--rounds", type=int, default=8, help="blocks per path (default 8)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of a block")
    parser.add_argument("--clients", type=int, default=1, help="legacy clients (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1:
        parser.error("--rounds and --clients must be at least 1, --seconds above 0")
    trees = [tree.resolve() for tree in args.tree]
    for tree in trees:
        if not (tree / "gateway" / "__main__.py").exists():
            parser.error(f"--tree {tree}: no gateway package there (a hopgate checkout?)")
    result = asyncio.run(
        compare(
            trees, kind=args.kind, plain=args.plain, rounds=args.rounds,
            seconds=args.seconds, clients=args.clients,
        )
    )  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.clients} client(s), {args.rounds} blocks of {args.seconds:g} s per path, medians")
    for name, f in result.items():
        print(
            f"{name:40s} client gw {f['client_gw_cpu_us']:5.0f}  server gw "
            f"{f['server_gw_cpu_us']:5.0f}  both {f['cpu_us']:5.0f} us/request  "
            f"{f['per_s']:6.0f}/s  x{f['x_first']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
