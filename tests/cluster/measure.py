"""Print the cluster scenarios' figures, for this tree or another (the "before" ones).

    .venv/bin/python -m tests.cluster.measure longpoll|rolling|kill|kill-direct
        [--tree /work/before --plain]

``--tree`` runs the gateways of another source tree; ``--plain`` starts the
instances without ``--cluster-secret-file``/``--advertise`` (a tree from
before clusters has neither flag). HAProxy runs this tree's recipe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from tests.cluster import scenarios
from tests.cluster.harness import AFFINITY, FORCE_LONG_POLL, NO_OWNER_ROUTING


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.measure")
    parser.add_argument(
        "scenario", choices=["longpoll", "rolling", "kill", "kill-direct", "throughput"]
    )
    parser.add_argument("--tree", type=Path)
    parser.add_argument("--plain", action="store_true", help="no cluster flags")
    parser.add_argument(
        "--affinity", action="store_true", help="HAProxy balances by source address"
    )
    parser.add_argument("--count", type=int, default=0, help="messages (default per scenario)")
    args = parser.parse_args()
    options = {"tree": args.tree, "clustered": not args.plain}
    if args.count:
        options["count"] = args.count
    changes = AFFINITY if args.affinity else ()
    if args.scenario == "throughput":
        result = {}
        for hop, forced in (("websocket", ()), ("long-poll", FORCE_LONG_POLL)):
            for routing, extra in (("owner-routing", ()), ("round-robin", NO_OWNER_ROUTING)):
                got = asyncio.run(scenarios.throughput(changes=(*forced, *extra)))
                result[f"{hop} {routing}"] = got
    elif args.scenario == "longpoll":
        options.pop("count", None)
        result = asyncio.run(scenarios.longpoll(**options))
    elif args.scenario == "rolling":
        result = asyncio.run(scenarios.rolling(**options, changes=changes))
    else:
        direct = args.scenario == "kill-direct"
        result = asyncio.run(scenarios.kill(**options, direct=direct, changes=changes))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
