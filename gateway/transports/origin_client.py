"""A lean HTTP/1.1 client for plain ``http://`` origins, with its own keep-alive pool.

Why: a gateway replays every tunnelled request (and forwards every plain
one) to its origin, and ``aiohttp.ClientSession.request`` builds a request
object, copies the headers twice and runs its middleware and trace
machinery per request: about a third of the server gateway's busy time
with 100 legacy pollers.  The gateway already has the outgoing head as a
``CIMultiDict`` its hop rules wrote, so this client writes it as one bytes
``write`` and lets aiohttp's own client protocol (``origin_protocol``: the
C parser, its flow-controlled body reader, its read timeout) parse the
answer.

What it keeps of the aiohttp path:

* bodies stream both ways, never buffered whole: a request body is written
  by a task as it arrives (waiting while the socket is above its high-water
  mark), the response body is the protocol's ``StreamReader``, which pauses
  reading from the origin while ``read_size`` bytes wait unread;
* ``connect_timeout`` bounds waiting for a pool slot plus connecting, and
  ``read_timeout`` the wait for each next byte of the answer;
* a request is sent once, never again on a new connection (a long-poll GET
  often consumes messages), and a connection whose framing is in doubt (a
  body not read to its end, a request body that failed, ``Connection:
  close``) is closed, never pooled;
* the same errors: ``aiohttp.ConnectionTimeoutError`` and
  ``aiohttp.SocketTimeoutError`` (504), ``OriginConnectError``,
  ``aiohttp.ServerDisconnectedError`` and ``OriginResponseError`` before the
  head (502), ``aiohttp.ClientPayloadError`` from the body mid-way.

The pool holds at most ``limit`` connections (busy and idle) over every
origin (``--max-connections``; WebSocket exchanges and ``https`` origins
still go through aiohttp's own pool); a request finding it full closes an
idle connection to another origin or waits its turn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
from collections.abc import AsyncIterable, Sequence
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp.http import HttpProcessingError, RawResponseMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.transports.aiohttp_internals import (
    drain_writes,
    expect_response,
    limit_transport_reads,
    origin_protocol,
)

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.streams import StreamReader

__all__ = [
    "OriginConnectError",
    "OriginPool",
    "OriginResponse",
    "OriginResponseError",
    "fields_head",
    "request_head",
]

#: Methods whose request carries no ``Content-Length: 0`` when it has no body (as aiohttp).
_BODILESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_BREAKS: Final = re.compile(r"[\r\n\x00]")
#: An idle pooled connection older than this is closed instead of reused (aiohttp's default).
KEEPALIVE: Final = 15.0

_Key = tuple[str, int]


class OriginConnectError(aiohttp.ClientOSError):
    """The origin could not be reached (refused, unreachable, name unknown)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(os_error.errno, str(os_error))
        self.os_error = os_error


class OriginResponseError(aiohttp.ClientError):
    """The origin's answer was not HTTP/1.x this client can read."""


class OriginResponse:
    """One answer: what the gateway reads of an ``aiohttp.ClientResponse``, and no more.

    ``release()`` returns the connection to the pool when the answer was read
    to its end and both sides allow keep-alive, else closes it; ``close()``
    always closes it.  Either may be called more than once.
    """

    __slots__ = (
        "_body",
        "_done",
        "_key",
        "_pool",
        "_protocol",
        "content",
        "headers",
        "raw_headers",
        "reason",
        "status",
        "url",
        "version",
    )

    def __init__(
        self,
        pool: OriginPool,
        key: _Key,
        protocol: ResponseHandler,
        body: asyncio.Task[bool] | None,
        url: URL,
        message: RawResponseMessage,
        payload: StreamReader,
    ) -> None:
        self._pool, self._key, self._protocol, self._body = pool, key, protocol, body
        self._done = False
        self.url = url
        self.status: int = message.code
        self.reason: str | None = message.reason
        self.version: aiohttp.HttpVersion | None = message.version
        self.headers: CIMultiDictProxy[str] = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.content: StreamReader = payload

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        body, protocol = self._body, self._protocol
        reusable = (
            self.content.is_eof()
            and (body is None or (body.done() and not body.cancelled() and body.result()))
            and not protocol.should_close
            and protocol.is_connected()
        )
        if reusable:
            self._pool.put_back(self._key, protocol)
        else:
            self._drop()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._drop()

    def _drop(self) -> None:
        if self._body is not None and not self._body.done():
            self._body.cancel()
        self._protocol.close()
        self._pool.forget()


class OriginPool:
    """Keep-alive connections to plain ``http://`` origins, at most ``limit`` open at once."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        read_size: int = 16 * 1024,
    ) -> None:
        """``limit`` 0: unbounded (as ``--max-connections 0``).  ``read_size``: bytes
        one receive takes, and the unread body bytes after which reading pauses."""
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._read_size = read_size
        #: Idle connections per origin, each with the ``time.monotonic()`` it was put back.
        self._idle: dict[_Key, list[tuple[ResponseHandler, float]]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def request(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> OriginResponse:
        """Send one request (``url`` absolute ``http://``); the answer once its head arrived."""
        head, chunked = request_head(method, url, headers, has_body=body is not None)
        return await self._send(method, url, head, chunked, body)

    async def request_fields(
        self,
        method: str,
        url: URL,
        fields: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
    ) -> OriginResponse:
        """:meth:`request` for a head already in bytes (a tunnelled one the hop rules rewrote)."""
        head, chunked = fields_head(method, url, fields, has_body=body is not None)
        return await self._send(method, url, head, chunked, body)

    async def _send(
        self,
        method: str,
        url: URL,
        head: bytes,
        chunked: bool,
        body: AsyncIterable[bytes] | None,
    ) -> OriginResponse:
        key = (url.raw_host or "", url.port or 80)
        protocol = self._take_idle(key)  # (not `or`: an empty ResponseHandler is falsy)
        if protocol is None:
            protocol = await self._connect(key, url)
        expect_response(
            protocol,
            head_only=method == "HEAD",
            read_timeout=self._read_timeout,
            read_size=self._read_size,
        )
        transport = protocol.transport
        assert transport is not None
        transport.write(head)
        sending = None
        if body is not None:
            sending = asyncio.get_running_loop().create_task(_send_body(protocol, body, chunked))
        try:
            message, payload = await _read_head(protocol)
        except BaseException:
            if sending is not None:
                sending.cancel()
            protocol.close()
            self.forget()
            raise
        return OriginResponse(self, key, protocol, sending, url, message, payload)

    def _take_idle(self, key: _Key) -> ResponseHandler | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()  # (not the loop's time: asking for the loop costs a getpid call)
        while idle:
            protocol, since = idle.pop()
            if protocol.is_connected() and not protocol.should_close and now - since < KEEPALIVE:
                return protocol
            protocol.close()  # closed by the origin while idle, or idle too long
            self.forget()
        return None

    async def _connect(self, key: _Key, url: URL) -> ResponseHandler:
        """A connection to ``key`` once the pool has room (both within ``connect_timeout``).

        A connection put back while this waits is taken instead of a new one.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                while self._limit and self._open >= self._limit and not self._close_other_idle():
                    await self._wait_for_room(loop)
                    protocol = self._take_idle(key)
                    if protocol is not None:
                        return protocol
                self._open += 1
                try:
                    _, protocol = await loop.create_connection(
                        lambda: origin_protocol(loop), key[0], key[1]
                    )
                except BaseException:
                    self.forget()
                    raise
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"connecting to {url.raw_host}:{key[1]} took over {self._connect_timeout}s"
            ) from exc
        except OSError as exc:
            raise OriginConnectError(exc) from exc
        limit_transport_reads(protocol.transport, self._read_size)
        return protocol

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # the room it was given goes to the next waiter
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _close_other_idle(self) -> bool:
        """Make room by closing the longest-idle connection of any origin; False if none is idle."""
        oldest: tuple[_Key, float] | None = None
        for key, idle in self._idle.items():
            if idle and (oldest is None or idle[0][1] < oldest[1]):
                oldest = (key, idle[0][1])
        if oldest is None:
            return False
        protocol, _ = self._idle[oldest[0]].pop(0)
        protocol.close()
        self._open -= 1  # not forget(): the room is taken by the caller at once
        return True

    def put_back(self, key: _Key, protocol: ResponseHandler) -> None:
        if self._closed:
            protocol.close()
            self.forget()
            return
        self._idle.setdefault(key, []).append((protocol, time.monotonic()))
        self._wake()

    def forget(self) -> None:
        """One connection was closed: its room goes to the first waiter."""
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every idle connection; busy ones close when released."""
        self._closed = True
        for idle in self._idle.values():
            for protocol, _ in idle:
                protocol.close()
                self._open -= 1
        self._idle.clear()


def request_head(
    method: str, url: URL, headers: CIMultiDict[str], *, has_body: bool
) -> tuple[bytes, bool]:
    """The request's head as bytes, and whether its body goes chunked.

    What aiohttp would send for the same call: ``Host`` from ``url`` unless
    given, a body without ``Content-Length`` chunked, a body-less request of
    a method that may carry one ``Content-Length: 0``.  ``ValueError`` for a
    CR, LF or NUL in any part (no request smuggled in a value).
    """
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1"]
    if "Host" not in headers:
        lines.append(f"Host: {host_value(url)}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    chunked = False
    if "Content-Length" not in headers:
        if has_body:
            chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
            if not chunked:
                lines.append("Transfer-Encoding: chunked")
                chunked = True
        elif method not in _BODILESS:
            lines.append("Content-Length: 0")
    if _BREAKS.search("".join(lines)):
        raise ValueError("CR, LF or NUL in a request line or header field")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape"), chunked


def fields_head(
    method: str, url: URL, fields: Sequence[tuple[bytes, bytes]], *, has_body: bool
) -> tuple[bytes, bool]:
    """:func:`request_head` for ``(name, value)`` byte pairs: the same bytes, no text between.

    A tunnelled request reaches the answering gateway as bytes and leaves it
    as bytes: decoding each field to build a ``CIMultiDict`` and encoding it
    back cost more than the rules themselves.  Names are looked up
    lower-cased in one joined string; a head with a non-ASCII name (which
    ``str.lower`` may fold differently) takes the text way.
    """
    names = b"\n".join([name for name, _ in fields])
    if not names.isascii():
        text = CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in fields
        )
        return request_head(method, url, text, has_body=has_body)
    present = b"\n" + names.lower() + b"\n"
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1".encode("utf-8", "surrogateescape")]
    if b"\nhost\n" not in present:
        lines.append(b"Host: " + host_value(url).encode("utf-8", "surrogateescape"))
    if fields:
        lines.append(b"\r\n".join(map(b": ".join, fields)))
    chunked = False
    if b"\ncontent-length\n" not in present:
        if has_body:
            if b"\ntransfer-encoding\n" in present:
                coding = next(v for n, v in fields if n.lower() == b"transfer-encoding")
                chunked = "chunked" in coding.decode("utf-8", "surrogateescape").lower()
            if not chunked:
                lines.append(b"Transfer-Encoding: chunked")
                chunked = True
        elif method not in _BODILESS:
            lines.append(b"Content-Length: 0")
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    breaks = len(lines) + max(len(fields) - 1, 0)  # the CRLFs this wrote
    if len(head) - len(head.translate(None, b"\r\n\0")) != 2 * breaks:  # one pass, not three
        raise ValueError("CR, LF or NUL in a request line or header field")
    return head, chunked


def host_value(url: URL) -> str:
    """``Host`` for ``url``: the port only when it is not the scheme's default."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port and url.port != 80:
        return f"{host}:{url.port}"
    return host


async def _read_head(
    protocol: ResponseHandler,
) -> tuple[RawResponseMessage, StreamReader]:
    """The first final answer (interim 1xx ones skipped, as aiohttp does)."""
    while True:
        try:
            message, payload = await protocol.read()
        except HttpProcessingError as exc:
            raise OriginResponseError(f"unreadable answer: {exc.message}") from exc
        if not 100 <= message.code <= 199 or message.code == 101:
            return message, payload


async def _send_body(protocol: ResponseHandler, body: AsyncIterable[bytes], chunked: bool) -> bool:
    """Write ``body`` as it comes; True once all of it (and its end) was written.

    If the body fails (the generator raises: a reset stream, a wrong length)
    or the connection goes, the connection is cut with no end of body sent:
    the origin sees a truncated request, never one that looks complete, and
    the answer's reader gets the connection's error.
    """
    try:
        async for chunk in body:
            transport = protocol.transport
            if transport is None or transport.is_closing():
                protocol.abort()
                return False
            if not chunk:
                continue
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if protocol.writing_paused:
                await drain_writes(protocol)
        if chunked and protocol.transport is not None:
            protocol.transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        protocol.abort()
        raise
    except Exception:
        protocol.abort()
        return False
    return True
