"""The HTTP long-poll transport of a hop session (both ends).

Wire format (see ``endpoint`` for the full table)::

    GET  /.hopgate/session/{id}?last=N&epoch=E   held until the server has
                                                 frames, or hold_time passed
    POST /.hopgate/session/{id}?epoch=E          body = one batch from the client;
                                                 the answer carries control
                                                 frames (ACK, PONG, HELLO) only

Every request carries the resume token in ``X-Hopgate-Token`` (never in the
URL, which gets logged). Bodies are batches of whole msgpack frames,
``application/octet-stream``, ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff``.

Acks. ``last`` is the client's cumulative ack and also the server's rewind
point: the response to the previous GET may have been lost, so the server
resends from ``last + 1`` (``Session.rewind``). The server's acks ride on POST
answers and on GET bodies.

Epochs. Each transport the client starts (WebSocket candidate or long-poll)
gets a new, larger epoch. The server attaches a long-poll transport when it
sees a request of a newer epoch and treats requests of an older one as stale:
their data is still fed (the sequence rules make that safe) but they attach
nothing and are answered empty, so a POST delayed past a switch to WebSocket
cannot drag the session back to long-poll.

At most one held GET per session: a newer GET releases the older one, which
answers empty (a GET takes frames only when it answers); the newer GET's
``last`` rewinds the sender, so whatever an older answer carried and the
client did not get is sent again.

The server counts its long-poll transport as lost when no GET has been held
for ``2 * hold_time``; the session then has ``resume_grace`` to come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Literal

import aiohttp

from gateway.core.session.errors import CloseCode, RemoteProtocolError, SessionUsageError
from gateway.transports.errors import PEER_FORGOT
from gateway.transports.handshake import SessionRoute
from gateway.transports.hopsession import HopSession
from gateway.transports.http import describe, read_bounded
from gateway.transports.session_settings import SessionSettings

__all__ = ["CONTENT_TYPE", "LongPollClient", "LongPollServer"]

CONTENT_TYPE: Final = "application/octet-stream"


class LongPollServer:
    """The server end of a long-poll transport: held GETs and POSTs of one epoch."""

    __slots__ = ("_abandoned", "_held", "_hop", "_idle", "_settings", "epoch")

    kind: Literal["long-poll"] = "long-poll"

    def __init__(self, hop: HopSession, settings: SessionSettings, *, epoch: int) -> None:
        self._hop = hop
        self._settings = settings
        self.epoch = epoch
        self._held: asyncio.Event | None = None
        self._abandoned = False
        self._idle: asyncio.TimerHandle | None = None
        self._arm_idle()

    def abandon(self) -> None:
        self._abandoned = True
        self._release()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    async def get(self, last: int) -> bytes:
        """Hold until there is something to send, or hold_time; ValueError on a bad ``last``."""
        hop = self._hop
        core = hop.core
        self._release()  # at most one held GET: the newer wins
        release = self._held = asyncio.Event()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            try:
                core.rewind(hop.now(), last)
            except SessionUsageError as exc:
                raise ValueError(str(exc)) from None
            except RemoteProtocolError as exc:
                hop.log.warning("< poll acknowledges unsent data: %s", exc.reason)
                hop.dispatch()
                return hop.take()  # the ABORT
            hop.dispatch()
            deadline = hop.now() + self._settings.hold_time
            while True:
                if release.is_set() or not hop.is_current(self):
                    return b""
                if core.has_payload_to_send or hop.closed:
                    return hop.take()
                remaining = deadline - hop.now()
                if remaining <= 0:
                    return hop.take()  # maybe a bare ACK; the client polls again
                try:
                    async with asyncio.timeout(remaining):
                        await hop.wait_changed()
                except TimeoutError:
                    pass
        finally:
            if self._held is release:
                self._held = None
                if not self._abandoned:
                    self._arm_idle()

    def post(self, body: bytes) -> tuple[bool, bytes]:
        """Feed one client batch; (protocol ok?, control frames to answer with)."""
        hop = self._hop
        ok = hop.feed(body)
        return ok, hop.take(include_data=False)

    def _release(self) -> None:
        if self._held is not None:
            self._held.set()
            self._held = None
            self._hop.wake()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(2 * self._settings.hold_time, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._abandoned and self._held is None:
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
        hop = self._hop
        core = hop.core
        try:
            while not self._abandoned and not hop.closed:
                params = {"last": str(core.last_received), "epoch": str(self.epoch)}
                status, body = await self._exchange("GET", params, None, self._get_timeout)
                if self._abandoned or not self._answered(status, body):
                    return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self._fail(f"poll failed: {describe(exc)}")

    async def _post_loop(self) -> None:
        hop = self._hop
        core = hop.core
        params = {"epoch": str(self.epoch)}
        try:
            while not self._abandoned:
                if core.has_payload_to_send or (hop.closed and core.wants_write):
                    batch = hop.take()
                    status, body = await self._exchange("POST", params, batch, self._post_timeout)
                    if not self._answered(status, body):
                        return
                elif hop.closed:
                    self.abandon()  # everything flushed: stop polling too
                    return
                else:
                    await hop.wait_changed()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if hop.closed:
                self.abandon()
            else:
                # The POST may or may not have arrived: the next transport replays from the ack.
                self._fail(f"post failed: {describe(exc)}")
