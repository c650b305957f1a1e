"""One back-off rule for every retry in a gateway: double the delay, up to a ceiling.

The ladder (session attempts), the upstream link (discovery retries) and the
session connector (WebSocket re-probes and transport reconnects) all wait
this way. ``Backoff`` is an immutable value, so an owner swaps it
(``self.retry = self.retry.doubled()``) and a test compares values; no
clock inside: callers add ``delay`` to their own ``now``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before the next attempt, between ``initial`` and ``ceiling``."""

    initial: float
    ceiling: float
    delay: float = -1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.ceiling:
            raise ValueError(f"back-off needs 0 < initial <= ceiling, not {self}")
        if self.delay < 0:
            object.__setattr__(self, "delay", self.initial)

    def doubled(self) -> Backoff:
        """The next delay after another failure."""
        return dataclasses.replace(self, delay=min(self.delay * 2, self.ceiling))

    def reset(self) -> Backoff:
        """Back to ``initial``: what was failing has worked for long enough."""
        return dataclasses.replace(self, delay=self.initial)

    def after(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row (0: none)."""
        if failures <= 0:
            return 0.0
        return min(self.initial * 2.0 ** min(failures - 1, 64), self.ceiling)
