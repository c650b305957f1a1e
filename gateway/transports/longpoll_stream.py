"""Streamed long-poll between gateways (``stream``): no HTTP head per batch (issue 13 item 4).

Theory of operation
===================

Long-polling proper costs one HTTP request per batch each way: about 280
bytes of heads per delivered event between two gateways, more than the
event itself. When the server announced ``stream`` (``handshake``) the
client gateway carries the session over two long-lived requests instead,
as SockJS xhr-streaming and Comet "HTTP streaming" do::

    GET  /.hopgate/session/{id}?last=N&epoch=E&stream=1
         answer: 200, chunked; records until STREAM_BYTES or hold_time, then the end
    POST /.hopgate/session/{id}?epoch=E&post=K&stream=1
         body: chunked; records until STREAM_BYTES or hold_time, then the end
         answer: 200 head at once (before the body ends), empty body at its end

A *record* is a 4-byte big-endian length and that many bytes of one batch;
an empty record is a mark. The server writes a mark as soon as a streamed
GET arrives and sends the POST's head before reading its body, so the client
knows within STREAM_PROMPT that nothing on the path holds streamed bytes
back (nginx ``proxy_buffering``/``proxy_request_buffering``, squid, an
antivirus proxy). When either does not come in time the client falls back
for the rest of the session to one batch per request (``longpoll_client``,
sticky), on a new epoch. Nothing is lost or duplicated across any end,
cut or fallback: only whole records are fed, acks are the session's own
(ACK frames ride the streams both ways, as on a WebSocket), and a new
streamed GET's ``last=`` (or the next transport's) rewinds the sender to
what arrived; the core drops what it already has.

Each streamed request ends at STREAM_BYTES or hold_time, whichever first,
so intermediaries see bounded requests and idle timers (nginx: 60 s) are
never reached; the client opens the next one at once. One streamed GET and
one streamed POST are open at a time per epoch: a newer GET ends the older
one, and a POST waits for the previous number to be fed (``post=``).

Bounds: a record is at most ``max_batch_bytes`` (larger: the request is
refused and the transport fails); the server holds one record per POST
being read, counted like a POST body (``admission.SessionHolds.stream``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Final, Literal

import aiohttp
from aiohttp import web

from gateway.transports.aiohttp_internals import RelayedResponse
from gateway.transports.handshake import SessionRoute
from gateway.transports.hopsession import HopSession
from gateway.transports.http import describe, read_bounded
from gateway.transports.longpoll_client import LongPollClient
from gateway.transports.session_settings import SessionSettings
from gateway.transports.stream_records import MARK as _MARK
from gateway.transports.stream_records import RecordError, RecordReader, record

__all__ = [
    "STREAM_BYTES",
    "STREAM_PROMPT",
    "RecordError",
    "RecordReader",
    "StreamClient",
    "StreamServer",
    "record",
    "stream_answer",
]

#: Bytes a streamed request carries before it ends and the next one starts.
STREAM_BYTES: Final = 16 * 1024 * 1024
#: Longest wait for a streamed answer's mark (GET) or head (POST) before the
#: path counts as buffering streamed bytes (capped by connect_timeout).
STREAM_PROMPT: Final = 2.0
#: How much longer than the POST's head may a mark's round trip over both streams
#: take (HAProxy without ``option http-no-delay`` holds each streamed chunk ~200 ms).
STREAM_SLACK: Final = 0.1
#: Answers to streamed requests: not stored, and not held back by nginx.
_STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class _LeanStream(RelayedResponse, web.StreamResponse):
    """A streamed answer without ``Content-Type`` and ``Server`` (only gateways stream)."""


async def stream_answer(request: web.BaseRequest) -> web.StreamResponse:
    """A streamed answer, its head sent now: lean (only gateways stream), chunked."""
    resp = _LeanStream(headers=_STREAM_HEADERS)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


class _Budget:
    """When a streamed request ends: STREAM_BYTES written, or hold_time passed.

    One loop timer per request (not per record) wakes the writer at the end.
    """

    __slots__ = ("_timer", "ended", "left")

    def __init__(self, hop: HopSession, seconds: float) -> None:
        self.left = STREAM_BYTES
        self.ended = False
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, hop)

    def _expire(self, hop: HopSession) -> None:
        self.ended = True
        hop.wake()

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left <= 0:
            self.ended = True

    def cancel(self) -> None:
        self._timer.cancel()


async def _next_batch(
    hop: HopSession,
    budget: _Budget,
    still: Callable[[], bool],
    mark: Callable[[], bool] = lambda: False,
) -> bytes | None:
    """The next batch to stream (ACKs when they may not wait), b"" for a ``mark`` due, or None
    when the request ends."""
    core = hop.core
    while still() and not budget.ended:
        if mark():
            return b""
        if core.wants_write_now or (hop.closed and core.wants_write):
            batch = hop.take()
            if batch:
                budget.spend(len(batch))
                return batch
        if hop.closed:
            return None
        await hop.wait_changed()
    return None


class StreamServer:
    """The server end of a streamed long-poll transport (one epoch)."""

    kind: Literal["long-poll"] = "long-poll"

    def __init__(self, hop: HopSession, settings: SessionSettings, *, epoch: int) -> None:
        self._hop = hop
        self._settings = settings
        self.epoch = epoch
        self._abandoned = False
        self._down: object | None = None  # the streamed GET writing now
        self._echoes = 0  # marks read on POSTs, to be echoed on the GET
        self._next_post = 1
        self._idle: asyncio.TimerHandle | None = None
        self._arm_idle()

    def abandon(self) -> None:
        self._abandoned = True
        self._down = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._hop.wake()

    def _live(self, token: object) -> bool:
        return self._down is token and not self._abandoned and self._hop.is_current(self)

    async def down(self, request: web.BaseRequest, last: int) -> web.StreamResponse:
        """Stream batches on a GET's answer; a newer GET ends this one. ValueError: bad ``last``."""
        hop = self._hop
        try:
            hop.core.rewind(hop.now(), last)  # what earlier answers carried and did not arrive
        except Exception as exc:  # SessionUsageError, RemoteProtocolError (the session aborts)
            hop.dispatch()
            raise ValueError(str(exc)) from None
        hop.dispatch()
        token = self._down = object()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        budget = _Budget(hop, self._settings.hold_time)
        resp: web.StreamResponse | None = None
        try:
            resp = await stream_answer(request)
            await resp.write(_MARK)
            live = lambda: self._live(token)  # noqa: E731
            while (batch := await _next_batch(hop, budget, live, self._echo_due)) is not None:
                await resp.write(record(batch))
            await resp.write_eof()
        except (ConnectionError, RuntimeError) as exc:  # the client went away
            hop.log.debug("< streamed poll ended: %s", describe(exc))
        finally:
            budget.cancel()
            if self._down is token:
                self._down = None
                if not self._abandoned:
                    self._arm_idle()
        return resp if resp is not None else web.Response(status=499)

    def _echo_due(self) -> bool:
        if not self._echoes:
            return False
        self._echoes -= 1
        return True

    async def up(self, request: web.BaseRequest, number: int, hold: Callable[[int], None]) -> bool:
        """Feed a streamed POST's records in ``post=`` order; False if one broke the protocol.

        ``hold(n)`` counts the record being read (``SessionHolds.stream``;
        Refused beyond the bounds). RecordError on a malformed stream,
        TimeoutError when it outlives hold_time plus connect_timeout.
        """
        hop = self._hop
        settings = self._settings
        try:
            await self._turn(number)
            reader = RecordReader(request.content, settings.max_batch_bytes, hold)
            async with asyncio.timeout(settings.hold_time + settings.connect_timeout):
                while (batch := await reader.next()) is not None:
                    if not batch:  # a mark: echoed on the GET (the client times the round trip)
                        self._echoes = min(self._echoes + 1, 4)
                        hop.wake()
                    elif not hop.feed(batch):
                        return False
            return True
        finally:
            self._next_post = max(self._next_post, number + 1)
            hop.wake()  # the next POST's turn

    async def _turn(self, number: int) -> None:
        """Until every POST numbered below ``number`` ended (hold_time at most)."""
        hop = self._hop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.hold_time):
                while number > self._next_post and hop.is_current(self) and not hop.closed:
                    await hop.wait_changed()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        delay = 2 * self._settings.hold_time
        self._idle = asyncio.get_running_loop().call_later(delay, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._abandoned and self._down is None:
            self._hop.detach(self, f"no streamed poll for {2 * self._settings.hold_time:g} s")


class StreamClient(LongPollClient):
    """The client end: one streamed GET and one streamed POST open at a time.

    ``on_buffered`` is told when the path holds streamed bytes back; the
    owner then starts plain long-polling for the rest of the session.
    """

    def __init__(self, hop: HopSession, route: SessionRoute, *, epoch: int) -> None:
        super().__init__(hop, route, epoch=epoch)
        settings = route.settings
        self._prompt = min(STREAM_PROMPT, settings.connect_timeout)
        #: The probe: when the first POST's mark left, how long its head took, how long
        #: the mark took to come back on the GET (the server echoes it).
        self._mark_sent: float | None = None
        self._head_rtt: float | None = None
        self._echo_rtt: float | None = None
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout,
            sock_read=settings.hold_time + settings.connect_timeout,
        )

    def _loops(self) -> tuple[tuple[str, Coroutine[None, None, None]], ...]:
        return ("down", self._down_loop()), ("up", self._up_loop())

    def _buffered(self, why: str) -> None:
        if self._abandoned:
            return
        self._hop.log.info("= long-poll streams held back on the path (%s): off", why)
        if self.on_buffered is not None:
            self.on_buffered()
        self.alive = True  # the peer answers: resume at once, not after a back-off
        self._fail(f"streamed long-poll held back ({why})")

    def _live(self) -> bool:
        return not self._abandoned and self._hop.is_current(self)

    async def _down_loop(self) -> None:
        hop = self._hop
        retried = False
        try:
            while self._live() and not hop.closed:
                try:
                    if not await self._down_once():
                        return
                    retried = False
                except aiohttp.ServerDisconnectedError:
                    # Most often a pooled keep-alive connection the peer had just
                    # closed. The GET only names what we hold (last=), so asking
                    # again loses and repeats nothing; detaching would reconnect
                    # the whole session. A second failure in a row is real.
                    if retried:
                        raise
                    retried = True
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self._fail(f"streamed poll failed: {describe(exc)}")

    async def _down_once(self) -> bool:
        """One streamed GET, its records fed as they come; False once this transport is over."""
        route, hop = self._route, self._hop
        params = {"last": str(hop.core.last_received), "epoch": str(self.epoch), "stream": "1"}
        async with route.http.get(
            route.url, params=params, headers=self._headers, timeout=self._stream_timeout
        ) as resp:
            if resp.status != 200:
                limit = self._settings.max_batch_bytes
                self._refused(resp.status, await read_bounded(resp.content, limit))
                return False
            reader = RecordReader(resp.content, self._settings.max_batch_bytes)
            try:
                async with asyncio.timeout(self._prompt):
                    mark = await reader.next()
            except TimeoutError:
                self._buffered(f"no streamed answer within {self._prompt:g} s")
                return False
            if mark is None:
                return self._live()  # answered empty at once (a stale epoch)
            self._mark_alive()
            while (batch := await reader.next()) is not None:
                if batch and self._live():
                    hop.feed(batch)
                elif not batch and self._mark_sent is not None and self._echo_rtt is None:
                    self._echo_rtt = hop.now() - self._mark_sent
                    self._judge()
        return self._live()

    def _judge(self) -> None:
        """The probe's answers: fall back if the streams hold small writes back.

        The first POST's head and its mark's round trip over both streams
        should take about what the session-creating POST took (``route.rtt``);
        a proxy that waits for more bytes before passing a streamed chunk on
        (HAProxy without ``option http-no-delay``: ~200 ms each way) makes them far longer.
        The mark is held to the quicker of that POST and the head: a loaded
        machine that slowed the one creating POST does not hide such a proxy.
        """
        plain = self._route.rtt
        for what, took in (("its head", self._head_rtt), ("a mark", self._echo_rtt)):
            if took is None:
                continue
            if took > 1.5 * plain + STREAM_SLACK:
                ms = took * 1000
                self._buffered(
                    f"{what} took {ms:.0f} ms on a stream (a request {plain * 1000:.0f} ms)"
                )
                return
            plain = min(plain, took)

    async def _up_loop(self) -> None:
        hop = self._hop
        core = hop.core
        number = 0
        try:
            while self._live():
                if core.wants_write_now or (hop.closed and core.wants_write):
                    number += 1
                    await self._up_once(number)
                elif hop.closed:
                    self.abandon()  # everything flushed: stop polling too
                    return
                else:
                    await hop.wait_changed()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if hop.closed:
                self.abandon()
            else:
                self._fail(f"streamed post failed: {describe(exc)}")

    async def _up_once(self, number: int) -> None:
        """One streamed POST carrying batches as they come, until its budget ends."""
        route, hop = self._route, self._hop
        budget = _Budget(hop, self._settings.hold_time)

        async def records() -> AsyncIterator[bytes]:
            if number == 1:  # the probe: the server echoes it on the GET
                self._mark_sent = hop.now()
                yield _MARK
            while (batch := await _next_batch(hop, budget, self._live)) is not None:
                yield record(batch)

        params = {"epoch": str(self.epoch), "post": str(number), "stream": "1"}
        request = route.http.post(
            route.url,
            params=params,
            data=records(),
            headers=self._headers,
            timeout=self._stream_timeout,
        )
        sent = hop.now()
        try:
            try:
                async with asyncio.timeout(self._prompt):
                    resp = await request
                if number == 1:
                    self._head_rtt = hop.now() - sent
                    self._judge()
            except TimeoutError:
                budget.ended = True
                hop.wake()
                self._buffered(f"no answer to a streamed POST within {self._prompt:g} s")
                return
            async with resp:
                body = await read_bounded(resp.content, self._settings.max_batch_bytes)
                self._answered(resp.status, body)
        finally:
            budget.cancel()
