"""Poll-ahead on both gateways: the server issues a client's next poll, the client keeps the answer.

Server gateway (:class:`AheadServer`, one per answered hop session with
``--poll-ahead`` rules). A tunnelled request that a rule names and whose
stream asked for poll-ahead (the hop-by-hop ``Hopgate-Poll-Ahead`` field an
up-to-date client gateway sets; a relay or an older gateway strips or never
sends it) is *watched*: its answer body is kept (bounded) as it streams down.
Once the whole answer is in the tunnel, the rule reads the next poll from it
and an ``ANNOUNCE`` goes down ahead of the stream's END. Nothing is issued
until the client gateway ``ACCEPT``s; then a task per *chain* sends the
predicted poll to the origin, pushes its answer down at once (``ANSWER``,
carrying the chain's next prediction, issued at once), and so on while the
client keeps using them (at most ``WINDOW`` unconfirmed answers; ``STOP``
ends it). A predicted request is never aborted: its answer always goes down.

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

import aiohttp
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
    encode_answer,
    encode_descriptor,
    encode_part,
)
from gateway.core.pollahead.predict import MAX_PARSED_BODY, Answer, next_target
from gateway.core.pollahead.rules import Rule, rule_for
from gateway.core.tunnel.events import PushReceived, RequestReceived
from gateway.glue.driver import TunnelDriver
from gateway.glue.heads import decode_headers, under_upstream

__all__ = ["MARK", "AheadClient", "AheadServer", "Watch", "mark"]

#: Hop-by-hop request field: "this stream's client gateway takes PUSH frames".
MARK: Final = "Hopgate-Poll-Ahead"
_TOKEN: Final = MARK.lower()
#: Unconfirmed answers per chain (server) - the client's queue bound follows from it.
WINDOW: Final = 8
#: Chains (each holding one origin connection) per server gateway.
MAX_SERVER_CHAINS: Final = 256
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


# -- server gateway -------------------------------------------------------------------------


class Watch:
    """A watched poll: its request as sent to the origin, its answer body held back.

    The body goes down only once the prediction is announced (``AheadServer.answered``):
    the ANNOUNCE then reaches the client gateway before the last byte of the answer,
    so the client's next poll, sent the moment it has that byte, always finds it.
    """

    __slots__ = ("body", "headers", "method", "rule", "target")

    def __init__(self, rule: Rule, method: str, target: bytes, headers: CIMultiDict[str]) -> None:
        self.rule, self.method, self.target = rule, method, target
        self.headers = headers.copy()
        self.body: bytearray | None = bytearray()

    def hold(self, chunk: bytes) -> bytes:
        """What of the answer may go down now: nothing while it is held (and readable)."""
        body = self.body
        if body is None:
            return chunk
        body += chunk
        if len(body) <= MAX_PARSED_BODY:
            return b""
        self.body = None  # too big to read a cursor from: no prediction, let it all go
        return bytes(body)


@dataclass(eq=False)
class _ServerChain:
    watch: Watch
    push_id: int
    target: bytes
    unconfirmed: int = 0
    stopped: bool = False


class AheadServer:
    """Issues predicted polls for one answered hop session (see the module docstring)."""

    __slots__ = ("_announced", "_by_push", "_link", "_next_id", "_rules")

    def __init__(self, link: TunnelDriver, rules: tuple[Rule, ...]) -> None:
        self._link, self._rules = link, rules
        self._next_id = 1
        self._announced: dict[int, _ServerChain] = {}
        self._by_push: dict[int, _ServerChain] = {}
        link.on_push = self.on_push
        link.on_lost = self.lost

    def lost(self) -> None:
        """The session ended: announcements never accepted hold no chain any more."""
        self._link.stats.poll_ahead.chains -= len(self._announced)
        self._announced.clear()

    def watch(self, event: RequestReceived, headers: CIMultiDict[str]) -> Watch | None:
        """A Watch if ``event`` is a poll a rule names, from a client gateway that asked."""
        if event.has_body or not _asked(event):
            return None
        rule = rule_for(self._rules, event.method, event.target)
        return Watch(rule, event.method, event.target, headers) if rule is not None else None

    def answered(self, sid: int, watch: Watch, status: int, headers: CIMultiDict[str]) -> bytes:
        """The origin's whole answer on ``sid`` is read: announce the next poll, if any, ahead
        of the part of the body still held back (returned: the caller sends it, then END)."""
        link, stats = self._link, self._link.stats.poll_ahead
        if watch.body is None:
            return b""
        body, watch.body = bytes(watch.body), None
        if stats.chains >= MAX_SERVER_CHAINS or not link.alive:
            return body
        target = next_target(watch.rule, watch.target, Answer(status, tuple(headers.items()), body))
        if target is None:
            return body
        chain = _ServerChain(watch, self._new_id(), target)
        self._announced[chain.push_id] = chain
        stats.chains += 1
        link.tunnel.push(sid, Op.ANNOUNCE, encode_descriptor(self._descriptor(chain)))
        return body

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _descriptor(self, chain: _ServerChain) -> Descriptor:
        rule = chain.watch.rule
        ignored = tuple(sorted(rule.ignored))
        return Descriptor(
            chain.push_id, chain.watch.method, chain.target, ignored, rule.param, rule.hold
        )

    def on_push(self, event: PushReceived) -> None:
        push_id, op = event.stream_id, event.op
        self._link.log.debug("< poll-ahead op %d for %d", op, push_id)
        stats = self._link.stats.poll_ahead
        if op == Op.ACCEPT:
            chain = self._announced.pop(push_id, None)
            if chain is not None:
                self._by_push[push_id] = chain
                self._link.spawn(self._run(chain))
        elif op == Op.STOP:
            chain = self._announced.pop(push_id, None) or self._by_push.get(push_id)
            if chain is not None:
                chain.stopped = True
                if push_id not in self._by_push:
                    stats.chains -= 1  # never issued
        elif op == Op.USED:
            chain = self._by_push.pop(push_id, None)
            if chain is not None:
                chain.unconfirmed -= 1
                stats.used += 1

    async def _run(self, chain: _ServerChain) -> None:
        """Issue the chain's polls one after the other until it ends; always push the answer."""
        link, stats = self._link, self._link.stats.poll_ahead
        try:
            while True:
                fetched = None if chain.stopped else await self._fetch(chain)
                if fetched is None:
                    if not link.tunnel.closed:
                        link.tunnel.push(chain.push_id, Op.VOID, b"")
                        link.schedule_flush()
                    return
                if not self._push(chain, *fetched):
                    return
        finally:
            stats.chains -= 1  # answers still unconfirmed stay in _by_push for their USED

    def _push(
        self, chain: _ServerChain, status: int, reason: str, headers: CIMultiDict[str], body: bytes
    ) -> bool:
        """Send one answer down with the chain's next prediction, if any; whether one follows."""
        link = self._link
        following: Descriptor | None = None
        chain.unconfirmed += 1
        answer = Answer(status, tuple(headers.items()), body)
        target = next_target(chain.watch.rule, chain.target, answer)
        done = chain.push_id
        if target is not None and not chain.stopped and chain.unconfirmed < WINDOW and link.alive:
            chain.push_id, chain.target = self._new_id(), target
            self._by_push[chain.push_id] = chain
            following = self._descriptor(chain)
        flat = tuple((k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in headers.items())
        first, rest = body[:MAX_PART], body[MAX_PART:]
        head = AnswerHead(done, status, reason, flat, first, bool(rest), following)
        link.log.debug("> poll-ahead answer %d, next %s", done, following and following.push_id)
        if link.tunnel.closed:
            return False
        link.tunnel.push(done, Op.ANSWER, encode_answer(head))
        while rest:
            part, rest = rest[:MAX_PART], rest[MAX_PART:]
            link.tunnel.push(done, Op.PART, encode_part(part, bool(rest)))
        link.schedule_flush()
        return following is not None

    async def _fetch(self, chain: _ServerChain) -> tuple[int, str, CIMultiDict[str], bytes] | None:
        """The origin's whole answer to the chain's poll; None if it never came (nothing read)."""
        link = self._link
        assert link.upstream is not None
        url = under_upstream(link.upstream, chain.target)
        if url is None:
            return None
        watch = chain.watch
        link.stats.poll_ahead.made += 1
        try:
            upstream = await link.forwarder.open_upstream(watch.method, url, watch.headers, None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            link.log.info("= poll-ahead %s failed: %s", url.raw_path_qs, type(exc).__name__)
            return None
        try:
            body = await _read_body(upstream)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            link.log.warning("= poll-ahead answer cut: %s", type(exc).__name__)
            return 502, "Bad Gateway", CIMultiDict(), b"the predicted poll's answer was cut\n"
        finally:
            upstream.release()
        headers = link.forwarder.downstream_headers(upstream)
        if body is None:
            text = f"the predicted poll's answer is over {MAX_PUSH_BODY} bytes\n".encode()
            return 502, "Bad Gateway", CIMultiDict(), text
        return upstream.status, upstream.reason or "", headers, body


async def _read_body(upstream: aiohttp.ClientResponse) -> bytes | None:
    body = bytearray()
    async for chunk in upstream.content.iter_any():
        body += chunk
        if len(body) > MAX_PUSH_BODY:
            upstream.close()
            return None
    return bytes(body)


def _asked(event: RequestReceived) -> bool:
    """The stream's head carries our mark, listed in its Connection field (a hop field)."""
    marked = connection = False
    for name, value in event.headers:
        lower = name.lower()
        if lower == b"hopgate-poll-ahead":
            marked = True
        elif lower == b"connection":
            connection = connection or _TOKEN.encode() in value.lower()
    return marked and connection


# -- client gateway -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class AheadClient:
    """Holds predicted answers for one opening link (see the module docstring)."""

    __slots__ = ("_book", "_bytes", "_chains", "_link", "_parts", "_streams", "_timer", "_waiters")

    def __init__(self, link: TunnelDriver) -> None:
        self._link = link
        self._book = Book()
        self._streams: dict[int, tuple[web.BaseRequest, str]] = {}
        self._waiters: dict[int, asyncio.Event] = {}
        self._parts: dict[int, tuple[AnswerHead, bytearray]] = {}
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
        stats.chains += book.chains - self._chains
        stats.held_bytes += book.held_bytes - self._bytes
        self._chains, self._bytes = book.chains, book.held_bytes

    # -- from the server gateway ------------------------------------------------------------

    def on_push(self, event: PushReceived) -> None:
        op = event.op
        self._link.log.debug("< poll-ahead op %d for %d", op, event.stream_id)
        if op == Op.ANNOUNCE:
            self._announced(event.stream_id, event.data)
        elif op == Op.ANSWER:
            head = decode_answer(event.stream_id, event.data)
            if head is not None and head.more:
                self._parts[head.push_id] = (head, bytearray(head.body))
            elif head is not None:
                self._answered(head, head.body)
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

    def _part(self, push_id: int, data: bytes) -> None:
        parsed = decode_part(data)
        pending = self._parts.get(push_id)
        if parsed is None or pending is None:
            return
        chunk, more = parsed
        head, body = pending
        body += chunk
        if len(body) > MAX_PUSH_BODY + MAX_PART:
            del self._parts[push_id]  # a peer over our bound: the answer is not held
            self._book.voided(push_id)
            self._wake(push_id)
        elif not more:
            del self._parts[push_id]
            self._answered(head, bytes(body))

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
            self._link.log.debug("= poll-ahead lookup %s: %s", target[-40:], found)
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
