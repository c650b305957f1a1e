"""The HTTP long-poll transport of a hop session (both ends).

Wire format (see ``endpoint`` for the full table)::

    GET  /.hopgate/session/{id}?last=N&epoch=E&poll=P&seen=S
                                   held until the server has frames, or hold_time
    POST /.hopgate/session/{id}?epoch=E&post=K
                                   body = one batch from the client; the answer
                                   carries control frames (ACK, PONG, HELLO) only

Every request carries the resume token in ``X-Hopgate-Token`` (never in the
URL, which gets logged). Bodies are batches of whole msgpack frames,
``application/octet-stream``, ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff``.

A held GET is always waiting (issue 13, as BOSH does with ``requests=2``).
The client keeps POLLS GETs in flight (POLLS_BUSY while answers carry data),
numbered ``poll=1, 2, ...`` per transport, and reads their answers in that
order; the next GET leaves before the previous answer is read. The server
holds several and gives data only to the lowest number not yet answered, so
the order answers are read in is the order frames were written. POSTs leave
as soon as there is data (up to POSTS in flight), numbered ``post=1, 2, ...``;
the server feeds them in number order, a POST that overtook an earlier one
waiting for it (bounded by hold_time and ``max_session_posts`` waiting).

Acks. ``last`` is the client's cumulative ack. ``seen`` is the number of the
last answer the client had read when it sent the GET: if ``last`` lacks what
the server had written up to that answer, an answer was lost and the server
resends from ``last + 1`` (``Session.rewind``); what later answers carry may
still be on its way and is not resent. The server's acks ride on POST
answers and on GET bodies.

Epochs. Each transport the client starts (WebSocket candidate or long-poll)
gets a new, larger epoch. The server attaches a long-poll transport when it
sees a request of a newer epoch and treats requests of an older one as stale:
their data is still fed (the sequence rules make that safe) but they attach
nothing and are answered empty, so a POST delayed past a switch to WebSocket
cannot drag the session back to long-poll.

A client sending neither ``poll`` nor ``post`` (the browser shim, older
gateways) gets the one-at-a-time rules: a newer GET releases any held one,
which answers empty, and every GET's ``last`` rewinds the sender.

The server counts its long-poll transport as lost when no GET has been held
for ``2 * hold_time``; the session then has ``resume_grace`` to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import aiohttp

from gateway.core.session.errors import CloseCode, RemoteProtocolError, SessionUsageError
from gateway.transports.errors import PEER_FORGOT
from gateway.transports.handshake import SessionRoute
from gateway.transports.hopsession import HopSession
from gateway.transports.http import describe, read_bounded
from gateway.transports.session_settings import SessionSettings

__all__ = ["CONTENT_TYPE", "POLLS", "POLLS_BUSY", "POSTS", "LongPollClient", "LongPollServer"]

CONTENT_TYPE: Final = "application/octet-stream"


#: GETs a client keeps in flight (BOSH's ``requests=2``): one is always held at the
#: server while the answer to the other travels back. While answers carry data, up to
#: POLLS_BUSY: a GET takes a round trip to come back, and at 100 messages/s and
#: 50 ms RTT two would make most messages wait for one (an idle session holds POLLS).
POLLS: Final = 2
POLLS_BUSY: Final = 6
#: POSTs a client keeps in flight, so upstream data does not wait for a round trip
#: (100 messages/s at 50 ms RTT keep five busy). The server's ``max_session_posts``
#: counts bodies being read, which for a small batch takes one read.
POSTS: Final = 6
#: Bytes of POST bodies in flight beyond which the next POST waits for a slot.
_PIPELINED_BYTES: Final = 64 * 1024
#: Numbered GETs the server holds for one session; a further one releases the oldest.
_MAX_HELD: Final = 8
#: How far ahead of the next expected POST number one may be (400 beyond).
_POST_WINDOW: Final = 64


class LongPollServer:
    """The server end of a long-poll transport: held GETs and POSTs of one epoch."""

    __slots__ = (
        "_abandoned",
        "_answered",
        "_held",
        "_hop",
        "_idle",
        "_next_answer",
        "_next_post",
        "_sent_by",
        "_settings",
        "_waiting",
        "epoch",
    )

    kind: Literal["long-poll"] = "long-poll"

    def __init__(self, hop: HopSession, settings: SessionSettings, *, epoch: int) -> None:
        self._hop = hop
        self._settings = settings
        self.epoch = epoch
        #: Held GETs by poll number (0: an unnumbered GET, which releases every other).
        self._held: dict[int, asyncio.Event] = {}
        #: Lowest poll number not answered yet, and numbers above it already answered:
        #: data goes to GETs in number order, the order the client reads answers in.
        self._next_answer = 1
        self._answered: set[int] = set()
        #: Poll number -> the highest seq written when it was answered (replay decisions).
        self._sent_by: dict[int, int] = {}
        self._next_post = 1
        self._waiting = 0  # POSTs waiting for an earlier one
        self._abandoned = False
        self._idle: asyncio.TimerHandle | None = None
        self._arm_idle()

    def abandon(self) -> None:
        self._abandoned = True
        self._release(all_held=True)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    async def get(self, last: int, poll: int | None = None, seen: int | None = None) -> bytes:
        """Hold until there is something to send, or hold_time; ValueError on a bad ``last``.

        ``poll`` numbers the client's GETs of this transport, ``seen`` is the
        last one whose answer it had read when it sent this one. Without them
        (one GET at a time) this GET releases any other.
        """
        if poll is None:
            self._release(all_held=True)
        elif poll < self._next_answer or poll in self._answered or poll in self._held:
            return b""  # a number already used: it takes nothing
        elif len(self._held) >= _MAX_HELD:
            self._release(all_held=False)
        key = 0 if poll is None else poll
        release = self._held[key] = asyncio.Event()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            early = self._ack(last, poll, seen)
            if early is not None:
                return early
            return await self._hold(key, release)
        finally:
            if self._held.get(key) is release:
                del self._held[key]
            if key:
                self._done(key)
            if not self._held and not self._abandoned:
                self._arm_idle()

    def _ack(self, last: int, poll: int | None, seen: int | None) -> bytes | None:
        """Take the GET's ``last=`` as an ack; replay only what the client should have had."""
        hop = self._hop
        # The client had read every answer up to ``seen``: if it still lacks
        # what they carried, an answer was lost. Answers after it may be on the way.
        replay = poll is None or seen is None or last < self._sent_by.get(seen, 0)
        if seen is not None:
            for number in [n for n in self._sent_by if n < seen]:
                del self._sent_by[number]
        try:
            hop.core.rewind(hop.now(), last, replay=replay)
        except SessionUsageError as exc:
            raise ValueError(str(exc)) from None
        except RemoteProtocolError as exc:
            hop.log.warning("< poll acknowledges unsent data: %s", exc.reason)
            hop.dispatch()
            return hop.take()  # the ABORT
        hop.dispatch()
        return None

    async def _hold(self, key: int, release: asyncio.Event) -> bytes:
        hop = self._hop
        core = hop.core
        deadline = hop.now() + self._settings.hold_time
        while True:
            if release.is_set() or not hop.is_current(self):
                return b""
            first = key in (0, self._next_answer)
            if first and (core.has_payload_to_send or hop.closed):
                return self._answer(key, hop.take())
            remaining = deadline - hop.now()
            if remaining <= 0:  # maybe a bare ACK; the client polls again
                return self._answer(key, hop.take(include_data=first))
            try:
                async with asyncio.timeout(remaining):
                    await hop.wait_changed()
            except TimeoutError:
                pass

    def _answer(self, key: int, body: bytes) -> bytes:
        if key:
            self._sent_by[key] = self._hop.core.sent_upto
            if len(self._sent_by) > 4 * _MAX_HELD:
                del self._sent_by[min(self._sent_by)]
        return body

    def _done(self, poll: int) -> None:
        """GET ``poll`` answered: the next number in line may take data now."""
        if poll >= self._next_answer:
            self._answered.add(poll)
        if len(self._answered) > 4 * _MAX_HELD:  # a number the client never sent
            self._next_answer = min(self._answered)
        while self._next_answer in self._answered:
            self._answered.discard(self._next_answer)
            self._next_answer += 1
        self._hop.wake()

    async def post(self, body: bytes, number: int | None = None) -> tuple[bool, bytes]:
        """Feed one client batch in POST-number order; (protocol ok?, control frames to answer).

        A client with several POSTs in flight numbers them (``post=``); one
        that overtook an earlier one waits for it (bounded by hold_time), so
        the session sees the batches in the order they were written.
        """
        hop = self._hop
        if number is not None:
            if number > self._next_post + _POST_WINDOW:
                raise ValueError(
                    f"post={number} is beyond the POSTs that may be in flight "
                    f"(next expected {self._next_post})"
                )
            # Waiting bodies are bounded like bodies being read (max_session_posts);
            # beyond, a batch goes in out of order and the sender replays it.
            if number > self._next_post and self._waiting < self._settings.max_session_posts:
                self._waiting += 1
                try:
                    await self._post_turn(number)
                finally:
                    self._waiting -= 1
            self._next_post = max(self._next_post, number + 1)
        ok = hop.feed(body)  # wakes the POSTs waiting for their turn
        return ok, hop.take(include_data=False)

    async def _post_turn(self, number: int) -> None:
        """Until every POST numbered below ``number`` was fed (hold_time at most)."""
        hop = self._hop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.hold_time):
                while number > self._next_post and hop.is_current(self) and not hop.closed:
                    await hop.wait_changed()

    def _release(self, *, all_held: bool) -> None:
        """Answer held GETs empty: every one, or the oldest (a newer took its place)."""
        if not self._held:
            return
        keys = list(self._held) if all_held else [min(self._held)]
        for key in keys:
            self._held.pop(key).set()
        self._hop.wake()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(2 * self._settings.hold_time, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._abandoned and not self._held:
            self._hop.detach(self, f"no poll for {2 * self._settings.hold_time:g} s")


class LongPollClient:
    """The client end of a long-poll transport: one poller (held GET) and one poster."""

    kind: Literal["long-poll"] = "long-poll"

    def __init__(self, hop: HopSession, route: SessionRoute, *, epoch: int) -> None:
        settings = route.settings
        self._hop = hop
        self._route = route
        self._headers = {**route.headers, "Cache-Control": "no-store"}
        self._post_headers = {**self._headers, "Content-Type": CONTENT_TYPE}
        self._settings = settings
        self.epoch = epoch
        self.alive = False  # a request of this transport succeeded
        self.on_alive: Callable[[], None] | None = None
        self.started_at = 0.0
        self._abandoned = False
        self._tasks: list[asyncio.Task[None]] = []
        self._get_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout,
            sock_read=settings.hold_time + settings.connect_timeout,
        )
        self._post_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.connect_timeout
        )

    def start(self) -> None:
        hop = self._hop
        self.started_at = hop.now()
        hop.attach(self)
        sid = hop.session_id[:6]
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name=f"hop-poll-{sid}"),
            asyncio.create_task(self._post_loop(), name=f"hop-post-{sid}"),
        ]

    def abandon(self) -> None:
        if self._abandoned:
            return
        self._abandoned = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _mark_alive(self) -> None:
        if not self.alive:
            self.alive = True
            if self.on_alive is not None:
                self.on_alive()

    def _fail(self, reason: str) -> None:
        if not self._abandoned:
            self._hop.detach(self, reason)
            self.abandon()

    def _refused(self, status: int, body: bytes) -> None:
        """A non-200 answer: the peer forgot us, refused us, or broke."""
        hop = self._hop
        if status == 404:
            hop.abandon(CloseCode.SESSION_EXPIRED, PEER_FORGOT)
        elif status == 403:
            hop.abandon(CloseCode.AUTH_FAILED, "the peer refused our resume token")
        elif status == 400 and body:
            hop.feed(body)  # an ABORT saying why
            if not hop.closed:
                self._fail(f"the peer answered 400 ({body[:80]!r})")
        else:
            self._fail(f"the peer answered {status}")

    async def _exchange(
        self,
        method: str,
        params: dict[str, str],
        data: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, bytes]:
        """One request of this transport: (status, body), the body bounded by max_batch_bytes."""
        headers = self._headers if data is None else self._post_headers
        async with self._route.http.request(
            method, self._route.url, params=params, data=data, headers=headers, timeout=timeout
        ) as resp:
            limit = self._settings.max_batch_bytes
            return resp.status, await read_bounded(
                resp.content, limit, declared=resp.content_length
            )

    def _answered(self, status: int, body: bytes) -> bool:
        """Take an answer in: its frames fed to the session; False if the peer refused."""
        if status != 200:
            self._refused(status, body)
            return False
        self._mark_alive()
        if body:
            self._hop.feed(body)
        return True

    async def _poll_loop(self) -> None:
        """Keep POLLS (busy: POLLS_BUSY) GETs in flight; read answers in the order sent."""
        hop = self._hop
        core = hop.core
        pending: deque[asyncio.Task[tuple[int, bytes]]] = deque()
        number = seen = 0
        polls = POLLS
        try:
            while not self._abandoned and not hop.closed:
                while len(pending) < polls:
                    number += 1
                    params = {
                        "last": str(core.last_received),
                        "epoch": str(self.epoch),
                        "poll": str(number),
                        "seen": str(seen),
                    }
                    request = self._exchange("GET", params, None, self._get_timeout)
                    pending.append(asyncio.ensure_future(request))
                status, body = await pending[0]
                pending.popleft()
                seen += 1
                polls = POLLS_BUSY if body else POLLS  # an idle session holds POLLS
                if self._abandoned or not self._answered(status, body):
                    return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self._fail(f"poll failed: {describe(exc)}")
        finally:
            _cancel_all(pending)

    async def _post_loop(self) -> None:
        """POST each batch as it comes, up to POSTS in flight, numbered so the peer keeps order."""
        hop = self._hop
        core = hop.core
        inflight: dict[asyncio.Task[None], int] = {}
        number = 0
        try:
            while not self._abandoned:
                # Small batches go at once; a large one goes alone (the peer reads
                # max_session_posts bodies at a time, one batch's worth of bytes).
                room = not inflight or (
                    len(inflight) < POSTS and sum(inflight.values()) < _PIPELINED_BYTES
                )
                if room and (core.has_payload_to_send or (hop.closed and core.wants_write)):
                    number += 1
                    batch = hop.take()
                    task = asyncio.ensure_future(self._post(number, batch))
                    inflight[task] = len(batch)
                    task.add_done_callback(lambda done: self._posted(inflight, done))
                elif hop.closed and not inflight:
                    self.abandon()  # everything flushed: stop polling too
                    return
                else:
                    await hop.wait_changed()
        finally:
            _cancel_all(inflight)

    def _posted(self, inflight: dict[asyncio.Task[None], int], task: asyncio.Task[None]) -> None:
        """A POST ended: its slot is free; one that broke (a closed client) fails the transport."""
        inflight.pop(task, None)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._fail(f"post failed: {describe(exc)}")
        self._hop.wake()  # a slot is free (the post loop counts slots here, not in _post)

    async def _post(self, number: int, batch: bytes) -> None:
        hop = self._hop
        params = {"epoch": str(self.epoch), "post": str(number)}
        try:
            status, body = await self._exchange("POST", params, batch, self._post_timeout)
            self._answered(status, body)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if hop.closed:
                self.abandon()
            else:
                # The POST may or may not have arrived: the next transport replays from the ack.
                self._fail(f"post failed: {describe(exc)}")


def _cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Stop requests still in flight; retrieve how finished ones ended (no asyncio warning)."""
    for task in list(tasks):
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()
