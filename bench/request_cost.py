"""Per-request cost of a tunnelled request: rate, CPU and bytes, each beside its baseline.

Issue 13 items 4 and 5. Every process is real (origin, server gateway, client
gateway each a ``python`` of their own), so the CPU of a gateway is read from
``/proc/<pid>/stat`` and is not mixed with the load generator's:

    direct      client -> origin                                   (baseline)
    plain       client -> client gw -> server gw -> origin          (--upgrade never)
    websocket   the same, the hop upgraded to a WebSocket session

Figures, per path:

* requests/s with 1 client and with ``clients`` clients, and the ratio to direct;
* CPU (user + system) of each gateway per request, in microseconds;
* bytes on the link a request crosses per delivered event (request and answer,
  both directions; for a hop the link between the gateways), counted by a
  :class:`bench.relay.DelayRelay` with no delay, with realistic browser headers
  (a 400-byte cookie, a browser user agent, accept headers).

``root`` is the tree whose gateway runs (``/work/before`` for "before" figures).

    .venv/bin/python bench/request_cost.py [--root DIR] [--requests N] [--clients C]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay import DelayRelay  # noqa: E402

__all__ = ["BROWSER_HEADERS", "run"]

#: What a browser sends with every poll of a legacy long-poll app.
BROWSER_HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36"
    ),
    "Accept": "application/json, text/javascript, */*; q=0.01",
    "Accept-Language": "en-GB,en;q=0.9,de;q=0.8",
    "Accept-Encoding": "gzip, deflate, br",
    "Referer": "http://app.example/chat/room/42",
    "X-Requested-With": "XMLHttpRequest",
    "Cookie": "session=" + "a1b2c3d4e5f6" * 32 + "; theme=dark; lang=en-GB",
}

#: The origin: one JSON event per poll, the way a legacy chat answers.
_ORIGIN = """
import sys
from aiohttp import web
EVENT = b'{"events":[{"id":1,"room":42,"from":"ann","text":"hello there"}],"next":2}'
async def poll(request):
    await request.read()
    return web.Response(body=EVENT, content_type="application/json")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", poll)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _process(args: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _until_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as resp:
                    await resp.read()
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


async def _until_transport(gw_url: str, transport: str, timeout: float = 30.0) -> None:
    """Sends a poll through the gateway until its hop is on ``transport``.

    A hop comes up on its first request (the client gateway opens the session
    then), so waiting on the status alone never sees it.
    """
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                async with http.get(f"{gw_url}/poll?since=-1") as resp:
                    await resp.read()
                async with http.get(f"{gw_url}/.hopgate/status") as resp:
                    body = await resp.json()
                    if [u["transport"] for u in body.get("upstreams", [])] == [transport]:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the client gateway's hop did not come up on {transport}")


class Path_:
    """One running path: the URL the clients use, the gateways' pids, the counting relay."""

    def __init__(self, url: str, pids: dict[str, int], relay: DelayRelay | None) -> None:
        self.url, self.pids, self.relay = url, pids, relay


@contextlib.asynccontextmanager
async def _path(kind: str, origin: str, root: Path, counted: bool) -> AsyncIterator[Path_]:
    """``kind`` running; ``counted``: a zero-delay relay on the link a request crosses."""
    python = sys.executable
    if kind == "direct":
        if not counted:
            yield Path_(origin, {}, None)
            return
        async with DelayRelay(0, origin.removeprefix("http://"), rtt=0.0) as relay:
            yield Path_(relay.url, {}, relay)
        return
    gw = [python, "-m", "gateway"]
    quiet = ["--log-level", "warning", "--upgrade", "never" if kind == "plain" else "auto"]
    server_port, client_port = _free_port(), _free_port()
    server_args = [*gw, "server", "--listen", f"127.0.0.1:{server_port}", "--upstream", origin]
    with _process([*server_args, *quiet], root) as server:
        server_url = f"http://127.0.0.1:{server_port}"
        await _until_up(f"{server_url}/.hopgate/live")
        async with contextlib.AsyncExitStack() as stack:
            counter: DelayRelay | None = None
            upstream = server_url
            if counted:
                counter = DelayRelay(0, f"127.0.0.1:{server_port}", rtt=0.0)
                upstream = (await stack.enter_async_context(counter)).url
            client_args = [*gw, "client", "--listen", f"127.0.0.1:{client_port}"]
            with _process([*client_args, "--upstream", upstream, *quiet], root) as client:
                client_url = f"http://127.0.0.1:{client_port}"
                await _until_up(f"{client_url}/.hopgate/live")
                await _until_transport(client_url, "plain" if kind == "plain" else kind)
                yield Path_(client_url, {"client": client.pid, "server": server.pid}, counter)


async def _load(url: str, requests: int, clients: int, headers: dict[str, str]) -> float:
    """Seconds for ``requests`` polls, ``clients`` at a time, each client on its own connection."""
    left = iter(range(requests))

    async def client(http: aiohttp.ClientSession) -> None:
        for i in left:
            async with http.get(f"{url}/poll?since={i}", headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"poll answered {resp.status}")
                await resp.read()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        warm = iter(range(min(clients, 100) * 2))
        left, real = warm, left
        await asyncio.gather(*(client(http) for _ in range(clients)))
        left = real
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - start


async def _bytes_per_event(p: Path_, requests: int) -> int:
    """Bytes the relay carried per poll, after a warm-up (session up, connections open)."""
    assert p.relay is not None
    await _load(p.url, 50, 1, BROWSER_HEADERS)
    p.relay.reset_counts()
    await _load(p.url, requests, 1, BROWSER_HEADERS)
    await asyncio.sleep(0.3)  # acks and credit that follow the last answer
    return round(p.relay.bytes_total / requests)


async def _measure(p: Path_, requests: int, clients: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await _load(p.url, 50, 1, BROWSER_HEADERS)  # session up, connections warm
    for c in clients:
        cpu0 = {k: _cpu_seconds(pid) for k, pid in p.pids.items()}
        took = await _load(p.url, requests, c, BROWSER_HEADERS)
        out[f"rps_{c}"] = round(requests / took)
        for k, pid in p.pids.items():
            out[f"cpu_us_{k}_{c}"] = round((_cpu_seconds(pid) - cpu0[k]) / requests * 1e6, 1)
    return out


async def _run(root: Path, requests: int, clients: tuple[int, ...]) -> dict[str, Any]:
    port = _free_port()
    with _process([sys.executable, "-c", _ORIGIN, str(port)], root):
        origin = f"http://127.0.0.1:{port}"
        await _until_up(origin)
        results: dict[str, Any] = {}
        for kind in ("direct", "plain", "websocket"):
            async with _path(kind, origin, root, counted=True) as p:
                n = max(200, requests // 10)
                results[kind] = {"bytes_per_event": await _bytes_per_event(p, n)}
            async with _path(kind, origin, root, counted=False) as p:
                results[kind].update(await _measure(p, requests, clients))
    direct = results["direct"]
    for kind in ("plain", "websocket"):
        r = results[kind]
        for c in clients:
            r[f"x_direct_{c}"] = round(r[f"rps_{c}"] / direct[f"rps_{c}"], 3)
        r["bytes_x_direct"] = round(r["bytes_per_event"] / direct["bytes_per_event"], 3)
    return results


def run(
    *, root: Path | str = ROOT, requests: int = 3000, clients: tuple[int, ...] = (1, 100)
) -> dict[str, Any]:
    """The figures as a dict: {path: {rps_C, x_direct_C, cpu_us_<gw>_C, bytes_per_event, ...}}."""
    return asyncio.run(_run(Path(root), requests, clients))


def _table(results: dict[str, Any], clients: tuple[int, ...]) -> str:
    rows = [f"{'path':<10} " + " ".join(f"{f'{c} cl r/s':>11} {'x dir':>6}" for c in clients)]
    rows[0] += f" {'B/event':>8} {'x dir':>6}  CPU us/request (client gw, server gw)"
    for kind, r in results.items():
        cells = " ".join(
            f"{r[f'rps_{c}']:>11} {r.get(f'x_direct_{c}', 1.0):>6.2f}" for c in clients
        )
        cpu = "; ".join(
            f"{c} cl: {r[f'cpu_us_client_{c}']:.0f}, {r[f'cpu_us_server_{c}']:.0f}"
            for c in clients
            if f"cpu_us_client_{c}" in r
        )
        ratio = r.get("bytes_x_direct", 1.0)
        rows.append(f"{kind:<10} {cells} {r['bytes_per_event']:>8} {ratio:>6.2f}  {cpu}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="tree whose gateway runs")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the dict as JSON")
    args = parser.parse_args()
    clients = (1, args.clients)
    results = run(root=args.root, requests=args.requests, clients=clients)
    print(json.dumps(results, indent=1) if args.json else _table(results, clients))


if __name__ == "__main__":
    main()
