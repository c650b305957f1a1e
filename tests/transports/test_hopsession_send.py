"""HopSession.send's errors: a closing or finished session says so, a misuse stays a misuse.

``send`` leaves the state check to the core (one check per message, not two):
these pin what the caller sees in each case.
"""

from __future__ import annotations

import pytest

from gateway.core.session import Session, SessionConfig
from gateway.core.session.errors import CloseCode, SessionUsageError
from gateway.transports.errors import SessionClosedError
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings


def _hop(config: SessionConfig | None = None) -> HopSession:
    sid, token = "sess-0123456789abcdef", b"t" * 32
    core = Session(config, session_id=sid, token=token, is_client=True, now=0.0)
    return HopSession(core, SessionSettings())


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
