"""StreamGate: requests over the stream limit wait their turn, boundedly (no network needed)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.glue.streamgate import GateFull, StreamGate


async def test_within_the_limit_no_one_waits() -> None:
    gate = StreamGate(2, queue_cap=1)
    await gate.acquire(0.01)
    await gate.acquire(0.01)
    assert (gate.open, gate.waiting) == (2, 0)
    gate.release()
    gate.release()
    assert gate.open == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    gate = StreamGate(1, queue_cap=10)
    await gate.acquire(1.0)
    order: list[int] = []

    async def wait_turn(n: int) -> None:
        await gate.acquire(5.0)
        order.append(n)

    waiters = [asyncio.create_task(wait_turn(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert gate.waiting == 5
    for _ in range(5):
        gate.release()  # the slot moves to the next waiter: still one open
        await asyncio.sleep(0)
        assert gate.open == 1
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]
    gate.release()
    assert (gate.open, gate.waiting) == (0, 0)


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    gate = StreamGate(1, queue_cap=10)
    await gate.acquire(1.0)
    first = asyncio.create_task(gate.acquire(5.0))
    await asyncio.sleep(0)
    gate.release()  # handed to ``first``, not free for anyone
    late = asyncio.create_task(gate.acquire(0.05))
    await first
    with pytest.raises(TimeoutError):
        await late
    assert (gate.open, gate.waiting) == (1, 0)


async def test_beyond_the_queue_cap_a_request_is_refused_at_once() -> None:
    gate = StreamGate(1, queue_cap=2)
    await gate.acquire(1.0)
    waiters = [asyncio.create_task(gate.acquire(5.0)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(GateFull, match="1 streams open and 2 requests waiting"):
        await gate.acquire(5.0)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert (gate.open, gate.waiting) == (1, 0)


async def test_a_wait_times_out_and_leaves_no_trace() -> None:
    gate = StreamGate(1, queue_cap=4)
    await gate.acquire(1.0)
    with pytest.raises(TimeoutError):
        await gate.acquire(0.02)
    assert gate.waiting == 0
    gate.release()
    assert gate.open == 0
    await gate.acquire(0.01)  # the slot is free again
    assert gate.open == 1


async def test_a_waiter_cancelled_after_being_handed_the_slot_passes_it_on() -> None:
    gate = StreamGate(1, queue_cap=4)
    await gate.acquire(1.0)
    first = asyncio.create_task(gate.acquire(5.0))
    second = asyncio.create_task(gate.acquire(5.0))
    await asyncio.sleep(0)
    gate.release()  # handed to ``first``...
    first.cancel()  # ...which goes away before it ran
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1.0)  # the slot reached the next one
    assert (gate.open, gate.waiting) == (1, 0)


async def test_a_lowered_limit_holds_back_waiters_until_streams_end() -> None:
    gate = StreamGate(4, queue_cap=8)
    for _ in range(4):
        await gate.acquire(1.0)
    assert gate.lower_limit(3) == 3  # the peer refused the 4th
    waiter = asyncio.create_task(gate.acquire(5.0))
    await asyncio.sleep(0)
    gate.release()  # 3 open: the limit, not below it
    await asyncio.sleep(0.01)
    assert not waiter.done() and gate.open == 3
    gate.release()  # 2 open: the slot goes to the waiter
    await asyncio.wait_for(waiter, 1.0)
    assert (gate.open, gate.waiting) == (3, 0)
    assert StreamGate(1, queue_cap=1).lower_limit(0) == 1  # never below one
