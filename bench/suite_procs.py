"""The processes of the benchmark suite: origins, gateways and the network path between them.

Every measured party is its own process (as a user comparing tools would
run them), started here on a free port, waited on, and stopped by the
``with`` that started it, even when the row fails:

* ``python_child(script, ...)``: one of the bench's own servers (the anchor
  server, the legacy origin, the network path) announcing ``listening on URL``;
* ``net_path(target, rtt, refuse_upgrades)``: the link between two parties
  as a child process: ``relay.DelayRelay`` (a round-trip time, byte counts)
  in front of ``tests.faultproxy.FaultProxy`` when upgrades must be refused
  (a path that carries no WebSocket: the hop falls back to long-poll, as
  ``bench/hop_requests.py`` and the tests force it); ``NetPath.counts()``
  asks it for its byte counts (SIGUSR1);
* ``hop_path(kind, origin_url, tree, rtt)``: the URL a legacy client uses:
  the origin itself (``direct``), two bare TCP relays in a row (``relays``,
  ``bench/bare_relay.py``: the floor of a two-process Python path), one
  ``hopgate server`` in front of it (``edges``: the HTTP edges, no hop), two
  aiohttp processes with a WebSocket between them and no session or tunnel
  (``bare-ws``, ``bench/bare_tunnel.py``), or
  ``hopgate client`` -> path -> ``hopgate server`` -> origin with the hop on
  ``websocket`` or ``long-poll``, the gateways run from ``tree``; waits until
  the hop is on that transport.

The path process runs this checkout's relay whatever ``tree`` is: it is the
network, not the thing measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.process import MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD  # noqa: E402
from tests.processes import (  # noqa: E402
    LISTENING,
    ChildProcess,
    GatewayProcess,
    free_port,
    start_gateway,
)
from tests.proxies import running_splitter  # noqa: E402

BENCH = ROOT / "bench"
#: Flags every gateway of the suite gets: quiet, and no per-address limits in the way.
GATEWAY_FLAGS = (
    "--max-sessions", "20000",
    "--max-sessions-per-client", "0",
    "--session-create-rate", "1e9",
)  # fmt: skip


#: The allocator settings a gateway gives itself (``gateway.process.tune_malloc``),
#: for every other process of the suite (anchor servers, the legacy origin, the
#: message clients, the suite itself as the legacy pollers): no column wins or
#: loses by them. glibc reads these at start; gateways of an older ``--tree``
#: run as that tree made them.
ALLOCATOR_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD),
    "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD),
}


def python_child(script: str, *args: str, tree: Path | None = None) -> ChildProcess:
    """``python bench/SCRIPT ARGS`` (with ``tree`` first on its path), once it listens."""
    env = {**ALLOCATOR_ENV, **({"PYTHONPATH": str(tree)} if tree is not None else {})}
    child = ChildProcess.start(
        [sys.executable, str(BENCH / script), *args],
        name=script,
        env=env,
        announce=LISTENING,
        keep_lines=2000,
    )
    child.wait_announced(30)
    return child


@contextlib.contextmanager
def running(child: ChildProcess) -> Iterator[ChildProcess]:
    try:
        yield child
    finally:
        child.stop(5)


@dataclass
class NetPath:
    """A running path process: ``url`` reaches its target."""

    child: ChildProcess
    url: str

    def counts(self) -> tuple[int, int]:
        """Bytes carried so far (up, down): asks the child and waits for its answer."""
        before = self.child.count("bytes up=")
        self.child.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while self.child.count("bytes up=") == before and time.monotonic() < deadline:
            time.sleep(0.01)
        for line in reversed(self.child.lines):
            if line.startswith("bytes up="):
                _, up, down = line.split()
                return int(up.split("=")[1]), int(down.split("=")[1])
        raise RuntimeError(f"the path process gave no byte counts:\n{self.child.output()}")

    def switch_delay(self) -> None:
        """Delay on if it was off, off if it was on (waits until the child says so)."""
        before = self.child.count("rtt now")
        self.child.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while self.child.count("rtt now") == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the path process did not switch:\n{self.child.output()}")
            time.sleep(0.01)


@contextlib.contextmanager
def net_path(
    target: str, rtt: float = 0.0, refuse_upgrades: bool = False, start_fast: bool = False
) -> Iterator[NetPath]:
    args = ["--target", target, "--rtt-ms", str(rtt * 1000)]
    if refuse_upgrades:
        args.append("--refuse-upgrades")
    if start_fast:
        args.append("--start-fast")
    with running(python_child("suite_net.py", *args)) as child:
        yield NetPath(child, child.announced)


@contextlib.contextmanager
def refusing_path(target: str) -> Iterator[str]:
    """The URL of HAProxy relaying to ``target`` (``host:port``) and refusing WebSocket upgrades."""
    port = int(target.rsplit(":", 1)[1])
    with running_splitter(port, port, to_second=False, long_poll=True) as proxy:
        yield proxy.url


def upstream_transport(client_url: str) -> str:
    with urllib.request.urlopen(client_url + "/.hopgate/status", timeout=5) as resp:
        doc = json.loads(resp.read())
    return str(doc["upstreams"][0]["transport"]) if doc.get("upstreams") else "none"


def wait_for_hop(client_url: str, transport: str, timeout: float = 30.0) -> None:
    """Sends ``GET /`` through the client gateway until its hop is on ``transport``."""
    deadline = time.monotonic() + timeout
    seen = "none"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(client_url + "/poll?since=-1", timeout=5).read()
        seen = upstream_transport(client_url)
        if seen == transport:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the hop stayed on {seen!r}, not {transport!r}, for {timeout:.0f} s")


@dataclass
class Route:
    """What a legacy client talks to, and what to measure on the way."""

    url: str
    net: NetPath | None
    #: The processes standing where the gateways are: their CPU and RSS are the path's cost.
    gateways: tuple[ChildProcess, ...] = ()


@contextlib.contextmanager
def hop_path(
    kind: str,
    origin_url: str,
    tree: Path,
    rtt: float = 0.0,
    count: bool = False,
    start_fast: bool = False,
    flags: tuple[str, ...] = (),
) -> Iterator[Route]:
    """``kind``: direct, relays (two ``bare_relay.py``: the floor), edges (one ``hopgate
    server`` and no hop: its HTTP edges alone), bare-ws (``bare_tunnel.py`` near and far),
    plain (``--upgrade never``), websocket or long-poll.

    ``count`` (or an ``rtt``) puts a path process on the link; ``start_fast``:
    its delay is off until ``route.net.switch_delay()``. ``flags`` go to both gateways.
    """
    origin = origin_url.removeprefix("http://")
    with contextlib.ExitStack() as stack:
        if kind == "direct":
            if not (rtt or count):
                yield Route(origin_url, None)
                return
            net = stack.enter_context(net_path(origin, rtt, start_fast=start_fast))
            yield Route(net.url, net)
            return
        if kind == "relays":
            near = stack.enter_context(running(python_child("bare_relay.py", "--target", origin)))
            first = near.announced.removeprefix("http://")
            far = stack.enter_context(running(python_child("bare_relay.py", "--target", first)))
            yield Route(far.announced, None)
            return
        if kind == "bare-ws":
            far = stack.enter_context(
                running(python_child("bare_tunnel.py", "far", "--upstream", origin_url))
            )
            ws = far.announced.replace("http://", "ws://", 1) + "/ws"
            near = stack.enter_context(
                running(python_child("bare_tunnel.py", "near", "--target", ws))
            )
            yield Route(near.announced, None, (near, far))
            return
        server = stack.enter_context(
            gateway("server", "--upstream", origin_url, *GATEWAY_FLAGS, *flags, tree=tree)
        )
        if kind == "edges":
            yield Route(server.url, None, (server,))
            return
        net = None
        upstream = server.url
        hop = server.url.removeprefix("http://")
        if rtt or count:
            refuse = kind == "long-poll"
            net = stack.enter_context(net_path(hop, rtt, refuse, start_fast=start_fast))
            upstream = net.url
        elif kind == "long-poll":
            upstream = stack.enter_context(refusing_path(hop))
        never = ("--upgrade", "never") if kind == "plain" else ()
        client = stack.enter_context(
            gateway("client", "--upstream", upstream, *never, *flags, tree=tree)
        )
        wait_for_hop(client.url, kind)
        yield Route(client.url, net, (client, server))


#: Set by ``python -m bench --profile``: gateways then run under cProfile, writing here.
PROFILE_DIR: Path | None = None


@contextlib.contextmanager
def gateway(role: str, *args: str, tree: Path) -> Iterator[GatewayProcess]:
    """A ``hopgate ROLE`` process of ``tree`` for the body of the ``with``."""
    if PROFILE_DIR is None:
        gw = start_gateway(role, *args, log_level="warning", tree=tree, keep_lines=500)
    else:
        gw = _profiled(role, args, tree, PROFILE_DIR)
    try:
        yield gw
    finally:
        if PROFILE_DIR is not None and gw.alive():
            gw.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not gw.count("profile written") and time.monotonic() < deadline:
                time.sleep(0.05)
        gw.stop(5)


def _profiled(role: str, args: tuple[str, ...], tree: Path, out: Path) -> GatewayProcess:
    """``start_gateway`` through ``bench/suite_profiled.py`` (cProfile, stats on SIGUSR2)."""
    port = free_port()
    stats = out / f"{role}-{port}.prof"
    argv = [sys.executable, str(BENCH / "suite_profiled.py"), str(stats), role]
    argv += ["--listen", f"127.0.0.1:{port}", "--log-level", "warning", *args]
    gw = GatewayProcess.start(
        argv, name=f"hopgate {role} (profiled)", env={"PYTHONPATH": str(tree)}, cwd=tree,
        keep_lines=500,
    )  # fmt: skip
    gw.wait_accepting(port, 30)
    gw.url = f"http://127.0.0.1:{port}"
    return gw


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
