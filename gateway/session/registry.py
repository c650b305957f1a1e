"""The server's table of live hop sessions, bounded by ``max_sessions``."""

from __future__ import annotations

from collections.abc import Iterator

from .hop import HopSession

__all__ = ["RegistryFull", "SessionRegistry"]


class RegistryFull(Exception):
    """No room for another session (the gateway answers 503)."""


class SessionRegistry:
    """Session id -> HopSession. Ids are unguessable, so a dict lookup leaks nothing."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: dict[str, HopSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[HopSession]:
        return iter(list(self._sessions.values()))

    @property
    def full(self) -> bool:
        return len(self._sessions) >= self.max_sessions

    def add(self, hop: HopSession) -> None:
        if self.full:
            raise RegistryFull(f"{len(self._sessions)} sessions open (max {self.max_sessions})")
        if hop.session_id in self._sessions:
            raise ValueError(f"duplicate session id {hop.session_id!r}")
        self._sessions[hop.session_id] = hop

    def get(self, session_id: str) -> HopSession | None:
        return self._sessions.get(session_id)

    def remove(self, hop: HopSession) -> None:
        if self._sessions.get(hop.session_id) is hop:
            del self._sessions[hop.session_id]
