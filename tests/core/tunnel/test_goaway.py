"""The tunnel's half of GOAWAY: streams up to the promised id are served, later OPENs refused."""

from __future__ import annotations

from gateway.core.tunnel import RequestReceived, ResetCode, StreamReset
from gateway.core.tunnel.errors import GOING_AWAY

from .test_streams import Pipe


def test_streams_opened_before_goaway_are_served_later_ones_refused_unprocessed() -> None:
    pipe = Pipe()
    first = pipe.down.open_http("GET", "/held")
    pipe.pump()
    assert [e.stream_id for e in pipe.up.events_received()] == [first]
    assert pipe.up.go_away() == first
    crossed = pipe.down.open_http("GET", "/crossed")  # sent before the GOAWAY arrived
    pipe.pump()
    assert pipe.up.events_received() == []  # nothing of it reaches the answering side
    assert pipe.down.events_received() == [
        StreamReset(
            stream_id=crossed,
            code=ResetCode.REFUSED,
            reason=GOING_AWAY,
            remote=True,
            retry_safe=True,
        )
    ]
    pipe.up.respond(first, 200, has_body=False)  # the held one still finishes
    pipe.pump()
    assert [type(e).__name__ for e in pipe.down.events_received()] == ["ResponseReceived"]


def test_go_away_keeps_its_first_promise_and_zero_means_none() -> None:
    pipe = Pipe()
    assert pipe.up.go_away() == 0
    late = pipe.down.open_http("GET", "/late")
    pipe.pump()
    assert pipe.up.go_away() == 0
    assert not any(isinstance(e, RequestReceived) for e in pipe.up.events_received())
    (reset,) = pipe.down.events_received()
    assert isinstance(reset, StreamReset) and reset.stream_id == late and reset.retry_safe
