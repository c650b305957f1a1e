"""Every ``hopgate_*`` family, built from the live objects when the page is scraped."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.metrics.tallies import BUCKETS, HopTally, RequestTally
from gateway.status import GatewayStats

__all__ = ["RUNGS", "GatewayCollector"]

#: The rungs ``hopgate_hop_transport`` always shows, 1 for the current one.
RUNGS: Final = ("plain", "long-poll", "websocket")


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
        yield from _handover_families(self._stats)
        yield from _request_families(self._requests)
        yield _poll_ahead_family(self._stats)
        yield from self._upstreams()
        yield from self._sessions()
        yield from self._cluster()

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
        waiting = GaugeMetricFamily(
            "hopgate_streams_waiting",
            "tunnelled exchanges held up by a limit: for a stream of the hop session "
            "(--max-streams) or for an origin connection (--session-connections, "
            "--max-connections)",
            labels=["for"],
        )
        waiting.add_metric(["stream"], stats.waiting_for_stream)
        waiting.add_metric(["origin_connection"], stats.waiting_for_origin)
        yield waiting
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
        heartbeat = GaugeMetricFamily(
            "hopgate_heartbeat_seconds",
            "silence before each next hop's heartbeat PING: the start value (--heartbeat), "
            "lowered when the path was seen to close idle WebSockets",
            labels=["upstream"],
        )
        for url, state in list(self._stats.upstreams.items()):
            hop = state.report()
            if hop.heartbeat_s is not None:
                heartbeat.add_metric([url], hop.heartbeat_s)
            for name in RUNGS:
                rung.add_metric([url, name], int(hop.transport == name))
            for (old, new, reason), count in sorted(hop.switches.items()):
                switches.add_metric([url, old, new, reason], count)
            requests.add_metric([url], state.requests)
            errors.add_metric([url], state.errors)
        yield from (rung, switches, requests, errors, heartbeat)

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

    def _cluster(self) -> Iterator[Metric]:
        cluster = self._stats.cluster
        if cluster is None:
            return
        forwards = CounterMetricFamily(
            "hopgate_cluster_forwards",
            "hop-session requests for sessions owned by another instance of the cluster, by "
            "result: ok (the owner answered), gone (unreachable, 404), timeout (504), busy "
            "(too many in flight, 503), forged (id did not verify, 404, sent nowhere)",
            labels=["result"],
        )
        for result, count in (
            ("ok", cluster.forwarded),
            ("gone", cluster.gone),
            ("timeout", cluster.timeouts),
            ("busy", cluster.busy),
            ("forged", cluster.forged),
        ):
            forwards.add_metric([result], count)
        yield forwards


def _handover_families(stats: GatewayStats) -> Iterator[Metric]:
    """Drains and crashes seen over the hop (status: ``hop``)."""
    goaways = CounterMetricFamily(
        "hopgate_goaways",
        "GOAWAY frames: sent (this instance drained) and received (the upstream drained)",
        labels=["direction"],
    )
    goaways.add_metric(["sent"], stats.goaways_sent)
    goaways.add_metric(["received"], stats.goaways_received)
    yield goaways
    yield CounterMetricFamily(
        "hopgate_failovers",
        "new sessions opened at once because the upstream lost ours (its instance crashed)",
        value=stats.failovers,
    )
    yield CounterMetricFamily(
        "hopgate_retried_requests",
        "tunnelled requests sent again on a new session (idempotent, no body; or refused by "
        "a GOAWAY)",
        value=stats.retried_requests,
    )


def _poll_ahead_family(stats: GatewayStats) -> Metric:
    """Poll-ahead predictions by outcome (status: ``poll_ahead``)."""
    family = CounterMetricFamily(
        "hopgate_poll_ahead",
        "poll-ahead predictions (--poll-ahead): made (server: predicted polls issued; client: "
        "announced to it), used (answered a client's poll), dropped (the client's poll did "
        "not match), expired (no poll came within the hold time)",
        labels=["outcome"],
    )
    for outcome, count in stats.poll_ahead.as_json().items():
        family.add_metric([outcome], count)
    return family


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
