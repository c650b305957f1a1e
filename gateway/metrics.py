"""Prometheus metrics of one gateway, served as ``/.hopgate/metrics``.

Theory of operation
-------------------
Nothing here sits on the hot path. Almost every figure is read when the page
is scraped, from the objects that keep it anyway: ``GatewayStats`` (streams,
inbound connections), each upstream's ``HopReport`` (rung, switches), the
server's session list, and the plain integer counters every ``HopSession``
keeps (messages, batch bytes, resumes; ``SessionConnector.probe_failures``
on the dialling side). Counters of a hop session that ended are added to
``HopTally.ended`` when it finishes, so a counter never goes backwards as
sessions come and go.

The only per-request work is :class:`RequestTally`, one of
``GatewayStats.observers``: two dict increments and a bisect per finished
legacy request, turned into the request counter and histogram at scrape time.

Each ``Gateway`` has its own :class:`Metrics` and its own
``CollectorRegistry`` (never prometheus_client's global ``REGISTRY``): tests
and ``hopgate demo`` run several gateways in one process.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.status import GatewayStats, RequestRecord
from gateway.transports.hopsession import HopSession

__all__ = ["BUCKETS", "CONTENT_TYPE", "HopCounts", "HopTally", "Metrics", "RequestTally"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: Request duration buckets (seconds): a quick answer up to a held long poll.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The rungs ``hopgate_hop_transport`` always shows, 1 for the current one.
RUNGS: Final = ("plain", "long-poll", "websocket")


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


class GatewayCollector(Collector):
    """Builds every hopgate_* family from the live objects at scrape time."""

    def __init__(
        self,
        stats: GatewayStats,
        requests: RequestTally,
        hops: HopTally,
        ready: Callable[[], bool],
    ) -> None:
        self._stats = stats
        self._requests = requests
        self._hops = hops
        self._ready = ready

    def describe(self) -> list[Metric]:
        return []  # collected only when scraped: the registry must not call collect early

    def collect(self) -> Iterator[Metric]:
        yield from self._gateway()
        yield from _request_families(self._requests)
        yield from self._upstreams()
        yield from self._sessions()

    def _gateway(self) -> Iterator[Metric]:
        stats = self._stats
        info = GaugeMetricFamily(
            "hopgate_build_info", "hopgate version (always 1)", labels=["version", "role", "mode"]
        )
        info.add_metric([__version__, stats.role, stats.mode], 1)
        yield info
        yield GaugeMetricFamily(
            "hopgate_ready", "1 while /.hopgate/ready answers 200", value=int(self._ready())
        )
        streams = GaugeMetricFamily(
            "hopgate_streams",
            "legacy exchanges in flight: HTTP requests (plain or tunnelled), "
            "WebSockets, CONNECT tunnels",
            labels=["kind"],
        )
        streams.add_metric(["http"], stats.active_streams)
        streams.add_metric(["websocket"], stats.active_websockets)
        streams.add_metric(["connect"], stats.active_tunnels)
        yield streams
        clients = stats.clients() if stats.clients is not None else {}
        held = GaugeMetricFamily(
            "hopgate_client_connections",
            "inbound connections held (active) and with a request in progress (busy)",
            labels=["state"],
        )
        refused = CounterMetricFamily(
            "hopgate_client_connections_refused",
            "inbound connections ended by a limit, by reason",
            labels=["reason"],
        )
        for state in ("active", "busy"):
            held.add_metric([state], clients.get(state, 0))
        for key, reason in (
            ("refused", "max_clients"),
            ("evicted", "evicted"),
            ("head_timeouts", "header_timeout"),
            ("accept_errors", "accept_error"),
        ):
            refused.add_metric([reason], clients.get(key, 0))
        yield held
        yield refused

    def _upstreams(self) -> Iterator[Metric]:
        rung = GaugeMetricFamily(
            "hopgate_hop_transport",
            "1 for the rung each next hop is on now, 0 for the others",
            labels=["upstream", "transport"],
        )
        switches = CounterMetricFamily(
            "hopgate_transport_switches",
            "moves of each next hop between rungs, by reason",
            labels=["upstream", "from", "to", "reason"],
        )
        requests = CounterMetricFamily(
            "hopgate_upstream_requests", "requests sent to each upstream", labels=["upstream"]
        )
        errors = CounterMetricFamily(
            "hopgate_upstream_errors",
            "requests to each upstream that failed before an answer (502/504)",
            labels=["upstream"],
        )
        for url, state in list(self._stats.upstreams.items()):
            hop = state.report()
            for name in RUNGS:
                rung.add_metric([url, name], int(hop.transport == name))
            for (old, new, reason), count in sorted(hop.switches.items()):
                switches.add_metric([url, old, new, reason], count)
            requests.add_metric([url], state.requests)
            errors.add_metric([url], state.errors)
        yield from (rung, switches, requests, errors)

    def _sessions(self) -> Iterator[Metric]:
        served = GaugeMetricFamily(
            "hopgate_sessions",
            "hop sessions this gateway serves now (opened by a previous gateway), by transport",
            labels=["transport"],
        )
        # "none": between transports, resuming.
        by_transport = {"websocket": 0, "long-poll": 0, "none": 0}
        for report in self._stats.sessions():
            by_transport[report.transport] = by_transport.get(report.transport, 0) + 1
        for transport, count in by_transport.items():
            served.add_metric([transport], count)
        yield served
        totals = self._hops.totals()
        messages = CounterMetricFamily(
            "hopgate_hop_messages",
            "whole messages carried by hop sessions (both ends)",
            labels=["direction"],
        )
        messages.add_metric(["sent"], totals.messages_sent)
        messages.add_metric(["received"], totals.messages_received)
        octets = CounterMetricFamily(
            "hopgate_hop_bytes",
            "bytes of hop session batches written and read on their transports",
            labels=["direction"],
        )
        octets.add_metric(["sent"], totals.bytes_sent)
        octets.add_metric(["received"], totals.bytes_received)
        yield messages
        yield octets
        yield GaugeMetricFamily(
            "hopgate_replay_buffer_bytes",
            "bytes sent on hop sessions and kept until the peer acknowledges them",
            value=self._hops.replay_bytes(),
        )
        yield CounterMetricFamily(
            "hopgate_session_resumes",
            "hop sessions that took up a new transport after losing theirs",
            value=totals.resumes,
        )
        yield CounterMetricFamily(
            "hopgate_probe_failures",
            "WebSocket candidates of this gateway's hop sessions that failed "
            "their handshake or probe",
            value=totals.probe_failures,
        )


def _request_families(tally: RequestTally) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "hopgate_requests",
        "legacy requests finished, by how they travelled (tunnel or plain) and status",
        labels=["route", "code"],
    )
    for (route, status), count in sorted(tally.counts.items()):
        total.add_metric([route, str(status)], count)
    yield total
    duration = HistogramMetricFamily(
        "hopgate_request_duration_seconds",
        "time from a legacy request's head to the end of its answer",
        labels=["route"],
    )
    for route, buckets in sorted(tally.buckets.items()):
        cumulative = 0
        points: list[tuple[str, float]] = []
        for bound, count in zip((*BUCKETS, math.inf), buckets, strict=True):
            cumulative += count
            points.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        duration.add_metric([route], points, sum_value=tally.sums.get(route, 0.0))
    yield duration


class Metrics:
    """The metrics of one gateway: its registry, request tally and hop session tally."""

    def __init__(self, stats: GatewayStats, *, ready: Callable[[], bool] = lambda: True) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestTally()
        self.hops = HopTally()
        stats.observers.append(self.requests)
        self.registry.register(GatewayCollector(stats, self.requests, self.hops, ready))
        # The process it runs in (CPU, memory, descriptors) and the Python running it.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every figure, read now."""
        return generate_latest(self.registry)
