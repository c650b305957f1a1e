"""A steady stream of chat sends, each sent once, for the gateway-process fault tests.

A :class:`SendStream` posts ``/send`` about ``rate`` times a second, one at a
time like the demo's legacy client, each with its own ``client_msg_id`` and
never retried, and records what every send got: the status, the first line
of the body (the gateway's ``502`` says why), when it was sent and how long
the answer took. With nothing retried, each send's fate at the origin
(``/soak/sends?ids=1``) can be set against what the client was told:

* ``200``: it must be stored (else the client was told a lie);
* ``502 could not connect``: the gateway knew it never left: it must not be
  stored;
* ``502 ... lost after the request was sent``: outcome unknown, either way.

Bounded: it stops at ``stop()`` or after ``limit`` sends.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

#: A send with no answer within this long counts as hanging (status 0).
ANSWER_TIMEOUT = 20.0
#: The ``502`` bodies: the request never left / its outcome is unknown.
NOT_SENT = "could not connect"
UNKNOWN = "lost after the request was sent"


@dataclass(frozen=True)
class Sent:
    key: str
    status: int  # 0: no HTTP answer within ANSWER_TIMEOUT (or a reset)
    why: str
    at: float  # monotonic time it was sent
    took: float

    @property
    def kind(self) -> str:
        """``ok``, ``not_sent``, ``unknown``, ``unanswered`` or ``other``."""
        if self.status == 200:
            return "ok"
        if self.status == 0:
            return "unanswered"
        if NOT_SENT in self.why:
            return "not_sent"
        if UNKNOWN in self.why:
            return "unknown"
        return "other"


@dataclass
class SendStream:
    base_url: str
    name: str = "k"
    rate: float = 50.0
    limit: int = 10_000
    sent: list[Sent] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            for i in range(self.limit):
                started = time.monotonic()
                self.sent.append(await self._send(http, f"{self.name}-{i}", started))
                await asyncio.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    async def _send(self, http: aiohttp.ClientSession, key: str, started: float) -> Sent:
        body = {"from": self.name, "text": key, "client_msg_id": key}
        timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)
        try:
            async with http.post(f"{self.base_url}/send", json=body, timeout=timeout) as resp:
                why = "" if resp.status == 200 else (await resp.text())[:200]
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, why = 0, f"{type(exc).__name__}: {exc}"[:200]
        return Sent(key, status, why, started, time.monotonic() - started)

    def kinds(self) -> Counter[str]:
        return Counter(s.kind for s in self.sent)

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the answer of the first 200 sent after it."""
        for s in self.sent:
            if s.at >= moment and s.status == 200:
                return s.at + s.took - moment
        return None

    def between(self, start: float, end: float) -> list[Sent]:
        return [s for s in self.sent if start <= s.at < end]


async def held_request(base_url: str, seconds: float, *, body: bytes | None = None) -> Sent:
    """``GET /soak/hold?s=seconds`` through ``base_url``: in flight for that long.

    With ``body``, a POST: a request no gateway may send again when its
    session dies (a body-less GET is, once: RFC 9110 section 9.2.2).
    """
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT + seconds)
    method = "GET" if body is None else "POST"
    url, params = f"{base_url}/soak/hold", {"s": str(seconds)}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, url, params=params, data=body, timeout=timeout) as resp,
        ):
            why = (await resp.text())[:200]
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        status, why = 0, f"{type(exc).__name__}: {exc}"[:200]
    return Sent("held", status, why, started, time.monotonic() - started)
