"""The client gateway's predictions: whose they are, which request they answer, how long.

Who a prediction belongs to. The client gateway knows each stream's client
request: the prediction announced on a stream belongs to that request's
:data:`Identity` (the client's address, its ``Cookie`` and ``Authorization``
values), and to its *endpoint*: method, path and the query without the
dialect's ignored parameters and without the cursor parameter. A later
request is the same client's poll of the same endpoint only if all of that
is equal; it is the predicted poll if, in addition, its cursor is the one
predicted. So one client's answer is never served to another: a request from
another address, or with other credentials, or to another Engine.IO sid,
is another endpoint and goes to the origin as usual.

A chain. An answered prediction may announce the next one (the server
gateway re-polls at once), so each endpoint holds a short queue of
predictions in push order: answered ones waiting for the client's poll, and
at most the last one still pending at the origin. The server keeps at most
``WINDOW`` answers unconfirmed per chain (a full window pauses its chain with
the next prediction announced, and the first ``USED`` resumes it), so the
queue holds at most ``WINDOW`` answers and that one pending prediction; the
client gateway bounds the number of chains (``max_chains``).

What happens to a prediction (the counters of the status document):

* ``used``: a poll matched it and got its answer;
* ``dropped``: a poll of its endpoint did not match (another cursor), or its
  answer came for a chain already ended: the client's poll goes to the origin;
* ``expired``: answered, and no poll came within the rule's hold time (the
  client left); the chain ends with it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from gateway.core.pollahead.codec import Descriptor
from gateway.core.pollahead.rules import split_target

__all__ = ["WINDOW", "Book", "Chain", "Held", "Hit", "Identity", "identity_of"]

#: Answers a server gateway keeps unconfirmed (not ``USED``) per chain.
WINDOW: Final = 8

#: (client address, Cookie values, Authorization values).
Identity = tuple[str, tuple[str, ...], tuple[str, ...]]
_Key = tuple[Identity, str, str, tuple[tuple[str, str], ...]]


def identity_of(peer: str | None, headers: list[tuple[str, str]]) -> Identity:
    """A client's identity from its address and request headers (names case-insensitive)."""
    cookies = tuple(v for k, v in headers if k.lower() == "cookie")
    auth = tuple(v for k, v in headers if k.lower() == "authorization")
    return (peer or "", cookies, auth)


def _endpoint(
    target: bytes | str, ignored: tuple[str, ...], param: str | None
) -> tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(path, the query that names the endpoint, the cursor values) of a target."""
    path, query = split_target(target)
    rest = tuple(sorted((k, v) for k, v in query if k not in ignored and k != param))
    cursor = tuple(v for k, v in query if k == param) if param is not None else ()
    return path, rest, cursor


@dataclass(eq=False, slots=True)
class Held:
    """One prediction: pending at the origin (``answer`` None) or answered."""

    push_id: int
    cursor: tuple[str, ...]
    answer: object | None = None
    size: int = 0
    answered_at: float = 0.0


@dataclass(eq=False, slots=True)
class Chain:
    key: _Key
    param: str | None
    ignored: tuple[str, ...]
    hold: float
    entries: deque[Held] = field(default_factory=deque)
    #: The server sent no next prediction: the chain ends when its queue is empty.
    last: bool = False

    @property
    def tail(self) -> int:
        """The newest push id of the chain (what a STOP names)."""
        return self.entries[-1].push_id if self.entries else 0


@dataclass(frozen=True, slots=True)
class Hit:
    """A request is the predicted poll: ``held`` answers it (maybe once its answer came)."""

    chain: Chain
    held: Held


class Book:
    """Predictions held by one client gateway link (see the module docstring)."""

    __slots__ = ("_by_push", "_chains", "_index", "held_bytes")

    def __init__(self) -> None:
        self._chains: dict[_Key, Chain] = {}
        self._index: dict[tuple[Identity, str, str], list[Chain]] = {}
        #: push id -> (its chain, None once the chain was dropped: an orphan).
        self._by_push: dict[int, tuple[Chain, Held | None]] = {}
        self.held_bytes = 0

    @property
    def chains(self) -> int:
        return len(self._chains)

    def announce(self, identity: Identity, d: Descriptor) -> Chain | None:
        """A new chain for ``identity``; None if that endpoint already has one."""
        path, rest, cursor = _endpoint(d.target, d.ignored, d.param)
        key = (identity, d.method, path, rest)
        if key in self._chains or d.push_id in self._by_push:
            return None
        chain = Chain(key, d.param, d.ignored, d.hold)
        self._chains[key] = chain
        self._index.setdefault((identity, d.method, path), []).append(chain)
        self._add(chain, d.push_id, cursor)
        return chain

    def _add(self, chain: Chain, push_id: int, cursor: tuple[str, ...]) -> None:
        held = Held(push_id, cursor)
        chain.entries.append(held)
        self._by_push[push_id] = (chain, held)

    def answered(
        self, push_id: int, answer: object, size: int, following: Descriptor | None, now: float
    ) -> Held | None:
        """The answer to ``push_id`` came; None if nobody holds it any more (count it dropped).

        ``following``: the next prediction of the same chain, if the server made one.
        """
        found = self._by_push.get(push_id)
        if found is None:
            return None
        chain, held = found
        if held is None or held.answer is not None:
            del self._by_push[push_id]
            return None
        held.answer, held.size, held.answered_at = answer, size, now
        self.held_bytes += size
        if following is None or len(chain.entries) > WINDOW or following.push_id in self._by_push:
            chain.last = True
        else:
            _, _, cursor = _endpoint(following.target, following.ignored, following.param)
            self._add(chain, following.push_id, cursor)
        return held

    def voided(self, push_id: int) -> Held | None:
        """``push_id`` was never issued: forget it; the held entry if it was still wanted."""
        found = self._by_push.pop(push_id, None)
        held = found[1] if found is not None else None
        if found is None or held is None:
            return None
        chain = found[0]
        chain.entries.remove(held)
        chain.last = True
        self._end_if_done(chain)
        return held

    def lookup(self, identity: Identity, method: str, target: bytes | str) -> Hit | Chain | None:
        """The prediction a request matches (Hit), the chain it contradicts (drop it), or None."""
        path, _ = split_target(target)
        for chain in self._index.get((identity, method, path), ()):
            _, rest, cursor = _endpoint(target, chain.ignored, chain.param)
            if rest != chain.key[3]:
                continue
            if chain.entries and chain.entries[0].cursor == cursor:
                return Hit(chain, chain.entries[0])
            return chain
        return None

    def holds(self, push_id: int) -> bool:
        """Whether ``push_id`` is a live prediction here (not an orphan)."""
        found = self._by_push.get(push_id)
        return found is not None and found[1] is not None

    def awaits(self, push_id: int) -> bool:
        """Whether ``push_id`` is a live prediction whose answer has not come yet."""
        found = self._by_push.get(push_id)
        return found is not None and found[1] is not None and found[1].answer is None

    def hold_of(self, push_id: int) -> float:
        found = self._by_push.get(push_id)
        return found[0].hold if found is not None else 0.0

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the next held answer expires, if any is held."""
        due = [
            c.entries[0].answered_at + c.hold - now
            for c in self._chains.values()
            if c.entries and c.entries[0].answer is not None
        ]
        return max(0.0, min(due)) if due else None

    def take(self, hit: Hit) -> None:
        """``hit.held`` (answered) went to its client."""
        chain, held = hit.chain, hit.held
        chain.entries.remove(held)
        self._by_push.pop(held.push_id, None)
        self.held_bytes -= held.size
        self._end_if_done(chain)

    def drop(self, chain: Chain) -> list[Held]:
        """End ``chain``; its entries (answered ones lose their answer). Pending ones stay
        known as orphans so their late answer is recognised and counted once."""
        dropped = list(chain.entries)
        for held in dropped:
            if held.answer is None:
                self._by_push[held.push_id] = (chain, None)
            else:
                self._by_push.pop(held.push_id, None)
                self.held_bytes -= held.size
        chain.entries.clear()
        self._forget(chain)
        return dropped

    def expired(self, now: float) -> list[Chain]:
        """Chains whose oldest answer waited longer than the hold time (drop them)."""
        return [
            c
            for c in self._chains.values()
            if c.entries
            and c.entries[0].answer is not None
            and now - c.entries[0].answered_at > c.hold
        ]

    def _end_if_done(self, chain: Chain) -> None:
        if chain.last and not chain.entries:
            self._forget(chain)

    def _forget(self, chain: Chain) -> None:
        if self._chains.pop(chain.key, None) is None:
            return
        identity, method, path, _ = chain.key
        siblings = self._index.get((identity, method, path), [])
        if chain in siblings:
            siblings.remove(chain)
        if not siblings:
            self._index.pop((identity, method, path), None)

    def clear(self) -> list[Held]:
        """The session ended: everything goes; the entries that were held."""
        held = [h for c in self._chains.values() for h in c.entries]
        self._chains.clear()
        self._index.clear()
        self._by_push.clear()
        self.held_bytes = 0
        return held
