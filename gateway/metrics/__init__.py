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

``tallies`` holds the counters kept here (requests, ended hop sessions);
``families`` builds every ``hopgate_*`` family from them and the live objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from gateway.metrics.families import GatewayCollector
from gateway.metrics.tallies import BUCKETS, HopCounts, HopTally, RequestTally
from gateway.status import GatewayStats

__all__ = ["BUCKETS", "CONTENT_TYPE", "HopCounts", "HopTally", "Metrics", "RequestTally"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


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
