"""The PUSH frame (poll-ahead): carried between two tunnel ends, shape-checked, no stream state."""

from __future__ import annotations

import msgpack
import pytest

from gateway.core.tunnel import Tunnel
from gateway.core.tunnel.errors import RemoteProtocolError, TunnelUsageError
from gateway.core.tunnel.events import PushReceived


def test_push_crosses_with_no_stream() -> None:
    server, client = Tunnel(opener=False), Tunnel(opener=True)
    server.push(5, 1, b"payload")
    server.push(9, 6, b"")
    message = server.next_message()
    assert message is not None
    client.receive_message(message)
    assert client.events_received() == [
        PushReceived(stream_id=5, op=1, data=b"payload"),
        PushReceived(stream_id=9, op=6, data=b""),
    ]
    assert client.stream_count == 0


@pytest.mark.parametrize(
    "frame",
    [[11, 0, 1, b""], [11, 1, 0, b""], [11, 1, 64, b""], [11, 1, 1, "text"], [11, 1, 1]],
)
def test_a_malformed_push_is_a_protocol_error(frame: list[object]) -> None:
    with pytest.raises(RemoteProtocolError, match="PUSH"):
        Tunnel(opener=True).receive_message(msgpack.packb(frame, use_bin_type=True))


def test_push_arguments_are_checked() -> None:
    tunnel = Tunnel(opener=False)
    with pytest.raises(TunnelUsageError):
        tunnel.push(1, 0, b"")
    tunnel.close_all()
    with pytest.raises(TunnelUsageError):
        tunnel.push(1, 1, b"")
