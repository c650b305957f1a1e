"""A fake transport joining two Session objects, with a hand on every fault.

Each direction is a list of in-flight batches ``[deliver_at, batch]``. The
test (or a hypothesis strategy) can drop, duplicate, reorder or delay them,
and switch transport (both ends lose the transport and everything in flight,
then attach a new one). Time is a plain float the link advances itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.session import (
    Event,
    MessageReceived,
    RemoteProtocolError,
    Session,
    SessionConfig,
)

SESSION_ID = "sess-0123456789abcdef"
TOKEN = b"t" * 32


def make_pair(
    config: SessionConfig | None = None, *, now: float = 0.0, attach: bool = True
) -> tuple[Session, Session]:
    client = Session(config, session_id=SESSION_ID, token=TOKEN, is_client=True, now=now)
    server = Session(config, session_id=SESSION_ID, token=TOKEN, is_client=False, now=now)
    if attach:
        client.transport_attached(now)
        server.transport_attached(now)
    return client, server


@dataclass
class InFlight:
    deliver_at: float
    batch: bytes


@dataclass
class Direction:
    sender: Session
    receiver: Session
    in_flight: list[InFlight] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # events of the *receiver*
    errors: list[RemoteProtocolError] = field(default_factory=list)
    batches_sent: int = 0

    def messages(self) -> list[bytes | str]:
        return [e.data for e in self.events if isinstance(e, MessageReceived)]


class FakeLink:
    def __init__(self, a: Session, b: Session, *, latency: float = 0.01, now: float = 0.0):
        self.a, self.b = a, b
        self.now = now
        self.latency = latency
        self.ab = Direction(a, b)  # a -> b; .events are b's events
        self.ba = Direction(b, a)
        self.connected = True

    def direction(self, name: str) -> Direction:
        return self.ab if name == "ab" else self.ba

    # -- moving bytes -------------------------------------------------------

    def flush(self, max_bytes: int | None = None) -> None:
        """Take what each side wants to send and put it in flight."""
        if not self.connected:
            return
        for d in (self.ab, self.ba):
            while True:
                batch = d.sender.data_to_send(self.now, max_bytes)
                if not batch:
                    break
                d.batches_sent += 1
                d.in_flight.append(InFlight(self.now + self.latency, batch))

    def deliver(self) -> None:
        """Deliver every batch that is due, in list order."""
        for d in (self.ab, self.ba):
            due = [item for item in d.in_flight if item.deliver_at <= self.now]
            d.in_flight = [item for item in d.in_flight if item.deliver_at > self.now]
            for item in due:
                try:
                    d.receiver.receive_data(item.batch, self.now)
                except RemoteProtocolError as exc:
                    d.errors.append(exc)
                d.events.extend(d.receiver.events_received())

    def collect(self) -> None:
        self.ba.events.extend(self.a.events_received())
        self.ab.events.extend(self.b.events_received())

    def timers(self) -> None:
        for s in (self.a, self.b):
            deadline = s.next_deadline()
            if deadline is not None and deadline <= self.now:
                s.handle_timer(self.now)
        self.collect()

    def step(self, dt: float = 0.0, max_bytes: int | None = None) -> None:
        self.now += dt
        self.timers()
        self.flush(max_bytes)
        self.deliver()
        self.flush(max_bytes)

    def run(self, duration: float, dt: float = 0.01) -> None:
        end = self.now + duration
        while self.now < end:
            self.step(dt)

    def settle(self, rounds: int = 50) -> None:
        """Pump with latency-sized steps until nothing is in flight."""
        for _ in range(rounds):
            self.step(self.latency)
            idle = not (self.a.wants_write or self.b.wants_write)
            if idle and not self.ab.in_flight and not self.ba.in_flight:
                return

    # -- faults ---------------------------------------------------------------

    def drop(self, name: str, index: int = 0) -> bool:
        q = self.direction(name).in_flight
        if index < len(q):
            del q[index]
            return True
        return False

    def duplicate(self, name: str, index: int = 0) -> None:
        q = self.direction(name).in_flight
        if index < len(q):
            q.insert(index + 1, InFlight(q[index].deliver_at, q[index].batch))

    def reorder(self, name: str) -> None:
        q = self.direction(name).in_flight
        if len(q) >= 2:
            q[0], q[1] = q[1], q[0]
            q[0].deliver_at = q[1].deliver_at = min(q[0].deliver_at, q[1].deliver_at)

    def delay(self, name: str, seconds: float, index: int = 0) -> None:
        q = self.direction(name).in_flight
        if index < len(q):
            q[index].deliver_at += seconds

    def disconnect(self) -> None:
        """Both ends lose the transport; whatever was in flight is gone."""
        self.ab.in_flight.clear()
        self.ba.in_flight.clear()
        self.a.transport_lost(self.now)
        self.b.transport_lost(self.now)
        self.connected = False

    def reconnect(self) -> None:
        self.a.transport_attached(self.now)
        self.b.transport_attached(self.now)
        self.connected = True

    def switch(self) -> None:
        self.disconnect()
        self.reconnect()
