"""The HTTP long-poll transport of a hop session: the server end, and the wire rules.

Wire format (see ``endpoint`` for the full table; the client end is
``longpoll_client``)::

    GET  /.hopgate/session/{id}?last=N&epoch=E&poll=P&seen=S
                                   held until the server has frames, or hold_time
    POST /.hopgate/session/{id}?epoch=E&post=K
                                   body = one batch from the client; the answer
                                   carries control frames (ACK, PONG, HELLO) only
    POST /.hopgate/session/{id}?epoch=E&post=K&poll=P&last=N&seen=S
                                   a POST that polls: its batch is fed, then it is
                                   held and answered as the GET numbered P

Every request carries the resume token in ``X-Hopgate-Token`` (never in the
URL, which gets logged). Bodies are batches of whole msgpack frames,
``application/octet-stream``, ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff``; a session whose client asked for lean
answers (a gateway, ``handshake.LONG_POLL_HEADER``) gets only ``no-store``.

A held GET is always waiting (issue 13, as BOSH does with ``requests=2``).
The client keeps POLLS GETs in flight (POLLS_BUSY while answers carry data),
numbered ``poll=1, 2, ...`` per transport, and reads their answers in that
order; the next GET leaves before the previous answer is read. The server
holds several and gives data only to the lowest number not yet answered, so
the order answers are read in is the order frames were written. POSTs leave
as soon as there is data (up to POSTS in flight), numbered ``post=1, 2, ...``;
the server feeds them in number order, a POST that overtook an earlier one
waiting for it (bounded by hold_time and ``max_session_posts`` waiting). A
POST that polls takes a number of both sequences: one request carries a
batch up and waits for frames down.

Only the first poll in line watches the session; it answers when there are
frames to send or an ACK that may not wait longer (``Session.wants_write_now``:
a POST that polls does not answer with the ACK at once, and with nothing
coming down the sender must still hear it within the ack delay).

Acks. ``last`` is the client's cumulative ack. ``seen`` is the number of the
last answer the client had read when it sent the GET: if ``last`` lacks what
the server had written up to that answer, an answer was lost and the server
resends from ``last + 1`` (``Session.rewind``); what later answers carry may
still be on its way and is not resent. The server's acks ride on POST
answers and on poll answers.

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
from typing import Final, Literal

from gateway.core.session.errors import RemoteProtocolError, SessionUsageError
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings

__all__ = ["CONTENT_TYPE", "LongPollServer"]

CONTENT_TYPE: Final = "application/octet-stream"


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

    async def get(
        self,
        last: int,
        poll: int | None = None,
        seen: int | None = None,
        *,
        deadline: float | None = None,
    ) -> bytes:
        """Hold until there is something to send, or hold_time; ValueError on a bad ``last``.

        ``poll`` numbers the client's GETs (and POSTs that poll) of this
        transport, ``seen`` is the last one whose answer it had read when it
        sent this one. Without them (one GET at a time) this GET releases any
        other. ``deadline`` (loop time): when an empty answer goes at the latest
        (default: hold_time from now).
        """
        if poll is None:
            self._release(all_held=True)
        elif poll < self._next_answer or poll in self._answered or poll in self._held:
            return b""  # a number already used: it takes nothing
        elif len(self._held) >= _MAX_HELD:
            self._release(all_held=False)
        key = 0 if poll is None else poll
        turn = self._held[key] = asyncio.Event()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            early = self._ack(last, poll, seen)
            if early is not None:
                return early
            if deadline is None:
                deadline = self._hop.now() + self._settings.hold_time
            return await self._hold(key, turn, deadline)
        finally:
            if self._held.get(key) is turn:
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

    async def _hold(self, key: int, turn: asyncio.Event, deadline: float) -> bytes:
        """Wait for data (or an ACK that may not wait longer) while first in line.

        Only the first in line (the lowest number not answered) watches the
        session; the others sleep on ``turn``, set when they are released or
        become first, so a change wakes one held poll, not all of them.
        """
        hop = self._hop
        core = hop.core
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while self._held.get(key) is turn and hop.is_current(self):
                    if key not in (0, self._next_answer):
                        turn.clear()
                        await turn.wait()
                    elif core.wants_write_now or hop.closed:
                        return self._answer(key, hop.take())
                    else:
                        await hop.wait_changed()
                return b""  # released (a newer poll took its place) or detached
        if self._held.get(key) is not turn or not hop.is_current(self):
            return b""
        # Hold time passed: maybe a bare ACK; the client polls again.
        return self._answer(key, hop.take(include_data=key in (0, self._next_answer)))

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
        turn = self._held.get(self._next_answer)
        if turn is not None:
            turn.set()  # first in line now: it watches the session

    async def feed(self, body: bytes, number: int | None = None) -> bool:
        """Feed one client batch in POST-number order; False if it broke the protocol.

        A client with several POSTs in flight numbers them (``post=``); one
        that overtook an earlier one waits for it (bounded by hold_time), so
        the session sees the batches in the order they were written.
        """
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
        ok = self._hop.feed(body)
        if self._waiting:
            self._hop.wake()  # the POSTs waiting for their turn (feed wakes only for output)
        return ok

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
