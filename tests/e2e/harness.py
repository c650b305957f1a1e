"""Harness for real legacy stacks end to end through two gateways, the hop between them upgraded.

::

    legacy clients -> hopgate client ══ HopPath ══> hopgate server -> legacy origin
                                    (a recording FaultProxy)

Shared by ``test_socketio``, ``test_comet_upgraded`` and ``tests/hop/test_seeds``:

* ``FAST_LADDER`` / ``FAST_SESSION`` (from ``tests.helpers``): hop timings
  short enough for a test (re-probe within a second, stall watchdog at one second);
* ``gateways`` (a fixture: import ``gateways_fixture`` into the test module)
  starts in-process gateways with those timings, and recording proxies, and
  stops them all (gateways first, then the proxies) within a bounded time;
* ``RecordingProxy``: ``tests.faultproxy.FaultProxy`` that also keeps every
  request head the client gateway sent over the hop, so a test can tell
  "rode the session" from "went plain";
* ``HopPath``: the three ways the hop is run for the legacy scenarios --
  ``websocket`` (nothing in the way), ``long-poll`` (the path refuses
  upgrades) and ``switched`` (long-poll, then upgrades allowed, then the
  WebSocket black-holed until the watchdog demotes it, then healed so the
  re-probe upgrades again, all while the scenario runs).  ``TransportWatch``
  records every transport the client gateway's status showed;
* ``run_chat`` / ``ChatRun.problems``: several ``LegacyChatClient``s sending
  numbered messages through a gateway, and every way what they saw differs
  from "each message exactly once, in order, everywhere".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config import Role
from gateway.core import discovery
from gateway.demo.legacy_client import ChatMessage, LegacyChatClient
from gateway.server import Gateway
from gateway.transports.handshake import SESSION_PATH
from gateway.transports.session_settings import SessionSettings
from tests.faultproxy import FaultProxy, _Conn
from tests.helpers import FAST_LADDER, FAST_SESSION, loopback_gateway, until
from tests.status_page import upstream_entry
from tests.waiting import eventually

#: Longest wait for one step (a transport change, a message count).
STEP = 15.0

Variant = Literal["websocket", "long-poll", "switched"]
VARIANTS: tuple[Variant, ...] = ("websocket", "long-poll", "switched")

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)([A-Z]+) (\S+) HTTP/1\.[01]\r\n")


def transport(gw: Gateway) -> str:
    """The client gateway's one upstream transport (``plain``/``long-poll``/``websocket``)."""
    [state] = gw.stats.upstreams.values()
    return state.transport


async def hop_status(gw: Gateway) -> dict[str, Any]:
    """The gateway's one upstream entry as ``GET /.hopgate/status`` serves it."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        return await upstream_entry(http, gw.url)


# ------------------------------------------------------------------ gateways


class Gateways:
    """Starts gateways (fast hop timings) and recording proxies; stops them all."""

    def __init__(self) -> None:
        self.started: list[Gateway] = []
        self.proxies: list[RecordingProxy] = []
        self.watches: list[TransportWatch] = []

    async def __call__(
        self,
        role: Role,
        settings: dict[str, Any] | None = None,
        *,
        session: SessionSettings | None = FAST_SESSION,
    ) -> Gateway:
        """An in-process gateway; ``session=None`` keeps the production session timings."""
        settings = {"shutdown_grace": 2.0, **(settings or {})}
        gateway = loopback_gateway(role, settings, ladder=FAST_LADDER, session=session)
        await gateway.start()
        self.started.append(gateway)
        return gateway

    async def proxy(self, target: Gateway) -> RecordingProxy:
        """A recording FaultProxy in front of ``target``; closed after the gateways stop."""
        proxy = RecordingProxy("127.0.0.1", target.port)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def close(self) -> None:
        for watch in self.watches:
            await watch.stop()
        for gateway in reversed(self.started):
            async with asyncio.timeout(15):
                await gateway.stop()
        for proxy in self.proxies:
            await proxy.close()


@pytest.fixture(name="gateways")
async def gateways_fixture() -> AsyncIterator[Gateways]:
    """``await gateways(role, {...})``; ``await gateways.proxy(gw)``. All stopped at teardown."""
    factory = Gateways()
    yield factory
    await factory.close()


# -------------------------------------------------------------- the hop path


class _Tee:
    """A StreamReader stand-in that keeps what it reads (until the socket upgrades)."""

    def __init__(self, reader: asyncio.StreamReader, conn: _Conn, record: ConnRecord) -> None:
        self._reader = reader
        self._conn = conn
        self._record = record

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        if self._conn.upgraded:
            self._record.after_101 += len(data)
        else:
            self._record.http += data
        return data


@dataclass
class ConnRecord:
    """What the client side sent on one connection: HTTP bytes, then bytes after a 101."""

    http: bytearray = field(default_factory=bytearray)
    after_101: int = 0

    def request_lines(self) -> list[tuple[str, str]]:
        return [
            (m.group(1).decode(), m.group(2).decode("latin-1"))
            for m in _REQUEST_LINE.finditer(bytes(self.http))
        ]


class RecordingProxy(FaultProxy):
    """A FaultProxy that keeps, per connection, the bytes its client sent before any 101."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.records: list[ConnRecord] = []

    async def _client_to_server(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        record = ConnRecord()
        self.records.append(record)
        tee: Any = _Tee(reader, conn, record)
        await super()._client_to_server(conn, tee)

    def request_lines(self) -> list[tuple[str, str]]:
        """Every request line the client sent, connection by connection."""
        return [line for record in list(self.records) for line in record.request_lines()]


def is_session_request(path: str) -> bool:
    """A request of the hop layer itself (hello, session open/poll/post/upgrade)."""
    return path.startswith((SESSION_PATH, discovery.HELLO_PATH))


@dataclass
class TransportWatch:
    """Every transport the client gateway's upstream was seen on, in order."""

    gateway: Gateway
    seen: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            now = transport(self.gateway)
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class HopPath:
    """client gw -> RecordingProxy -> server gw, run as one of the ``VARIANTS``.

    ``progress()`` (set by the test) returns how many of the scenario's
    messages have arrived so far and how many are expected; ``switch()``
    records it at every switch so the test can show traffic was flowing
    across each one.
    """

    variant: Variant
    client: Gateway
    server: Gateway
    proxy: RecordingProxy
    watch: TransportWatch
    progress: Callable[[], tuple[int, int]] = lambda: (0, 0)
    #: (what was switched, progress at that moment)
    switches: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    #: Index into ``proxy.request_lines()`` when the session was up.
    lines_at_start: int = 0

    async def switch(self) -> None:
        """Run the variant's switches (nothing for ``websocket``/``long-poll``)."""
        if self.variant != "switched":
            return
        proxy, client = self.proxy, self.client
        async with asyncio.timeout(40):
            await self._after_some_traffic()
            self._note("upgrades allowed")
            proxy.refuse_upgrades = False
            await until(lambda: transport(client) == "websocket", "the re-probe to upgrade")
            await self._after_some_traffic()
            self._note("websocket black-holed")
            proxy.blackhole_after_101 = True
            await until(lambda: transport(client) == "long-poll", "the watchdog to demote")
            await self._after_some_traffic()
            self._note("path healed")
            proxy.blackhole_after_101 = False
            await until(lambda: transport(client) == "websocket", "the re-probe to upgrade again")
            self._note("upgraded again")

    async def _after_some_traffic(self, step: int = 5) -> None:
        start, _ = self.progress()
        await until(lambda: self.progress()[0] >= start + step, "more traffic")

    def _note(self, what: str) -> None:
        self.switches.append((what, self.progress()))

    def legacy_requests_since_start(self) -> list[tuple[str, str]]:
        """Request lines after the session was up that were not the session's own."""
        lines = self.proxy.request_lines()[self.lines_at_start :]
        return [line for line in lines if not is_session_request(line[1])]

    async def check(self) -> dict[str, Any]:
        """Assert what the variant must show; returns the client's status entry."""
        await self.watch.stop()
        status = await hop_status(self.client)
        seen = self.watch.seen
        assert status["peer"] == "gateway", status
        if self.variant == "websocket":
            assert seen == ["websocket"], seen
            assert (status["transport"], status["upgrades"], status["fallbacks"]) == (
                "websocket",
                1,
                0,
            ), status
            # Everything rode the WebSocket: not one HTTP request crossed the hop.
            assert self.proxy.request_lines()[self.lines_at_start :] == []
        elif self.variant == "long-poll":
            assert seen == ["long-poll"], seen
            # The refused upgrade is a fallback from the WebSocket it tried.
            assert (status["transport"], status["upgrades"], status["fallbacks"]) == (
                "long-poll",
                1,
                1,
            ), status
            assert status["transitions"][0]["reason"] == "upgrade_refused", status
            assert self.proxy.upgrades_refused >= 1
            # The legacy traffic crossed the hop as session polls and posts only.
            assert self.legacy_requests_since_start() == []
            assert len(self.proxy.request_lines()) - self.lines_at_start >= 4
        else:
            assert seen == ["long-poll", "websocket", "long-poll", "websocket"], seen
            assert status["transport"] == "websocket", status
            # plain -> long-poll (upgrade refused) -> websocket, demoted once,
            # upgraded again.
            assert (status["upgrades"], status["fallbacks"]) == (3, 2), status
            assert [move["reason"] for move in status["transitions"]] == [
                "upgrade_refused",
                "probe_succeeded",
                "stalled",
                "probe_succeeded",
            ], status
            assert [what for what, _ in self.switches] == [
                "upgrades allowed",
                "websocket black-holed",
                "path healed",
                "upgraded again",
            ]
            for what, (done, total) in self.switches:
                assert 0 < done < total, f"no traffic in flight at {what!r}: {self.switches}"
        return status


async def hop_path(
    variant: Variant, gateways: Gateways, origin_url: str, **server_options: Any
) -> HopPath:
    """Server gw before ``origin_url``, a recording proxy, a client gw; the hop settled.

    ``server_options`` are more settings of the server gateway. Stop it with
    ``await path.check()``.
    """
    server = await gateways("server", {"upstream": origin_url, **server_options})
    proxy = await gateways.proxy(server)
    proxy.refuse_upgrades = variant != "websocket"
    client = await gateways("client", {"upstream": proxy.url})
    first = "websocket" if variant == "websocket" else "long-poll"
    await until(lambda: transport(client) == first, f"a {first} hop")
    watch = TransportWatch(client)
    watch.start()
    gateways.watches.append(watch)
    path = HopPath(variant, client, server, proxy, watch)
    path.lines_at_start = len(proxy.request_lines())
    return path


# ------------------------------------------------------ the Comet chat, numbered

#: How long the origin holds an empty poll (several held polls end mid-run).
HOLD = 1.0


@dataclass(frozen=True)
class Chat:
    """``clients`` LegacyChatClients each sending ``messages`` numbered messages."""

    clients: int = 3
    #: Messages each client sends, numbered ``0..messages-1`` in their text.
    messages: int = 20
    interval: float = 0.1

    @property
    def total(self) -> int:
        return self.clients * self.messages


@dataclass
class Participant:
    client: LegacyChatClient
    seen: list[ChatMessage] = field(default_factory=list)
    sent: int = 0
    duplicates_reported: int = 0


@dataclass
class ChatRun:
    chat: Chat
    people: list[Participant]
    timed_out: bool = False

    def problems(self, stored: int, sends: int) -> list[str]:
        """Every way the run differs from "each message once, in order, everywhere".

        ``stored``: messages the origin stored; ``sends``: ``/send`` requests it got.
        """
        chat = self.chat
        found = ["timed out before everything arrived"] if self.timed_out else []
        if (stored, sends) != (chat.total, chat.total):
            found.append(
                f"the origin got {sends} /send and stored {stored}; {chat.total} were sent"
            )
        for p in self.people:
            name = p.client.name
            ids = [m.id for m in p.seen]
            if ids != list(range(1, chat.total + 1)):
                missing = sorted(set(range(1, chat.total + 1)) - set(ids))
                twice = sorted({i for i in ids if ids.count(i) > 1})
                found.append(f"{name} saw ids {ids} (missing {missing}, duplicated {twice})")
            for sender in self.people:
                texts = [m.text for m in p.seen if m.sender == sender.client.name]
                want = [f"{sender.client.name} {i}" for i in range(sender.sent)]
                if texts != want:
                    found.append(f"{name} saw from {sender.client.name}: {texts}")
            if p.sent != chat.messages or p.client.errors or p.duplicates_reported:
                found.append(
                    f"{name}: sent {p.sent} of {chat.messages}, {p.client.errors} poll errors, "
                    f"{p.duplicates_reported} sends answered as duplicates"
                )
        return found


def count_sends(app: web.Application) -> list[int]:
    """Counts the ``POST /send`` requests that reach the origin (``[n]``)."""
    sends = [0]

    @web.middleware
    async def counting(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/send":
            sends[0] += 1
        return await handler(request)

    app.middlewares.append(counting)
    return sends


async def run_chat(
    base_url: str,
    chat: Chat,
    *,
    timeout: float = 30.0,
    sessions: list[aiohttp.ClientSession] | None = None,
) -> ChatRun:
    """Every client polls and sends its numbered messages; returns once all saw all.

    Never raises for a slow or broken path: ``ChatRun.problems`` reports a
    time-out along with what went missing. ``sessions`` (one per client,
    closed here) give the clients their own HTTP clients.
    """
    sessions = sessions or []
    people = [
        Participant(LegacyChatClient(base_url, f"p{i}", session=sessions[i] if sessions else None))
        for i in range(chat.clients)
    ]
    run = ChatRun(chat, people)
    for p in people:
        p.client.on_message = p.seen.append

    async def talk(p: Participant) -> None:
        for i in range(chat.messages):
            receipt = await p.client.send(f"{p.client.name} {i}")
            p.sent += 1
            p.duplicates_reported += receipt.duplicate
            await asyncio.sleep(chat.interval)

    def everyone_saw_all() -> bool:
        return all(len(p.seen) >= chat.total for p in people)

    try:
        for p in people:
            p.client.start()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(talk(p) for p in people))
            if not await eventually(everyone_saw_all, timeout):
                raise TimeoutError
        await asyncio.sleep(HOLD)  # room for a late duplicate to show up
    except TimeoutError:
        run.timed_out = True
    finally:
        async with asyncio.timeout(10):
            await asyncio.gather(*(p.client.close() for p in people))
            await asyncio.gather(*(s.close() for s in sessions))
    return run
