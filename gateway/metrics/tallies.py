"""The counters metrics keep themselves: finished requests, and hop sessions that ended.

Everything else is read from the live objects at scrape time
(``gateway.metrics.families``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Final, Protocol

from gateway.status import RequestRecord
from gateway.transports.hopsession import HopSession

__all__ = ["BUCKETS", "HopCounts", "HopTally", "RequestTally"]

#: Request duration buckets (seconds): a quick answer up to a held long poll.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RequestTally:
    """Finished legacy requests by route and status, and their durations by route.

    Subscribed to ``GatewayStats.observers``: sees what the access log sees.
    """

    __slots__ = ("buckets", "counts", "sums")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        #: Per route: requests per bucket of BUCKETS, the last one past the largest.
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def __call__(self, request: RequestRecord) -> None:
        key = (request.route, request.status)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.buckets.get(request.route)
        if buckets is None:
            buckets = self.buckets[request.route] = [0] * (len(BUCKETS) + 1)
        buckets[bisect.bisect_left(BUCKETS, request.duration)] += 1
        self.sums[request.route] = self.sums.get(request.route, 0.0) + request.duration


class Dialler(Protocol):
    """What the dialling side's connector adds to a session's figures."""

    probe_failures: int


@dataclass
class HopCounts:
    """Counters of hop sessions (either end), summed."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    resumes: int = 0
    probe_failures: int = 0

    def add(self, hop: HopSession, dialler: Dialler | None) -> None:
        self.messages_sent += hop.messages_sent
        self.messages_received += hop.messages_received
        self.bytes_sent += hop.bytes_sent
        self.bytes_received += hop.bytes_received
        self.resumes += hop.resumes
        if dialler is not None:
            self.probe_failures += dialler.probe_failures

    def plus(self, other: HopCounts) -> HopCounts:
        names = [f.name for f in fields(self)]
        return HopCounts(**{name: getattr(self, name) + getattr(other, name) for name in names})


class HopTally:
    """The hop sessions of one gateway: live ones read on demand, ended ones summed.

    ``track`` is O(1) and called once per session, when it opens; the
    session's own ``on_finished`` moves its counters into ``ended``.
    """

    def __init__(self) -> None:
        self._live: dict[HopSession, Dialler | None] = {}
        self.ended = HopCounts()

    def track(self, hop: HopSession, dialler: Dialler | None = None) -> None:
        if hop.closed:
            self.ended.add(hop, dialler)
            return
        self._live[hop] = dialler
        hop.on_finished.append(self._finished)

    def _finished(self, hop: HopSession) -> None:
        self.ended.add(hop, self._live.pop(hop, None))

    @property
    def live(self) -> Iterable[HopSession]:
        return self._live.keys()

    def totals(self) -> HopCounts:
        live = HopCounts()
        for hop, dialler in self._live.items():
            live.add(hop, dialler)
        return self.ended.plus(live)

    def replay_bytes(self) -> int:
        """Bytes sent and not yet acknowledged, held for replay by the live sessions."""
        return sum(hop.core.buffered_bytes for hop in self._live)
