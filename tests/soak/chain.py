"""Gateway processes in a chain, with fault relays between them, for the soak and fault tests.

::

    legacy clients -> hopgate client -> [relay] -> hopgate server (middle) -> [relay]
        -> hopgate server -> origin (tests.soak.origin, its own process)

Every gateway is a real ``python -m gateway`` process (``tests.processes``),
so ``kill -9`` is a real kill and ``VmHWM`` is one gateway's peak memory.
The relays are ``tests.faultproxy.FaultProxy`` in the test's own loop, so
the test cuts them and flips their upgrades at will. A process started on
a fixed port (``listen``) can be killed and started again on the same port:
the relay or gateway in front of it reconnects to the new one.

``RssWatch`` samples each gateway's resident memory while a test runs
(``VmHWM`` is read at the end too, so a spike between samples still counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from tests.faultproxy import FaultProxy
from tests.processes import (
    LISTENING,
    ChildProcess,
    GatewayProcess,
    free_port,
    proc_status_kib,
    start_gateway,
)
from tests.status_page import status_document

ROOT = Path(__file__).resolve().parents[2]
#: Output lines kept per child (they run for minutes; the count goes on).
KEEP_LINES = 400


def start_origin(port: int, *, hold: float = 5.0) -> ChildProcess:
    """The soak origin (``tests.soak.origin``) on ``127.0.0.1:port``, waited on."""
    argv = [sys.executable, "-m", "tests.soak.origin", "--port", str(port), "--hold", str(hold)]
    child = ChildProcess.start(
        argv, name="soak origin", cwd=ROOT, announce=LISTENING, keep_lines=KEEP_LINES
    )
    child.wait_announced()
    child.wait_accepting(port)
    return child


def gateway(role: str, upstream: str, *args: str, port: int = 0, **kw: Any) -> GatewayProcess:
    """A gateway process forwarding to ``upstream`` (at ``--log-level warning``, on ``port``)."""
    return start_gateway(
        role,
        "--upstream",
        upstream,
        *args,
        listen=f"127.0.0.1:{port or free_port()}",
        log_level=kw.pop("log_level", "warning"),
        keep_lines=KEEP_LINES,
        **kw,
    )


def kill_hard(child: ChildProcess) -> None:
    """``kill -9`` and reap it (a zombie would keep its /proc entry)."""
    child.proc.kill()
    child.proc.wait(10)


def hold_port(port: int) -> socket.socket:
    """Bind ``port`` without listening: connections to it are refused, as to a dead process.

    While a killed process is down, nothing else may take its port: the
    tests of the other pytest-xdist workers pick free ports all the time,
    and one of their servers answering in its place (a 404 to the client
    gateway's requests, once in a full run) is not the fault under test.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the dead one's TIME_WAITs
    holder.bind(("127.0.0.1", port))
    return holder


async def status(url: str) -> dict[str, Any]:
    """A gateway's ``/.hopgate/status`` (it answers loopback clients)."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        return await status_document(http, url)


async def hop_transport(url: str) -> str:
    """The transport of a gateway's one upstream hop (``plain`` until a session opens)."""
    [entry] = (await status(url))["upstreams"]
    return str(entry["transport"])


@dataclass
class RssWatch:
    """Samples the RSS of named processes every ``interval`` s until stopped."""

    procs: dict[str, GatewayProcess]
    interval: float = 0.5
    samples: dict[str, list[int]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for name, proc in self.procs.items():
                with contextlib.suppress(OSError, LookupError):
                    self.samples.setdefault(name, []).append(proc.rss_kib())
            await asyncio.sleep(self.interval)

    async def stop(self) -> dict[str, dict[str, float]]:
        """Per process: first and last sample and the peak (``VmHWM``), in MiB."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        out = {}
        for name, proc in self.procs.items():
            got = self.samples.get(name) or [0]
            with contextlib.suppress(OSError, LookupError):
                got = [*got, proc_status_kib(proc.pid, "VmHWM")]
            out[name] = {
                "start_mib": round(got[0] / 1024, 1),
                "end_mib": round(self.samples.get(name, [0])[-1] / 1024, 1),
                "peak_mib": round(max(got) / 1024, 1),
            }
        return out


@dataclass
class ProcessChain:
    """origin <- server <- relay <- middle <- relay <- client, all but the relays processes."""

    origin: ChildProcess
    origin_port: int
    server: GatewayProcess
    middle: GatewayProcess
    client: GatewayProcess
    near: FaultProxy  # client -> middle
    far: FaultProxy  # middle -> server

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    @property
    def gateways(self) -> dict[str, GatewayProcess]:
        return {"client": self.client, "middle": self.middle, "server": self.server}

    @property
    def relays(self) -> tuple[FaultProxy, FaultProxy]:
        return (self.near, self.far)

    def children(self) -> Iterator[ChildProcess]:
        yield from (self.client, self.middle, self.server, self.origin)


async def start_chain(*gateway_args: str) -> ProcessChain:
    """Start the chain from the origin outwards; ``gateway_args`` go to every gateway."""
    origin_port = free_port()
    children: list[ChildProcess] = []
    relays: list[FaultProxy] = []
    try:
        children.append(origin := start_origin(origin_port))
        origin_url = f"http://127.0.0.1:{origin_port}"
        children.append(server := gateway("server", origin_url, *gateway_args))
        relays.append(far := await FaultProxy("127.0.0.1", server.port).start())
        children.append(middle := gateway("server", far.url, *gateway_args))
        relays.append(near := await FaultProxy("127.0.0.1", middle.port).start())
        children.append(client := gateway("client", near.url, *gateway_args))
    except BaseException:
        await stop_all(children, relays)
        raise
    return ProcessChain(origin, origin_port, server, middle, client, near, far)


async def stop_all(children: list[ChildProcess], relays: list[FaultProxy]) -> None:
    """Stop the children (SIGTERM, bounded) from the client end, then the relays."""
    for child in children:
        await asyncio.to_thread(child.stop, 5.0)
    for relay in relays:
        await relay.close()


async def stop_chain(chain: ProcessChain) -> None:
    await stop_all(list(chain.children()), list(chain.relays))


@dataclass
class GatewayPair:
    """legacy clients -> hopgate client -> hopgate server -> origin: three processes.

    Each runs on a port fixed at start, so ``restart_*`` brings a killed one
    back where its neighbours look for it.
    """

    origin: ChildProcess
    origin_port: int
    server: GatewayProcess
    client: GatewayProcess
    server_args: tuple[str, ...] = ()
    client_args: tuple[str, ...] = ()
    #: Ports of killed ones, held (``hold_port``) until their restart.
    held: dict[int, socket.socket] = field(default_factory=dict)

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    def kill(self, role: Literal["origin", "server", "client"]) -> None:
        """``kill -9`` one of them; its port stays ours, refusing connections, until its restart."""
        kill_hard(getattr(self, role))
        port = {"origin": self.origin_port, "server": self.server.port, "client": self.client.port}
        self.held[port[role]] = hold_port(port[role])

    def restart_origin(self) -> None:
        self._release(self.origin_port)
        self.origin = start_origin(self.origin_port)

    def restart_server(self) -> None:
        self._release(self.server.port)
        self.server = gateway("server", self.origin_url, *self.server_args, port=self.server.port)

    def restart_client(self) -> None:
        self._release(self.client.port)
        self.client = gateway("client", self.server.url, *self.client_args, port=self.client.port)

    def release_ports(self) -> None:
        for port in list(self.held):
            self._release(port)

    def _release(self, port: int) -> None:
        holder = self.held.pop(port, None)
        if holder is not None:
            holder.close()

    def children(self) -> list[ChildProcess]:
        return [self.client, self.server, self.origin]


async def start_pair(
    server_args: tuple[str, ...] = (), client_args: tuple[str, ...] = ()
) -> GatewayPair:
    """Start origin, server and client; returns once the client's hop has a session."""
    origin_port = free_port()
    children: list[ChildProcess] = []
    try:
        children.append(origin := start_origin(origin_port))
        url = f"http://127.0.0.1:{origin_port}"
        children.append(server := gateway("server", url, *server_args))
        children.append(client := gateway("client", server.url, *client_args))
    except BaseException:
        await stop_all(children, [])
        raise
    return GatewayPair(origin, origin_port, server, client, server_args, client_args)


async def hop_session(url: str) -> tuple[str, str | None]:
    """``(transport, session id prefix)`` of a gateway's one upstream hop."""
    [entry] = (await status(url))["upstreams"]
    return str(entry["transport"]), entry["session"]
