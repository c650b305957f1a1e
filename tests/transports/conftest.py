"""Fixtures for the session transports: a real SessionServer on loopback, connectors, a fault proxy.

``transport`` parametrises a test over ``["websocket", "long-poll"]``: the
client prefers that transport, and on long-poll never probes a WebSocket, so
every functional test runs once per transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.transports.aiohttp_internals import never_resend
from gateway.transports.connector import SessionConnector
from gateway.transports.endpoint import SessionServer
from gateway.transports.handshake import SESSION_HEADER, SESSION_PATH, TOKEN_HEADER
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings
from tests.faultproxy import FaultProxy
from tests.helpers import FAST_SESSION, NO_REPROBE

Kind = Literal["websocket", "long-poll"]

#: The shared fast hop timings (``tests.helpers.FAST_SESSION``), under the
#: name this folder's tests import.
FAST = FAST_SESSION


class Inbox:
    """Collects one end's messages and close; ``wait_for(n)`` with a bound."""

    def __init__(self) -> None:
        self.messages: list[bytes | str] = []
        self.closed: tuple[int, str] | None = None
        self.writable_calls = 0
        self._changed = asyncio.Event()

    def on_message(self, data: bytes | str) -> None:
        self.messages.append(data)
        self._changed.set()

    def on_writable(self) -> None:
        self.writable_calls += 1
        self._changed.set()

    def on_closed(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self._changed.set()

    def attach(self, hop: HopSession) -> None:
        hop.set_handlers(
            on_message=self.on_message, on_writable=self.on_writable, on_closed=self.on_closed
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        await self.wait_until(lambda: len(self.messages) >= count, timeout)

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int, str]:
        await self.wait_until(lambda: self.closed is not None, timeout)
        assert self.closed is not None
        return self.closed


@dataclass
class ServerHandle:
    url: str
    server: SessionServer
    sessions: list[HopSession] = field(default_factory=list)
    inboxes: list[Inbox] = field(default_factory=list)

    @property
    def port(self) -> int:
        return URL(self.url).port or 0

    async def next_session(self, index: int = 0, timeout: float = 5.0) -> tuple[HopSession, Inbox]:
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= index:
                await asyncio.sleep(0.01)
        return self.sessions[index], self.inboxes[index]


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def post_create(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str, str, str]:
    """(status, session id, token, text or '') of one session-creation POST to ``url``."""
    async with http.post(url + SESSION_PATH, headers=headers or {}) as resp:
        body = await resp.read()
        text = body.decode("utf-8", "replace") if resp.status != 200 else ""
        return (
            resp.status,
            resp.headers.get(SESSION_HEADER, ""),
            resp.headers.get(TOKEN_HEADER, ""),
            text,
        )


async def create_session(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """(session id, token) of a session opened by hand; the POST must succeed."""
    status, session_id, token, text = await post_create(http, url)
    assert status == 200, text
    return session_id, token


class StartRaw(Protocol):
    async def __call__(self, handler: Handler) -> str: ...


@pytest.fixture
async def start_raw() -> AsyncIterator[StartRaw]:
    """Serve a bare handler (low-level server, like the Gateway's); returns its URL."""
    runners: list[web.ServerRunner] = []

    async def start(handler: Handler) -> str:
        runner = web.ServerRunner(
            web.Server(handler, handler_cancellation=True), shutdown_timeout=1
        )
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


class StartServer(Protocol):
    async def __call__(
        self, settings: SessionSettings | None = None, **kwargs: Any
    ) -> ServerHandle: ...


@pytest.fixture
async def start_server(start_raw: StartRaw) -> AsyncIterator[StartServer]:
    servers: list[SessionServer] = []

    async def start(settings: SessionSettings | None = None, **kwargs: Any) -> ServerHandle:
        handle: ServerHandle

        def on_session(hop: HopSession) -> None:
            inbox = Inbox()
            inbox.attach(hop)
            handle.sessions.append(hop)
            handle.inboxes.append(inbox)

        server = SessionServer(settings or FAST, on_session=on_session, **kwargs)
        servers.append(server)

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            if server.handles(request):
                return await server.handle(request)
            return web.Response(status=404, text="not a session path")

        handle = ServerHandle(url=await start_raw(handler), server=server)
        return handle

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    never_resend(session)  # like the Gateway: never resend a held poll
    yield session
    await session.close()


class MakeConnector(Protocol):
    def __call__(
        self, url: str, settings: SessionSettings | None = None, **kwargs: Any
    ) -> SessionConnector: ...


@pytest.fixture
async def make_connector(http: aiohttp.ClientSession) -> AsyncIterator[MakeConnector]:
    connectors: list[SessionConnector] = []

    def make(url: str, settings: SessionSettings | None = None, **kwargs: Any) -> SessionConnector:
        connector = SessionConnector(URL(url), http, settings or FAST, **kwargs)
        connectors.append(connector)
        return connector

    yield make
    for connector in connectors:
        await connector.close()


@pytest.fixture
async def proxies() -> AsyncIterator[list[FaultProxy]]:
    started: list[FaultProxy] = []
    yield started
    for proxy in started:
        await proxy.close()


async def start_proxy(proxies: list[FaultProxy], port: int) -> FaultProxy:
    proxy = await FaultProxy("127.0.0.1", port).start()
    proxies.append(proxy)
    return proxy


@pytest.fixture(params=["websocket", "long-poll"])
def transport(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


def settings_for(kind: Kind, base: SessionSettings = FAST, **changes: Any) -> SessionSettings:
    """``base`` with ``changes``; on long-poll, never re-probe a WebSocket."""
    if kind == "long-poll":
        changes = {**NO_REPROBE, **changes}
    return replace(base, **changes)


@dataclass
class Pair:
    """A connected client/server session pair, with their inboxes."""

    connector: SessionConnector
    client: HopSession
    client_inbox: Inbox
    server: HopSession
    server_inbox: Inbox
    handle: ServerHandle
    proxy: FaultProxy | None


class MakePair(Protocol):
    async def __call__(
        self,
        kind: Kind,
        settings: SessionSettings | None = None,
        *,
        proxy: bool = False,
        configure_proxy: Callable[[FaultProxy], None] | None = None,
        **connector_kwargs: Any,
    ) -> Pair: ...


@pytest.fixture
async def make_pair(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    proxies: list[FaultProxy],
) -> AsyncIterator[MakePair]:
    connectors: list[SessionConnector] = []

    async def make(
        kind: Kind,
        settings: SessionSettings | None = None,
        *,
        proxy: bool = False,
        configure_proxy: Callable[[FaultProxy], None] | None = None,
        **connector_kwargs: Any,
    ) -> Pair:
        """Server (+ fault proxy, set up by ``configure_proxy``) + connected client."""
        settings = settings or settings_for(kind)
        handle = await start_server(settings)
        fault = None
        if proxy or configure_proxy is not None:
            fault = await start_proxy(proxies, handle.port)
            if configure_proxy is not None:
                configure_proxy(fault)
        url = fault.url if fault is not None else handle.url
        connector = SessionConnector(URL(url), http, settings, prefer=kind, **connector_kwargs)
        connectors.append(connector)
        client = await asyncio.wait_for(connector.connect(), timeout=10)
        inbox = Inbox()
        inbox.attach(client)
        server, server_inbox = await handle.next_session()
        return Pair(connector, client, inbox, server, server_inbox, handle, fault)

    yield make
    for connector in connectors:
        await connector.close()


async def wait_transport(hop: HopSession, kind: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while hop.transport != kind:
            await asyncio.sleep(0.01)


#: The ``low_level_server`` fixture: serve a handler, get its port.
StartLowLevel = Callable[[Handler], Awaitable[int]]


@pytest.fixture
async def low_level_server() -> AsyncIterator[StartLowLevel]:
    """Serve a handler on a loopback port from ``web.Server``, the low-level server the
    gateway uses (no router: ``Expect`` and response hooks are the handler's); the port."""
    runners: list[web.ServerRunner] = []

    async def start(handler: Handler) -> int:
        runner = web.ServerRunner(web.Server(handler))
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()
