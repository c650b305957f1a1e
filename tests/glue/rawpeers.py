"""Raw peers for framing attacks: an origin on a bare socket and a tunnel spoken by hand.

* :class:`RawOrigin` is an HTTP/1.1 server written the way many origins
  behave: it answers a request as soon as its head arrived (a long-poll
  handler does not read a body it does not need), then skips the body the
  head announced before it parses the next request on that connection. It
  records exactly what it received, per connection, so a test sees whether
  a request's framing lied (the next request on the connection starts in
  the middle of something) and counts connections and concurrent requests.
* :class:`RawTunnel` speaks the tunnel protocol over a real hop session with
  no gateway checks on its side: heads, bodies and ends exactly as a
  hostile peer chooses.

Used by ``tests/glue/test_framing.py`` and ``bench/tunnel_framing.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from gateway.core.tunnel import (
    DataReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    Tunnel,
    TunnelConfig,
    WebSocketAccepted,
)
from gateway.transports.connector import SessionConnector
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings

_REQUEST_LINE = re.compile(rb"([A-Z]+) (/[!-~]*) HTTP/1\.[01]")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")


@dataclass
class Seen:
    """One request as the origin parsed it."""

    conn: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class RawOrigin:
    """A keep-alive HTTP/1.1 origin on a bare socket that logs what it parsed.

    ``/hold...`` requests are read whole and answered only once :attr:`release`
    is set (a held poll); every other request is answered at once with
    ``<METHOD> <target> <n>`` (``n``: the connection's request number).
    A head it cannot parse gets ``400`` and the connection is closed, as a
    typical server does; :attr:`bad` records those heads.
    """

    requests: list[Seen] = field(default_factory=list)
    bad: list[bytes] = field(default_factory=list)
    received: dict[int, bytearray] = field(default_factory=dict)
    connections: int = 0
    live_connections: set[int] = field(default_factory=set)
    active: int = 0
    max_active: int = 0
    held: int = 0  # of ``active``: ``/hold`` requests
    max_held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def paths(self) -> list[str]:
        return [seen.target for seen in self.requests]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = self.connections
        self.received[conn] = bytearray()
        self.live_connections.add(conn)
        try:
            while await self._one_request(conn, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # close(): ends quietly (asyncio's server callback would log a cancelled task)
        finally:
            self.live_connections.discard(conn)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            self.received[conn] += exc.partial
            return False
        self.received[conn] += head
        seen = _parse_head(conn, head)
        length = _body_length(seen) if seen is not None else None
        if seen is None or length is None:
            self.bad.append(head)
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return False
        self.requests.append(seen)
        self.arrived.set()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        held = seen.target.startswith("/hold")
        self.held += held
        self.max_held = max(self.max_held, self.held)
        try:
            if held:
                seen.body = await _read_body(reader, length, self.received[conn])
                await self.release.wait()
            answer = f"{seen.method} {seen.target} {conn}".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(answer)
                + answer
            )
            await writer.drain()
        finally:
            self.active -= 1
            self.held -= held
        if not held:
            seen.body = await _read_body(reader, length, self.received[conn])
        return True


def _parse_head(conn: int, head: bytes) -> Seen | None:
    line, *lines = head[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return None
    headers = []
    for raw in lines:
        header = _HEADER.fullmatch(raw)
        if header is None:
            return None
        headers.append((header[1].decode(), header[2].decode("latin-1")))
    return Seen(conn, match[1].decode(), match[2].decode(), headers)


def _body_length(seen: Seen) -> int | str | None:
    """Bytes of body to skip, ``"chunked"``, or None when the framing is invalid (400)."""
    lengths = seen.header("Content-Length")
    codings = seen.header("Transfer-Encoding")
    if codings:
        return "chunked" if codings == ["chunked"] and not lengths else None
    if not lengths:
        return 0
    if len(set(lengths)) != 1 or not lengths[0].isascii() or not lengths[0].isdigit():
        return None
    return int(lengths[0])


async def _read_body(reader: asyncio.StreamReader, length: int | str, raw: bytearray) -> bytes:
    """The body, as it arrives appended to ``raw`` (so a test sees a partial one)."""
    if isinstance(length, int):
        start = len(raw)
        while len(raw) - start < length:
            chunk = await reader.read(min(65536, length - (len(raw) - start)))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(raw[start:]), length)
            raw += chunk
        return bytes(raw[start:])
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        if size == 0:
            return bytes(body)
        body += chunk[:-2]


# -------------------------------------------------------------- a raw tunnel


@dataclass
class Answer:
    """What came back on one stream: head, body bytes, and how it ended."""

    head: Event | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: StreamReset | None = None

    @property
    def status(self) -> int | None:
        return self.head.status if isinstance(self.head, ResponseReceived) else None

    @property
    def finished(self) -> bool:
        head = self.head
        if self.reset is not None or self.ended:
            return True
        return isinstance(head, ResponseReceived) and not head.has_body


class RawTunnel:
    """A tunnel core spoken directly over a real hop session: no gateway checks on our side."""

    def __init__(self, hop: HopSession) -> None:
        self.hop = hop
        self.tunnel = Tunnel(TunnelConfig(), opener=True)
        self.answers: dict[int, Answer] = {}
        self.changed = asyncio.Event()
        hop.set_handlers(on_message=self._on_message, on_writable=self.flush)

    def _on_message(self, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.tunnel.receive_message(data)
        for event in self.tunnel.events_received():
            answer = self.answers.setdefault(event.stream_id, Answer())
            if isinstance(event, ResponseReceived | WebSocketAccepted):
                answer.head = event
            elif isinstance(event, DataReceived):
                answer.body += event.data
                self.tunnel.consumed(event.stream_id, len(event.data))
            elif isinstance(event, StreamEnded):
                answer.ended = True
            elif isinstance(event, StreamReset):
                answer.reset = event
                if answer.head is None:
                    answer.head = event
        self.changed.set()
        self.flush()

    def flush(self) -> None:
        while self.hop.writable:
            message = self.tunnel.next_message()
            if message is None:
                break
            self.hop.send(message)

    def open(
        self,
        method: str,
        target: bytes,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        *,
        body: Iterable[bytes] | None = None,
        end: bool = True,
    ) -> int:
        """Open a stream; ``body`` (not None: has_body) goes as DATA, then END if ``end``."""
        sid = self.tunnel.open_http(method, target, headers, has_body=body is not None)
        for chunk in body or ():
            self.tunnel.send_data(sid, chunk)
        if body is not None and end:
            self.tunnel.end(sid)
        self.flush()
        return sid

    async def answer(self, sid: int, timeout: float = 10.0) -> Answer:
        """The stream's answer once it finished (END, reset, or a head without body)."""
        async with asyncio.timeout(timeout):
            while not self.answers.get(sid, Answer()).finished:
                self.changed.clear()
                await self.changed.wait()
        return self.answers[sid]


@contextlib.asynccontextmanager
async def raw_session(url: str):  # type: ignore[no-untyped-def]
    """A :class:`RawTunnel` over a real hop session to the gateway at ``url``."""
    async with aiohttp.ClientSession() as http:
        connector = SessionConnector(URL(url), http, SessionSettings())
        try:
            hop = await connector.connect()
            yield RawTunnel(hop)
        finally:
            await connector.close()


# ------------------------------------------------- a lying answering peer


@dataclass(frozen=True)
class Scripted:
    """One scripted response: head as given (no checks), DATA chunks, END if ``end``."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: tuple[bytes, ...] | None = (b"hello",)
    end: bool = True


class RawAnswerer:
    """The answering end of a real hop session that responds to each stream as scripted.

    ``script`` maps a request target to its :class:`Scripted` response; the
    request body (if any) is read and dropped.
    """

    def __init__(self, hop: HopSession, script: dict[bytes, Scripted]) -> None:
        self.hop = hop
        self.script = script
        self.tunnel = Tunnel(TunnelConfig(), opener=False)
        self.targets: list[bytes] = []
        hop.set_handlers(on_message=self._on_message, on_writable=self.flush)

    def _on_message(self, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.tunnel.receive_message(data)
        for event in self.tunnel.events_received():
            if isinstance(event, DataReceived):
                self.tunnel.consumed(event.stream_id, len(event.data))
            elif isinstance(event, RequestReceived):
                self.targets.append(event.target)
                self._answer(event.stream_id, self.script[event.target])
        self.flush()

    def _answer(self, sid: int, scripted: Scripted) -> None:
        tunnel = self.tunnel
        body = scripted.body
        tunnel.respond(sid, scripted.status, "OK", scripted.headers, has_body=body is not None)
        for chunk in body or ():
            tunnel.send_data(sid, chunk)
        if body is not None and scripted.end:
            tunnel.end(sid)

    def flush(self) -> None:
        while self.hop.writable:
            message = self.tunnel.next_message()
            if message is None:
                break
            self.hop.send(message)
