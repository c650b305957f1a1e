"""The WebSocket transport of a hop session (both ends).

Handshake (seeds 001 and 004). The client sends a plain RFC 6455 GET to
``/.hopgate/session/{id}?epoch=N`` offering the ``hopgate.v1`` subprotocol,
with the resume token in ``X-Hopgate-Token``. The server answers ``404`` /
``403`` / ``400`` *before* any upgrade when the session, the token or the
offer is wrong, so a rejected upgrade is an ordinary HTTP answer on a reusable
connection; nothing of the session protocol is written before the ``101``.

The client takes the socket only when all three proofs hold: aiohttp checked
``Sec-WebSocket-Accept``, the server echoed ``hopgate.v1``, and the probe came
back (``HELLO+PING`` -> ``HELLO+PONG``: the server knows the session and
frames really flow both ways; a buffering proxy that passes the ``101`` and
then sits on the bytes fails here). Only then does the client attach the
socket and send its first regular batch; the server attaches when that batch
arrives (``docs/protocol.md`` section 5).

After that, :class:`WebSocketTransport` is the same on both ends: a receive
loop feeding each binary message to the session (one message = one batch),
and one writer sending each batch the session has as one binary message.
aiohttp's client masks its frames; autoping answers intermediaries' pings;
the session's own PING/PONG does the heartbeat, so aiohttp's is off.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Literal

import aiohttp
from aiohttp import WSMsgType, web

from gateway.core.session.errors import CloseCode, RemoteProtocolError, SessionUsageError
from gateway.transports.aiohttp_internals import write_frame_now
from gateway.transports.errors import HandshakeRefused, TransportFailed
from gateway.transports.handshake import SessionRoute
from gateway.transports.hopsession import WRITE_NOW_BYTES, HopSession
from gateway.transports.http import describe
from gateway.transports.session_settings import SessionSettings

__all__ = ["SUBPROTOCOL", "WebSocketTransport", "accept_websocket", "open_websocket"]

SUBPROTOCOL: Final = "hopgate.v1"
#: Writes closer together than this (seconds) are gathered into one (``_coalescing``).
COALESCE: Final = 0.0005
#: ... unless the last write was at least this big: its syscall is already
#: amortised, and holding each large message for the timer (epoll rounds it
#: up to 1 ms) halved 64 KiB throughput (stream credit waits on every write).
COALESCE_BYTES: Final = 16 * 1024
#: Close handshake of an abandoned socket: it may be black-holed, do not wait long.
_CLOSE_TIMEOUT: Final = 2.0

AnyWebSocket = aiohttp.ClientWebSocketResponse | web.WebSocketResponse


class WebSocketTransport:
    """A probed WebSocket carrying a hop session.

    Writing costs no task wake-up per message: while the socket is current,
    the session's ``wake`` calls ``_flush_soon``, which schedules one
    ``_flush`` per loop turn (``call_soon``) when the core wants to write
    now; ``_flush`` writes each batch synchronously (``write_frame_now``).
    A sender whose call ends its turn anyway (the tunnel driver's flush:
    ``HopSession.wake(now=True)``) has ``_flush`` run in that call instead.
    Once ``WRITE_NOW_BYTES`` are queued the write happens in ``wake`` itself:
    a sender queueing a burst without yielding feeds the peer as it goes.
    The writer task sleeps until the socket's buffer is full (it awaits
    ``send_bytes``, which drains) or the session is over (it closes).
    """

    kind: Literal["websocket"] = "websocket"

    def __init__(self, hop: HopSession, ws: AnyWebSocket, *, epoch: int) -> None:
        self._hop = hop
        self._ws = ws
        self.epoch = epoch
        self._abandoned = False
        self._flush_due = False
        self._blocked = False  # the writer task is draining the socket
        self._kick = asyncio.Event()  # the writer task has work: drain or close
        self._unsent: bytes | None = None  # taken, not written: the socket was full
        self._last_write = 0.0  # loop time of the last flush that wrote
        self._last_size = 0  # bytes of the last batch written
        self._read = False  # a message came in since the last flush: answer at once
        self._held_since: float | None = None  # a flush waits for more since then

    async def run(self, first_batch: bytes | None = None) -> None:
        """Attach (unless already), then carry the session until the socket or the session ends."""
        hop = self._hop
        hop.attach(self)
        writer = asyncio.create_task(self._write_loop())
        hop.flusher = self._flush_soon
        self._flush_soon()
        reason = "closed by peer"
        try:
            if first_batch is not None:
                hop.feed(first_batch)
            reason = await self._read_loop()
        except (aiohttp.ClientError, ConnectionError) as exc:
            reason = f"connection failed: {describe(exc)}"
        finally:
            if not writer.done():
                # Let a finished session flush its last ACK/ABORT first.
                if hop.closed and not self._abandoned:
                    with contextlib.suppress(TimeoutError, Exception):
                        async with asyncio.timeout(_CLOSE_TIMEOUT):
                            await asyncio.shield(writer)
                writer.cancel()
            elif not writer.cancelled():
                # A write that failed as the socket closed (a stopping gateway, a reset
                # peer): the read loop's reason says why; retrieved, or asyncio logs a
                # "Task exception was never retrieved" traceback per session.
                writer.exception()
            self._unhook()
            hop.detach(self, reason)
            await self._close(CloseCode.GOING_AWAY, b"")

    def abandon(self) -> None:
        if self._abandoned:
            return
        self._abandoned = True
        self._unhook()
        self._hop.spawn(self._close(CloseCode.GOING_AWAY, b"transport switched"))

    def _unhook(self) -> None:
        if self._hop.flusher == self._flush_soon:
            self._hop.flusher = None

    def _writing(self) -> bool:
        hop = self._hop
        return hop.is_current(self) or (hop.closed and not self._abandoned)

    def _flush_soon(self, now: bool = False) -> None:
        """The session's ``flusher``; ``now``: flush in this call (see ``HopSession.wake``)."""
        if self._hop.unsent_bytes >= WRITE_NOW_BYTES:
            self._write_now()
            return
        if not self._flush_due and (self._hop.core.wants_write_now or self._hop.closed):
            if now:
                self._flush()
                return
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what the core has now, synchronously; hand over to the writer task if it can't."""
        self._flush_due = False
        if self._blocked or not self._writing():
            return
        if self._coalescing():
            return
        self._write()

    def _write_now(self) -> None:
        """Write a full batch at once, within the turn that queued it (see WRITE_NOW_BYTES)."""
        if not self._blocked and self._writing():
            self._last_write = self._hop.now()
            self._held_since = None
            self._write()

    def _write(self) -> None:
        hop, ws = self._hop, self._ws
        core = hop.core
        try:
            while core.wants_write_now:
                batch = hop.take()
                self._last_size = len(batch)
                if not write_frame_now(ws, batch):
                    self._unsent = batch  # the writer task sends it, waiting for room
                    self._blocked = True
                    break
        except ConnectionError:
            pass  # the socket is closing: the read loop ends and says why
        if self._blocked or hop.closed:
            self._kick.set()

    def _coalescing(self) -> bool:
        """Wait another loop turn (True) while small writes stream: one syscall for several.

        A message that comes alone (the last write was more than COALESCE ago)
        goes at once, and so do one after a large write (COALESCE_BYTES) and
        one after the peer sent something: it may be stream credit or an ACK
        the peer's sender waits for (held, a 64 KiB stream ran at half speed).
        A stream of small sends is written every COALESCE (one timer per write).
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        answer, self._read = self._read, False
        if (
            answer
            or now - self._last_write >= COALESCE
            or self._last_size >= COALESCE_BYTES
            or self._hop.closed
        ):
            self._last_write = now
            self._held_since = None
            return False
        if self._held_since is None:
            self._held_since = now
        elif now - self._held_since >= COALESCE:
            self._last_write = now
            self._held_since = None
            return False
        self._flush_due = True  # later sends find the flush scheduled: one timer per write
        loop.call_at(self._held_since + COALESCE, self._flush)
        return True

    async def _read_loop(self) -> str:
        ws, hop = self._ws, self._hop
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                self._read = True
                hop.feed(msg.data)
            elif kind is WSMsgType.TEXT:
                hop.log.warning("< text message on a hop WebSocket; closing the session")
                hop.abandon(CloseCode.PROTOCOL_ERROR, "text message on a hop WebSocket")
                await self._close(CloseCode.PROTOCOL_ERROR, b"text message on a hop WebSocket")
                return "protocol error"
            elif kind is WSMsgType.ERROR:
                return f"error: {ws.exception()!r}"
            else:  # CLOSE, CLOSING, CLOSED
                return f"closed ({ws.close_code})"

    async def _write_loop(self) -> None:
        """Drain a full socket (``send_bytes`` waits), and close once the session is over."""
        hop, ws = self._hop, self._ws
        core = hop.core
        while self._writing():
            await self._kick.wait()
            self._kick.clear()
            batch, self._unsent = self._unsent, None
            if batch is not None:
                await ws.send_bytes(batch)
            while self._writing() and core.wants_write_now:
                await ws.send_bytes(hop.take())
            self._blocked = False
            if hop.closed and not self._abandoned:
                code, reason = hop.close_info or (CloseCode.NORMAL, "")
                await self._close(code, reason.encode("utf-8"))
                return
            self._flush_soon()

    async def _close(self, code: int, message: bytes) -> None:
        if self._ws.closed:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._ws.close(code=_ws_code(code), message=message[:123])


def _ws_code(code: int) -> int:
    """A code RFC 6455 lets us send (1004-1006 and 1015 are reserved)."""
    if (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999:
        return code
    return int(CloseCode.INTERNAL_ERROR)


# -- client end ---------------------------------------------------------------------


async def open_websocket(hop: HopSession, route: SessionRoute, *, epoch: int) -> WebSocketTransport:
    """Handshake and probe a WebSocket candidate; TransportFailed says why it is unusable.

    ``HandshakeRefused`` (a subclass) when the peer answered without a
    ``101``. The returned transport is not attached yet: ``await
    transport.run()`` does it.
    """
    settings = route.settings
    try:
        async with asyncio.timeout(settings.connect_timeout):
            ws = await route.http.ws_connect(
                route.url.with_query(epoch=str(epoch)),
                protocols=(SUBPROTOCOL,),
                headers=route.headers,
                autoclose=True,
                autoping=True,
                heartbeat=None,
                compress=0,
                max_msg_size=settings.max_batch_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT),
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise HandshakeRefused(exc.status, exc.message) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportFailed(f"WebSocket connection failed: {describe(exc)}") from exc
    except TimeoutError as exc:
        raise TransportFailed("WebSocket handshake timed out") from exc
    try:
        if ws.protocol != SUBPROTOCOL:
            raise TransportFailed(f"the 101 did not echo the {SUBPROTOCOL} subprotocol")
        await _probe(hop, ws, settings)
    except (aiohttp.ClientError, OSError) as exc:
        await ws.close(code=CloseCode.GOING_AWAY)
        raise TransportFailed(f"WebSocket probe failed: {describe(exc)}") from exc
    except BaseException:
        await ws.close(code=CloseCode.GOING_AWAY)
        raise
    return WebSocketTransport(hop, ws, epoch=epoch)


async def _probe(
    hop: HopSession, ws: aiohttp.ClientWebSocketResponse, settings: SessionSettings
) -> None:
    core = hop.core
    try:
        nonce, batch = core.probe_request(hop.now())
    except SessionUsageError as exc:
        raise TransportFailed("the session is closed") from exc
    await ws.send_bytes(batch)
    try:
        async with asyncio.timeout(settings.probe_timeout):
            msg = await ws.receive()
    except TimeoutError:
        raise TransportFailed(
            f"no answer to the probe within {settings.probe_timeout:g} s "
            "(a proxy may be holding WebSocket frames)"
        ) from None
    if msg.type is not WSMsgType.BINARY:
        raise TransportFailed(f"the peer answered the probe with {msg.type.name}, not a HELLO")
    try:
        answered = core.probe_check(msg.data, hop.now())
    except RemoteProtocolError as exc:
        raise TransportFailed(f"bad probe reply: {exc.reason}") from exc
    hop.dispatch()  # the probe's PONG may also have counted as progress
    if answered is None or answered.nonce != nonce:
        raise TransportFailed("the probe reply answered no probe of ours")


# -- server end ---------------------------------------------------------------------


def offers_subprotocol(request: web.BaseRequest) -> bool:
    offered = request.headers.getall("Sec-WebSocket-Protocol", [])
    return any(p.strip() == SUBPROTOCOL for value in offered for p in value.split(","))


async def accept_websocket(
    request: web.BaseRequest, hop: HopSession, settings: SessionSettings, *, epoch: int
) -> web.WebSocketResponse:
    """Complete the 101, answer the probe, then carry the session once the client commits."""
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        autoping=True,
        heartbeat=None,
        compress=False,
        max_msg_size=settings.max_batch_bytes,
        timeout=_CLOSE_TIMEOUT,
    )
    await ws.prepare(request)
    first = await _receive_within(ws, settings.probe_timeout)
    if first is None or hop.closed:
        await ws.close(code=CloseCode.GOING_AWAY if first is None else CloseCode.SESSION_EXPIRED)
        return ws
    try:
        reply = hop.core.probe_reply(first, hop.now())
    except RemoteProtocolError as exc:
        # A bad probe fails the candidate only; the session is untouched.
        hop.log.info("< bad probe on a WebSocket candidate: %s", exc.reason)
        await ws.close(code=_ws_code(exc.code), message=exc.reason.encode()[:123])
        return ws
    except SessionUsageError:
        await ws.close(code=CloseCode.SESSION_EXPIRED)
        return ws
    await ws.send_bytes(reply)
    # The client sends its first regular batch as soon as it has our reply.
    batch = await _receive_within(ws, settings.probe_timeout + settings.hold_time)
    if batch is None or hop.closed:
        await ws.close(code=CloseCode.GOING_AWAY)
        return ws
    if epoch < hop.epoch:
        await ws.close(code=CloseCode.GOING_AWAY, message=b"stale transport")
        return ws
    hop.epoch = epoch
    await WebSocketTransport(hop, ws, epoch=epoch).run(first_batch=batch)
    return ws


async def _receive_within(ws: web.WebSocketResponse, timeout: float) -> bytes | None:
    try:
        async with asyncio.timeout(timeout):
            msg = await ws.receive()
    except TimeoutError:
        return None
    return msg.data if msg.type is WSMsgType.BINARY else None
