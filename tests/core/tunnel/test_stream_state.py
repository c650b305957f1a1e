"""The half-stream machine alone: one table, and an illegal input blames whoever sent it."""

from __future__ import annotations

import itertools

import pytest

from gateway.core.tunnel.errors import RemoteProtocolError, TunnelUsageError
from gateway.core.tunnel.stream_state import (
    ACCEPT,
    BODY,
    CLOSE,
    DATA,
    DONE,
    END,
    HEAD,
    HEAD_BODY,
    HEAD_EMPTY,
    MESSAGE,
    REFUSED,
    STATE_NAMES,
    TRANSITIONS,
    WS,
    step,
)

STATES = (HEAD, BODY, WS, DONE)
INPUTS = (HEAD_BODY, HEAD_EMPTY, ACCEPT, REFUSED, DATA, END, MESSAGE, CLOSE)


def test_the_table_is_the_documented_machine() -> None:
    assert TRANSITIONS == {
        (HEAD, HEAD_BODY): BODY,
        (HEAD, HEAD_EMPTY): DONE,
        (HEAD, ACCEPT): WS,
        (HEAD, REFUSED): DONE,
        (BODY, DATA): BODY,
        (BODY, END): DONE,
        (WS, MESSAGE): WS,
        (WS, CLOSE): DONE,
    }
    assert not any(state == DONE for state, _ in TRANSITIONS)  # DONE is final


@pytest.mark.parametrize(("state", "what"), list(itertools.product(STATES, INPUTS)))
def test_every_input_either_steps_by_the_table_or_names_the_state(state: int, what: int) -> None:
    if (state, what) in TRANSITIONS:
        assert step(7, state, what, local=True) == TRANSITIONS[state, what]
        assert step(7, state, what, local=False) == TRANSITIONS[state, what]
        return
    name = STATE_NAMES[state]
    with pytest.raises(
        TunnelUsageError, match=f"cannot send .* stream 7 whose send side is {name}"
    ):
        step(7, state, what, local=True)
    with pytest.raises(
        RemoteProtocolError, match=f"received .* stream 7 whose receive side is {name}"
    ):
        step(7, state, what, local=False)
