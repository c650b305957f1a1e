"""The legacy side of the soak: Comet chat senders and pollers that keep score.

They speak ``gateway.demo.comet``'s protocol the way a careful legacy app
does, and nothing cleverer:

* a :class:`Sender` posts numbered messages one at a time (``"{name} {i}"``,
  ``client_msg_id`` ``"{name}-{i}"``), each after the previous one was
  answered ``200``; an answer that is not ``200`` (a gateway's ``502`` for a
  request whose outcome is unknown, a ``504``) or no answer at all is retried
  with the *same* ``client_msg_id``, which the chat accepts once. Every
  attempt and every answer is counted;
* a :class:`Poller` holds ``GET /poll?since=N`` and keeps every message in
  the order the answers arrived; a poll answered with an error is repeated,
  a poll that got no HTTP answer at all (reset, or nothing within
  ``POLL_TIMEOUT``) is counted as *unanswered*: the gateways must answer
  every held poll.

``problems()`` on a :class:`Score` lists every way the run differs from
"each message stored once, seen once by every poller, in each sender's
order, and every ``200`` stands". Every loop is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: Longest a poll may go unanswered: the origin's hold plus room for a resume.
POLL_TIMEOUT = 30.0
#: Longest a send may go unanswered before it counts as "no answer" and is retried.
SEND_TIMEOUT = 30.0
#: Pause before retrying a send or a poll that failed.
RETRY_DELAY = 0.1
#: Attempts per message before a sender gives up (each bounded by SEND_TIMEOUT).
MAX_ATTEMPTS = 40
#: A poll that took this long was held by the origin (nothing new to answer with).
HELD = 0.25
#: Texts of the first failures kept for the report.
KEEP_ERRORS = 10


def _no_answer(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class Rounds:
    """Senders send in rounds, all pausing together between them: the pauses hold polls.

    ``pauses[r]`` seconds of silence follow round ``r``; while nothing is
    sent the origin holds every poll, so the faults hit held polls too.
    """

    pauses: list[float]
    parties: int
    barrier: asyncio.Barrier = field(init=False)

    def __post_init__(self) -> None:
        self.barrier = asyncio.Barrier(self.parties)

    @property
    def count(self) -> int:
        return len(self.pauses) + 1

    async def after(self, done: int, deadline: float) -> None:
        """Round ``done`` is over: wait for every sender, then stay silent together."""
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await self.barrier.wait()
        await asyncio.sleep(self.pauses[done])


@dataclass
class Sender:
    name: str
    count: int
    #: Attempts per ``client_msg_id`` (the origin may see at most that many).
    attempts: Counter[str] = field(default_factory=Counter)
    #: Every answer by status; 0: no HTTP answer (reset, timeout).
    answers: Counter[int] = field(default_factory=Counter)
    #: ``client_msg_id`` -> the id the chat stored it under, for every 200.
    acked: dict[str, int] = field(default_factory=dict)
    #: 200s saying "already stored": an earlier attempt had arrived after all.
    duplicate_acks: int = 0
    gave_up: str = ""
    errors: list[str] = field(default_factory=list)
    #: Seconds from the first failed attempt of a message to its 200, longest.
    longest_retry: float = 0.0

    async def run(
        self, http: aiohttp.ClientSession, base_url: str, deadline: float, rounds: Rounds
    ) -> None:
        """Send every message; between rounds wait for the other senders, then pause."""
        per_round = -(-self.count // rounds.count)
        try:
            for i in range(self.count):
                if i and i % per_round == 0:
                    await rounds.after(i // per_round - 1, deadline)
                if not await self._deliver(http, base_url, i, deadline):
                    await rounds.barrier.abort()  # the others stop at their next round
                    return
        except (asyncio.BrokenBarrierError, TimeoutError):
            self.gave_up = self.gave_up or "another sender gave up, or a round timed out"

    async def _deliver(
        self, http: aiohttp.ClientSession, base_url: str, i: int, deadline: float
    ) -> bool:
        key = f"{self.name}-{i}"
        body = {"from": self.name, "text": f"{self.name} {i}", "client_msg_id": key}
        failed_at: float | None = None
        for _ in range(MAX_ATTEMPTS):
            if time.monotonic() > deadline:
                break
            self.attempts[key] += 1
            status, doc = await self._post(http, base_url, body)
            self.answers[status] += 1
            if status == 200 and doc is not None:
                self.acked[key] = int(doc["id"])
                self.duplicate_acks += bool(doc.get("duplicate"))
                if failed_at is not None:
                    self.longest_retry = max(self.longest_retry, time.monotonic() - failed_at)
                return True
            failed_at = failed_at or time.monotonic()
            await asyncio.sleep(RETRY_DELAY)
        self.gave_up = f"{key}: {self.attempts[key]} attempts, last errors {self.errors[-3:]}"
        return False

    async def _post(
        self, http: aiohttp.ClientSession, base_url: str, body: dict[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
        try:
            async with http.post(f"{base_url}/send", json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    self._error(f"{resp.status} {(await resp.text())[:150]}")
                    return resp.status, None
                return 200, await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error(_no_answer(exc))
            return 0, None

    def _error(self, text: str) -> None:
        if len(self.errors) < KEEP_ERRORS:
            self.errors.append(text)


@dataclass
class Poller:
    name: str
    #: ``(id, from, text, client_msg_id)`` in the order the polls delivered them.
    seen: list[tuple[int, str, str, str]] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    unanswered: int = 0
    errors: list[str] = field(default_factory=list)
    longest_poll: float = 0.0
    #: Polls answered after ``HELD`` seconds or more: held by the origin.
    held: int = 0

    async def run(
        self, http: aiohttp.ClientSession, base_url: str, total: int, deadline: float
    ) -> None:
        since = 0
        while len(self.seen) < total and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT)
                async with http.get(
                    f"{base_url}/poll", params={"since": since}, timeout=timeout
                ) as resp:
                    self.answers[resp.status] += 1
                    doc = await resp.json() if resp.status == 200 else None
                    if doc is None and len(self.errors) < KEEP_ERRORS:
                        self.errors.append(f"{resp.status} {(await resp.text())[:150]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.unanswered += 1
                if len(self.errors) < KEEP_ERRORS:
                    self.errors.append(_no_answer(exc))
                doc = None
            took = time.monotonic() - started
            self.longest_poll = max(self.longest_poll, took)
            self.held += took >= HELD
            if doc is None:
                await asyncio.sleep(RETRY_DELAY)
                continue
            for m in doc["messages"]:
                self.seen.append((m["id"], m["from"], m["text"], m.get("client_msg_id", "")))
            since = doc["next"]

    @property
    def polls(self) -> int:
        return sum(self.answers.values()) + self.unanswered


@dataclass
class Score:
    """A run's senders and pollers, and the origin's ``/soak/sends`` at the end."""

    senders: list[Sender]
    pollers: list[Poller]
    origin: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(s.count for s in self.senders)

    def attempts(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for s in self.senders:
            out.update(s.attempts)
        return out

    def answers(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for s in self.senders:
            out.update(s.answers)
        return out

    def problems(self) -> list[str]:
        found = [f"{s.name} gave up: {s.gave_up}" for s in self.senders if s.gave_up]
        found += self._origin_problems()
        for p in self.pollers:
            found += self._poller_problems(p)
        return found

    def _origin_problems(self) -> list[str]:
        origin, total = self.origin, self.total
        found = []
        if (origin.get("stored"), origin.get("distinct")) != (total, total):
            found.append(f"the origin stored {origin.get('stored')} messages, {total} were sent")
        attempts = self.attempts()
        extra = {k: n for k, n in origin.get("more_than_once", {}).items() if n > attempts[k]}
        if extra:
            found.append(f"sends reached the origin more often than they were sent: {extra}")
        return found

    def _poller_problems(self, p: Poller) -> list[str]:
        found = []
        ids = [m[0] for m in p.seen]
        if ids != list(range(1, self.total + 1)):
            counts = Counter(ids)
            missing = sum(1 for i in range(1, self.total + 1) if i not in counts)
            twice = sum(1 for n in counts.values() if n > 1)
            found.append(
                f"{p.name} saw {len(ids)} messages: {missing} missing, {twice} twice, "
                f"in order: {ids == sorted(ids)}"
            )
        for s in self.senders:
            texts = [m[2] for m in p.seen if m[1] == s.name]
            if texts != [f"{s.name} {i}" for i in range(s.count)]:
                found.append(f"{p.name} saw {len(texts)} of {s.name}'s messages, not in order")
        stored = {m[3]: m[0] for m in p.seen}
        lost = [k for s in self.senders for k, i in s.acked.items() if stored.get(k) != i]
        if lost:
            found.append(f"{len(lost)} sends answered 200 that {p.name} never saw: {lost[:5]}")
        if p.unanswered:
            found.append(f"{p.name}: {p.unanswered} polls got no answer: {p.errors[:3]}")
        return found

    def figures(self) -> dict[str, Any]:
        """What the report prints: sends, answers, retries, polls."""
        attempts = self.attempts()
        return {
            "messages_each_way": self.total,
            "send_attempts": sum(attempts.values()),
            "send_answers": dict(sorted(self.answers().items())),
            "resent_after_arrival": sum(s.duplicate_acks for s in self.senders),
            "longest_retry_s": round(max(s.longest_retry for s in self.senders), 2),
            "polls": sum(p.polls for p in self.pollers),
            "poll_answers": dict(sorted(sum((p.answers for p in self.pollers), Counter()).items())),
            "polls_held": sum(p.held for p in self.pollers),
            "polls_unanswered": sum(p.unanswered for p in self.pollers),
            "longest_poll_s": round(max(p.longest_poll for p in self.pollers), 2),
            "messages_seen": [len(p.seen) for p in self.pollers],
        }


async def run_chat(
    base_url: str,
    senders: int,
    per_sender: int,
    pollers: int,
    *,
    timeout: float,
    pauses: list[float] | None = None,
) -> Score:
    """``senders`` send ``per_sender`` messages each while ``pollers`` poll them all.

    ``pauses``: the silences between rounds (``Rounds``); none: one round.
    """
    rounds = Rounds(pauses or [], senders)
    score = Score(
        [Sender(f"s{i}", per_sender) for i in range(senders)],
        [Poller(f"p{i}") for i in range(pollers)],
    )
    deadline = time.monotonic() + timeout
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(
            *(s.run(http, base_url, deadline, rounds) for s in score.senders),
            *(p.run(http, base_url, score.total, deadline + 10) for p in score.pollers),
        )
    return score


async def origin_sends(origin_url: str) -> dict[str, Any]:
    """The origin's ``/soak/sends``, asked directly (not through the gateways)."""
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(10),
        http.get(f"{origin_url}/soak/sends") as resp,
    ):
        doc: dict[str, Any] = await resp.json()
        return doc
