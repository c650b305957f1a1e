"""HopSession's per-message seams: ``send``'s errors, delivery to ``on_message``, wake-ups.

``send`` leaves the state check to the core (one check per message, not two),
and ``dispatch`` calls ``on_message`` itself: these pin what the caller sees.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.session import Session, SessionConfig, SessionState
from gateway.core.session.errors import CloseCode, SessionUsageError
from gateway.core.session.outbox import ACK_EVERY
from gateway.transports.errors import SessionClosedError
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings


def _hop(config: SessionConfig | None = None) -> HopSession:
    sid, token = "sess-0123456789abcdef", b"t" * 32
    core = Session(config, session_id=sid, token=token, is_client=True, now=0.0)
    return HopSession(core, SessionSettings())


def _attached_pair() -> tuple[Session, HopSession]:
    """The server's core and our (client) hop session, both with a transport attached."""
    peer = Session(
        None, session_id="sess-0123456789abcdef", token=b"t" * 32, is_client=False, now=0.0
    )
    peer.transport_attached(0.0)
    hop = _hop()
    hop.core.transport_attached(0.0)
    return peer, hop


async def test_send_while_closing_is_session_closed() -> None:
    hop = _hop()
    assert hop.send(b"before")
    hop.core.close(CloseCode.NORMAL, "bye", now=hop.now())  # the handshake has begun
    with pytest.raises(SessionClosedError) as caught:
        hop.send(b"after")
    assert (caught.value.code, caught.value.reason) == (CloseCode.NORMAL, "closing")
    assert hop.messages_sent == 1


async def test_send_after_abandon_is_session_closed_with_its_reason() -> None:
    hop = _hop()
    hop.abandon(CloseCode.GOING_AWAY, "gone")
    with pytest.raises(SessionClosedError) as caught:
        hop.send(b"x")
    assert (caught.value.code, caught.value.reason) == (CloseCode.GOING_AWAY, "gone")


async def test_an_oversized_message_on_an_open_session_is_a_usage_error() -> None:
    hop = _hop(SessionConfig(max_message_size=10))
    with pytest.raises(SessionUsageError, match="max_message_size"):
        hop.send(b"x" * 11)
    assert hop.send(b"x" * 10) and hop.messages_sent == 1


async def test_messages_reach_on_message_and_a_failing_handler_closes_the_session() -> None:
    peer, hop = _attached_pair()
    early = [b"early"]
    peer.send_message(early[0])
    hop.feed(peer.data_to_send(0.0))  # before set_handlers: kept, then delivered
    got: list[bytes | str] = []

    def on_message(data: bytes | str) -> None:
        got.append(data)
        if data == b"boom":
            raise RuntimeError("handler bug")

    hop.set_handlers(on_message=on_message)
    for data in (b"a", "b", b"boom", b"c"):
        peer.send_message(data)
    hop.feed(peer.data_to_send(0.0))
    assert got == [b"early", b"a", "b", b"boom", b"c"]  # the batch is still delivered whole
    assert hop.messages_received == 5
    assert hop.core.state is SessionState.CLOSING  # INTERNAL_ERROR close under way


async def test_a_fed_batch_wakes_waiting_writers_only_when_something_is_due() -> None:
    """A long-poll writer sleeps through a batch that leaves only an ACK that may wait."""
    peer, hop = _attached_pair()
    hop.set_handlers(on_message=lambda data: None)
    hop.feed(peer.data_to_send(0.0))  # the peer's HELLO
    hop.take()  # ours, and its ACK: nothing is due now
    assert not hop.core.wants_write_now

    waiter = asyncio.create_task(hop.wait_changed())
    await asyncio.sleep(0)
    peer.send_message(b"one")
    hop.feed(peer.data_to_send(0.0))
    await asyncio.sleep(0)
    assert hop.core.wants_write and not hop.core.wants_write_now  # a delayed ACK only
    assert not waiter.done()

    for n in range(ACK_EVERY):  # enough DATA that their ACK may not wait
        peer.send_message(b"%d" % n)
    hop.feed(peer.data_to_send(0.0))
    assert hop.core.wants_write_now
    await asyncio.wait_for(waiter, 1)
