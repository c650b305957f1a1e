"""Fuzz: peer-controlled bytes produce RemoteProtocolError or nothing, never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.session import RemoteProtocolError, Session, SessionClosed, SessionState
from gateway.core.session.frames import PROTOCOL_VERSION, FrameDecoder, Hello, new_packer

from .fakelink import SESSION_ID, TOKEN, make_pair

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
keys = st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=20,
)
interesting_ints = st.one_of(
    st.integers(-2, 10),
    st.sampled_from([2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
)
# Frame-shaped arrays: a known (or near) frame type, then plausible-but-wrong fields.
frame_like = st.builds(
    lambda kind, rest: [kind, *rest],
    st.integers(0, 9),
    st.lists(st.one_of(interesting_ints, scalars, values), max_size=5),
)
packed = st.one_of(values, frame_like).map(lambda v: msgpack.packb(v, use_bin_type=True))
batches = st.one_of(
    st.binary(max_size=200),
    packed,
    st.lists(packed, max_size=6).map(b"".join),
    st.tuples(st.lists(packed, max_size=3).map(b"".join), st.binary(max_size=20)).map(
        lambda t: t[0] + t[1]
    ),
)


def valid_hello() -> bytes:
    return Hello(
        version=PROTOCOL_VERSION, session_id=SESSION_ID, last_received=0, token=TOKEN
    ).encode(new_packer())


@FUZZ
@given(batches)
def test_decoder_raises_only_remote_protocol_error(batch: bytes) -> None:
    try:
        frames = FrameDecoder().decode(batch)
    except RemoteProtocolError as exc:
        assert exc.code == 1002
        assert exc.reason.startswith("malformed frame")
    else:
        assert isinstance(frames, list)


def feed_and_check(session: Session, stream: list[bytes]) -> None:
    """Feed batches; check the only failure mode and what is left afterwards."""
    for batch in stream:
        was_open = session.state is not SessionState.CLOSED
        try:
            session.receive_data(batch, 1.0)
        except RemoteProtocolError as exc:
            assert was_open
            assert 1000 <= exc.code <= 4999
            assert session.state is SessionState.CLOSED
            closed = [e for e in session.events_received() if isinstance(e, SessionClosed)]
            assert closed == [SessionClosed(code=exc.code, reason=exc.reason, by_peer=False)]
            # The session refuses further data cleanly: no exception, no event.
            session.receive_data(batch, 2.0)
            session.receive_data(b"\xc1", 2.0)
            assert session.events_received() == []
            assert session.next_deadline() is None
            return
        session.events_received()
        session.data_to_send(1.0)
        session.handle_timer(1.0)


@FUZZ
@given(st.lists(batches, min_size=1, max_size=4), st.booleans())
def test_session_receive_data_survives_garbage(stream: list[bytes], is_client: bool) -> None:
    client, server = make_pair()
    feed_and_check(client if is_client else server, stream)


@FUZZ
@given(st.lists(batches, min_size=1, max_size=4))
def test_session_after_valid_handshake_survives_garbage(stream: list[bytes]) -> None:
    client, server = make_pair()
    client.send_message("hello")
    client.send_message(b"x" * 70_000)
    server.receive_data(client.data_to_send(0.0), 0.0)
    server.send_message("back")
    server.data_to_send(0.0)
    feed_and_check(server, [valid_hello(), *stream])


@FUZZ
@given(batches)
def test_probe_parsers_survive_garbage(batch: bytes) -> None:
    client, server = make_pair()
    client.probe_request(0.0)
    for parse in (server.probe_reply, client.probe_check):
        try:
            result: Any = parse(batch, 0.0)
        except RemoteProtocolError:
            pass
        else:
            assert result is None or result is not None  # returned normally
    assert server.state is SessionState.OPEN and client.state is SessionState.OPEN


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_truncated_valid_batch_is_rejected(suffix: bytes) -> None:
    batch = valid_hello() + msgpack.packb([2, 1, 1, suffix])
    for cut in (1, len(batch) // 2, len(batch) - 1):
        _, server = make_pair()
        try:
            server.receive_data(batch[:cut], 0.0)
        except RemoteProtocolError as exc:
            assert exc.code == 1002
        else:
            raise AssertionError(f"truncated batch of {cut} bytes accepted")
