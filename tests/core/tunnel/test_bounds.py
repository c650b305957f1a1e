"""Session-wide memory bounds of the tunnel core against hostile peers (no event loop).

Two budgets (docs/tunnel.md, "Flow control"): ``session_reassembly`` caps
the WebSocket bytes a peer can make this end hold by sending fragments of
messages it never finishes, and ``max_unread`` caps the bytes this end holds
for a peer that never credits (never reads) what it was sent. The hostile
peer here writes frames by hand, so it can do what a Tunnel never would.
"""

from __future__ import annotations

from hypothesis import event as tally
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.tunnel import (
    DataReceived,
    RemoteProtocolError,
    RequestReceived,
    StreamWritable,
    Tunnel,
    TunnelConfig,
    WebSocketAccepted,
    WebSocketMessage,
    WebSocketRequested,
)
from gateway.core.tunnel.config import MAX_MESSAGE_FRAMES, MAX_QUEUED_ITEMS
from gateway.core.tunnel.frames import (
    BASE_WINDOW,
    FLAG_FIN,
    FrameDecoder,
    FrameType,
    encode_message,
    encode_window,
    new_packer,
)

KiB = 1024
MiB = 1024 * KiB

# 256 streams x a 64 KiB window is 16 MiB the peer may send without any
# credit at all: the flow-control term of the bound, separate from the budget.
HOSTILE = TunnelConfig(
    initial_window=BASE_WINDOW,
    max_chunk=16 * KiB,
    max_streams=256,
    max_ws_message=1 * MiB,
    session_reassembly=4 * MiB,
    max_unread=1 * MiB,
)


def pump(a: Tunnel, b: Tunnel, limit: int = 100_000) -> list[object]:
    """Move messages both ways until quiet; returns b's events (a's are left queued)."""
    events: list[object] = []
    for _ in range(limit):
        moved = False
        for sender, receiver in ((a, b), (b, a)):
            message = sender.next_message()
            if message is not None:
                receiver.receive_message(message)
                moved = True
        events.extend(b.events_received())
        if not moved:
            return events
    raise AssertionError("pipe never went quiet")


def open_websockets(victim: Tunnel, count: int) -> list[int]:
    """The peer (a real opener Tunnel) opens ``count`` WebSocket streams the victim accepts."""
    peer = Tunnel(HOSTILE, opener=True)
    sids = [peer.open_websocket(b"/ws") for _ in range(count)]
    for _ in range(10):
        message = peer.next_message()
        if message is None:
            break
        victim.receive_message(message)
    for event in victim.events_received():
        assert isinstance(event, WebSocketRequested)
        victim.accept_websocket(event.stream_id)
    return sids


class FragmentSender:
    """A hostile peer that sends MESSAGE fragments without FIN, exactly as far as credit goes."""

    def __init__(self, victim: Tunnel, sids: list[int], window: int) -> None:
        self.victim = victim
        self.credit = dict.fromkeys(sids, window)
        self.sent = dict.fromkeys(sids, 0)
        self.packer = new_packer()
        self.decoder = FrameDecoder()

    def read_credit(self) -> None:
        while (message := self.victim.next_message()) is not None:
            for frame in self.decoder.decode(message):
                if frame[0] == FrameType.WINDOW:
                    self.credit[frame[1]] += frame[2]

    def send_round(self, limit: int, chunk: int, *, fin_at: int | None = None) -> int:
        """One fragment per stream with credit; returns the bytes sent."""
        total = 0
        for sid, credit in self.credit.items():
            n = min(credit, chunk, limit - self.sent[sid])
            if n <= 0:
                continue
            self.sent[sid] += n
            self.credit[sid] -= n
            flags = FLAG_FIN if fin_at is not None and self.sent[sid] >= fin_at else 0
            frame = encode_message(self.packer, sid, flags, b"x" * n)
            self.victim.receive_message(frame)
            total += n
        self.read_credit()
        return total


def test_unfinished_messages_on_256_streams_stop_at_the_session_budget() -> None:
    victim = Tunnel(HOSTILE, opener=False)
    sids = open_websockets(victim, 256)
    hostile = FragmentSender(victim, sids, HOSTILE.initial_window)
    hostile.read_credit()
    window_term = 256 * HOSTILE.initial_window
    bound = HOSTILE.session_reassembly + HOSTILE.max_ws_message + window_term
    peak = 0
    for _ in range(1000):
        sent = hostile.send_round(HOSTILE.max_ws_message, HOSTILE.max_chunk)
        peak = max(peak, victim.reassembly_bytes)
        assert victim.reassembly_bytes <= bound
        if not sent:
            break
    else:
        raise AssertionError("the hostile peer never ran out of credit")
    assert not [e for e in victim.events_received() if not isinstance(e, WebSocketAccepted)]
    held = sum(hostile.sent.values())
    assert held == victim.reassembly_bytes == peak
    # Without the budget every stream reassembles max_ws_message: 256 MiB here.
    assert held < bound < 256 * HOSTILE.max_ws_message // 10
    # Only the oldest stream got credit past the budget: it holds a whole max-size message.
    assert hostile.sent[sids[0]] == HOSTILE.max_ws_message
    assert sorted(hostile.sent.values())[-2] < HOSTILE.max_ws_message
    print(f"\n256 hostile streams hold {held / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB)")


def test_reassembly_budget_frees_as_the_consumer_takes_messages() -> None:
    victim = Tunnel(HOSTILE, opener=False)
    sids = open_websockets(victim, 64)
    hostile = FragmentSender(victim, sids, HOSTILE.initial_window)
    hostile.read_credit()
    size = HOSTILE.max_ws_message
    # Windows of streams whose consumer takes large messages grow (flow.py
    # _grow), their excess within session_window.
    windows = len(sids) * HOSTILE.initial_window + HOSTILE.session_window
    bound = HOSTILE.session_reassembly + size + windows
    delivered: dict[int, int] = {}
    for _ in range(5000):
        sent = hostile.send_round(size, HOSTILE.max_chunk, fin_at=size)
        assert victim.reassembly_bytes <= bound
        for event in victim.events_received():
            if isinstance(event, WebSocketMessage):
                assert event.size == len(event.data) == size
                delivered[event.stream_id] = event.size
                victim.consumed(event.stream_id, event.size)
        hostile.read_credit()
        if not sent and len(delivered) == len(sids):
            break
    assert sorted(delivered) == sorted(sids)
    assert victim.reassembly_bytes == 0


def two_large_messages(consume: bool) -> None:
    config = TunnelConfig(max_ws_message=3 * MiB, session_reassembly=4 * MiB)
    down, up = Tunnel(config, opener=True), Tunnel(config, opener=False)
    a, b = down.open_websocket(b"/a"), down.open_websocket(b"/b")
    for event in pump(down, up):
        assert isinstance(event, WebSocketRequested)
        up.accept_websocket(event.stream_id)
    pump(down, up)
    payloads = {a: b"a" * (3 * MiB), b: b"b" * (3 * MiB - 1)}
    for sid, payload in payloads.items():
        down.send_ws_message(sid, payload)
    got: dict[int, bytes] = {}
    for _ in range(50):
        for event in pump(down, up):
            if isinstance(event, WebSocketMessage):
                assert isinstance(event.data, bytes)
                got[event.stream_id] = event.data
                if consume:
                    up.consumed(event.stream_id, event.size)
        if len(got) == 2:
            break
    assert got == payloads
    assert up.reassembly_bytes == (0 if consume else 6 * MiB - 1)


def test_two_messages_over_half_the_budget_both_complete() -> None:
    two_large_messages(consume=True)


def test_two_messages_over_half_the_budget_complete_even_unconsumed() -> None:
    # The oldest message keeps its credit while delivered messages leave room.
    two_large_messages(consume=False)


def open_http_streams(victim: Tunnel, count: int, peer_window: int) -> tuple[Tunnel, list[int]]:
    """A peer opening ``count`` requests with a huge receive window it will never credit."""
    peer = Tunnel(TunnelConfig(initial_window=peer_window, max_streams=count), opener=True)
    for _ in range(count):
        peer.open_http("GET", b"/stream")
    sids = [e.stream_id for e in pump(peer, victim) if isinstance(e, RequestReceived)]
    assert len(sids) == count
    return peer, sids


def write_while_writable(victim: Tunnel, sids: list[int], chunk: bytes, cap: int) -> int:
    """What the bridge does: send a chunk whenever is_writable says so (at most cap per stream)."""
    written = 0
    for sid in sids:
        for _ in range(cap // len(chunk)):
            if not victim.is_writable(sid):
                break
            victim.send_data(sid, chunk)
            written += len(chunk)
    return written


def test_a_never_crediting_peer_gets_at_most_max_unread() -> None:
    # unread_bytes: queued here plus sent bytes beyond each stream's leeway
    # (half the peer's window, at most 1 MiB): a peer announcing a 64 MiB
    # window gets max_unread + 256 x 1 MiB, none of it held here.
    config = TunnelConfig(max_unread=1 * MiB)
    victim = Tunnel(config, opener=False)
    peer, sids = open_http_streams(victim, 256, peer_window=64 * MiB)
    for sid in sids:
        victim.respond(sid, 200, b"OK")
    chunk = b"r" * (16 * KiB)
    peak = 0
    for _ in range(200):
        written = write_while_writable(victim, sids, chunk, cap=256 * KiB)
        pump(victim, peer)  # the session is read; the streams never are
        peak = max(peak, victim.unread_bytes)
        if not written:
            break
    assert peak <= config.max_unread + len(chunk)
    assert not any(victim.is_writable(sid) for sid in sids)
    assert not victim.has_pending()
    # Before the bound: every stream sends its whole 256 KiB, 64 MiB for 256 streams.
    print(f"\nnever-crediting peer: {peak / MiB:.2f} MiB outstanding over 256 streams")
    # Credit comes back (the peer read one stream): the waiting streams are told.
    victim.events_received()
    packer = new_packer()
    victim.receive_message(encode_window(packer, sids[0], 64 * MiB))
    woken = {e.stream_id for e in victim.events_received() if isinstance(e, StreamWritable)}
    assert len(woken) > 1 and woken <= set(sids)
    assert victim.unread_bytes < config.max_unread
    assert all(victim.is_writable(sid) for sid in woken)


def test_a_peer_that_never_reads_the_session_leaves_bounded_queues() -> None:
    config = TunnelConfig(max_unread=1 * MiB)
    victim = Tunnel(config, opener=False)
    _, sids = open_http_streams(victim, 256, peer_window=64 * MiB)
    for sid in sids:
        victim.respond(sid, 200, b"OK")
    chunk = b"r" * (16 * KiB)
    write_while_writable(victim, sids, chunk, cap=256 * KiB)
    write_while_writable(victim, sids, chunk, cap=256 * KiB)
    assert victim.unread_bytes <= config.max_unread + len(chunk)
    assert not any(victim.is_writable(sid) for sid in sids)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 96 * KiB), min_size=2, max_size=8),
    chunk=st.sampled_from([1 * KiB, 4 * KiB, 16 * KiB]),
    consume_every=st.integers(1, 4),
)
def test_property_messages_complete_and_reassembly_stays_bounded(
    sizes: list[int], chunk: int, consume_every: int
) -> None:
    config = TunnelConfig(
        initial_window=BASE_WINDOW,
        max_chunk=chunk,
        max_ws_message=96 * KiB,
        session_reassembly=128 * KiB,
    )
    down, up = Tunnel(config, opener=True), Tunnel(config, opener=False)
    sids = [down.open_websocket(b"/p") for _ in sizes]
    for event in pump(down, up):
        assert isinstance(event, WebSocketRequested)
        up.accept_websocket(event.stream_id)
    pump(down, up)
    for sid, size in zip(sids, sizes, strict=True):
        down.send_ws_message(sid, bytes([sid % 256]) * size)
    bound = config.session_reassembly + config.max_ws_message + len(sizes) * BASE_WINDOW
    got: dict[int, int] = {}
    held: list[WebSocketMessage] = []
    for turn in range(10_000):
        moved = False
        for sender, receiver in ((down, up), (up, down)):
            message = sender.next_message()
            if message is not None:
                receiver.receive_message(message)
                moved = True
        assert up.reassembly_bytes <= bound
        for event in up.events_received():
            if isinstance(event, WebSocketMessage):
                got[event.stream_id] = len(event.data)
                held.append(event)
        if turn % consume_every == 0 and held:
            event = held.pop(0)
            up.consumed(event.stream_id, event.size)
        if not moved and not held:
            break
    assert got == dict(zip(sids, sizes, strict=True))
    assert up.reassembly_bytes == 0


def test_a_peer_that_floods_refused_opens_without_reading_is_cut_off() -> None:
    config = TunnelConfig(max_streams=4)
    victim = Tunnel(config, opener=False)
    peer = Tunnel(TunnelConfig(max_streams=1), opener=True)
    refused = 0
    for _ in range(2000):  # 2000 x 32 refused OPENs, nothing ever read back
        for _ in range(32):
            peer.open_http("GET", b"/")
        message = peer.next_message()
        assert message is not None
        try:
            victim.receive_message(message)
        except RemoteProtocolError:
            break
        refused += 32
    else:
        raise AssertionError("the control queue grew without bound")
    assert victim.closed
    assert 16384 <= refused <= 16384 + 16 * 4 + 32


def test_refused_opens_of_a_reading_peer_are_answered_forever() -> None:
    victim = Tunnel(TunnelConfig(max_streams=4), opener=False)
    peer = Tunnel(opener=True)
    for _ in range(100):  # 100 x 256 OPENs, the refusals read back each time
        for _ in range(256):
            peer.open_http("GET", b"/")
        pump(peer, victim)
    assert not victim.closed
    assert victim.stream_count == 4


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["write", "read", "credit", "lie"]), st.integers(0, 7)),
        min_size=1,
        max_size=120,
    )
)
def test_property_unread_stays_bounded_and_credit_wakes_every_writer(
    ops: list[tuple[str, int]],
) -> None:
    config = TunnelConfig(max_unread=64 * KiB, max_pending=32 * KiB)
    victim = Tunnel(config, opener=False)
    peer, sids = open_http_streams(victim, 8, peer_window=128 * KiB)
    for sid in sids:
        victim.respond(sid, 200, b"OK")
    chunk = b"c" * (16 * KiB)
    waiting: set[int] = set()
    unconsumed: list[tuple[int, int]] = []
    packer = new_packer()
    for op, index in ops:
        sid = sids[index]
        if op == "write" and sid not in waiting:
            if victim.is_writable(sid):
                if not victim.send_data(sid, chunk):
                    waiting.add(sid)
            else:
                waiting.add(sid)
        elif op == "read":  # the session carries what it can; the peer takes note
            for event in pump(victim, peer):
                if isinstance(event, DataReceived):
                    unconsumed.append((event.stream_id, len(event.data)))
        elif op == "credit" and unconsumed:  # the peer's consumer takes everything
            for peer_sid, n in unconsumed:
                peer.consumed(peer_sid, n)
            unconsumed.clear()
            woken = pump(peer, victim)
            waiting -= {e.stream_id for e in woken if isinstance(e, StreamWritable)}
        elif op == "lie":  # credit for bytes never consumed (or never even sent)
            victim.receive_message(encode_window(packer, sid, 64 * KiB))
        assert victim.unread_bytes <= config.max_unread + len(chunk)
        if victim.unread_bytes >= config.max_unread:
            tally("the session was full")
        for event in victim.events_received():
            if isinstance(event, StreamWritable):
                waiting.discard(event.stream_id)
    # Liveness: once the peer reads and credits everything, every writer was woken.
    for _ in range(50):
        events = pump(victim, peer)
        for event in events:
            if isinstance(event, DataReceived):
                peer.consumed(event.stream_id, len(event.data))
        for event in [*pump(peer, victim), *victim.events_received()]:
            if isinstance(event, StreamWritable):
                waiting.discard(event.stream_id)
        if not waiting:
            break
    assert not waiting
    assert all(victim.is_writable(sid) for sid in sids)


def test_many_streams_under_max_unread_never_wait_on_batched_credit() -> None:
    # A peer grants credit back in batches of half its window (128 KiB here):
    # 64 streams x 64 KiB consumed but not yet granted is 4 MiB = max_unread,
    # which must not stop the session (that part is the peer's leeway).
    victim = Tunnel(TunnelConfig(), opener=False)
    peer, sids = open_http_streams(victim, 64, peer_window=256 * KiB)
    for sid in sids:
        victim.respond(sid, 200, b"OK")
    chunk, total = b"d" * (16 * KiB), 512 * KiB
    left = dict.fromkeys(sids, total)
    got = 0
    for _ in range(2000):
        for sid in sids:
            while left[sid] and victim.is_writable(sid):
                victim.send_data(sid, chunk)
                left[sid] -= len(chunk)
        for event in pump(victim, peer):
            if isinstance(event, DataReceived):
                got += len(event.data)
                peer.consumed(event.stream_id, len(event.data))
        pump(peer, victim)
        victim.events_received()
        if got == 64 * total:
            break
    assert got == 64 * total, f"stalled after {got} of {64 * total} bytes"


# -- session_window: the receive windows one session may hold ----------------------------

WIDE = TunnelConfig(initial_window=256 * KiB, session_window=1 * MiB)


def announced_windows(victim: Tunnel) -> dict[int, int]:
    """The window of every ACCEPT the victim sends (its receive window per stream)."""
    windows = {}
    while (message := victim.next_message()) is not None:
        for frame in FrameDecoder().decode(message):
            if frame[0] == FrameType.ACCEPT:
                windows[frame[1]] = frame[2]
    return windows


def test_streams_beyond_the_session_window_are_announced_the_base_window() -> None:
    victim = Tunnel(WIDE, opener=False)
    peer = Tunnel(WIDE, opener=True)
    sids = [peer.open_websocket(b"/ws") for _ in range(8)]
    while (message := peer.next_message()) is not None:
        victim.receive_message(message)
    for event in victim.events_received():
        assert isinstance(event, WebSocketRequested)
        victim.accept_websocket(event.stream_id)
    windows = announced_windows(victim)
    # 1 MiB over 192 KiB beyond the base each: five full windows, then the floor.
    assert [windows[s] for s in sids] == [256 * KiB] * 5 + [BASE_WINDOW] * 3
    # A stream that goes gives its share back to the next one.
    victim.reset(sids[0])
    later = peer.open_websocket(b"/ws")
    victim.receive_message(peer.next_message() or b"")
    [event] = [e for e in victim.events_received() if isinstance(e, WebSocketRequested)]
    victim.accept_websocket(event.stream_id)
    assert announced_windows(victim) == {later: 256 * KiB}


def test_a_base_window_stream_carries_large_messages_without_stalling() -> None:
    """Credit goes back in batches of half the stream's own window, not of initial_window."""
    config = TunnelConfig(initial_window=256 * KiB, session_window=0, max_ws_message=2 * MiB)
    victim = Tunnel(config, opener=False)
    peer = Tunnel(config, opener=True)
    sid = peer.open_websocket(b"/ws")
    victim.receive_message(peer.next_message() or b"")
    victim.events_received()
    victim.accept_websocket(sid)
    assert announced_windows_through(victim, peer) == {sid: BASE_WINDOW}
    peer.events_received()
    payload = b"m" * (2 * MiB)
    peer.send_ws_message(sid, payload)
    got = []
    for event in pump(peer, victim):
        if isinstance(event, WebSocketMessage):
            got.append(event)
            victim.consumed(sid, event.size)
    pump(peer, victim)
    assert [e.data for e in got] == [payload]


def announced_windows_through(victim: Tunnel, peer: Tunnel) -> dict[int, int]:
    """Like announced_windows, and the peer receives what the victim sent."""
    windows = {}
    while (message := victim.next_message()) is not None:
        peer.receive_message(message)
        for frame in FrameDecoder().decode(message):
            if frame[0] == FrameType.ACCEPT:
                windows[frame[1]] = frame[2]
    return windows


def test_a_request_body_beyond_the_session_window_gets_no_top_up() -> None:
    config = TunnelConfig(initial_window=256 * KiB, session_window=192 * KiB)
    victim = Tunnel(config, opener=False)
    peer = Tunnel(config, opener=True)
    first = peer.open_http("POST", b"/a", has_body=True)
    second = peer.open_http("POST", b"/b", has_body=True)
    victim.receive_message(peer.next_message() or b"")
    grants = {}
    while (message := victim.next_message()) is not None:
        for frame in FrameDecoder().decode(message):
            if frame[0] == FrameType.WINDOW:
                grants[frame[1]] = frame[2]
    assert grants == {first: 192 * KiB}, grants
    assert second not in grants


def test_more_frames_in_one_message_than_any_batch_holds_close_the_tunnel() -> None:
    victim = Tunnel(TunnelConfig(), opener=False)
    [sid] = open_websockets(victim, 1)
    packer = new_packer()
    empty = encode_message(packer, sid, FLAG_FIN, b"")
    victim.receive_message(empty * (MAX_MESSAGE_FRAMES // 2))  # within the bound: delivered
    assert len(victim.events_received()) == MAX_MESSAGE_FRAMES // 2
    try:
        victim.receive_message(empty * (MAX_MESSAGE_FRAMES + 1))
    except RemoteProtocolError as exc:
        assert "frames in one session message" in exc.reason
    else:
        raise AssertionError("a message of more frames than any batch was taken")
    assert victim.closed


def test_empty_messages_queue_at_most_max_queued_items_per_stream() -> None:
    """max_pending counts bytes; empty messages have none, so items are counted too."""
    victim = Tunnel(TunnelConfig(), opener=False)
    [sid] = open_websockets(victim, 1)
    queued = 0
    while victim.send_ws_message(sid, b""):
        queued += 1
        assert queued < 10 * MAX_QUEUED_ITEMS, "empty messages queue without end"
    assert queued + 1 == MAX_QUEUED_ITEMS
    assert not victim.is_writable(sid)
    victim.events_received()
    while victim.next_message() is not None:
        pass
    assert any(isinstance(e, StreamWritable) for e in victim.events_received())
    assert victim.is_writable(sid)
