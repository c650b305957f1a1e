"""The half-stream machine alone: one table, and an illegal input blames whoever sent it."""

from __future__ import annotations

import itertools

import pytest

from gateway.core.tunnel import stream_state as half
from gateway.core.tunnel.errors import RemoteProtocolError, TunnelUsageError

STATES = (half.HEAD, half.BODY, half.WS, half.DONE)
INPUTS = (
    half.HEAD_BODY,
    half.HEAD_EMPTY,
    half.ACCEPT,
    half.REFUSED,
    half.DATA,
    half.END,
    half.MESSAGE,
    half.CLOSE,
)
# The lives of a half, as docs/tunnel.md draws them: each ends DONE.
LIVES = (
    (half.HEAD_BODY, half.DATA, half.DATA, half.END),  # an HTTP body
    (half.HEAD_EMPTY,),  # a head without a body
    (half.ACCEPT, half.MESSAGE, half.MESSAGE, half.CLOSE),  # a WebSocket
    (half.REFUSED,),  # a WebSocket refused
)


def test_the_table_holds_the_documented_lives_and_nothing_else() -> None:
    used = set()
    for life in LIVES:
        state = half.HEAD
        for what in life:
            used.add((state, what))
            state = half.step(1, state, what, local=True)
        assert state == half.DONE
    assert used == set(half.TRANSITIONS)
    assert not any(state == half.DONE for state, _ in half.TRANSITIONS)  # DONE is final


@pytest.mark.parametrize(("state", "what"), list(itertools.product(STATES, INPUTS)))
def test_every_input_either_steps_by_the_table_or_names_the_state(state: int, what: int) -> None:
    if (state, what) in half.TRANSITIONS:
        assert half.step(7, state, what, local=True) == half.TRANSITIONS[state, what]
        assert half.step(7, state, what, local=False) == half.TRANSITIONS[state, what]
        return
    name = half.STATE_NAMES[state]
    with pytest.raises(
        TunnelUsageError, match=f"cannot send .* stream 7 whose send side is {name}"
    ):
        half.step(7, state, what, local=True)
    with pytest.raises(
        RemoteProtocolError, match=f"received .* stream 7 whose receive side is {name}"
    ):
        half.step(7, state, what, local=False)
