"""Live counters of one gateway and the JSON document ``/.hopgate/status`` serves.

Kept free of aiohttp so the numbers can be read and tested without a server;
the route that serves them lives in ``gateway.router``.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from gateway import __version__
from gateway.core.ladder import Transition

Transport = Literal["plain", "long-poll", "websocket"]
#: How a legacy request travelled: over the hop session's tunnel, or as plain HTTP.
Route = Literal["tunnel", "plain"]
STATUS_PATH = "/.hopgate/status"
#: Server sessions listed one by one in status; the rest are only counted.
MAX_LISTED_PEERS: Final = 100


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One legacy request this gateway carried, finished.

    The access log and the metrics both read these (``GatewayStats.record``),
    so a request carried over the hop is seen the same way as one that
    arrived on this gateway's listener.
    """

    route: Route
    method: str
    #: Path and query as the client sent them.
    target: str
    status: int
    #: Seconds from the request head to the end of the answer.
    duration: float
    #: Who sent it: the client's address, or "hop" for a request that came over the tunnel.
    peer: str
    #: Answer body bytes sent (-1: unknown).
    size: int = -1

    @classmethod
    def over_hop(
        cls, method: str, target: bytes, status: int, duration: float, size: int
    ) -> RequestRecord:
        """A request that came in over the hop: a tunnel stream's head, as the stream gave it."""
        return cls("tunnel", method, target.decode("latin-1"), status, duration, "hop", size)


@dataclass(frozen=True, slots=True)
class SessionReport:
    """One hop session a server gateway serves, as status and metrics show it."""

    #: First characters of the session id only (a full id is a credential).
    session: str
    #: "none" while the session waits for its peer to resume on a new transport.
    transport: Transport | Literal["none"]
    #: The peer's address (host:port) as this gateway saw it.
    peer: str
    #: Wall-clock time the session opened.
    since: float


@dataclass(frozen=True, kw_only=True)
class HopReport:
    """Where one next hop stands, as the link to it reads its ladder right now."""

    transport: Transport = "plain"
    upgrades: int = 0
    fallbacks: int = 0
    #: "unknown", "gateway" or "legacy": what discovery concluded about the peer.
    peer: str = "unknown"
    #: Why the last hello or session attempt failed, or the session ended ("" = none).
    last_error: str = ""
    #: First characters of the live hop session's id, if there is one.
    session: str | None = None
    #: The transport that session holds now ("none" while it redials one the path
    #: lost): the rung says where the hop is, this whether it is connected there.
    session_transport: str | None = None
    #: Times a transport took over after that session had lost its own.
    session_resumes: int | None = None
    #: The latest moves between rungs, oldest first (bounded by the ladder).
    transitions: tuple[Transition, ...] = ()
    #: Moves counted since start, by (from, to, reason).
    switches: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    #: Seconds of silence before a heartbeat PING on this hop now (None: no hop session layer).
    heartbeat_s: float | None = None
    #: The idle limit (s) the path was seen to close WebSockets at, if one was learned.
    heartbeat_learned: float | None = None


#: A hop nobody keeps a link to: plain, nothing learned.
NO_LINK: Final = HopReport()
#: Next hops the status and the metrics keep figures for. A forward proxy meets
#: any number of origins: past this, the oldest entry with no link is forgotten.
MAX_UPSTREAMS: Final = 256
#: Seconds between two log lines saying that the same limit holds requests up.
LIMIT_LOG_INTERVAL: Final = 60.0


def no_link() -> HopReport:
    """The ``report`` of a next hop no link keeps (plain, never upgraded, or evicted)."""
    return NO_LINK


@dataclass
class UpstreamState:
    """What this gateway knows about one next hop.

    The edges count ``requests`` and ``errors`` here; everything about the
    hop itself is read, when the document is served, from the one object
    that keeps it: the link's ladder (``report``, set by ``gateway.link``).
    Nothing is copied, so the page cannot disagree with the ladder.
    """

    url: str
    requests: int = 0
    errors: int = 0
    report: Callable[[], HopReport] = no_link

    # What the link reports, read through (never stored here).

    @property
    def transport(self) -> Transport:
        return self.report().transport

    @property
    def upgrades(self) -> int:
        return self.report().upgrades

    @property
    def fallbacks(self) -> int:
        return self.report().fallbacks

    @property
    def peer(self) -> str:
        return self.report().peer

    @property
    def last_error(self) -> str:
        return self.report().last_error

    @property
    def session(self) -> str | None:
        return self.report().session

    def as_json(self) -> dict[str, Any]:
        hop = self.report()
        return {
            "url": self.url,
            "transport": hop.transport,
            "upgrades": hop.upgrades,
            "fallbacks": hop.fallbacks,
            "requests": self.requests,
            "errors": self.errors,
            "peer": hop.peer,
            "session": hop.session,
            "session_transport": hop.session_transport,
            "session_resumes": hop.session_resumes,
            "last_error": hop.last_error,
            "transitions": [_transition_json(t) for t in hop.transitions],
            "heartbeat_s": hop.heartbeat_s,
            "heartbeat_learned": hop.heartbeat_learned,
        }


def iso_time(at: float) -> str:
    """Wall-clock seconds as ISO 8601 with the date and the zone (UTC)."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def _transition_json(move: Transition) -> dict[str, str]:
    return {
        "at": iso_time(move.at),
        "from": move.from_rung,
        "to": move.to_rung,
        "reason": move.reason,
        "detail": move.detail,
    }


def sessions_json(active: int, sessions: Iterable[SessionReport]) -> dict[str, Any]:
    """The server's hop sessions: counted by transport, the first ``MAX_LISTED_PEERS`` listed."""
    by_transport: Counter[str] = Counter({"websocket": 0, "long-poll": 0})
    listed: list[dict[str, str]] = []
    for report in sessions:
        by_transport[report.transport] += 1
        if len(listed) < MAX_LISTED_PEERS:
            listed.append(
                {
                    "peer": report.peer,
                    "transport": report.transport,
                    "session": report.session,
                    "since": iso_time(report.since),
                }
            )
    return {
        "active": active,
        "by_transport": dict(by_transport),
        "peers": listed,
        "peers_not_listed": max(0, by_transport.total() - len(listed)),
    }


@dataclass
class ClusterStats:
    """Requests for sessions of other instances of a cluster (``--cluster-secret``).

    Plain integers bumped where each outcome happens, read when status or
    metrics are served.
    """

    #: The ``scheme://host:port`` this instance advertises (the owner its ids name).
    advertise: str
    #: Passed to the owner and answered by it (whatever its status).
    forwarded: int = 0
    #: The owner could not be reached: answered 404 "owner is gone".
    gone: int = 0
    #: The owner took too long: answered 504.
    timeouts: int = 0
    #: Too many forwards in flight on this instance: answered 503.
    busy: int = 0
    #: Ids whose MAC or owner did not verify: answered 404, sent nowhere.
    forged: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "advertise": self.advertise,
            "forwarded": self.forwarded,
            "forward_errors": self.gone + self.timeouts + self.busy,
            "forged": self.forged,
        }


@dataclass
class PollAheadStats:
    """Poll-ahead predictions (``--poll-ahead``), plain integers bumped where each happens.

    A server gateway counts ``made`` (predicted polls it issued) and ``used``
    (their answers reached a client); a client gateway counts what became of
    the answers it held: ``used``, ``dropped`` (a poll of the endpoint did not
    match), ``expired`` (no poll came in the hold time). ``chains`` and
    ``held_bytes`` are the gateway-wide caps' current figures (not in the JSON).
    """

    made: int = 0
    used: int = 0
    dropped: int = 0
    expired: int = 0
    chains: int = 0
    held_bytes: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "made": self.made,
            "used": self.used,
            "dropped": self.dropped,
            "expired": self.expired,
        }


@dataclass
class GatewayStats:
    """Counters shared by every handler of one gateway."""

    role: str
    mode: str
    started: float = field(default_factory=time.time)
    upstreams: dict[str, UpstreamState] = field(default_factory=dict)
    active_streams: int = 0
    #: Tunnelled exchanges held up by a limit: opening side, waiting for a stream
    #: (``--max-streams``); answering side, for an origin connection
    #: (``--session-connections``, or the address's share of ``--max-connections``).
    waiting_for_stream: int = 0
    waiting_for_origin: int = 0
    active_sessions: int = 0
    active_websockets: int = 0
    active_tunnels: int = 0
    requests_total: int = 0
    #: GOAWAYs this gateway sent (draining) and received (its upstream drained).
    goaways_sent: int = 0
    goaways_received: int = 0
    #: New sessions opened at once because the upstream lost ours (its instance crashed).
    failovers: int = 0
    #: Tunnelled requests sent again on a new session (RFC 9110 9.2.2, or refused by GOAWAY).
    retried_requests: int = 0
    #: Inbound connection figures (held, cap, refused...), set by the listening gateway.
    clients: Callable[[], dict[str, int]] | None = None
    #: The hop sessions this gateway serves (server side), read when asked.
    sessions: Callable[[], Iterable[SessionReport]] = lambda: ()
    #: Called with every finished legacy request (access log, metrics).
    observers: list[Callable[[RequestRecord], None]] = field(default_factory=list)
    poll_ahead: PollAheadStats = field(default_factory=PollAheadStats)
    #: Set when this gateway is one instance of a cluster.
    cluster: ClusterStats | None = None
    #: When each limit was last logged as holding requests up (monotonic seconds);
    #: keyed by flag only, so it stays a handful of entries whatever the peers do.
    _limits_logged: dict[str, float] = field(default_factory=dict)

    def limit_holds_up(self, flag: str, now: float) -> bool:
        """True at most once a minute per ``flag``: whether to log that it holds requests up.

        A limit that is reached is reached by every request after it; once a
        minute is enough to name the flag without flooding the log.
        """
        last = self._limits_logged.get(flag)
        if last is not None and now - last < LIMIT_LOG_INTERVAL:
            return False
        self._limits_logged[flag] = now
        return True

    def record(self, request: RequestRecord) -> None:
        """A legacy request finished: tell the access log and the metrics."""
        for observe in self.observers:
            observe(request)

    def upstream(self, url: str) -> UpstreamState:
        state = self.upstreams.get(url)
        if state is None:
            if len(self.upstreams) >= MAX_UPSTREAMS:
                self._forget_one()
            state = self.upstreams[url] = UpstreamState(url=url)
        return state

    def _forget_one(self) -> None:
        """Drop the oldest next hop that no link keeps (a link's own entry stays)."""
        for url, state in self.upstreams.items():
            if state.report is no_link:
                del self.upstreams[url]
                return

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "mode": self.mode,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "upstreams": [u.as_json() for u in self.upstreams.values()],
            "streams": {
                "active": self.active_streams,
                "waiting_for_stream": self.waiting_for_stream,
                "waiting_for_origin": self.waiting_for_origin,
            },
            "sessions": sessions_json(self.active_sessions, self.sessions()),
            "websockets": {"active": self.active_websockets},
            "tunnels": {"active": self.active_tunnels},
            "requests_total": self.requests_total,
            "poll_ahead": self.poll_ahead.as_json(),
            "hop": {
                "goaways": {"sent": self.goaways_sent, "received": self.goaways_received},
                "failovers": self.failovers,
                "retried": self.retried_requests,
            },
            "clients": self.clients() if self.clients is not None else {},
            **({"cluster": self.cluster.as_json()} if self.cluster is not None else {}),
        }


#: Headers an intermediary adds: a request carrying one did not come straight from loopback.
PROXY_HEADERS = ("Via", "X-Forwarded-For", "Forwarded")


def status_refusal(peer_ip: str | None, header_names: Iterable[str], *, public: bool) -> str | None:
    """Why status details are refused to this client, or None if it may read them.

    They name the upstream, the version and live counters, so by default
    only a client on this machine gets them, and only one that did not come
    through a proxy (a proxy on loopback would hand them to anyone).
    """
    if public:
        return None
    names = {name.lower() for name in header_names}
    if any(h.lower() in names for h in PROXY_HEADERS):
        return (
            "status details are not served to requests that came through a proxy "
            "(Via/X-Forwarded-For/Forwarded); start the gateway with --public-status to allow it"
        )
    if not _is_loopback(peer_ip):
        return (
            "status details are served to loopback clients only; "
            "start the gateway with --public-status to serve them to anyone"
        )
    return None


def _is_loopback(peer_ip: str | None) -> bool:
    if not peer_ip:
        return False
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
