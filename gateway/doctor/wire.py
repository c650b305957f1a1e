"""Raw connections for the doctor: TCP/TLS streams, HTTP/1.1 by h11, WebSocket by wsproto.

No HTTP client library sits between the doctor and the path: each request
is one fresh connection, written and parsed by the sans-I/O h11 and wsproto
(h11 comes with wsproto), so a status line or a header is reported exactly
as the path returned it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from typing import Final

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WsProtocolError
from yarl import URL

__all__ = [
    "Answer",
    "Endpoint",
    "RawWebSocket",
    "Upgrade",
    "WireError",
    "exchange",
    "open_websocket",
]

_READ: Final = 256 * 1024
_BODY_SHOWN: Final = 200
USER_AGENT: Final = "hopgate-doctor"


class WireError(Exception):
    """The connection failed or the peer broke HTTP; the message says which."""


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, and how (TLS context or none)."""

    url: URL
    ssl: ssl.SSLContext | None
    timeout: float = 10.0

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme in ("https", "wss") else 80
        host = self.url.raw_host or ""
        return host if self.url.port in (None, default) else f"{host}:{self.url.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.open_connection(
                    self.url.host,
                    self.url.port,
                    ssl=self.ssl,
                    server_hostname=self.url.host if self.ssl else None,
                )
        except ssl.SSLCertVerificationError as exc:
            raise WireError(f"certificate verification failed: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise WireError(f"TLS handshake failed: {exc.reason or exc}") from exc
        except TimeoutError:
            raise WireError(f"connect timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise WireError(f"cannot connect: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float
    #: Bytes beyond ``limit`` that were not kept.
    truncated: bool = False


async def exchange(
    endpoint: Endpoint,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    limit: int = 4 * 1024 * 1024,
    timeout: float | None = None,
) -> Answer:
    """One request on its own connection; WireError if the path fails it."""
    started = time.monotonic()
    reader, writer = await endpoint.connect()
    try:
        async with asyncio.timeout(timeout or endpoint.timeout):
            conn = h11.Connection(h11.CLIENT)
            head = {"Host": endpoint.host_header, "User-Agent": USER_AGENT, **(headers or {})}
            if method in ("POST", "PUT"):
                head["Content-Length"] = str(len(body))
            writer.write(
                conn.send(h11.Request(method=method, target=target, headers=list(head.items())))
                or b""
            )
            if body:
                writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return await _read_answer(conn, reader, started, limit)
    except TimeoutError:
        raise WireError(f"no whole answer within {timeout or endpoint.timeout:g} s") from None
    except h11.RemoteProtocolError as exc:
        raise WireError(f"not HTTP/1.1: {exc}") from exc
    except (ConnectionError, OSError) as exc:
        raise WireError(f"connection lost: {exc!r}") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_answer(
    conn: h11.Connection, reader: asyncio.StreamReader, started: float, limit: int
) -> Answer:
    status, headers, body, truncated = 0, {}, bytearray(), False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(_READ)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = _headers(event.headers)
        elif isinstance(event, h11.Data):
            room = limit - len(body)
            truncated = truncated or len(event.data) > room
            body += event.data[: max(room, 0)]
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return Answer(status, headers, bytes(body), time.monotonic() - started, truncated)


def _headers(raw: object) -> dict[str, str]:
    """Header fields joined by name (lower case), as text."""
    merged: dict[str, str] = {}
    for name, value in raw:  # type: ignore[attr-defined]
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        merged[key] = f"{merged[key]}, {text}" if key in merged else text
    return merged


@dataclass
class Upgrade:
    """What the path answered to a WebSocket handshake."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    subprotocol: str | None = None
    error: str | None = None
    socket: RawWebSocket | None = None
    #: The start of a refusal's body.
    body: bytes = b""


class RawWebSocket:
    """A client WebSocket on a raw stream: binary messages in and out, wsproto framing."""

    def __init__(
        self, ws: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self._partial = bytearray()
        self._messages: list[bytes] = []
        #: Why the connection ended: "close frame CODE" (the peer closed) or "eof" (the path).
        self.ended: str | None = None
        #: monotonic time of the last byte read or written.
        self.last_traffic = time.monotonic()

    async def send(self, data: bytes) -> None:
        """Send one binary message; a connection that ended sends nothing (see ``ended``)."""
        if self.ended is not None:
            return
        try:
            self._writer.write(self._ws.send(BytesMessage(data=data)))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.ended = f"connection reset ({exc.__class__.__name__})"
            return
        self.last_traffic = time.monotonic()

    async def receive(self, timeout: float) -> bytes | None:
        """The next whole binary message; None on timeout or when the connection ended."""
        try:
            async with asyncio.timeout(timeout):
                while not self._messages and self.ended is None:
                    await self._read_more()
        except TimeoutError:
            return None
        except (ConnectionError, OSError) as exc:
            self.ended = f"connection reset ({exc.__class__.__name__})"
        except WsProtocolError as exc:
            self.ended = f"invalid WebSocket data from the path: {exc}"
        return self._messages.pop(0) if self._messages else None

    async def _read_more(self) -> None:
        data = await self._reader.read(_READ)
        if not data:
            self.ended = self.ended or "eof"
            return
        self.last_traffic = time.monotonic()
        self._ws.receive_data(data)
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                self._partial += event.data
                if event.message_finished:
                    self._messages.append(bytes(self._partial))
                    self._partial.clear()
            elif isinstance(event, TextMessage):
                self.ended = "a text message (not a hop session)"
            elif isinstance(event, Ping):
                self._writer.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.ended = f"close frame {event.code}"
                with contextlib.suppress(Exception):
                    self._writer.write(self._ws.send(event.response()))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.ended is None:
                self._writer.write(self._ws.send(CloseConnection(code=1000)))
                await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def open_websocket(
    endpoint: Endpoint, target: str, headers: dict[str, str], subprotocol: str
) -> Upgrade:
    """Send the RFC 6455 handshake and report the answer; ``socket`` set on an accepted 101."""
    try:
        reader, writer = await endpoint.connect()
    except WireError as exc:
        return Upgrade(error=str(exc))
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host=endpoint.host_header,
        target=target,
        subprotocols=[subprotocol],
        extra_headers=[(k.encode(), v.encode()) for k, v in headers.items()],
    )
    result = Upgrade()
    try:
        async with asyncio.timeout(endpoint.timeout):
            writer.write(ws.send(request))
            await writer.drain()
            await _handshake(ws, reader, result)
    except TimeoutError:
        result.error = f"no answer to the handshake within {endpoint.timeout:g} s"
    except WsProtocolError as exc:
        # wsproto checked Upgrade, Connection, Sec-WebSocket-Accept and the subprotocol.
        result.error = f"invalid 101: {exc}"
        result.status = 101
    except (ConnectionError, OSError) as exc:
        result.error = f"connection lost during the handshake: {exc!r}"
    if result.status == 101 and result.error is None:
        result.socket = RawWebSocket(ws, reader, writer)
    else:
        writer.close()
    return result


async def _handshake(ws: WSConnection, reader: asyncio.StreamReader, result: Upgrade) -> None:
    raw = bytearray()
    while True:
        data = await reader.read(_READ)
        if not data:
            result.error = result.error or "the connection closed without an answer"
            return
        if len(raw) < _READ:
            raw += data
            result.status, result.headers = _head(raw)
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                result.subprotocol = event.subprotocol
                return
            if isinstance(event, RejectConnection):
                result.status = event.status_code
                if not event.has_body:
                    return
            elif isinstance(event, RejectData):
                result.body = (result.body + event.data)[:_BODY_SHOWN]
                if event.body_finished:
                    return


def _head(raw: bytes | bytearray) -> tuple[int | None, dict[str, str]]:
    """Status and header fields of a response head exactly as received (wsproto keeps
    only the fields it does not check itself)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None, {}
    lines = bytes(raw[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    fields = [line.split(b":", 1) for line in lines[1:] if b":" in line]
    return status, _headers((name.strip(), value.strip()) for name, value in fields)
