"""The client end of the HTTP long-poll transport (the wire rules: ``longpoll``).

A held poll is always waiting at the server (issue 13, as BOSH does with
``requests=2``): the poller keeps POLLS numbered polls in flight (POLLS_BUSY
while answers carry frames), the next one leaving before the previous answer
is read, and reads answers in number order. The poster sends each batch as
soon as there is one, up to POSTS in flight, numbered so the server feeds
them in order.

With a server that holds POSTs that poll (``route.poll_posts``), a small
batch that finds no more than the floor of polls in flight goes as a POST
carrying ``poll=``: it takes the batch up and stands in for the GET the
poller would send next. A legacy poll through the hop (its OPEN up, its
answer down) then costs one HTTP request instead of two: half the heads on
the wire and half the requests each gateway handles (issue 13 items 4, 5).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Literal

import aiohttp

from gateway.core.session.errors import CloseCode
from gateway.transports.errors import PEER_FORGOT
from gateway.transports.handshake import SessionRoute
from gateway.transports.hopsession import HopSession
from gateway.transports.http import describe, read_bounded

__all__ = ["POLLS", "POLLS_BUSY", "POSTS", "LongPollClient"]

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
#: Largest batch a POST may carry and still poll: its body is read at once, and a
#: large batch goes alone as a plain POST (see _post_loop).
_POLL_POST_BYTES: Final = 16 * 1024


class LongPollClient:
    """The client end of a long-poll transport: one poller (held polls) and one poster."""

    kind: Literal["long-poll"] = "long-poll"

    def __init__(self, hop: HopSession, route: SessionRoute, *, epoch: int) -> None:
        settings = route.settings
        self._hop = hop
        self._route = route
        # Only the token: the answers say no-store, and a type means nothing to the peer.
        self._headers = dict(route.headers)
        self._settings = settings
        self.epoch = epoch
        self.alive = False  # a request of this transport succeeded
        self.on_alive: Callable[[], None] | None = None
        #: Told when streamed requests are held back on the path (``longpoll_stream``).
        self.on_buffered: Callable[[], None] | None = None
        self.started_at = 0.0
        self._abandoned = False
        self._tasks: list[asyncio.Task[None]] = []
        #: Polls in flight (GETs, POSTs that poll) in number order: answers are read so.
        self._pending: deque[asyncio.Future[tuple[int, bytes]]] = deque()
        self._polled = 0  # poll numbers used
        self._seen = 0  # answers read
        self._busy = False  # the last answer carried frames
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
            asyncio.create_task(loop, name=f"hop-{name}-{sid}") for name, loop in self._loops()
        ]

    def _loops(self) -> tuple[tuple[str, Coroutine[None, None, None]], ...]:
        """The two loops ``start`` runs, by name: the one down, the one up."""
        return ("poll", self._poll_loop()), ("post", self._post_loop())

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
        route = self._route
        async with route.http.request(
            method, route.url, params=params, data=data, headers=self._headers, timeout=timeout
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

    @property
    def _floor(self) -> int:
        """Polls kept in flight: POLLS, or POLLS_BUSY while answers carry frames."""
        return POLLS_BUSY if self._busy else POLLS

    def _poll(self, method: str, data: bytes | None, **more: str) -> None:
        """Send the next numbered poll (a GET, or a POST carrying ``data``)."""
        self._polled += 1
        params = {
            "last": str(self._hop.core.last_received),
            "epoch": str(self.epoch),
            "poll": str(self._polled),
            "seen": str(self._seen),
            **more,
        }
        request = self._exchange(method, params, data, self._get_timeout)
        self._pending.append(asyncio.ensure_future(request))

    async def _poll_loop(self) -> None:
        """Keep the floor of polls in flight; read answers in the order sent."""
        hop = self._hop
        pending = self._pending
        try:
            while not self._abandoned and not hop.closed:
                while len(pending) < self._floor:
                    self._poll("GET", None)
                status, body = await pending[0]
                pending.popleft()
                self._seen += 1
                self._busy = bool(body)  # an idle session holds POLLS
                if self._abandoned or not self._answered(status, body):
                    return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self._fail(f"poll failed: {describe(exc)}")
        finally:
            _cancel_all(pending)

    def _polls_with(self, batch: bytes) -> bool:
        """Should ``batch`` go as a POST that polls (it then replaces the next GET)?"""
        return (
            self._route.poll_posts
            and len(batch) <= _POLL_POST_BYTES
            and len(self._pending) <= self._floor
            and not self._hop.closed
        )

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
                    if self._polls_with(batch):
                        self._poll("POST", batch, post=str(number))
                        continue
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
