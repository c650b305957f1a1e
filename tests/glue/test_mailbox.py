"""Mailbox on its own: a real tunnel core, no session, no sockets.

What the link's routing relies on: events come out in order, a reset is
recorded once and cancels the task running the stream (never the one
delivering it), and a writer waiting for room learns of a reset.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.tunnel import (
    DataReceived,
    ResetCode,
    StreamEnded,
    StreamReset,
    StreamWritable,
    Tunnel,
    TunnelConfig,
)
from gateway.glue.mailbox import EndpointDone, Mailbox

pytestmark = pytest.mark.timeout(10)


def reset(sid: int = 1, reason: str = "gone") -> StreamReset:
    return StreamReset(
        stream_id=sid, code=ResetCode.CANCEL, reason=reason, remote=True, retry_safe=False
    )


async def test_events_come_out_in_the_order_they_arrived() -> None:
    box = Mailbox()
    box.deliver(DataReceived(stream_id=1, data=b"a"))
    box.post(EndpointDone(closed=True))
    box.deliver(StreamEnded(stream_id=1))
    box.deliver(StreamWritable(stream_id=1))  # wakes writers, is not queued
    assert box.backlog == 3
    got = [await box.next_event() for _ in range(3)]
    assert isinstance(got[0], DataReceived) and got[0].data == b"a"
    assert isinstance(got[1], EndpointDone) and got[1].closed
    assert isinstance(got[2], StreamEnded)
    assert box.backlog == 0


async def test_a_reader_waits_until_an_event_arrives() -> None:
    box = Mailbox()
    reader = asyncio.create_task(box.next_event())
    await asyncio.sleep(0.01)
    assert not reader.done()
    box.deliver(StreamEnded(stream_id=1))
    assert isinstance(await asyncio.wait_for(reader, 1), StreamEnded)


async def test_a_reset_cancels_the_task_running_the_stream_and_counts_once() -> None:
    box = Mailbox()
    box.task = asyncio.create_task(asyncio.sleep(30))
    first, second = reset(reason="first"), reset(reason="second")
    box.deliver(first)
    box.deliver(second)
    with pytest.raises(asyncio.CancelledError):
        await box.task
    assert box.reset is first
    assert box.backlog == 1


async def test_a_reset_never_cancels_the_task_delivering_it() -> None:
    box = Mailbox()

    async def deliver_from_the_stream_task() -> str:
        box.deliver(reset())
        await asyncio.sleep(0)
        return "still running"

    box.task = asyncio.create_task(deliver_from_the_stream_task())
    assert await asyncio.wait_for(box.task, 1) == "still running"


async def test_a_writer_waiting_for_room_learns_of_a_reset() -> None:
    tunnel = Tunnel(TunnelConfig(), opener=True)
    sid = tunnel.open_http("POST", "/", has_body=True)
    for _ in range(10_000):  # bounded: a window is far smaller than 640 MiB
        if not tunnel.is_writable(sid):
            break
        tunnel.send_data(sid, b"x" * 65536)
    assert not tunnel.is_writable(sid)
    box = Mailbox()
    waiter = asyncio.create_task(box.wait_writable(tunnel, sid))
    await asyncio.sleep(0.01)
    box.deliver(StreamWritable(stream_id=sid))  # woken, still no room: waits on
    await asyncio.sleep(0.01)
    assert not waiter.done()
    box.deliver(reset(sid))
    assert await asyncio.wait_for(waiter, 1) is False


async def test_a_reader_cancelled_while_waiting_leaves_the_mailbox_usable() -> None:
    box = Mailbox()
    reader = asyncio.create_task(box.next_event())
    await asyncio.sleep(0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    box.deliver(StreamEnded(stream_id=1))  # nobody waits: kept for the next reader
    assert isinstance(await asyncio.wait_for(box.next_event(), 1), StreamEnded)


async def test_one_task_at_a_time_awaits_a_streams_events() -> None:
    """A stream's events go to the one task running it: a second reader is a bug, said so."""
    box = Mailbox()
    first = asyncio.create_task(box.next_event())
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="second task"):
        await box.next_event()
    box.deliver(StreamEnded(stream_id=1))
    assert isinstance(await asyncio.wait_for(first, 1), StreamEnded)


async def test_room_announced_before_anyone_waits_for_it_is_no_wait_later() -> None:
    tunnel = Tunnel(TunnelConfig(), opener=True)
    sid = tunnel.open_http("POST", "/", has_body=True)
    box = Mailbox()
    box.deliver(StreamWritable(stream_id=sid))  # no writer yet: nothing to wake
    assert await asyncio.wait_for(box.wait_writable(tunnel, sid), 1) is True
