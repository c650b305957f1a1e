"""The attack table of issue 7: every attack against real gateway processes.

Each attack starts its own sidecar (``python -m gateway server``) from the
source tree given with ``--tree`` (default: the repository this script lives
in), in front of a real aiohttp origin running in another process, then
attacks it as a hostile peer (``tests/hostile/peer.py``) or a raw socket
would, and prints one row with the figure the issue quotes. Every attack is
bounded in time and in memory (``--rss-cap``): past a cap it is cut off and
the row says "> cap". Processes are stopped after each attack.

The attacks live in ``attacks_resources.py`` (items 2-4),
``attacks_confusion.py`` (items 1, 5-7) and ``attacks_held.py`` (what must
keep holding); the origin process, the gateways and the rows in
``attack_lab.py``.

Usage:
    .venv/bin/python bench/attacks.py --scale small            # about a minute or two
    .venv/bin/python bench/attacks.py --scale full --tree /tmp/before   # the issue's figures
    .venv/bin/python bench/attacks.py --only smuggle,slowloris --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attack_lab import Ctx, Lab, Row  # noqa: E402
from attacks_confusion import (  # noqa: E402
    attack_bad_numbers,
    attack_host_confusion,
    attack_replay,
    attack_smuggle,
    attack_status_confusion,
    attack_status_details,
)
from attacks_held import (  # noqa: E402
    held_edge_smuggling,
    held_ids,
    held_malformed,
    held_open_variants,
    held_opens,
    held_oversize,
)
from attacks_resources import (  # noqa: E402
    attack_fd_lockout,
    attack_fill_sessions,
    attack_held_polls,
    attack_idle_sessions,
    attack_slowloris,
    attack_stalled_posts,
    attack_unread,
    attack_ws_reassembly,
)

MiB = 1024 * 1024

SCALES: dict[str, dict[str, Any]] = {
    "small": {
        "ws_streams": 16,
        "ws_message": 4 * MiB,
        "unread_sessions": 1,
        "unread_streams": 64,
        "unread_seconds": 5.0,
        "posts": 8,
        "post_bytes": 8 * MiB,
        "slowloris": 20,
        "slowloris_seconds": 13.0,
        "poll_sessions": 4,
        "poll_streams": 200,
        "idle_sessions": (300, 1000),
        "idle_grace": (5, 5),
        "opens": 1000,
        "time_cap": 30.0,
    },
    "full": {
        "ws_streams": 256,
        "ws_message": 15 * MiB,
        "unread_sessions": 4,
        "unread_streams": 256,
        "unread_seconds": 20.0,
        "posts": 30,
        "post_bytes": 8 * MiB,
        "slowloris": 200,
        "slowloris_seconds": 110.0,
        "poll_sessions": 85,
        "poll_streams": 256,
        "idle_sessions": (2000, 20000),
        "idle_grace": (20, 150),
        "opens": 5000,
        "time_cap": 150.0,
    },
}


ATTACKS: dict[str, Callable[[Ctx], Awaitable[Row]]] = {
    "smuggle": attack_smuggle,
    "ws_reassembly": attack_ws_reassembly,
    "unread": attack_unread,
    "stalled_posts": attack_stalled_posts,
    "slowloris": attack_slowloris,
    "held_polls": attack_held_polls,
    "fd_lockout": attack_fd_lockout,
    "idle_sessions": attack_idle_sessions,
    "fill_sessions": attack_fill_sessions,
    "host_confusion": attack_host_confusion,
    "status_confusion": attack_status_confusion,
    "bad_numbers": attack_bad_numbers,
    "replay": attack_replay,
    "status_details": attack_status_details,
    "held_ids": held_ids,
    "held_malformed": held_malformed,
    "held_opens": held_opens,
    "held_oversize": held_oversize,
    "held_edge_smuggling": held_edge_smuggling,
    "held_open_variants": held_open_variants,
}


async def run(args: argparse.Namespace) -> list[Row]:
    lab = Lab(Path(args.tree).resolve(), args.python)
    lab.start_origin()
    ctx = Ctx(lab, SCALES[args.scale], args.rss_cap)
    rows = []
    names = args.only.split(",") if args.only else list(ATTACKS)
    try:
        for name in names:
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(args.attack_timeout):
                    row = await ATTACKS[name](ctx)
            except Exception as exc:  # a broken attack is a row too, never a stopped table
                row = Row(name, name, f"attack failed: {type(exc).__name__}: {exc}"[:300])
            finally:
                died = [p for p in lab.procs if not p.alive() and not p.stopped]
                lab.stop_gateways()
            if died:
                row.figure += f" [gateway process died: exit {died[0].proc.returncode}]"
            row.numbers["wall_s"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            if not args.json:
                print(f"{row.key:<20} {row.figure}", flush=True)
    finally:
        await ctx.close()
        lab.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(REPO), help="source tree of the gateway under test")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the gateways")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--only", default="", help="comma-separated attack keys")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of rows")
    parser.add_argument("--json-file", help="also write the JSON document to this file")
    parser.add_argument("--rss-cap", type=float, default=6000.0, help="MiB; cut an attack off")
    parser.add_argument("--attack-timeout", type=float, default=900.0, help="seconds per attack")
    args = parser.parse_args()
    if not args.json:
        print(
            f"# hopgate attack table: tree {args.tree} "
            f"(commit {git_head(Path(args.tree))}), scale {args.scale}",
            flush=True,
        )
    started = time.monotonic()
    rows = asyncio.run(run(args))
    document = json.dumps(
        {
            "tree": args.tree,
            "commit": git_head(Path(args.tree)),
            "scale": args.scale,
            "rows": [row.__dict__ for row in rows],
        },
        indent=2,
        default=str,
    )
    if args.json_file:
        Path(args.json_file).write_text(document + "\n")
    if args.json:
        print(document)
    else:
        print(f"# {len(rows)} attacks in {time.monotonic() - started:.0f} s", flush=True)


def git_head(tree: Path) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "?"


if __name__ == "__main__":
    main()
