"""The laboratory of ``bench/attacks.py``: origin process, gateways of a source tree, rows.

* ``Lab`` starts the origin (this file run as a script: two recording sites,
  ``main`` and ``evil``, in their own process) and gateways of the tree under
  test through ``tests.processes.start_gateway``, and stops them;
* ``Ctx`` is what every attack gets (the lab, the scale, the RSS cap, one
  HTTP client), ``Row`` what it returns;
* small measuring helpers (RSS, descriptors, connections to the origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hostile import peer as hp  # noqa: E402
from tests.hostile.origin import Origin  # noqa: E402
from tests.processes import ChildProcess, GatewayProcess, start_gateway  # noqa: E402

#: What the origin process prints once both its sites listen.
ORIGIN_PORTS = re.compile(r"origin listening on ports (\d+,\d+)")
MiB = 1024 * 1024


# ------------------------------------------------------------------ the origin


async def serve_origin() -> None:
    """Two sites: ``main`` (the upstream) and ``evil`` (a host no gateway may reach).

    Both are ``tests.hostile.origin.Origin`` recording into one list, so
    ``GET /__seen`` on either lists (and clears) what both got.
    Prints ``ORIGIN_PORTS`` once both listen, then serves until killed.
    """
    seen: list[dict[str, Any]] = []
    ports = []
    for site in ("main", "evil"):
        app = Origin(site, seen=seen, stream_chunks=16384).app()  # 1 GiB per stream
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        ports.append(runner.addresses[0][1])
    # "another host" on the default port, for targets that turn into host:80
    with contextlib.suppress(OSError):
        runner = web.AppRunner(Origin("evil:80", seen=seen).app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 80).start()
    print(f"origin listening on ports {ports[0]},{ports[1]}", flush=True)
    await asyncio.Event().wait()


def origin_main() -> None:
    """The real origin, run in its own process (this file as a script)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve_origin())


# --------------------------------------------------------------- processes


def rss_mib(gw: GatewayProcess) -> float:
    """Resident set size of the gateway, in MiB; 0 once it is gone."""
    with contextlib.suppress(OSError, LookupError):
        return gw.rss_kib() / 1024
    return 0.0


def open_fds(gw: GatewayProcess) -> int:
    try:
        return len(os.listdir(f"/proc/{gw.pid}/fd"))
    except OSError:
        return 0


def established_to(port: int) -> int:
    """TCP connections in ESTABLISHED whose local port is ``port`` (the origin's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


class Lab:
    """Starts origins and gateways from one source tree; stops what it started."""

    def __init__(self, tree: Path, python: str) -> None:
        self.tree = tree
        self.python = python
        self.procs: list[GatewayProcess] = []
        self.origin: ChildProcess | None = None
        self.origin_port = 0
        self.origin_url = ""
        self.evil_url = ""
        self.evil_port = 0

    def start_origin(self) -> None:
        self.origin = ChildProcess.start(
            [sys.executable, str(Path(__file__).resolve())],
            name="attack origin",
            env={"PYTHONPATH": str(REPO)},
            announce=ORIGIN_PORTS,
            keep_lines=2000,
        )
        main, evil = map(int, self.origin.wait_announced().split(","))
        self.origin_port = main
        self.origin_url = f"http://127.0.0.1:{main}"
        self.evil_port = evil
        self.evil_url = f"http://127.0.0.1:{evil}"

    def gateway(self, role: str, *args: str, **options: Any) -> GatewayProcess:
        """A gateway of the tree under test (``start_gateway`` options: nofile, listen)."""
        gw = start_gateway(
            role, *args, tree=self.tree, python=self.python, keep_lines=20000, **options
        )
        self.procs.append(gw)
        return gw

    def sidecar(self, *args: str, **kw: Any) -> GatewayProcess:
        return self.gateway("server", "--upstream", self.origin_url, *args, **kw)

    def stop_gateways(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def stop(self) -> None:
        self.stop_gateways()
        if self.origin is not None:
            self.origin.stop()

    async def seen(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """What both origin sites received since the last call."""
        async with http.get(self.origin_url + "/__seen") as resp:
            entries = (await resp.json())["seen"]
        return [e for e in entries if e["path"] != "/__seen"]


# ------------------------------------------------------------------ helpers


@dataclass
class Row:
    key: str
    attack: str
    figure: str
    numbers: dict[str, Any] = field(default_factory=dict)
    kind: str = "broke"  # "broke" (issue item) or "held" (must keep holding)


class Ctx:
    def __init__(self, lab: Lab, scale: dict[str, Any], rss_cap_mib: float) -> None:
        self.lab = lab
        self.s = scale
        self.rss_cap = rss_cap_mib
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        )

    async def close(self) -> None:
        await self.http.close()


def mib(x: float) -> str:
    return f"{x:,.0f}"


async def get_status(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, bytes]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.read()


async def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    return await hp.async_raw_exchange("127.0.0.1", port, request, timeout=timeout)


async def watch_rss(gw: GatewayProcess, cap: float, stop: asyncio.Event) -> float:
    """Peak RSS (MiB) sampled every 0.1 s until ``stop``; sets ``stop`` past ``cap``."""
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, rss_mib(gw))
        if peak > cap or not gw.alive():
            stop.set()
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return peak


if __name__ == "__main__":
    origin_main()
