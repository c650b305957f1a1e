"""Property: whatever the link does, every message arrives exactly once, in order.

Hypothesis generates interleavings of sends (both directions, text/binary,
single- and multi-fragment) and faults (drops, duplicates, reorders, delays,
transport switches). After the faults stop and the clock runs, each receiver
must hold exactly the sender's messages, in order, once.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.session import SessionClosed, SessionConfig

from .fakelink import Direction, FakeLink, make_pair

CONFIG = SessionConfig(
    fragment_size=256,
    max_buffer_bytes=4096,
    max_buffer_frames=24,
    max_message_size=4096,
    max_batch_bytes=1500,
    retransmit_timeout=1.0,
    heartbeat_interval=3.0,
    stall_timeout=1e6,
    resume_grace=1e9,
)

direction = st.sampled_from(["ab", "ba"])
op = st.one_of(
    st.tuples(
        st.just("send"),
        direction,
        st.one_of(st.integers(0, 300), st.integers(300, 2500)),  # 1 to 10 fragments
        st.booleans(),
    ),
    st.tuples(st.just("drop"), direction, st.integers(0, 3)),
    st.tuples(st.just("dup"), direction, st.integers(0, 3)),
    st.tuples(st.just("reorder"), direction),
    st.tuples(st.just("delay"), direction, st.floats(0.0, 3.0)),
    st.tuples(st.just("switch")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("step"), st.floats(0.0, 2.0)),
)


def make_message(tag: str, index: int, size: int, text: bool) -> bytes | str:
    head = f"{tag}{index}:"
    if text:
        return head + "\u00e9\u4e2d" * (size // 5)  # multibyte, may straddle fragments
    return head.encode() + bytes(i % 251 for i in range(size))


class Harness:
    def __init__(self) -> None:
        client, server = make_pair(CONFIG)
        self.link = FakeLink(client, server)
        self.sent: dict[str, list[bytes | str]] = {"ab": [], "ba": []}
        self.backlog: dict[str, list[bytes | str]] = {"ab": [], "ba": []}

    def send(self, name: str, size: int, text: bool) -> None:
        msg = make_message(name, len(self.sent[name]), size, text)
        self.sent[name].append(msg)
        self.backlog[name].append(msg)
        self.drain_backlog()

    def drain_backlog(self) -> None:
        for name, queue in self.backlog.items():
            sender = self.link.direction(name).sender
            while queue and sender.writable:
                sender.send_message(queue.pop(0))

    def apply(self, action: tuple[Any, ...]) -> None:
        link = self.link
        kind = action[0]
        if kind == "send":
            self.send(action[1], action[2], action[3])
        elif kind == "drop":
            link.drop(action[1], action[2])
        elif kind == "dup":
            link.duplicate(action[1], action[2])
        elif kind == "reorder":
            link.reorder(action[1])
        elif kind == "delay":
            link.delay(action[1], action[2])
        elif kind == "switch":
            link.switch()
        elif kind == "flush":
            link.flush()
        elif kind == "step":
            link.now += action[1]
            link.timers()
            link.deliver()
            self.drain_backlog()

    def done(self, d: Direction, name: str) -> bool:
        return not self.backlog[name] and len(d.messages()) >= len(self.sent[name])

    def heal(self) -> None:
        """Faults stop: pump and let timers run until everything is through."""
        link = self.link
        for _ in range(600):
            self.drain_backlog()
            link.step(0.05)
            if self.done(link.ab, "ab") and self.done(link.ba, "ba"):
                break


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(op, max_size=40))
def test_exactly_once_in_order_under_any_faults(actions: list[tuple[Any, ...]]) -> None:
    harness = Harness()
    for action in actions:
        harness.apply(action)
    harness.heal()
    link = harness.link
    for d, name in ((link.ab, "ab"), (link.ba, "ba")):
        assert d.errors == []
        assert not [e for e in d.events if isinstance(e, SessionClosed)]
        assert d.messages() == harness.sent[name]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2500), min_size=1, max_size=15), st.integers(0, 40))
def test_switch_at_any_point_of_a_stream(sizes: list[int], switch_after: int) -> None:
    """A transport switch after any number of pump steps loses and repeats nothing."""
    harness = Harness()
    for size in sizes:
        harness.send("ab", size, text=size % 2 == 0)
    for i in range(switch_after):
        harness.link.step(0.004 if i % 2 else 0.0)
    harness.link.switch()
    harness.heal()
    assert harness.link.ab.messages() == harness.sent["ab"]
