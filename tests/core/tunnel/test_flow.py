"""Window growth (flow.py ``_grow``): two Tunnels joined in memory, no event loop.

A stream whose consumer keeps up with large pieces gets a wider window (up
to ``max_stream_window``, within ``session_window``); tiny pieces keep the
window they started with; a consumer that stops reading still holds at most
its window. Request bodies here: their credit goes back only as consumed
(a WebSocket stream's unfinished messages are also credited ahead, within
``session_reassembly``: tests/core/tunnel/test_bounds.py).
"""

from __future__ import annotations

from gateway.core.tunnel import DataReceived, RequestReceived, Tunnel, TunnelConfig
from gateway.core.tunnel.frames import BASE_WINDOW

KiB = 1024
MiB = 1024 * KiB


class Pair:
    def __init__(self, config: TunnelConfig) -> None:
        self.down = Tunnel(config, opener=True)
        self.up = Tunnel(config, opener=False)
        self.unconsumed: dict[int, int] = {}  # received by up, not consumed
        self.messages: dict[int, int] = {}

    def pump(self) -> None:
        for _ in range(100_000):
            moved = False
            for sender, receiver in ((self.down, self.up), (self.up, self.down)):
                message = sender.next_message()
                if message is not None:
                    receiver.receive_message(message)
                    moved = True
            if not moved:
                return
        raise AssertionError("pipe never went quiet")

    def open(self) -> int:
        sid = self.down.open_http("POST", "/upload", has_body=True)
        self.pump()
        assert [type(event) for event in self.up.events_received()] == [RequestReceived]
        self.unconsumed[sid] = self.messages[sid] = 0
        return sid

    def run(self, sids: list[int], size: int, rounds: int, consume: bool) -> None:
        """Each round: every writable stream sends up to 64 KiB in ``size`` pieces; a pump."""
        payload = b"x" * size
        for _ in range(rounds):
            for sid in sids:
                for _ in range(max(1, 64 * KiB // size)):
                    if not self.down.is_writable(sid):
                        break
                    self.down.send_data(sid, payload)
            self.pump()
            for event in self.up.events_received():
                if isinstance(event, DataReceived):
                    self.messages[event.stream_id] += 1
                    if consume:
                        self.up.consumed(event.stream_id, len(event.data))
                    else:
                        self.unconsumed[event.stream_id] += len(event.data)
            self.pump()
            self.down.events_received()


def stalled_holding(config: TunnelConfig, size: int, warm_rounds: int) -> int:
    """Bytes a consumer holds when it stops reading after ``warm_rounds`` messages of ``size``."""
    pair = Pair(config)
    sid = pair.open()
    pair.run([sid], size, warm_rounds, consume=True)
    pair.run([sid], size, 80, consume=False)  # 5 MiB offered
    return pair.unconsumed[sid]


def test_large_messages_widen_the_window_up_to_max_stream_window() -> None:
    config = TunnelConfig()
    held = stalled_holding(config, 64 * KiB, warm_rounds=40)
    # Wider than the window it started with, never more than the largest one.
    assert config.initial_window < held <= config.max_stream_window
    assert held > config.max_stream_window // 2
    # Without warm-up the stream still has the window it was announced.
    assert stalled_holding(config, 64 * KiB, warm_rounds=0) <= config.initial_window


def test_tiny_messages_keep_the_initial_window() -> None:
    config = TunnelConfig()
    # 2.5 MiB of 100-byte messages: a grown window would hold ~10,000 of them
    # as undelivered events; the initial one holds at most ~2,600.
    held = stalled_holding(config, 100, warm_rounds=40)
    assert held <= config.initial_window
    # At the threshold: 2 * window / 1024 bytes per piece grows 256 -> 512 KiB,
    # not further (512 KiB needs 1 KiB pieces to double).
    held = stalled_holding(config, 512, warm_rounds=40)
    assert config.initial_window < held <= 2 * config.initial_window


def test_growth_stays_within_session_window_and_is_released_with_the_stream() -> None:
    config = TunnelConfig(session_window=2 * MiB)  # 6 x 192 KiB announced, 896 KiB to grow
    pair = Pair(config)
    sids = [pair.open() for _ in range(6)]
    pair.run(sids, 64 * KiB, 60, consume=True)
    pair.run(sids, 64 * KiB, 200, consume=False)
    held = sum(pair.unconsumed.values())
    # Each stream holds BASE_WINDOW plus its share of session_window at most.
    assert held <= config.session_window + len(sids) * BASE_WINDOW
    assert max(pair.unconsumed.values()) > config.initial_window  # some did grow
    for sid in sids:
        pair.up.consumed(sid, pair.unconsumed[sid])
        pair.down.reset(sid)
    pair.pump()
    pair.down.events_received()
    pair.up.events_received()
    # Their windows' excess is free again: a new stream grows as far as alone.
    fresh = pair.open()
    pair.run([fresh], 64 * KiB, 40, consume=True)
    pair.run([fresh], 64 * KiB, 80, consume=False)
    assert pair.unconsumed[fresh] > config.max_stream_window // 2
