"""A socket.io chat, unmodified python-socketio at both ends, forced onto long-polling.

The real third-party long-poll stack hopgate is meant to sit in front of:
``socketio.AsyncServer(async_mode="aiohttp")`` as the origin and
``socketio.AsyncClient`` with ``transports=["polling"]`` as the legacy
client (Engine.IO v4: held ``GET /socket.io/?EIO=4&transport=polling&sid=``
to receive, ``POST`` to send, server pings answered by client POSTs).

Scenario: ``clients`` participants connect to ``base_url`` (the origin, a
client gateway, anything in between); then, concurrently,

* every participant emits ``up`` messages numbered ``1..messages``;
* the server answers each ``up`` with an ``echo`` of the same number to that
  participant alone (emit to one client);
* the server broadcasts ``news`` numbered ``1..broadcasts`` to everyone.

``ScenarioResult.problems()`` compares, by message number, what each side
received with what was sent: every message exactly once, in order.  The
scenario knows nothing of hopgate, so the same run is repeated with the hop
between the gateways plain, a long-poll session, a WebSocket session, and
switched between them mid-run (``test_socketio``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web

from tests.waiting import woken_until


@dataclass(frozen=True, kw_only=True)
class Scenario:
    clients: int = 3
    #: ``up`` messages per client (client -> server), and their ``echo``s back.
    messages: int = 25
    #: ``news`` messages broadcast to every client (server -> clients).
    broadcasts: int = 25
    #: Seconds between one sender's messages; the run lasts about messages * interval.
    interval: float = 0.1
    #: Engine.IO heartbeat: a short interval makes pings cross the path during the run.
    ping_interval: int = 1
    ping_timeout: int = 2
    #: After everything arrived, wait this long for duplicates before judging.
    settle: float = 0.5


def numbers(count: int) -> list[int]:
    return list(range(1, count + 1))


class Progress:
    """Wakes the runner whenever a message is recorded anywhere."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def tick(self) -> None:
        self.changed.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> None:
        """Wait for ``done()``, woken at each recorded message; TimeoutError after ``timeout``."""
        if not await woken_until(self.changed, done, timeout):
            raise TimeoutError


class SioOrigin:
    """The unmodified socket.io server; ``received[name]`` lists each ``up`` number."""

    def __init__(self, scenario: Scenario, progress: Progress) -> None:
        self.scenario = scenario
        self.progress = progress
        # async_handlers=False: the server handles one client's events one at
        # a time, so its echoes leave in the order the ups arrived.
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            ping_interval=scenario.ping_interval,
            ping_timeout=scenario.ping_timeout,
            async_handlers=False,
        )
        self.app = web.Application()
        self.sio.attach(self.app)
        self.received: dict[str, list[int]] = defaultdict(list)
        self.names: dict[str, str] = {}
        self.sio.on("connect", self._connect)
        self.sio.on("up", self._up)

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        if not isinstance(auth, dict) or not isinstance(auth.get("name"), str):
            return False
        self.names[sid] = auth["name"]
        return True

    async def _up(self, sid: str, data: dict[str, Any]) -> None:
        self.received[self.names[sid]].append(int(data["n"]))
        self.progress.tick()
        await self.sio.emit("echo", {"n": data["n"]}, to=sid)

    async def broadcast(self) -> None:
        for n in numbers(self.scenario.broadcasts):
            await self.sio.emit("news", {"n": n})
            await asyncio.sleep(self.scenario.interval)


class Participant:
    """One unmodified socket.io client on the polling transport."""

    def __init__(self, name: str, progress: Progress) -> None:
        self.name = name
        self.progress = progress
        self.client = socketio.AsyncClient(reconnection=False)
        self.echoes: list[int] = []
        self.news: list[int] = []
        self.client.on("echo", self._echo)
        self.client.on("news", self._news)

    def _echo(self, data: dict[str, Any]) -> None:
        self.echoes.append(int(data["n"]))
        self.progress.tick()

    def _news(self, data: dict[str, Any]) -> None:
        self.news.append(int(data["n"]))
        self.progress.tick()

    async def connect(self, base_url: str) -> None:
        await self.client.connect(
            base_url, transports=["polling"], auth={"name": self.name}, wait_timeout=10
        )

    async def send_all(self, scenario: Scenario) -> None:
        for n in numbers(scenario.messages):
            await self.client.emit("up", {"n": n})
            await asyncio.sleep(scenario.interval)


@dataclass
class ScenarioResult:
    scenario: Scenario
    #: Per participant: what the server got from it, and what it got back.
    server_received: dict[str, list[int]] = field(default_factory=dict)
    echoes: dict[str, list[int]] = field(default_factory=dict)
    news: dict[str, list[int]] = field(default_factory=dict)
    transports: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False

    def problems(self) -> list[str]:
        """Every way the run differs from "each message exactly once, in order"."""
        found = ["timed out before everything arrived"] if self.timed_out else []
        ups, news = numbers(self.scenario.messages), numbers(self.scenario.broadcasts)
        for name in sorted(self.echoes):
            for what, got, want in (
                ("server got from", self.server_received.get(name, []), ups),
                ("echoes to", self.echoes[name], ups),
                ("broadcasts to", self.news[name], news),
            ):
                if got != want:
                    found.append(f"{what} {name}: {describe(got, want)}")
            if self.transports[name] != "polling":
                found.append(f"{name} used {self.transports[name]}, not polling")
        return found


def describe(got: list[int], want: list[int]) -> str:
    missing = sorted(set(want) - set(got))
    duplicated = sorted({n for n in got if got.count(n) > 1})
    out_of_order = sorted(set(got)) != got and not duplicated
    return f"missing {missing}, duplicated {duplicated}, out of order {out_of_order}: {got}"


async def run_scenario(
    base_url: str, origin: SioOrigin, scenario: Scenario, *, timeout: float = 30.0
) -> ScenarioResult:
    """Connect, exchange, wait for everything (or ``timeout``), disconnect."""
    progress = origin.progress
    people = [Participant(f"c{i}", progress) for i in range(scenario.clients)]
    result = ScenarioResult(scenario=scenario)

    def complete() -> bool:
        return all(
            len(origin.received[p.name]) >= scenario.messages
            and len(p.echoes) >= scenario.messages
            and len(p.news) >= scenario.broadcasts
            for p in people
        )

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(p.connect(base_url) for p in people))
            result.transports = {p.name: p.client.transport() for p in people}
            await asyncio.gather(origin.broadcast(), *(p.send_all(scenario) for p in people))
            await progress.until(complete, timeout)
        await asyncio.sleep(scenario.settle)
    except TimeoutError:
        result.timed_out = True  # problems() also reports what did not arrive
    finally:
        async with asyncio.timeout(10):
            await asyncio.gather(*(p.client.disconnect() for p in people))
        result.server_received = {p.name: list(origin.received[p.name]) for p in people}
        result.echoes = {p.name: list(p.echoes) for p in people}
        result.news = {p.name: list(p.news) for p in people}
        result.transports = result.transports or {p.name: "never connected" for p in people}
    return result


def make_origin_app(scenario: Scenario) -> SioOrigin:
    """A socket.io origin for ``scenario``; serve ``.app``, pass it to ``run_scenario``."""
    return SioOrigin(scenario, Progress())
