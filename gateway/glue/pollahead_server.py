"""Poll-ahead, the server gateway's half: issue a client's next poll, push the answer down.

See ``glue/pollahead.py`` for the whole design; this module is
:class:`AheadServer` (one per answered hop session with ``--poll-ahead``
rules) and the :class:`Watch` the answerer keeps on a poll a rule names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from multidict import CIMultiDict

from gateway.core.pollahead.codec import (
    MAX_PART,
    AnswerHead,
    Descriptor,
    Op,
    encode_answer,
    encode_descriptor,
    encode_part,
)
from gateway.core.pollahead.predict import MAX_PARSED_BODY, Answer, next_target
from gateway.core.pollahead.rules import Rule, rule_for
from gateway.core.tunnel.events import PushReceived, RequestReceived
from gateway.glue.driver import TunnelDriver
from gateway.glue.heads import under_upstream
from gateway.glue.pollahead import MARK, MAX_PUSH_BODY, WINDOW

__all__ = ["MAX_SERVER_CHAINS", "AheadServer", "Watch"]

#: Chains (each holding one origin connection) per server gateway.
MAX_SERVER_CHAINS: Final = 256
#: A chain whose window is full waits this much longer than the rule's hold time for a
#: USED or STOP: by then the client gateway has expired the answers (and sent STOP) or is
#: not following the protocol; the chain ends either way.
PAUSE_SLACK: Final = 5.0
_TOKEN: Final = MARK.lower().encode()


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
    #: Set by USED, STOP and the session's end: what a chain paused on a full window awaits.
    moved: asyncio.Event = field(default_factory=asyncio.Event)


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
        """The session ended: announcements never accepted hold no chain any more; paused
        chains wake up to end."""
        self._link.stats.poll_ahead.chains -= len(self._announced)
        self._announced.clear()
        for chain in self._by_push.values():
            chain.moved.set()

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
                chain.moved.set()
                if push_id not in self._by_push:
                    stats.chains -= 1  # never issued
        elif op == Op.USED:
            chain = self._by_push.pop(push_id, None)
            if chain is not None:
                chain.unconfirmed -= 1
                chain.moved.set()
                stats.used += 1

    async def _run(self, chain: _ServerChain) -> None:
        """Issue the chain's polls one after the other until it ends; always push the answer."""
        link, stats = self._link, self._link.stats.poll_ahead
        try:
            while True:
                await _room(chain, link)
                fetched = None if chain.stopped or not link.alive else await self._fetch(chain)
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
        if target is not None and not chain.stopped and link.alive:
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


async def _room(chain: _ServerChain, link: TunnelDriver) -> None:
    """Return once the chain may issue its next poll: fewer than WINDOW answers unconfirmed.

    A full window pauses the chain; it does not end it. Its next prediction is already
    announced, so the first USED (the client took an answer) sends the next poll to the
    origin at once. Ending the chain instead left the origin without a poll until the
    client had drained every held answer and sent its own, and an Engine.IO origin then
    answers everything it queued meanwhile in one payload (python-engineio's client
    refuses more than 16 packets in one and drops the session).
    """
    limit = chain.watch.rule.hold + PAUSE_SLACK
    while chain.unconfirmed >= WINDOW and not chain.stopped and link.alive:
        chain.moved.clear()
        try:
            async with asyncio.timeout(limit):
                await chain.moved.wait()
        except TimeoutError:
            link.log.info("= poll-ahead %d: no USED or STOP within %g s", chain.push_id, limit)
            chain.stopped = True


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
            connection = connection or _TOKEN in value.lower()
    return marked and connection
