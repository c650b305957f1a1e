"""The legacy client of the cluster tests: numbered chat messages in paced rounds, and a poller.

Built on the soak's ``Sender``/``Poller``/``Score`` (``tests.soak.legacy``:
a failed send is retried with the same ``client_msg_id``, every answer is
counted, ``Score.problems()`` lists anything lost, duplicated or out of
order), with two things the cluster tests need:

* rounds whose pauses the fault side can see and end (``paused``,
  ``resume``): during a pause the poll is held by the origin, so a fault
  then hits a held request, and ending the pause at the fault sends the
  next message at once, which times the recovery;
* times: each send attempt's ``(key, start, end, status)`` and the moment
  the poller saw each message, so the recovery after a fault is measured
  end to end (the first message sent after it, seen by the poller).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.soak.legacy import Poller, Score, Sender, origin_sends


class Seen(list[tuple[int, str, str, str]]):
    """The poller's messages, each with the time it arrived (``times``)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: tuple[int, str, str, str]) -> None:
        super().append(item)
        self.times.append(time.monotonic())


@dataclass
class TimedPoller(Poller):
    seen: list[tuple[int, str, str, str]] = field(default_factory=Seen)

    def seen_at(self, key: str) -> float | None:
        assert isinstance(self.seen, Seen)
        for item, at in zip(self.seen, self.seen.times, strict=True):
            if item[3] == key:
                return at
        return None


@dataclass
class PacedSender(Sender):
    """Sends ``count`` messages in rounds of ``per_round``, pausing ``pause`` s between them."""

    per_round: int = 50
    pause: float = 1.0
    #: ``(client_msg_id, start, end, status)`` of every attempt.
    timeline: list[tuple[str, float, float, int]] = field(default_factory=list)
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    finished_at: float = 0.0

    async def run_paced(self, http: aiohttp.ClientSession, base_url: str, deadline: float) -> None:
        for i in range(self.count):
            if i and i % self.per_round == 0 and self.pause > 0:
                self.resume.clear()
                self.paused.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.resume.wait(), self.pause)
                self.paused.clear()
            if not await self._deliver(http, base_url, i, deadline):
                break
            self.sent = i + 1
        self.finished_at = time.monotonic()
        self.paused.set()  # nobody waits for a pause that will not come

    async def _post(
        self, http: aiohttp.ClientSession, base_url: str, body: dict[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        started = time.monotonic()
        status, doc = await super()._post(http, base_url, body)
        self.timeline.append((body["client_msg_id"], started, time.monotonic(), status))
        return status, doc

    def first_sent_after(self, moment: float) -> str | None:
        """The first message whose first attempt started after ``moment``."""
        firsts: dict[str, float] = {}
        for key, start, _, _ in self.timeline:
            firsts.setdefault(key, start)
        later = [(start, key) for key, start in firsts.items() if start >= moment]
        return min(later)[1] if later else None


@dataclass
class Traffic:
    sender: PacedSender
    poller: TimedPoller
    score: Score | None = None

    async def held_pause(self, settle: float = 0.5) -> None:
        """Until the sender pauses and the poll has been held ``settle`` s (bounded by a pause)."""
        await asyncio.wait_for(self.sender.paused.wait(), 60)
        await asyncio.sleep(settle)

    async def next_pause(self, pause: float, settle: float = 0.5) -> None:
        """Let the next pause last ``pause`` s; return ``settle`` s into it (the poll held).

        The fault then has the rest of the pause to strike, and ends it
        with ``sender.resume.set()``.
        """
        self.sender.pause = pause
        async with asyncio.timeout(60):
            while self.sender.paused.is_set() and not self.sender.finished_at:
                await asyncio.sleep(0.01)
            await self.sender.paused.wait()
        await asyncio.sleep(settle)

    def failed(self) -> dict[str, int]:
        """Requests not answered ``200``: sends, polls answered otherwise, polls unanswered."""
        sends: Counter[int] = self.sender.answers
        polls: Counter[int] = self.poller.answers
        return {
            "sends": sum(n for s, n in sends.items() if s != 200),
            "polls": sum(n for s, n in polls.items() if s != 200),
            "polls_unanswered": self.poller.unanswered,
        }

    def failed_total(self) -> int:
        return sum(self.failed().values())

    def recovery(self, moment: float) -> float | None:
        """From ``moment`` until the poller saw the first message sent after it."""
        key = self.sender.first_sent_after(moment)
        seen = self.poller.seen_at(key) if key else None
        return None if seen is None else seen - moment


Fault = Callable[[Traffic], Awaitable[Any]]


async def run_traffic(
    base_url: str,
    origin_url: str,
    fault: Fault,
    *,
    count: int = 1000,
    per_round: int = 50,
    pause: float = 1.0,
    timeout: float = 90.0,
) -> tuple[Traffic, Any]:
    """One sender and one poller through ``base_url`` while ``fault(traffic)`` runs.

    Returns the traffic (``score`` filled in, the origin's counts included)
    and what ``fault`` returned.
    """
    traffic = Traffic(PacedSender("s0", count, per_round=per_round, pause=pause), TimedPoller("p0"))
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sending = asyncio.create_task(traffic.sender.run_paced(http, base_url, deadline))
        polling = asyncio.create_task(traffic.poller.run(http, base_url, count, deadline + 10))
        try:
            outcome = await asyncio.wait_for(fault(traffic), timeout)
            await asyncio.wait_for(asyncio.gather(sending, polling), timeout + 15)
        finally:
            for task in (sending, polling):
                task.cancel()
            await asyncio.gather(sending, polling, return_exceptions=True)
    traffic.score = Score([traffic.sender], [traffic.poller], await origin_sends(origin_url))
    return traffic, outcome
