"""Poll-ahead on both gateways: the server issues a client's next poll, the client keeps the answer.

Server gateway (``pollahead_server.AheadServer``, one per answered hop session with
``--poll-ahead`` rules). A tunnelled request that a rule names and whose
stream asked for poll-ahead (the hop-by-hop ``Hopgate-Poll-Ahead`` field an
up-to-date client gateway sets; a relay or an older gateway strips or never
sends it) is *watched*: its answer body is kept (bounded) as it streams down.
Once the whole answer is in the tunnel, the rule reads the next poll from it
and an ``ANNOUNCE`` goes down ahead of the stream's END. Nothing is issued
until the client gateway ``ACCEPT``s; then a task per *chain* sends the
predicted poll to the origin, pushes its answer down at once (``ANSWER``,
carrying the chain's next prediction, issued at once), and so on while the
client keeps using them (at most ``WINDOW`` unconfirmed answers: a full
window pauses the chain, its next prediction already announced, until the
client takes an answer (``USED``); ``STOP`` ends it). A predicted request is
never aborted: its answer always goes down.

Client gateway (:class:`AheadClient`, one per opening link). It remembers
which client request each live stream carries, so an ``ANNOUNCE`` names a
client; the ``Book`` (``core/pollahead/book.py``) holds the predictions.
``Opener.forward`` asks :meth:`AheadClient.answer` first: a request that is
the predicted poll waits for (or takes) its answer; one that contradicts a
chain drops it and travels as usual. Why nothing is lost or duplicated:
``docs/howto/poll-ahead.md``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from gateway.core import headers as hdr
from gateway.core.pollahead.book import Book, Chain, Hit, identity_of
from gateway.core.pollahead.codec import (
    MAX_PART,
    AnswerHead,
    Descriptor,
    Op,
    decode_answer,
    decode_descriptor,
    decode_part,
)
from gateway.core.tunnel.events import PushReceived
from gateway.glue.driver import TunnelDriver
from gateway.glue.heads import decode_headers

__all__ = ["MARK", "MAX_PUSH_BODY", "WINDOW", "AheadClient", "mark"]

#: Hop-by-hop request field: "this stream's client gateway takes PUSH frames".
MARK: Final = "Hopgate-Poll-Ahead"
_TOKEN: Final = MARK.lower()
#: Unconfirmed answers per chain (server) - the client's queue bound follows from it.
WINDOW: Final = 8
#: Chains and held answer bytes per client gateway.
MAX_CLIENT_CHAINS: Final = 1024
MAX_HELD_BYTES: Final = 64 * 1024 * 1024
#: Largest predicted answer a server gateway pushes (a bigger one is answered 502).
MAX_PUSH_BODY: Final = 8 * 1024 * 1024


def mark(headers: CIMultiDict[str]) -> None:
    """Ask the next gateway for poll-ahead on this stream (a client's own field never passes)."""
    headers.popall(MARK, None)
    headers[MARK] = "1"
    headers.add("Connection", _TOKEN)


def mark_pairs(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """:func:`mark` on a head as the byte pairs a stream's OPEN carries."""
    kept = [(name, value) for name, value in headers if name.lower() != _MARK_NAME]
    kept += _MARK_PAIRS
    return kept


_MARK_NAME: Final = MARK.lower().encode()
_MARK_PAIRS: Final = ((MARK.encode(), b"1"), (b"Connection", _TOKEN.encode()))


# -- client gateway -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class AheadClient:
    """Holds predicted answers for one opening link (see the module docstring)."""

    __slots__ = (
        "_book",
        "_bytes",
        "_chains",
        "_link",
        "_partial",
        "_parts",
        "_streams",
        "_timer",
        "_waiters",
    )

    def __init__(self, link: TunnelDriver) -> None:
        self._link = link
        self._book = Book()
        self._streams: dict[int, tuple[web.BaseRequest, str]] = {}
        self._waiters: dict[int, asyncio.Event] = {}
        #: Answers arriving in PARTs, only for predictions the book holds; their bytes
        #: count against MAX_HELD_BYTES like held answers (``_partial``).
        self._parts: dict[int, tuple[AnswerHead, bytearray]] = {}
        self._partial = 0
        self._timer: asyncio.TimerHandle | None = None
        self._chains = self._bytes = 0  # what this link adds to the gateway's totals
        link.on_push = self.on_push
        link.on_lost = self.lost

    def track(self, sid: int, request: web.BaseRequest, target: str) -> None:
        self._streams[sid] = (request, target)

    def untrack(self, sid: int) -> None:
        self._streams.pop(sid, None)

    def _send(self, op: Op, push_id: int) -> None:
        link = self._link
        if not link.tunnel.closed:
            link.tunnel.push(push_id, op, b"")
            link.schedule_flush()

    def _sync(self) -> None:
        """Keep the gateway-wide totals (caps) equal to the sum over links."""
        stats, book = self._link.stats.poll_ahead, self._book
        held = book.held_bytes + self._partial
        stats.chains += book.chains - self._chains
        stats.held_bytes += held - self._bytes
        self._chains, self._bytes = book.chains, held

    # -- from the server gateway ------------------------------------------------------------

    def on_push(self, event: PushReceived) -> None:
        op = event.op
        self._link.log.debug("< poll-ahead op %d for %d", op, event.stream_id)
        if op == Op.ANNOUNCE:
            self._announced(event.stream_id, event.data)
        elif op == Op.ANSWER:
            head = decode_answer(event.stream_id, event.data)
            if head is not None:
                self._answer_head(head)
        elif op == Op.PART:
            self._part(event.stream_id, event.data)
        elif op == Op.VOID:
            self._book.voided(event.stream_id)
            self._wake(event.stream_id)
        self._sync()

    def _announced(self, sid: int, data: bytes) -> None:
        d = decode_descriptor(data)
        tracked = self._streams.get(sid)
        if d is None:
            return
        stats = self._link.stats.poll_ahead
        room = stats.chains < MAX_CLIENT_CHAINS and stats.held_bytes < MAX_HELD_BYTES
        chain = None
        if tracked is not None and room and _same_endpoint(*tracked, d):
            request = tracked[0]
            identity = identity_of(request.remote, list(request.headers.items()))
            chain = self._book.announce(identity, d)
        if chain is None:
            self._send(Op.STOP, d.push_id)
            return
        stats.made += 1
        self._send(Op.ACCEPT, d.push_id)

    def _answer_head(self, head: AnswerHead) -> None:
        """An ANSWER: whole, or the start of one that continues in PARTs.

        Only a prediction still awaiting its answer may start a multi-part
        one; any other push id (answered already, an orphan, a peer's
        invention) is counted and ended as a whole answer would be, so a
        peer cannot make us hold bytes for it.
        """
        push_id = head.push_id
        if push_id in self._parts:
            return  # a second head for one answer: the first stands
        if not head.more or not self._book.awaits(push_id):
            self._answered(head, head.body)
        elif self._room(len(head.body)):
            self._parts[push_id] = (head, bytearray(head.body))
            self._partial += len(head.body)
        else:
            self._give_up(head)

    def _part(self, push_id: int, data: bytes) -> None:
        parsed = decode_part(data)
        pending = self._parts.get(push_id)
        if parsed is None or pending is None:
            return
        chunk, more = parsed
        head, body = pending
        if len(body) + len(chunk) > MAX_PUSH_BODY + MAX_PART or not self._room(len(chunk)):
            del self._parts[push_id]  # over our bounds: the answer is not held
            self._partial -= len(body)
            self._give_up(head)
            return
        body += chunk
        self._partial += len(chunk)
        if not more:
            del self._parts[push_id]
            self._partial -= len(body)
            self._answered(head, bytes(body))

    def _room(self, more: int) -> bool:
        """Whether ``more`` bytes still fit under the gateway's MAX_HELD_BYTES."""
        return self._link.stats.poll_ahead.held_bytes + more <= MAX_HELD_BYTES

    def _give_up(self, head: AnswerHead) -> None:
        """An answer too big to hold: its client's poll travels as usual; the chain ends."""
        self._book.voided(head.push_id)
        self._wake(head.push_id)
        if head.next is not None:
            self._send(Op.STOP, head.next.push_id)

    def _answered(self, head: AnswerHead, body: bytes) -> None:
        stats = self._link.stats.poll_ahead
        held = _Held(head.status, head.reason, head.headers, body)
        following = head.next
        got = self._book.answered(head.push_id, held, len(body), following, self._link.loop.time())
        if got is None:
            stats.dropped += 1
            if following is not None:
                self._send(Op.STOP, following.push_id)
            return
        if following is not None:
            if self._book.holds(following.push_id):
                stats.made += 1
            else:
                self._send(Op.STOP, following.push_id)
        self._wake(head.push_id)
        self._arm(self._book.hold_of(head.push_id))

    def _wake(self, push_id: int) -> None:
        waiter = self._waiters.pop(push_id, None)
        if waiter is not None:
            waiter.set()

    def lost(self) -> None:
        """The hop session ended: nothing more will come; waiting polls are answered 502."""
        self._book.clear()
        self._parts.clear()
        self._partial = 0
        self._sync()
        for waiter in self._waiters.values():
            waiter.set()
        self._waiters.clear()
        if self._timer is not None:
            self._timer.cancel()

    # -- expiry -------------------------------------------------------------------------------

    def _arm(self, hold: float) -> None:
        if self._timer is None:
            self._timer = self._link.loop.call_later(hold + 0.05, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._link.loop.time()
        for chain in self._book.expired(now):
            self._end(chain, "expired")
        self._sync()
        hold = self._book.next_expiry(now)
        if hold is not None:
            self._arm(hold)

    def _end(self, chain: Chain, outcome: str) -> None:
        """Drop a chain: its answers count as ``outcome``, the server stops issuing."""
        stats, tail = self._link.stats.poll_ahead, chain.tail
        answered = sum(1 for held in self._book.drop(chain) if held.answer is not None)
        if outcome == "expired":
            stats.expired += answered
        else:
            stats.dropped += answered
        if tail:
            self._send(Op.STOP, tail)

    # -- the client's next request ----------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self._book.chains > 0

    async def answer(self, request: web.BaseRequest, target: str) -> web.StreamResponse | None:
        """This client's predicted poll, answered here; None: send ``request`` as usual."""
        if request.body_exists:
            return None
        identity = identity_of(request.remote, list(request.headers.items()))
        for _ in range(WINDOW + 2):  # each round takes or waits for one held prediction
            found = self._book.lookup(identity, request.method, target)
            if isinstance(found, Hit):
                self._link.log.debug("= poll-ahead: %s is push %d", target, found.held.push_id)
            if found is None:
                return None
            if isinstance(found, Chain):
                self._end(found, "dropped")
                self._sync()
                return None
            if found.held.answer is None:
                if not await self._wait(found):
                    return _lost(self._link.name)
                continue
            return self._serve(request, found)
        return None

    async def _wait(self, hit: Hit) -> bool:
        """Wait for the answer of ``hit``; False if the session was lost meanwhile."""
        push_id = hit.held.push_id
        waiter = self._waiters.get(push_id)
        if waiter is None:
            waiter = self._waiters[push_id] = asyncio.Event()
        await waiter.wait()
        return not self._link.tunnel.closed

    def _serve(self, request: web.BaseRequest, hit: Hit) -> web.StreamResponse:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client gave up on this poll: keep the answer for its next one.
            return web.Response(status=503, text="client gone\n")
        held = hit.held.answer
        assert isinstance(held, _Held)
        self._book.take(hit)
        self._sync()
        self._link.stats.poll_ahead.used += 1
        self._send(Op.USED, hit.held.push_id)
        headers = hdr.response_headers_for_downstream(
            decode_headers(held.headers),
            http_version=(1, 1),
            via_name=self._link.forwarder.config.via_name,
        )
        headers.popall("Content-Length", None)
        headers.popall("Transfer-Encoding", None)
        return web.Response(
            status=held.status, reason=held.reason or None, headers=headers, body=held.body
        )


def _same_endpoint(request: web.BaseRequest, target: str, d: Descriptor) -> bool:
    """An announcement may only predict the method and path of the request it came with."""
    path = target.partition("?")[0].encode("latin-1", "replace")
    return d.method == request.method and d.target.partition(b"?")[0] == path


def _lost(name: str) -> web.Response:
    return web.Response(
        status=502,
        text=f"hop session to {name} lost after the predicted poll was sent; not retried\n",
        headers={"Cache-Control": "no-store"},
    )
