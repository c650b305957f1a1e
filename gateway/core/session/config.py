"""Limits and timers of one hop session end (``SessionConfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.core.session.frames import DATA_OVERHEAD, MAX_FRAGMENT_SIZE

__all__ = ["SessionConfig"]

_MiB: Final = 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionConfig:
    """Limits and timers of one session. Times are seconds, sizes bytes."""

    max_message_size: int = 16 * _MiB
    #: 64 KiB and room for a tunnel frame's head: a tunnel batch
    #: (``TunnelConfig.max_message``, 64 KiB + 17) is one fragment.
    fragment_size: int = 64 * 1024 + 64
    max_buffer_bytes: int = 4 * _MiB
    max_buffer_frames: int = 4096
    max_batch_bytes: int = 1 * _MiB
    retransmit_timeout: float = 10.0
    heartbeat_interval: float = 20.0
    stall_timeout: float = 15.0
    resume_grace: float = 60.0
    close_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.fragment_size <= MAX_FRAGMENT_SIZE:
            raise ValueError(f"fragment_size must be in [1, {MAX_FRAGMENT_SIZE}]")
        if self.max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        if self.max_buffer_bytes < self.fragment_size + DATA_OVERHEAD:
            raise ValueError("max_buffer_bytes must hold at least one full fragment")
        if self.max_buffer_frames < 1 or self.max_batch_bytes < 1:
            raise ValueError("max_buffer_frames and max_batch_bytes must be >= 1")
        timers = (
            self.retransmit_timeout,
            self.heartbeat_interval,
            self.stall_timeout,
            self.resume_grace,
            self.close_timeout,
        )
        if min(timers) <= 0:
            raise ValueError("timeouts must be > 0")
