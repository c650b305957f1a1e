"""The demo's bookkeeping: which message was sent, who received it, how late.

Pure (no I/O, the clock is passed in), so it is tested without an event
loop.  The ``Ledger`` records each send by the ``client_msg_id`` the runner
chose, so a receipt can be matched to its send even when the poll answer
beats the ``POST`` answer.  Per receiver it checks server ids: an id seen
before is a duplicate, an id below the highest seen is out of order.  A
message is *delivered* once per *other* client (the sender's own echo is
checked for order but not counted), so with ``n`` clients the expected
deliveries are ``sent * (n - 1)``.  A receipt missing for more than
``OVERDUE_AFTER`` seconds counts as lost while the demo runs; in a final
snapshot every missing receipt does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.demo.legacy_client import ChatMessage

__all__ = ["OVERDUE_AFTER", "RECENT", "Ledger", "Sent", "Totals", "percentile"]

#: A receipt missing this long is shown as lost while the demo runs.
OVERDUE_AFTER = 5.0
LATENCY_WINDOW = 10_000
#: Per receiver, how many recent ids are remembered for the duplicate check.
ID_WINDOW = 10_000
#: Recent sends kept for display.
RECENT = 8


@dataclass
class Sent:
    """One message a demo client sent, and who has received it so far."""

    client_msg_id: str
    sender: str
    text: str
    sent_at: float
    msg_id: int | None = None
    receivers: set[str] = field(default_factory=set)
    worst_latency: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Totals:
    """A snapshot of the ledger; ``final`` ones count every missing receipt as lost."""

    clients: int
    sent: int
    delivered: int
    in_flight: int
    lost: int
    duplicated: int
    reordered: int
    send_errors: int
    latency_last: float | None
    latency_avg: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_n: int

    @property
    def expected(self) -> int:
        return self.sent * max(self.clients - 1, 0)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.reordered == 0


def percentile(samples: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


class Ledger:
    """Matches sends to receipts and counts what the path did to them.

    Pure bookkeeping: callers pass the clock in, so it can be tested without
    an event loop.
    """

    def __init__(self, clients: Sequence[str], prefix: str) -> None:
        self.clients = tuple(clients)
        self.prefix = prefix
        self.pending: dict[str, Sent] = {}
        self.recent: deque[Sent] = deque(maxlen=RECENT)
        self.sent = self.delivered = self.duplicated = self.reordered = 0
        self.send_errors = self.foreign = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_sum = 0.0
        self.latency_n = 0
        self._seen: dict[str, set[int]] = {name: set() for name in self.clients}
        self._highest: dict[str, int] = dict.fromkeys(self.clients, 0)

    def sending(self, sender: str, client_msg_id: str, text: str, now: float) -> Sent:
        """Record a send *before* the ``POST`` goes out (its receipt may come first)."""
        record = Sent(client_msg_id=client_msg_id, sender=sender, text=text, sent_at=now)
        self.pending[client_msg_id] = record
        self.recent.append(record)
        self.sent += 1
        return record

    def acked(self, record: Sent, msg_id: int) -> None:
        record.msg_id = msg_id

    def send_failed(self, record: Sent) -> None:
        """The ``POST`` failed; the message may still arrive, else it ends up lost."""
        self.send_errors += 1

    def received(self, receiver: str, message: ChatMessage, now: float) -> Sent | None:
        """Account for one receipt; returns the record if it is now complete."""
        if not self._in_order(receiver, message.id):
            return None
        record = self.pending.get(message.client_msg_id or "")
        if record is None:
            mine = (message.client_msg_id or "").startswith(self.prefix)
            self.foreign += 0 if mine else 1
            return None
        record.msg_id = message.id
        if receiver == record.sender:
            return None
        self._deliver(record, receiver, now - record.sent_at)
        if len(record.receivers) < len(self.clients) - 1:
            return None
        del self.pending[record.client_msg_id]
        return record

    def _deliver(self, record: Sent, receiver: str, latency: float) -> None:
        record.receivers.add(receiver)
        record.worst_latency = max(record.worst_latency, latency)
        self.delivered += 1
        self.latencies.append(latency)
        self.latency_sum += latency
        self.latency_n += 1

    def _in_order(self, receiver: str, msg_id: int) -> bool:
        """Check one receiver's ids: ``False`` for a duplicate, counts reorderings."""
        seen = self._seen.setdefault(receiver, set())
        if msg_id in seen or msg_id <= self._highest.get(receiver, 0) - ID_WINDOW:
            self.duplicated += 1
            return False
        highest = self._highest.get(receiver, 0)
        if msg_id < highest:
            self.reordered += 1
        seen.add(msg_id)
        self._highest[receiver] = max(highest, msg_id)
        if len(seen) > 2 * ID_WINDOW:
            floor = self._highest[receiver] - ID_WINDOW
            self._seen[receiver] = {i for i in seen if i > floor}
        return True

    def missing(self, older_than: float | None = None) -> int:
        """Receipts still outstanding, optionally only for sends before ``older_than``."""
        others = len(self.clients) - 1
        return sum(
            others - len(r.receivers)
            for r in self.pending.values()
            if older_than is None or r.sent_at < older_than
        )

    @property
    def settled(self) -> bool:
        return not self.pending

    def totals(self, now: float, *, final: bool = False) -> Totals:
        lost = self.missing() if final else self.missing(older_than=now - OVERDUE_AFTER)
        samples = list(self.latencies)
        return Totals(
            clients=len(self.clients),
            sent=self.sent,
            delivered=self.delivered,
            in_flight=self.missing() - lost,
            lost=lost,
            duplicated=self.duplicated,
            reordered=self.reordered,
            send_errors=self.send_errors,
            latency_last=samples[-1] if samples else None,
            latency_avg=self.latency_sum / self.latency_n if self.latency_n else None,
            latency_p50=percentile(samples, 0.50),
            latency_p95=percentile(samples, 0.95),
            latency_n=self.latency_n,
        )
