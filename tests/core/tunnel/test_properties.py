"""Property: whatever the interleaving, every stream carries exactly its bytes, in order.

Hypothesis generates interleavings of opens (from both ends), body chunks in
both directions, ends, resets, consumed() calls (or none: stalled consumers)
and message pulls with random budgets. Then the harness lets everything
finish: it ends every half, consumes everything and pumps until quiet.
For every stream that was not reset, each direction received exactly what
was sent, in order, followed by StreamEnded; a reset stream received a
prefix. Nothing ever raises, no message exceeds its budget, and both stream
tables end empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.tunnel import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
    Tunnel,
    TunnelConfig,
)

CONFIG = TunnelConfig(
    initial_window=64 * 1024,
    max_chunk=700,
    max_pending=3000,
    max_message=4096,
    max_streams=6,
)
REQ, RESP = 0, 1  # directions: opener -> answerer, answerer -> opener


@dataclass
class Record:
    sid: int
    opener: int  # index of the opening tunnel
    sent: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    received: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    ended: list[bool] = field(default_factory=lambda: [False, False])
    got_end: list[bool] = field(default_factory=lambda: [False, False])
    seen_by_answerer: bool = False
    responded: bool = False
    reset: bool = False


class Harness:
    def __init__(self) -> None:
        self.tunnels = (Tunnel(CONFIG, opener=True), Tunnel(CONFIG, opener=False))
        self.records: dict[int, Record] = {}
        self.order: list[int] = []
        self.unconsumed: list[dict[int, int]] = [{}, {}]

    def pick(self, index: int) -> Record | None:
        return self.records[self.order[index % len(self.order)]] if self.order else None

    def sender(self, rec: Record, direction: int) -> int:
        return rec.opener if direction == REQ else 1 - rec.opener

    # -- operations ----------------------------------------------------------------

    def open(self, side: int, count: int) -> None:
        for _ in range(count):
            sid = self.tunnels[side].open_http("POST", f"/{len(self.order)}", has_body=True)
            self.records[sid] = Record(sid, side)
            self.order.append(sid)

    def can_send(self, rec: Record, direction: int) -> bool:
        if rec.reset or rec.ended[direction]:
            return False
        if direction == RESP and not rec.responded:
            if not rec.seen_by_answerer:
                return False
            self.tunnels[1 - rec.opener].respond(rec.sid, 200, "OK")
            rec.responded = True
        return True

    def send(self, index: int, direction: int, size: int) -> None:
        rec = self.pick(index)
        if rec is None or not self.can_send(rec, direction):
            return
        tunnel = self.tunnels[self.sender(rec, direction)]
        if not tunnel.is_writable(rec.sid):
            return
        start = len(rec.sent[direction])
        chunk = bytes((rec.sid * 31 + direction * 7 + start + i) % 256 for i in range(size))
        tunnel.send_data(rec.sid, chunk)
        rec.sent[direction] += chunk

    def end(self, index: int, direction: int) -> None:
        rec = self.pick(index)
        if rec is None or not self.can_send(rec, direction):
            return
        self.tunnels[self.sender(rec, direction)].end(rec.sid)
        rec.ended[direction] = True

    def reset(self, index: int, by_opener: bool) -> None:
        rec = self.pick(index)
        if rec is None or rec.reset:
            return
        side = rec.opener if by_opener else 1 - rec.opener
        if not by_opener and not rec.seen_by_answerer:
            return
        self.tunnels[side].reset(rec.sid)
        rec.reset = True

    def consume(self, side: int, index: int, fraction: float) -> None:
        rec = self.pick(index)
        if rec is None or rec.sid not in self.unconsumed[side]:
            return  # this side never received data on it
        pending = self.unconsumed[side][rec.sid]
        n = int(pending * fraction)
        self.tunnels[side].consumed(rec.sid, n)
        self.unconsumed[side][rec.sid] = pending - n

    def flow(self, index: int, direction: int, rounds: int, consume: bool) -> None:
        """A bulk burst: send, deliver, maybe consume; enough to exhaust windows."""
        rec = self.pick(index)
        if rec is None:
            return
        receiver = 1 - self.sender(rec, direction)
        for _ in range(rounds):
            self.send(index, direction, 20_000)
            while self.pull(1 - receiver, 8192):
                pass
            if consume:
                self.consume(receiver, index, 1.0)
            while self.pull(receiver, 8192):
                pass

    def pull(self, side: int, budget: int) -> bool:
        message = self.tunnels[side].next_message(budget)
        if message is None:
            return False
        assert len(message) <= budget
        self.tunnels[1 - side].receive_message(message)
        self.dispatch(1 - side)
        return True

    def dispatch(self, side: int) -> None:
        for event in self.tunnels[side].events_received():
            if isinstance(event, StreamWritable):
                continue
            rec = self.records[event.stream_id]
            direction = REQ if side != rec.opener else RESP
            if isinstance(event, RequestReceived):
                rec.seen_by_answerer = True
            elif isinstance(event, DataReceived):
                rec.received[direction] += event.data
                self.unconsumed[side][rec.sid] = self.unconsumed[side].get(rec.sid, 0) + len(
                    event.data
                )
            elif isinstance(event, StreamEnded):
                rec.got_end[direction] = True
            elif isinstance(event, StreamReset):
                assert event.remote
                rec.reset = True
            else:
                assert isinstance(event, ResponseReceived)

    # -- the end -------------------------------------------------------------------

    def settle(self) -> None:
        for _ in range(10_000):
            for rec in self.records.values():
                for direction in (REQ, RESP):
                    if self.can_send(rec, direction):
                        self.tunnels[self.sender(rec, direction)].end(rec.sid)
                        rec.ended[direction] = True
            for side in (0, 1):
                for sid, n in self.unconsumed[side].items():
                    self.tunnels[side].consumed(sid, n)
                self.unconsumed[side] = {}
            moved = False
            while self.pull(0, CONFIG.max_message) | self.pull(1, CONFIG.max_message):
                moved = True
            if not moved and all(
                r.reset or (r.ended == [True, True] and r.seen_by_answerer)
                for r in self.records.values()
            ):
                return
        raise AssertionError("the tunnels never settled")

    def check(self) -> None:
        for rec in self.records.values():
            for direction in (REQ, RESP):
                got, sent = bytes(rec.received[direction]), bytes(rec.sent[direction])
                if rec.reset:
                    assert sent.startswith(got), (rec.sid, direction)
                else:
                    assert got == sent, (rec.sid, direction, len(got), len(sent))
                    assert rec.got_end[direction], (rec.sid, direction)
        assert self.tunnels[0].stream_count == self.tunnels[1].stream_count == 0
        assert not self.tunnels[0].has_pending() and not self.tunnels[1].has_pending()


side = st.integers(0, 1)
index = st.integers(0, 15)
operation = st.one_of(
    st.tuples(st.just("open"), side, st.integers(1, 4)),
    st.tuples(st.just("send"), index, st.integers(0, 1), st.integers(1, 6000)),
    st.tuples(st.just("send"), index, st.integers(0, 1), st.integers(6000, 40_000)),
    st.tuples(st.just("end"), index, st.integers(0, 1)),
    st.tuples(st.just("reset"), index, st.booleans()),
    st.tuples(st.just("consume"), side, index, st.sampled_from([0.0, 0.3, 1.0])),
    st.tuples(st.just("pull"), side, st.integers(1024, 9000)),
    st.tuples(st.just("flow"), index, st.integers(0, 1), st.integers(1, 8), st.booleans()),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(operation, min_size=5, max_size=60))
def test_every_stream_delivers_exactly_what_was_sent(ops: list[tuple[object, ...]]) -> None:
    harness = Harness()
    for op in ops:
        name, *args = op
        getattr(harness, str(name))(*args)
    harness.settle()
    harness.check()
