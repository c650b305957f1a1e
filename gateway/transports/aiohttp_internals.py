"""Every use of an aiohttp (or asyncio) detail that is not public API, in one place.

Each function below says what it needs that no public API offers.  When
aiohttp changes one of these details, ``tests/transports/test_aiohttp_internals.py``
fails with a message naming it: fix it here, nowhere else.

Replaced by public API and so not here any more: the ``100 Continue``
interim answer is written to ``request.transport`` (public) instead of
through ``request.writer`` and then resetting its ``output_size``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from yarl import URL

if TYPE_CHECKING:
    from aiohttp._websocket.writer import WebSocketWriter
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

_websocket_mask: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's C masking helper (a pure-Python one where the extension is missing)
    from aiohttp._websocket.helpers import websocket_mask as _websocket_mask
except ImportError:  # pragma: no cover - an aiohttp without it: send_frames declines
    _websocket_mask = None

__all__ = [
    "RelayedResponse",
    "RoutingConnector",
    "drain_writes",
    "expect_response",
    "limit_reads",
    "limit_transport_reads",
    "never_resend",
    "origin_protocol",
    "send_frames",
    "set_shutdown_timeout",
    "take_over_reading",
    "write_frame_now",
    "write_frames_now",
]


class RelayedResponse(web.StreamResponse):
    """A response whose header fields are the upstream's, not aiohttp's defaults.

    aiohttp fills in ``Content-Type: application/octet-stream`` and its own
    ``Server`` as an origin would; a proxy that did so would change how a
    client treats an untyped body and claim to be the origin.  ``Date`` (which
    RFC 9110 6.6.1 lets a proxy add) and the framing headers stay.

    Internal: overrides ``StreamResponse._prepare_headers``, where aiohttp
    adds both with ``setdefault`` just before writing the head.  The public
    hook at that moment, ``Application.on_response_prepare``, runs only for
    requests routed through a ``web.Application``; the gateway serves from
    the low-level ``web.Server``, whose requests call no such hook.

    ``hold_head``: ``prepare`` keeps the head until the first body write (or
    the end), so a response whose body is already here leaves in one
    ``send`` instead of two (one more wake-up of the client per request).
    Only for a body the caller writes at once: a held poll's head must not
    wait for its first event (``prepare`` returns the writer; its
    ``send_headers()`` sends a held head now). Internal: the class attribute
    ``StreamResponse._send_headers_immediately`` (``web.Response`` sets it
    False for the same reason).
    """

    def __init__(self, *, hold_head: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if hold_head:
            self._send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        sent = {name for name in ("Content-Type", "Server") if name in self.headers}
        await super()._prepare_headers()
        for name in ("Content-Type", "Server"):
            if name not in sent:
                self.headers.popall(name, None)


def never_resend(client: aiohttp.ClientSession) -> None:
    """Make ``client`` never send a request a second time on its own.

    aiohttp re-sends an idempotent request whose pooled connection dropped,
    even when the origin had already received it; a long-poll GET often
    consumes messages, so it must never reach the origin twice.

    Internal: sets ``ClientSession._retry_connection``.  aiohttp has no
    public switch (aio-libs/aiohttp#10790); a middleware cannot stop it
    either, since the retry loop sits outside the middleware chain and
    matches ``ServerDisconnectedError``/``ClientOSError`` by class.
    """
    client._retry_connection = False


#: Bytes waiting in a socket's buffer beyond which ``write_frame_now`` declines:
#: the caller awaits ``send_bytes``, which waits for the socket to drain.
SYNC_WRITE_LIMIT = 64 * 1024


def write_frame_now(
    ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, data: bytes
) -> bool:
    """Write one binary frame without awaiting; False (nothing written) when that is not safe.

    A hop session flushes once per loop turn from a callback, not a task per
    message, and ``send_bytes`` is a coroutine even when it never suspends.
    Declines when the socket's buffer holds more than SYNC_WRITE_LIMIT, when
    compression is on, or once closing: ``send_bytes`` then does the job.

    Internal: ``_writer`` and ``WebSocketWriter._write_websocket_frame`` (the
    synchronous part of ``send_frame``; it also counts ``_output_size``, so the
    next ``send_bytes`` still drains when it should) and ``_closing``.
    """
    writer = _framing_writer(ws)
    if writer is None or writer.transport.get_write_buffer_size() > SYNC_WRITE_LIMIT:
        return False
    writer._write_websocket_frame(data, aiohttp.WSMsgType.BINARY, 0)
    return True


def _framing_writer(
    ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
) -> WebSocketWriter | None:
    """``ws``'s writer when a frame may go straight to its transport, else None.

    Not with compression (aiohttp keeps the compressor's state), nor once a
    close is under way or the transport is closing.
    """
    writer = ws._writer
    if writer is None or writer.compress or writer._closing or writer.transport.is_closing():
        return None
    return writer


_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


async def send_frames(
    ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, messages: Sequence[bytes | str]
) -> bool:
    """Send every message of ``messages``, in order, with one ``transport.write``.

    Waits first while the transport is paused (its buffer is above the
    high-water mark), then as ``write_frames_now``: False (nothing written)
    when aiohttp must frame them itself.

    Internal: as ``write_frames_now``, and ``BaseProtocol._drain_helper``
    (what ``send_frame`` awaits; ``writing_paused`` is public).
    """
    writer = ws._writer
    if writer is None or writer.compress or _websocket_mask is None:
        return False
    protocol = writer.protocol
    if protocol.writing_paused:
        await protocol._drain_helper()
    return write_frames_now(ws, messages)


def write_frames_now(
    ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, messages: Sequence[bytes | str]
) -> bool:
    """Write every message of ``messages``, in order, with one ``transport.write``; no waiting.

    One frame per message, one syscall for them all: a burst through a bridge
    wrote each message on its own and spent half its time in ``socket.send``.
    Declines (False, nothing written) while the transport is paused (above its
    high-water mark), so what it holds is bounded by that mark plus one call's
    messages, and when aiohttp must frame them itself: compression
    negotiated, a close under way, or no masking helper.

    Internal: ``_writer`` (``transport``, ``protocol``, ``use_mask``,
    ``compress``, ``_closing`` and ``_output_size``, which this counts so the
    next ``send_bytes`` still drains when it should) and
    ``aiohttp._websocket.helpers.websocket_mask``.  aiohttp frames one
    message per call and has no vectored send.
    """
    writer = _framing_writer(ws)
    if writer is None or writer.protocol.writing_paused or _websocket_mask is None:
        return False
    parts: list[bytes | bytearray] = []
    append = parts.append
    if writer.use_mask:
        masks = os.urandom(4 * len(messages))
        mask_of = _websocket_mask
        at = 0
        for message in messages:
            text = isinstance(message, str)
            payload = message.encode() if isinstance(message, str) else message
            n = len(payload)
            mask = masks[at : at + 4]
            at += 4
            # Header and mask key in one piece: small headers come from a table.
            if n < 126:
                append(_MASKED_HEADS[text][n] + mask)
            else:
                append(_frame_header(0x81 if text else 0x82, n, masks) + mask)
            masked = bytearray(payload)
            mask_of(mask, masked)
            append(masked)
    else:
        for message in messages:
            if isinstance(message, str):
                append(_frame_header(0x81, len(payload := message.encode()), b""))
            else:
                append(_frame_header(0x82, len(payload := message), b""))
            append(payload)
    data = b"".join(parts)
    writer.transport.write(data)
    writer._output_size += len(data)
    return True


#: The header of a masked frame of fewer than 126 bytes, by (is text, length).
_MASKED_HEADS: Final = tuple(
    tuple(bytes((first, 0x80 | n)) for n in range(126)) for first in (0x82, 0x81)
)


def _frame_header(first: int, n: int, masked: bytes) -> bytes:
    bit = 0x80 if masked else 0
    if n < 126:
        return _LEN1(first, n | bit)
    if n < 65536:
        return _LEN2(first, 126 | bit, n)
    return _LEN3(first, 127 | bit, n)


class _ByteFeed:
    """Takes the place aiohttp's ``WebSocketReader`` takes after a ``101``.

    ``RequestHandler.data_received`` passes every byte read from the client to
    ``feed_data`` and signals the end with ``feed_eof``.
    """

    def __init__(self, reader: aiohttp.StreamReader) -> None:
        self._reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def take_over_reading(request: web.BaseRequest, limit: int) -> aiohttp.StreamReader:
    """A reader of every byte the client sends after this request's head, in order.

    For a ``CONNECT`` tunnel after its ``200``: bytes that came with the
    head are aiohttp's payload (``request.content``), every later byte goes
    to the returned reader, which pauses the socket once it holds
    ``2 * limit`` bytes.

    Internal: ``RequestHandler.set_parser`` (reached through the public
    ``request.protocol``) is the hand-over hook ``WebSocketResponse.prepare``
    uses after its ``101``; it is typed for a ``WebSocketReader``, and only
    needs ``feed_data(data) -> (eof, tail)`` and ``feed_eof()``.  There is no
    public way to take over a connection's reads: ``transport.set_protocol()``
    behind aiohttp's back leaves its handler waiting on a connection it no
    longer owns.
    """
    protocol = request.protocol
    reader = aiohttp.StreamReader(protocol, limit, loop=asyncio.get_running_loop())
    early = request.content.read_nowait()
    if early:
        reader.feed_data(early)
    protocol.set_parser(cast(Any, _ByteFeed(reader)))
    return reader


def set_shutdown_timeout(runner: web.BaseRunner, seconds: float) -> None:
    """How long ``runner.cleanup()`` lets handlers still running finish before it cancels them.

    A stopping gateway has spent part of ``--shutdown-grace`` draining
    already; its runner must get only what is left, or a held request keeps
    the process alive for twice the grace (and a supervisor sized for once
    kills it).  Internal: ``BaseRunner._shutdown_timeout``, which only the
    constructor takes and ``cleanup`` reads.
    """
    if not isinstance(getattr(runner, "_shutdown_timeout", None), int | float):
        raise RuntimeError("aiohttp's BaseRunner has no _shutdown_timeout any more")
    runner._shutdown_timeout = seconds


def limit_reads(upstream: aiohttp.ClientResponse, size: int) -> None:
    """Make the connection under ``upstream`` read at most ``size`` bytes per receive.

    asyncio reads up to 256 KiB a time, and aiohttp's ``read_bufsize`` only
    pauses reading after a read: a streamed response nobody takes held one
    such read in the reader and one yielded chunk waiting, ~512 KiB per
    stream.  Bytes still in the kernel are not ours to count.

    Internal: the selector transport's ``max_size`` attribute (asyncio's
    ``_SelectorSocketTransport``); neither asyncio nor aiohttp can set a
    connection's receive size publicly.  Transports without it (uvloop) are
    left alone.
    """
    connection = upstream.connection
    limit_transport_reads(connection.transport if connection is not None else None, size)


def limit_transport_reads(transport: asyncio.BaseTransport | None, size: int) -> None:
    """``limit_reads`` for a transport at hand (the lean origin client's own connections)."""
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]


def origin_protocol(loop: asyncio.AbstractEventLoop) -> ResponseHandler:
    """aiohttp's client protocol for one connection the lean origin client owns.

    ``gateway.transports.origin_client`` writes each request head as the
    bytes it built and lets this protocol parse the answer: aiohttp's C
    parser, its body reader with flow control (reading pauses while a body
    waits unread), its read timeout and its errors (``ServerDisconnectedError``
    before the head, ``ClientPayloadError`` mid-body), without
    ``ClientSession._request``'s per-request objects and header copies.

    Internal: ``aiohttp.client_proto.ResponseHandler`` (what aiohttp's
    connector makes for every connection) and its methods ``read``,
    ``should_close``, ``is_connected``, ``close``, ``abort``,
    ``writing_paused``; see ``expect_response`` and ``drain_writes``, and
    ``_LazyReadTimeout`` for its read timer.
    """
    return _LazyReadTimeout(loop)


class _LazyReadTimeout(ResponseHandler):
    """aiohttp's client protocol with one read timer per connection instead of two per request.

    aiohttp cancels and re-creates a ``call_later`` timer on each read and
    each new request (``start_timeout`` and every ``data_received``): about
    4% of a server gateway's CPU with 100 pollers. Here those calls only move
    a deadline; the one armed timer, when it fires, re-arms itself for the
    deadline if it moved, and times the read out if it passed. Same timeout,
    same moment.

    Internal: every start, restart and stop of aiohttp's read timeout goes
    through ``_reschedule_timeout`` and ``_drop_timeout`` (its
    ``_read_timeout_handle`` is then only this class's).
    """

    _deadline: float | None = None

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._deadline = None
            return
        self._deadline = deadline = self._loop.time() + timeout
        if self._read_timeout_handle is None:
            self._read_timeout_handle = self._loop.call_at(deadline, self._read_timer)

    def _drop_timeout(self) -> None:
        self._deadline = None  # the armed timer finds no deadline and ends

    def _read_timer(self) -> None:
        self._read_timeout_handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._read_timeout_handle = self._loop.call_at(deadline, self._read_timer)
            return
        self._deadline = None
        self._on_read_timeout()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._read_timeout_handle is not None:  # not kept alive by the loop's timer heap
            self._read_timeout_handle.cancel()
            self._read_timeout_handle = None


def expect_response(
    protocol: ResponseHandler, *, head_only: bool, read_timeout: float | None, read_size: int
) -> None:
    """Make ``protocol`` parse the next answer (no body after a HEAD) and start its read timeout.

    Internal: ``ResponseHandler.set_response_params`` and ``start_timeout``, the
    two calls ``ClientSession._request`` makes on a connection before reading.
    No decompression: a proxy passes the body as the origin sent it.
    """
    protocol.set_response_params(
        skip_payload=head_only,
        read_until_eof=True,
        auto_decompress=False,
        read_timeout=read_timeout,
        read_bufsize=read_size,
    )
    protocol.start_timeout()


async def drain_writes(protocol: ResponseHandler) -> None:
    """Wait until the connection's transport is below its high-water mark again.

    Internal: ``BaseProtocol._drain_helper`` (what aiohttp's ``StreamWriter.drain``
    awaits); raises ``ClientConnectionResetError`` once the connection is gone.
    """
    await protocol._drain_helper()


#: The proxy a request to ``url`` goes through and the headers for it
#: (``Proxy-Authorization``), or None; ``upgrade``: the request asks for a
#: protocol upgrade (a WebSocket).
ProxyFor = Callable[[URL, bool], "tuple[URL, dict[str, str]] | None"]
#: A socket already connected to where a plain request to ``url`` goes (a
#: proxy's CONNECT tunnel), or None to dial ``url`` as usual; ``timeout``: connect's.
Dial = Callable[[URL, "float | None"], Awaitable["socket.socket | None"]]


class RoutingConnector(aiohttp.TCPConnector):
    """A TCPConnector that picks each request's proxy, or hands it a ready socket.

    ``proxy_for`` gives a request without a proxy of its own the proxy it
    goes through (aiohttp then sends it absolute-form, or ``CONNECT`` plus
    TLS for ``https``); for a plain request left without one, ``dial`` may
    supply the connected socket (a ``CONNECT`` tunnel for a ``ws://``
    upgrade, which a proxy cannot forward in absolute form).

    Internal: ``ClientRequest.update_proxy`` (undocumented; the session's own
    ``trust_env`` resolution also reads ``~/.netrc`` into forwarded requests
    and hops to a thread per request), and the override of
    ``TCPConnector._create_connection`` wrapping the socket with
    ``_wrap_existing_connection`` and ``_factory``, as aiohttp does with its
    own tunnels: no public API hands aiohttp a connected socket per request
    (``socket_factory`` makes unconnected ones).
    """

    def __init__(self, *, proxy_for: ProxyFor, dial: Dial, **options: Any) -> None:
        super().__init__(**options)
        self._proxy_for = proxy_for
        self._dial = dial

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        if req.proxy is None:
            found = self._proxy_for(req.url, "Upgrade" in req.headers)
            if found is not None:
                proxy, headers = found
                # aiohttp sends proxy headers with its CONNECT only: an
                # absolute-form request carries them itself.
                req.update_proxy(proxy, None, dict(headers) or None)
                if not req.is_ssl():
                    req.headers.update(headers)
        return await super().connect(req, traces, timeout)

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        if req.proxy is None and not req.is_ssl():
            sock = await self._dial(req.url, timeout.sock_connect or timeout.connect)
            if sock is not None:
                _, proto = await self._wrap_existing_connection(
                    self._factory, timeout=timeout, sock=sock, req=req
                )
                return proto
        return await super()._create_connection(req, traces, timeout)
