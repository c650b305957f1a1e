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
from tests.processes import ChildProcess, GatewayProcess, start_gateway  # noqa: E402

#: What the origin process prints once both its sites listen.
ORIGIN_PORTS = re.compile(r"origin listening on ports (\d+,\d+)")
MiB = 1024 * 1024


# ------------------------------------------------------------------ the origin


@dataclass
class OriginSite:
    """One site of the origin process; every site records into the same ``seen`` list."""

    site: str
    seen: list[dict[str, Any]]
    #: Requests ``/hold`` keeps open right now, over every site.
    held: list[int]

    def record(self, request: web.Request, body_len: int | None) -> dict[str, Any]:
        head_len = (
            len(request.method) + 1 + len(request.raw_path) + 11
            + sum(len(k) + len(v) + 4 for k, v in request.raw_headers) + 2
        )  # fmt: skip
        entry = {
            "site": self.site,
            "method": request.method,
            "path": request.raw_path,
            "host": request.headers.get("Host"),
            "xff": request.headers.get("X-Forwarded-For"),
            "via": request.headers.get("Via"),
            "cl": request.headers.get("Content-Length"),
            "te": request.headers.get("Transfer-Encoding"),
            "body": body_len,
            "head_len": head_len,
        }
        self.seen.append(entry)
        return entry

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_get("/__seen", self.seen_route)
        app.router.add_get("/ws", self.ws_route)
        app.router.add_get("/stream", self.stream_route)
        app.router.add_get("/hold", self.hold_route)
        app.router.add_route("*", "/{tail:.*}", self.any_route)
        return app

    async def seen_route(self, request: web.Request) -> web.Response:
        """Every request recorded so far (cleared unless ``?clear=0``)."""
        out = list(self.seen)
        if request.query.get("clear", "1") == "1":
            self.seen.clear()
        return web.json_response({"seen": out, "connections": self.held[0]})

    async def ws_route(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                await ws.send_str(f"got {len(msg.data)}")
        return ws

    async def stream_route(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"s" * 65536
        for _ in range(16384):  # at most 1 GiB per stream
            await resp.write(chunk)
        return resp

    async def hold_route(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        self.held[0] += 1
        try:
            await asyncio.sleep(float(request.query.get("s", "300")))
        finally:
            self.held[0] -= 1
        return web.Response(text="held")

    async def any_route(self, request: web.Request) -> web.StreamResponse:
        # GETs leave their body unread, as many origins do: whatever
        # follows on the connection is then parsed as the next request.
        body = await request.read() if request.method in ("POST", "PUT") else None
        return web.json_response(self.record(request, None if body is None else len(body)))


async def serve_origin() -> None:
    """Two sites: ``main`` (the upstream) and ``evil`` (a host no gateway may reach).

    Every request is recorded; ``GET /__seen`` lists and clears them.
    Prints ``ORIGIN_PORTS`` once both listen, then serves until killed.
    """
    seen: list[dict[str, Any]] = []
    held = [0]
    ports = []
    for site in ("main", "evil"):
        app = OriginSite(site, seen, held).app()
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        ports.append(runner.addresses[0][1])
    # "another host" on the default port, for targets that turn into host:80
    with contextlib.suppress(OSError):
        runner = web.AppRunner(OriginSite("evil:80", seen, held).app(), access_log=None)
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
