"""``python -m bench`` (``make bench``): issue 13's tables beside their anchors, in one run.

Runs every row (``bench/suite_rows.py``): the message table (raw aiohttp,
python-engineio WebSocket and polling, hop sessions over WebSocket and
long-poll, the 50 ms RTT row), the legacy long-poll app direct and through
both hops, idle memory, and ``bench/poll_ahead.py``'s section when it has a
``run()``. Then rewrites ``docs/benchmarks.md`` and its plots
(``docs/benchmarks/*.png``).

    python -m bench                   # full sizes, under 15 minutes on 2 cores
    python -m bench --quick           # smaller sizes, ~2 minutes: a smoke run
    python -m bench --tree /work/before --out /tmp/before   # another checkout's gateways
    python -m bench --json run.json   # every figure (and latency samples) as JSON
    python -m bench --profile legacy-websocket   # one row, gateways under cProfile
    python -m bench --render run.json  # rewrite the page from a saved run

Every party runs in its own process, started on free ports and stopped by
the suite; every row has a timeout; a row that fails prints ``failed: <why>``
and the suite goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import io
import json
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import suite_plots, suite_procs, suite_report  # noqa: E402
from bench.legacy_app import run_clients  # noqa: E402
from bench.suite_procs import hop_path, python_child, running  # noqa: E402
from bench.suite_rows import SCALES, Scale, figure, legacy, memory, messages, msgload  # noqa: E402
from gateway.process import tune_malloc  # noqa: E402

SECTIONS = ("messages", "legacy", "memory", "poll_ahead")
#: ``--profile`` rows: a short run of one legacy path (fast clients) with gateways under cProfile.
PROFILE_ROWS = (
    "messages-hop-ws",
    "messages-hop-lp",
    "legacy-websocket",
    "legacy-long-poll",
    "legacy-plain",
    "legacy-websocket-100",
    "legacy-long-poll-100",
)


def environment(tree: Path) -> dict[str, str]:
    from importlib.metadata import version

    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no", "gateway"):
        commit += " + uncommitted changes in gateway/"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "engineio": version("python-engineio"),
        "load": "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()),
        "tree": str(tree),
        "commit": commit,
    }


async def poll_ahead(tree: Path, scale_name: str) -> Any:
    """``bench/poll_ahead.py``'s ``run()`` (issue 14): a dict, shown in its own section.

    ``run`` may take ``tree``, ``quick`` and ``scale``; a ``markdown`` key is
    put on the page as is, ``samples_ms`` (label -> latencies) joins the CDF.
    """
    module = importlib.import_module("bench.poll_ahead")
    run = getattr(module, "run", None)
    if run is None:
        return {"failed": "bench/poll_ahead.py has no run() yet"}
    offered = {"tree": tree, "quick": scale_name != "full", "scale": scale_name}
    params = inspect.signature(run).parameters
    kwargs = {k: v for k, v in offered.items() if k in params}
    if inspect.iscoroutinefunction(run):
        result = await run(**kwargs)
    else:  # it may call asyncio.run itself: give it a thread of its own
        result = await asyncio.to_thread(run, **kwargs)
    if result is None:
        return {"failed": "bench/poll_ahead.py run() returned nothing"}
    return result if isinstance(result, dict) else {"result": result}


async def run_suite(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    tree = args.tree
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    res: dict[str, Any] = {"scale_name": args.scale, "scale": asdict(scale)}
    res["environment"] = environment(tree)
    res["started"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    started = time.monotonic()
    if "messages" in only:
        print("messages", flush=True)
        res["messages"] = await messages(tree, scale)
    if "legacy" in only:
        print("legacy app", flush=True)
        res["legacy"] = await legacy(tree, scale)
    if "memory" in only:
        print("memory", flush=True)
        res["memory"] = await memory(tree, scale)
    if "poll_ahead" in only and (ROOT / "bench" / "poll_ahead.py").exists():
        print("poll-ahead", flush=True)
        res["poll_ahead"] = await figure("poll-ahead", lambda: poll_ahead(tree, args.scale), 300)
    res["took_s"] = time.monotonic() - started
    res["environment"]["load_end"] = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return res


async def profile_row(args: argparse.Namespace, scale: Scale) -> list[str]:
    """One row with its gateways under cProfile; the top functions of each."""
    with tempfile.TemporaryDirectory() as out:
        suite_procs.PROFILE_DIR = Path(out)
        try:
            if args.profile.startswith("messages-"):
                said = await _profiled_messages(args, scale)
            else:
                said = await _profiled_legacy(args, scale)
        finally:
            suite_procs.PROFILE_DIR = None
        lines = [f"{args.profile}: {said}"]
        for path in sorted(Path(out).glob("*.prof")):
            buf = io.StringIO()
            stats = pstats.Stats(str(path), stream=buf)
            stats.sort_stats(args.sort).print_stats(args.top)
            body = [ln.replace(str(args.tree) + "/", "") for ln in buf.getvalue().splitlines()]
            body = [ln for ln in body if ln.strip()]
            start = next((i for i, ln in enumerate(body) if "ncalls" in ln), 0)
            lines += [f"--- {path.stem.split('-')[0]} gateway (by {args.sort})", *body[start:]]
    return lines


async def _profiled_legacy(args: argparse.Namespace, scale: Scale) -> str:
    kind = args.profile.removeprefix("legacy-").removesuffix("-100")
    clients = scale.many if args.profile.endswith("-100") else 1
    with (
        running(python_child("legacy_app.py", "origin")) as origin,
        hop_path(kind, origin.announced, args.tree) as route,
    ):
        seen = await run_clients(route.url, clients, max(scale.duration, 3))
    return f"{seen.events} events, {seen.errors} errors, {clients} client(s)"


async def _profiled_messages(args: argparse.Namespace, scale: Scale) -> str:
    kind = args.profile.removeprefix("messages-")
    figures = ["turns", "burst", "sizes"]
    with (
        running(python_child("suite_anchor_server.py")) as anchor,
        suite_procs.gateway("server", "--upstream", anchor.announced, tree=args.tree) as server,
        suite_procs.refusing_path(server.url.removeprefix("http://")) as refusing,
    ):
        url = refusing if kind == "hop-lp" else server.url
        got = await asyncio.to_thread(msgload, kind, url, args.tree, scale, figures, [server.pid])
    return json.dumps(got)[:400]


def write_outputs(res: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.no_write:
        return
    out = Path(args.out)
    plots: list[str] = []
    try:
        plots = suite_plots.write_plots(res, out / "benchmarks")
    except ImportError:
        print("no plots: matplotlib is missing (pip install -e '.[bench]')")
    page = out / "benchmarks.md"
    page.write_text(suite_report.render(res, plots))
    print(f"wrote {page}" + (f" and {len(plots)} plots in {out / 'benchmarks'}" if plots else ""))


def _stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``with`` stops the processes it started."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_const", dest="scale", const="quick", help="~2 minute smoke run"
    )
    parser.add_argument("--scale", choices=tuple(SCALES), default="full")
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="run the gateways of this source tree"
    )
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument(
        "--out", default=str(ROOT / "docs"), help="where benchmarks.md and benchmarks/ go"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--profile", choices=PROFILE_ROWS, help="run one row under cProfile")
    parser.add_argument("--render", help="no run: rewrite the page from this --json file")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    parser.add_argument("--sort", default="tottime", help="pstats order (tottime, cumulative)")
    parser.set_defaults(scale="full")
    args = parser.parse_args()
    args.tree = args.tree.resolve()
    scale = SCALES[args.scale]
    tune_malloc()  # the legacy pollers run here: as every process but the gateways (ALLOCATOR_ENV)
    if args.profile:
        print("\n".join(asyncio.run(profile_row(args, scale))))
        return
    if args.render:
        res = json.loads(Path(args.render).read_text())
        args.json = None
    else:
        res = asyncio.run(run_suite(args, scale))
    print(f"took {res['took_s']:.0f} s")
    for item, text, measured, met in suite_report.targets(res):
        mark = "" if met is None else (" met" if met else " MISSED")
        print(f"  [{item}] {text}: {measured}{mark}")
    write_outputs(res, args)


if __name__ == "__main__":
    main()
