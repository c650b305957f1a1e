"""Write gathering on a hop WebSocket (``transports/ws.py`` ``_coalescing``) over a real pair.

COALESCE is stretched to 0.3 s so a held write is plain to see: small sends
in a row are still gathered, but a write after a large one and an answer to
something the peer just sent go at once (holding them halved 64 KiB streams:
the peer's sender waited for credit on every round trip).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from gateway.transports import ws
from tests.transports.conftest import MakePair, Pair, wait_transport

HOLD = 0.3


async def _quiet_pair(make_pair: MakePair, monkeypatch: pytest.MonkeyPatch) -> Pair:
    monkeypatch.setattr(ws, "COALESCE", HOLD)
    pair = await make_pair("websocket")
    await wait_transport(pair.server, "websocket")
    await asyncio.sleep(HOLD + 0.05)  # the handshake's writes are past gathering
    return pair


async def test_small_sends_in_a_row_are_still_gathered(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = await _quiet_pair(make_pair, monkeypatch)
    started = time.monotonic()
    assert pair.client.send(b"a")
    await asyncio.sleep(0)
    assert pair.client.send(b"b")
    await pair.server_inbox.wait_for(2, timeout=5)
    assert time.monotonic() - started >= HOLD * 0.8
    assert pair.server_inbox.messages == [b"a", b"b"]


async def test_a_write_after_a_large_one_goes_at_once(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = await _quiet_pair(make_pair, monkeypatch)
    blobs = [os.urandom(64 * 1024) for _ in range(3)]
    started = time.monotonic()
    for blob in blobs:
        assert pair.client.send(blob)
        await asyncio.sleep(0)
    await pair.server_inbox.wait_for(3, timeout=5)
    assert time.monotonic() - started < HOLD / 2
    assert pair.server_inbox.messages == blobs


async def test_an_answer_to_the_peer_goes_at_once(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = await _quiet_pair(make_pair, monkeypatch)
    assert pair.server.send(b"x")  # the server wrote just now...
    assert pair.client.send(b"q")
    await pair.server_inbox.wait_for(1, timeout=5)
    started = time.monotonic()
    assert pair.server.send(b"r")  # ... and answers what it read: not held
    await pair.client_inbox.wait_for(2, timeout=5)
    assert time.monotonic() - started < HOLD / 2
    assert pair.client_inbox.messages == [b"x", b"r"]


async def test_a_burst_queued_without_yielding_is_written_as_it_grows(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = await _quiet_pair(make_pair, monkeypatch)
    before = pair.client.bytes_sent
    burst = [os.urandom(1024) for _ in range(200)]
    for blob in burst[:63]:
        assert pair.client.send(blob)
    assert pair.client.bytes_sent == before  # below WRITE_NOW_BYTES: the end of the turn writes
    for blob in burst[63:]:
        assert pair.client.send(blob)  # no yield: the peer gets each 64 KiB as it is queued
    assert pair.client.bytes_sent - before >= 3 * ws.WRITE_NOW_BYTES
    await pair.server_inbox.wait_for(len(burst), timeout=5)
    assert pair.server_inbox.messages == burst


async def test_a_sender_that_ends_its_turn_writes_within_the_call(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tunnel driver's flush is already the end of its loop turn: scheduling
    # another callback to write would cost a loop turn per request for nothing.
    pair = await _quiet_pair(make_pair, monkeypatch)
    before = pair.client.bytes_sent
    assert pair.client.send(b"a", wake=False)
    assert pair.client.send(b"b", wake=False)
    assert pair.client.bytes_sent == before  # not woken: nothing written, nothing scheduled
    pair.client.wake(now=True)
    written = pair.client.bytes_sent
    assert written > before  # in this call, not a loop turn later
    assert pair.client.send(b"c")  # a plain send still waits for the end of the turn
    assert pair.client.bytes_sent == written
    await pair.server_inbox.wait_for(3, timeout=5)
    assert pair.server_inbox.messages == [b"a", b"b", b"c"]
