"""The network path of a benchmark row, as its own process.

``DelayRelay`` (``--rtt-ms``, byte counts) listening on a free port, relaying
to ``--target``; with ``--refuse-upgrades`` a ``FaultProxy`` that answers
WebSocket upgrades with 400 sits behind it (a path without WebSocket, so a
hop falls back to long-poll). SIGUSR1 prints ``bytes up=N down=M`` (what the
relay carried so far); SIGUSR2 switches the delay between ``--rtt-ms`` and
none (``--start-fast``: none first) and prints ``rtt now X ms``; SIGTERM stops it.

Usage:  python bench/suite_net.py --target 127.0.0.1:8080 [--rtt-ms 50] [--refuse-upgrades]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay import DelayRelay  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402


async def serve(target: str, rtt: float, refuse: bool, fast: bool) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if refuse:
            host, _, port = target.rpartition(":")
            proxy = await stack.enter_async_context(FaultProxy(host, int(port)))
            proxy.refuse_upgrades = True
            target = f"127.0.0.1:{proxy.port}"
        relay = await stack.enter_async_context(DelayRelay(0, target, 0.0 if fast else rtt))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def counts() -> None:
            print(f"bytes up={relay.bytes_up} down={relay.bytes_down}", flush=True)

        def switch() -> None:
            relay.rtt = rtt if relay.rtt == 0 else 0.0
            print(f"rtt now {relay.rtt * 1000:.1f} ms", flush=True)

        loop.add_signal_handler(signal.SIGUSR1, counts)
        loop.add_signal_handler(signal.SIGUSR2, switch)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print(f"listening on {relay.url}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--refuse-upgrades", action="store_true")
    parser.add_argument("--start-fast", action="store_true", help="no delay until SIGUSR2")
    args = parser.parse_args()
    asyncio.run(serve(args.target, args.rtt_ms / 1000, args.refuse_upgrades, args.start_fast))


if __name__ == "__main__":
    main()
