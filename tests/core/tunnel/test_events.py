"""The per-message events built fast are the very objects their constructors build."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.core.session.events import MessageReceived, message_received
from gateway.core.tunnel.events import (
    DataReceived,
    WebSocketMessage,
    data_received,
    websocket_message,
)


@pytest.mark.parametrize(
    ("fast", "slow"),
    [
        (websocket_message(3, b"m", 1), WebSocketMessage(stream_id=3, data=b"m", size=1)),
        (websocket_message(5, "\u00e9", 2), WebSocketMessage(stream_id=5, data="\u00e9", size=2)),
        (data_received(7, b"d"), DataReceived(stream_id=7, data=b"d")),
        (message_received(b"x"), MessageReceived(data=b"x")),
        (message_received("t"), MessageReceived(data="t")),
    ],
)
def test_fast_events_equal_the_constructed_ones(fast: object, slow: object) -> None:
    assert type(fast) is type(slow)
    assert fast == slow
    assert repr(fast) == repr(slow)
    # Every field set (a field added to the class but not to its builder fails here).
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)  # type: ignore[call-overload]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.data = b"changed"  # type: ignore[attr-defined]
