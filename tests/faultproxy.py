"""A TCP relay for tests that can break the path on command.

``FaultProxy(target_host, target_port)`` listens on ``127.0.0.1`` port 0
(``proxy.url`` / ``proxy.port`` once started) and relays every connection to
the target, byte for byte, with bounded buffers (``StreamWriter.drain``: a
slow side slows the other, nothing piles up). Switches, flipped at any time:

* ``cut()`` aborts every current connection at once (both sides get a
  reset), as a NAT timeout or a dying Wi-Fi would; new connections work.
* ``refuse_upgrades = True``: a request head with ``Upgrade: websocket`` is
  not forwarded; the proxy answers it with its own ``400`` and keeps the
  connection usable as plain HTTP (request bodies are tracked with
  ``Content-Length``; a chunked request body turns parsing off for that
  connection, which our clients never send). Like a proxy that cannot carry
  WebSocket.
* ``blackhole_after_101 = True``: on a connection whose upstream answered
  ``101``, the ``101`` head is forwarded and every later byte, both ways, is
  silently dropped while the sockets stay open; switching it on mid-session
  stalls an upgraded connection that was working. Seed 004's buffering
  antivirus proxy.
* ``drop_new = True``: new connections are accepted and closed at once
  (the path is down); current ones are untouched.

``await proxy.close()`` stops listening, aborts everything and waits for the
relay tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

_HEAD_LIMIT = 64 * 1024
_CHUNK = 64 * 1024

REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 35\r\n"
    b"\r\n"
    b"faultproxy: WebSocket not allowed\r\n"
)


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    upgraded: bool = False
    awaiting_101: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.refuse_upgrades = False
        self.blackhole_after_101 = False
        self.drop_new = False
        self.connections_total = 0
        self.upgrades_refused = 0
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> int:
        """Abort every current connection; returns how many there were."""
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        return len(conns)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        tasks = list(self._handlers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- relaying -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # close(): asyncio's start_server logs a cancelled handler as an error
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.drop_new:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        conn = _Conn(client=writer, upstream=up_writer)
        self._conns.add(conn)
        try:
            conn.tasks = [
                asyncio.create_task(self._client_to_server(conn, reader)),
                asyncio.create_task(self._server_to_client(conn, up_reader)),
            ]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            # Let the other direction finish what it has (half-close) briefly.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.wait(conn.tasks)
        finally:
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            self._conns.discard(conn)
            conn.abort()

    def _dropping(self, conn: _Conn) -> bool:
        return conn.upgraded and self.blackhole_after_101

    async def _client_to_server(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        parser = _RequestParser()
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                if self._dropping(conn):
                    continue
                if conn.upgraded or not parser.active:
                    conn.upstream.write(data)
                    await conn.upstream.drain()
                    continue
                for piece, head in parser.feed(data):
                    if head is not None and head.upgrade:
                        if self.refuse_upgrades:
                            self.upgrades_refused += 1
                            conn.client.write(REFUSAL)
                            await conn.client.drain()
                            continue
                        conn.awaiting_101 = True
                        parser.active = False  # the socket changes protocol after a 101
                    conn.upstream.write(piece)
                await conn.upstream.drain()
            if conn.upstream.can_write_eof():
                conn.upstream.write_eof()

    async def _server_to_client(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        head = bytearray()
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                if conn.awaiting_101 and not conn.upgraded:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0 and len(head) < _HEAD_LIMIT:
                        continue
                    conn.awaiting_101 = False
                    cut = end + 4 if end >= 0 else len(head)
                    status_line = bytes(head[: head.find(b"\r\n")])
                    if b" 101 " in status_line + b" ":
                        conn.upgraded = True
                    data, rest = bytes(head[:cut]), bytes(head[cut:])
                    head.clear()
                    conn.client.write(data)
                    if rest and not self._dropping(conn):
                        conn.client.write(rest)
                    await conn.client.drain()
                    continue
                if self._dropping(conn):
                    continue
                conn.client.write(data)
                await conn.client.drain()
            if conn.client.can_write_eof():
                conn.client.write_eof()


@dataclass
class _Head:
    upgrade: bool
    body_length: int
    chunked: bool


class _RequestParser:
    """Splits a client byte stream into request heads and bodies (Content-Length or chunked)."""

    def __init__(self) -> None:
        self.active = True
        self._buf = bytearray()
        self._body_left = 0
        self._chunked = False  # between chunks of a chunked body: a size line comes next

    def feed(self, data: bytes) -> list[tuple[bytes, _Head | None]]:
        """Pieces of ``data`` in order, each a whole head (with its parse) or body bytes."""
        out: list[tuple[bytes, _Head | None]] = []
        view = memoryview(data)
        while view:
            if self._body_left:
                n = min(self._body_left, len(view))
                out.append((bytes(view[:n]), None))
                self._body_left -= n
                view = view[n:]
                continue
            if self._chunked:
                view = self._chunk_size(view, out)
                if view is None:
                    break
                continue
            self._buf += view
            view = memoryview(b"")
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _HEAD_LIMIT:  # not HTTP as we know it: pass through
                    out.append((bytes(self._buf), None))
                    self._buf.clear()
                    self.active = False
                break
            raw, rest = bytes(self._buf[: end + 4]), bytes(self._buf[end + 4 :])
            self._buf.clear()
            head = _parse_head(raw)
            out.append((raw, head))
            self._chunked = head.chunked
            self._body_left = 0 if head.chunked else head.body_length
            view = memoryview(rest)
        return out

    def _chunk_size(
        self, view: memoryview, out: list[tuple[bytes, _Head | None]]
    ) -> memoryview | None:
        """Pass a chunk-size line on and count its chunk (and CRLF) as body; None: need more."""
        self._buf += view
        end = self._buf.find(b"\r\n")
        if end < 0:
            return None
        line, rest = bytes(self._buf[: end + 2]), bytes(self._buf[end + 2 :])
        self._buf.clear()
        out.append((line, None))
        size = int(line.split(b";")[0].strip() or b"0", 16)
        self._body_left = size + 2  # the data and its CRLF; the last chunk: the empty trailer
        self._chunked = size > 0
        return memoryview(rest)


def _parse_head(raw: bytes) -> _Head:
    upgrade = False
    length = 0
    chunked = False
    for line in raw.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"upgrade" and b"websocket" in value:
            upgrade = True
        elif name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    return _Head(upgrade=upgrade, body_length=length, chunked=chunked)
