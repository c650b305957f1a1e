"""The one back-off rule (gateway/core/backoff.py), shared by the ladder, link and connector."""

from __future__ import annotations

import pytest

from gateway.core.backoff import Backoff


def test_doubles_up_to_the_ceiling_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    delays = []
    for _ in range(5):
        delays.append(b.delay)
        b = b.doubled()
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.reset() == Backoff(0.5, 3.0)


def test_after_n_failures() -> None:
    b = Backoff(0.05, 2.0)
    assert [b.after(n) for n in (0, 1, 2, 3)] == [0.0, 0.05, 0.1, 0.2]
    assert b.after(10_000) == 2.0  # no overflow however long it fails


@pytest.mark.parametrize(("initial", "ceiling"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_nonsense_bounds_are_refused(initial: float, ceiling: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, ceiling)
