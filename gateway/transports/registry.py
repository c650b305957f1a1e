"""The server's bounded tables: live hop sessions, per-address limits, hop-secret nonces.

All three are dicts keyed by the thing looked up (O(1) per request) and
bounded; none reads a clock (callers pass ``now``).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterator
from typing import Final

from gateway.core.cluster import short_id
from gateway.status import SessionReport
from gateway.transports.hopsession import HopSession

__all__ = [
    "ClientLimits",
    "ClientRefused",
    "RegistryFull",
    "ReplayCache",
    "SessionRegistry",
    "client_key",
]


class RegistryFull(Exception):
    """No room for another session (the gateway answers 503)."""


class SessionRegistry:
    """Session id -> HopSession. Ids are unguessable, so a dict lookup leaks nothing."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: dict[str, HopSession] = {}
        #: Session id -> (peer "host:port", wall-clock time it opened), for status.
        self._opened: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[HopSession]:
        return iter(list(self._sessions.values()))

    @property
    def full(self) -> bool:
        return len(self._sessions) >= self.max_sessions

    def add(self, hop: HopSession, *, peer: str = "", since: float = 0.0) -> None:
        """Register ``hop``, opened by ``peer`` (host:port) at wall-clock ``since``."""
        if self.full:
            raise RegistryFull(f"{len(self._sessions)} sessions open (max {self.max_sessions})")
        if hop.session_id in self._sessions:
            raise ValueError(f"duplicate session id {hop.session_id!r}")
        self._sessions[hop.session_id] = hop
        self._opened[hop.session_id] = (peer, since)

    def get(self, session_id: str) -> HopSession | None:
        return self._sessions.get(session_id)

    def remove(self, hop: HopSession) -> None:
        if self._sessions.get(hop.session_id) is hop:
            del self._sessions[hop.session_id]
            self._opened.pop(hop.session_id, None)

    def reports(self) -> Iterator[SessionReport]:
        """The live sessions as status and metrics show them, oldest first (read when asked)."""
        for hop in list(self._sessions.values()):
            if hop.closed:
                continue
            peer, since = self._opened.get(hop.session_id, ("", 0.0))
            yield SessionReport(
                session=short_id(hop.session_id),
                transport=hop.transport,
                peer=peer,
                since=since,
            )


# -- per client address ---------------------------------------------------------------


class ClientRefused(Exception):
    """A client address is over one of its limits (the gateway answers 429)."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Client:
    __slots__ = ("sessions", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.sessions = 0
        self.tokens = tokens
        self.stamp = stamp


def client_key(address: str | None) -> str:
    """The unit limits count by: an IPv4 address, or an IPv6 /64 (one host gets a whole /64)."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class ClientLimits:
    """Sessions held at once and sessions opened per second, per client address.

    Without these one peer fills ``--max-sessions`` in well under a second
    and every other gateway gets 503. The rate is a token bucket holding
    ``rate`` tokens (a burst of one second's worth, at least one). The table
    only keeps addresses that hold a session or whose bucket is still
    refilling: the rest are dropped in an amortised sweep, so it stays about
    as large as the sessions plus the last second's new addresses. Times are
    the caller's clock (seconds).
    """

    __slots__ = ("_burst", "_clients", "_max_sessions", "_next_sweep", "_rate")

    def __init__(self, *, max_sessions: int, rate: float) -> None:
        if max_sessions < 0 or not rate > 0:
            raise ValueError("max_sessions must be >= 0 and rate > 0")
        self._max_sessions = max_sessions
        self._rate = rate
        self._burst = max(1.0, rate)
        self._clients: dict[str, _Client] = {}
        self._next_sweep = _SWEEP_MIN

    def __len__(self) -> int:
        return len(self._clients)

    def admit(self, key: str, now: float) -> None:
        """Count one new session for ``key``, or raise ClientRefused saying which flag."""
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) >= self._next_sweep:
                self._sweep(now)
            client = self._clients[key] = _Client(self._burst, now)
        else:
            client.tokens = min(self._burst, client.tokens + (now - client.stamp) * self._rate)
            client.stamp = now
        if self._max_sessions and client.sessions >= self._max_sessions:
            raise ClientRefused(
                f"this address holds {client.sessions} hop sessions "
                f"(--max-sessions-per-client {self._max_sessions})",
                _RETRY_HELD,
            )
        if client.tokens < 1.0:
            wait = math.ceil((1.0 - client.tokens) / self._rate)
            raise ClientRefused(
                f"this address opens hop sessions too fast "
                f"(--session-create-rate {self._rate:g} a second)",
                max(1, wait),
            )
        client.tokens -= 1.0
        client.sessions += 1

    def release(self, key: str, now: float) -> None:
        """One session of ``key`` ended."""
        client = self._clients.get(key)
        if client is None:
            return
        client.sessions = max(0, client.sessions - 1)
        if client.sessions == 0 and self._refilled(client, now):
            del self._clients[key]

    def _refilled(self, client: _Client, now: float) -> bool:
        return client.tokens + (now - client.stamp) * self._rate >= self._burst

    def _sweep(self, now: float) -> None:
        idle = [
            key
            for key, client in self._clients.items()
            if client.sessions == 0 and self._refilled(client, now)
        ]
        for key in idle:
            del self._clients[key]
        self._next_sweep = max(_SWEEP_MIN, 2 * len(self._clients))


_SWEEP_MIN: Final = 1024
#: Retry-After when an address holds too many sessions: one must end first.
_RETRY_HELD: Final = 10


# -- hop-secret nonces ------------------------------------------------------------------


class ReplayCache:
    """Nonces of hop-secret proofs seen while they could still be accepted.

    A proof is valid for ``window`` seconds either side of our clock, so a
    nonce must be remembered until ``2 * window`` after we first saw it; with
    that fixed lifetime, insertion order is expiry order and expired nonces
    leave from the front. Bounded: when ``capacity`` live nonces are held, a
    new proof is refused (``Full``) rather than an old nonce forgotten, which
    would reopen it to replay.
    """

    __slots__ = ("_capacity", "_lifetime", "_seen")

    class Full(Exception):
        """No room to remember another nonce (the gateway answers 503)."""

    def __init__(self, *, window: float, capacity: int) -> None:
        self._lifetime = 2 * window
        self._capacity = capacity
        self._seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, now: float) -> bool:
        """Remember ``nonce``; False if it was seen before (a replay). Raises Full."""
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        if len(seen) >= self._capacity:
            raise ReplayCache.Full(f"{len(seen)} proofs in the last {self._lifetime:g} s")
        seen[nonce] = now + self._lifetime
        return True
