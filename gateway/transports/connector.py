"""The client end of hop sessions: open one, upgrade it, fall back, resume.

Theory of operation
===================

``connect()`` opens a session with ``POST /.hopgate/session`` (plain HTTP,
so it works on every path; a discovery note naming another session path
moves it there). The answer must be a ``200`` carrying
``X-Hopgate-Session``, ``X-Hopgate-Token`` and a body that is exactly the
server's HELLO for that id; a legacy server answering ``200`` (or echoing
our headers back) fails here with ``NotAGateway``, a gateway saying "not
now" with ``SessionRefused``, an unreachable one with ``PeerUnreachable``
(``errors``). Nothing else is sent to a peer that is not a gateway.

Then, with ``prefer="websocket"``, the connector tries a WebSocket at once
(handshake + probe, see ``ws``); if that fails it starts long-polling. With
``prefer="long-poll"`` it long-polls first and probes a WebSocket after
``reprobe_initial``. Either way the first transport is attached before
``connect()`` returns, and a session is never carried by a WebSocket that has
not answered a probe.

A supervisor task per session then reacts to three things:

* **transport lost** (socket closed, request failed): resume on a new
  transport (WebSocket first unless WebSocket is in back-off), retrying with
  a growing delay; the core replays everything unacknowledged. ``404`` from
  the peer means it expired the session: it is closed here with 4000;
* **stalled** (the core's watchdog: no ack/pong for ``stall_timeout``): a
  WebSocket is demoted to long-poll, a long-poll is restarted;
* **re-probe due**: while on long-poll, try the WebSocket again; every
  failure or demotion doubles the delay (``reprobe_initial`` ..
  ``reprobe_max``); a WebSocket that lived ``reprobe_max`` resets it.

Every new transport gets a new *epoch* (``longpoll``), so the server can
tell a late request of an abandoned transport from a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Final, Literal

import aiohttp
from yarl import URL

from gateway.core import ladder
from gateway.core.backoff import Backoff
from gateway.core.idle import IdleLearner
from gateway.core.session.errors import CloseCode
from gateway.core.session.machine import Session
from gateway.transports.errors import (
    HandshakeRefused,
    NotAGateway,
    PeerUnreachable,
    SessionRefused,
    SessionUnavailable,
    TransportFailed,
)
from gateway.transports.handshake import (
    AUTH_HEADER,
    LONG_POLL_HEADER,
    LONG_POLL_LEAN,
    LONG_POLL_POLL_POST,
    LONG_POLL_STREAM,
    SESSION_HEADER,
    SESSION_PATH,
    TOKEN_HEADER,
    TUNNEL_FEATURES,
    TUNNEL_HEADER,
    SessionRoute,
    auth_header_value,
    encode_token,
    read_created,
)
from gateway.transports.hopsession import HopSession, Transport
from gateway.transports.http import describe, read_bounded
from gateway.transports.longpoll_client import LongPollClient
from gateway.transports.longpoll_stream import StreamClient
from gateway.transports.session_settings import SessionSettings
from gateway.transports.ws import WebSocketTransport, open_websocket

__all__ = ["SessionConnector"]

log = logging.getLogger("hopgate.session")

_MAX_CREATE_BODY: Final = 64 * 1024

Signal = Literal["lost", "stalled", "closed", "wake"]


class SessionConnector:
    """Client end for one upstream gateway.

    WebSocket first, long-poll when WS fails; re-probes WS with backoff;
    demotes a stalled WS.
    """

    def __init__(
        self,
        base_url: URL,
        http: aiohttp.ClientSession,
        settings: SessionSettings,
        *,
        hop_secret: str | None = None,
        prefer: Literal["websocket", "long-poll"] = "websocket",
        on_transport_change: Callable[[str, str], None] | None = None,
        session_path: str = SESSION_PATH,
        idle: IdleLearner | None = None,
        long_poll_streams: bool = True,
    ) -> None:
        self.base_url = base_url
        self._allow_streams = long_poll_streams
        self._http = http
        #: Where the peer's sessions live (below ``base_url``'s path): its note's path.
        self.session_path = session_path
        self.settings = settings
        self._hop_secret = hop_secret
        self.prefer: Literal["websocket", "long-poll"] = prefer
        self._on_transport_change = on_transport_change
        #: The upstream's heartbeat and what killed WebSockets taught it (kept by the caller).
        self.idle = idle
        #: Moves onto a WebSocket (first transport included).
        self.upgrades = 0
        #: Falls back to long-poll: WebSocket refused/unproven when (re)connecting, or demoted.
        self.fallbacks = 0
        #: WebSocket candidates that failed (handshake or probe), re-probes included.
        self.probe_failures = 0
        #: Why the latest WebSocket candidate was unusable (``HandshakeRefused``: its status).
        self.last_websocket_failure: TransportFailed | None = None
        #: Why the session is on its current transport: a ladder reason token
        #: (``gateway.core.ladder``) and the sentence; set before each switch,
        #: so an ``on_transport_change`` callback reads the switch's own.
        self.last_switch: tuple[str, str] = (ladder.SESSION_OPENED, "")
        #: Why the latest transport was lost (the detail of ``websocket_closed``).
        self._lost_reason = ""
        self.session: HopSession | None = None
        self._signals: asyncio.Queue[tuple[Signal, Transport | None]] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._switching = asyncio.Lock()
        self._reprobe = Backoff(settings.reprobe_initial, settings.reprobe_max)
        self._reconnect = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._reprobe_at: float | None = None
        self._failures = 0
        self._ws_started = 0.0
        self._closing = False
        #: How the session's transports reach it (set by ``connect``).
        self.route: SessionRoute | None = None
        #: Since when no transport has worked (the client's own resume_grace clock:
        #: a transport being tried does not count as one).
        self._down_since: float | None = None
        #: The server's tunnel features (``TUNNEL_HEADER``) from its last session-creating 200.
        self._peer_tunnel = ""
        #: Its long-poll features (``LONG_POLL_HEADER``), from the same answer.
        self._peer_long_poll = ""
        self.streams = False  #: long-poll streams (offered, and not held back on the path yet)
        self._create_rtt = 0.0  # seconds the last session-creating POST took

    # -- public ----------------------------------------------------------------------

    async def connect(self) -> HopSession:
        """Open a session and attach its first transport; SessionUnavailable if impossible."""
        session_id, token, hello = await self._create()
        config = self.settings.core_config()
        if self.idle is not None:
            config = dataclasses.replace(config, heartbeat_interval=self.idle.heartbeat)
        core = Session(
            config,
            session_id=session_id,
            token=token,
            is_client=True,
            now=asyncio.get_running_loop().time(),
        )
        hop = HopSession(core, self.settings)
        hop.peer_tunnel = frozenset(self._peer_tunnel.split())
        headers = {TOKEN_HEADER: encode_token(token)}
        self.route = SessionRoute(
            self._http,
            self._url(session_id),
            headers,
            self.settings,
            poll_posts=LONG_POLL_POLL_POST in self._peer_long_poll.split(),
            rtt=self._create_rtt,
        )
        self.streams = self._allow_streams and LONG_POLL_STREAM in self._peer_long_poll.split()
        if not hop.feed(hello):
            raise SessionUnavailable(f"{self.base_url} sent a HELLO for another session")
        hop.on_stalled = self._stalled
        hop.on_transport_lost = self._lost
        if self._on_transport_change is not None:
            hop.on_transport_change.append(self._on_transport_change)
        hop.on_finished.append(lambda _hop: self._signals.put_nowait(("closed", None)))
        self.session = hop
        async with self._switching:
            if self.prefer == "websocket" and await self._try_websocket(hop):
                self.last_switch = (ladder.SESSION_OPENED, "")
            else:
                why = (ladder.SESSION_OPENED, "")
                if self.prefer == "websocket":
                    self.fallbacks += 1
                    why = self._websocket_failed()
                self._start_long_poll(hop, why)
                self._schedule_reprobe(double=self.prefer == "websocket")
        self._supervisor = asyncio.create_task(
            self._supervise(hop), name=f"hop-super-{session_id[:6]}"
        )
        return hop

    async def upgrade(self) -> bool:
        """Probe a WebSocket now and move the session onto it; True if it did."""
        hop = self._live()
        async with self._switching:
            if hop.transport == "websocket":
                return True
            return await self._try_websocket(hop)

    async def demote(self) -> None:
        """Move the session to long-poll now (as the stall watchdog would)."""
        hop = self._live()
        async with self._switching:
            if hop.transport != "long-poll":
                self._demote(hop, "asked to")

    async def close(self) -> None:
        """Close the session gracefully (bounded by close_timeout) and stop everything."""
        self._closing = True
        hop = self.session
        if hop is not None and not hop.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.close_timeout):
                    await hop.close(CloseCode.NORMAL, "")
        if hop is not None:
            hop.abandon(CloseCode.GOING_AWAY, "connector closed")
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if hop is not None:
            await hop.aclose_tasks()

    # -- opening --------------------------------------------------------------------------

    def _url(self, session_id: str | None = None) -> URL:
        path = self.base_url.path.rstrip("/") + self.session_path
        if session_id is not None:
            path += "/" + session_id
        return self.base_url.with_path(path).with_query(None)

    async def _create(self) -> tuple[str, bytes, bytes]:
        """POST for a new session: (id, token, the server's HELLO), or SessionUnavailable."""
        url = self._url()
        headers = {
            "Accept": "application/octet-stream",
            "Cache-Control": "no-store",
            LONG_POLL_HEADER: LONG_POLL_LEAN,  # we are a gateway: no browser headers
            TUNNEL_HEADER: TUNNEL_FEATURES,
        }
        if self._hop_secret is not None:
            headers[AUTH_HEADER] = auth_header_value(self._hop_secret)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_read=self.settings.connect_timeout,
        )
        started = asyncio.get_running_loop().time()
        try:
            async with self._http.post(url, data=b"", headers=headers, timeout=timeout) as resp:
                body = await read_bounded(
                    resp.content, _MAX_CREATE_BODY, declared=resp.content_length
                )
                status, answer = resp.status, resp.headers
            self._create_rtt = asyncio.get_running_loop().time() - started
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"cannot reach {url}: {describe(exc)}") from exc
        except ValueError as exc:
            raise self._not_a_gateway(f"oversized answer to POST {self.session_path}") from exc
        self._check_status(status, answer, body)
        return self._check_created(answer, body)

    def _not_a_gateway(self, why: str) -> NotAGateway:
        return NotAGateway(f"{self.base_url} is not a hopgate gateway: {why}")

    def _check_status(self, status: int, answer: Mapping[str, str], body: bytes) -> None:
        """A gateway refusing (403, 429, 503) or anything else that is not 200: say which."""
        text = body[:200].decode("utf-8", "replace").strip()
        if status == 403:
            raise SessionRefused(
                f"{self.base_url} refused to open a session (403): {text}", status=status
            )
        if status in (429, 503):
            retry = answer.get("Retry-After")
            raise SessionRefused(
                f"{self.base_url} cannot open a session now ({status}, retry after "
                f"{retry or '?'} s): {text}",
                status=status,
                retry_after=retry,
            )
        if status != 200:
            raise self._not_a_gateway(f"POST {self.session_path} answered {status}")

    def _check_created(self, answer: Mapping[str, str], body: bytes) -> tuple[str, bytes, bytes]:
        """A 200 is a gateway's only with a session id, a token and that session's HELLO."""
        session_id = answer.get(SESSION_HEADER, "")
        try:
            token = read_created(session_id, answer.get(TOKEN_HEADER, ""), body)
        except ValueError as exc:
            raise self._not_a_gateway(str(exc)) from None
        self._peer_tunnel = answer.get(TUNNEL_HEADER, "")
        self._peer_long_poll = answer.get(LONG_POLL_HEADER, "")
        return session_id, token, body

    def _dial(self) -> SessionRoute:
        assert self.route is not None, "connect() first"
        return self.route

    # -- transports --------------------------------------------------------------------

    async def _try_websocket(self, hop: HopSession) -> bool:
        hop.epoch += 1
        try:
            transport = await open_websocket(hop, self._dial(), epoch=hop.epoch)
        except TransportFailed as exc:
            self.last_websocket_failure = exc
            self.probe_failures += 1
            why = {"transport": "websocket", "reason": str(exc)}
            hop.log.info("= WebSocket not usable: %s", exc, extra=why)
            return False
        if hop.closed:
            transport.abandon()
            return False
        self.upgrades += 1
        self._transport_works()
        self._ws_started = hop.now()
        self._reprobe_at = None
        self.last_switch = (ladder.PROBE_SUCCEEDED, "a WebSocket answered its probe")
        hop.attach(transport)  # now, so the caller sees the switch done
        hop.spawn(transport.run(), name=f"hop-ws-{hop.session_id[:6]}")
        return True

    def _websocket_failed(self) -> tuple[str, str]:
        """The reason and sentence for falling to long-poll after a WebSocket candidate failed."""
        failure = self.last_websocket_failure
        if failure is None:
            return ladder.UPGRADE_FAILED, "WebSocket not usable"
        if isinstance(failure, HandshakeRefused):
            return ladder.UPGRADE_REFUSED, str(failure)
        return ladder.UPGRADE_FAILED, str(failure)

    def _start_long_poll(self, hop: HopSession, why: tuple[str, str] | None = None) -> None:
        if why is not None:
            self.last_switch = why
        hop.epoch += 1
        kind = StreamClient if self.streams else LongPollClient
        transport = kind(hop, self._dial(), epoch=hop.epoch)
        transport.on_alive = self._transport_works
        transport.on_buffered = self._streams_off  # plain long-polls from now on
        transport.start()

    def _streams_off(self) -> None:
        self.streams = False

    def _transport_works(self) -> None:
        self._down_since = None
        self._failures = 0

    def _demote(self, hop: HopSession, why: str) -> None:
        extra = {"transport": "long-poll", "reason": why}
        hop.log.info("= demoting the WebSocket to long-poll (%s)", why, extra=extra)
        self.fallbacks += 1
        if hop.now() - self._ws_started >= self.settings.reprobe_max:
            self._reprobe = self._reprobe.reset()
        if why == "stalled":
            grace = self.settings.stall_timeout
            why_text = f"WebSocket stalled: no ack or pong for a few round trips (<= {grace:g} s)"
            reason = (ladder.STALLED, why_text)
        else:
            reason = (ladder.DEMOTED, f"WebSocket demoted ({why})")
        self._start_long_poll(hop, reason)
        self._schedule_reprobe(double=True)

    def _schedule_reprobe(self, *, double: bool) -> None:
        hop = self.session
        if hop is None:
            return
        self._reprobe_at = hop.now() + self._reprobe.delay
        if double:
            self._reprobe = self._reprobe.doubled()
        self._signals.put_nowait(("wake", None))

    # -- supervision ----------------------------------------------------------------------

    def _live(self) -> HopSession:
        hop = self.session
        if hop is None or hop.closed:
            raise SessionUnavailable("no open session")
        return hop

    def _lost(self, transport: Transport, reason: str) -> None:
        alive = isinstance(transport, WebSocketTransport) or getattr(transport, "alive", False)
        self._failures = 0 if alive else self._failures + 1
        self._lost_reason = f"{transport.kind} lost: {reason}"
        hop = self.session
        if hop is not None and self._down_since is None:
            self._down_since = hop.now()
        if isinstance(transport, WebSocketTransport) and hop is not None:
            if self._learn(hop, hop.now() - hop.last_activity):
                self._reprobe = self._reprobe.reset()  # what killed it is understood now
            lived = hop.now() - self._ws_started
            if lived >= self.settings.reprobe_max:
                self._reprobe = self._reprobe.reset()
            elif lived < self.settings.stall_timeout:
                # A socket that dies right after its probe (a proxy killing
                # upgraded connections): resume on long-poll, probe again later.
                self._schedule_reprobe(double=True)
        self._signals.put_nowait(("lost", transport))

    def _learn(self, hop: HopSession, idle: float) -> bool:
        """A WebSocket died by itself after ``idle`` s of silence: True if it taught a heartbeat."""
        lesson = self.idle.websocket_died(idle) if self.idle is not None else None
        if lesson is None:
            return False
        hop.set_heartbeat(lesson.heartbeat)
        log.info(
            "= hop to %s: the path closes idle WebSockets after ~%.0f s; heartbeat now %g s",
            self.base_url,
            lesson.limit,
            lesson.heartbeat,
            extra={"upstream": str(self.base_url), "reason": "idle_timeout"},
        )
        return True

    def _stalled(self, transport: Transport) -> None:
        self._signals.put_nowait(("stalled", transport))

    async def _supervise(self, hop: HopSession) -> None:
        while not hop.closed and not self._closing:
            timeout = None
            if self._reprobe_at is not None and hop.transport == "long-poll":
                timeout = max(0.0, self._reprobe_at - hop.now())
            if self._down_since is not None:
                expiry = max(0.0, self._down_since + self.settings.resume_grace - hop.now())
                timeout = expiry if timeout is None else min(timeout, expiry)
            try:
                async with asyncio.timeout(timeout):
                    signal, transport = await self._signals.get()
            except TimeoutError:
                signal, transport = "wake", None
            if hop.closed or self._closing:
                return
            if self._expired(hop):
                return
            async with self._switching:
                if signal == "stalled" and transport is not None and hop.is_current(transport):
                    if transport.kind == "websocket":
                        self._demote(hop, "stalled")
                    else:
                        self.streams &= not isinstance(transport, StreamClient)  # held back?
                        self._start_long_poll(hop)  # a fresh poll pair
                elif hop.current is None:
                    await self._resume(hop)
                elif self._reprobe_due(hop) and not await self._try_websocket(hop):
                    self._schedule_reprobe(double=True)

    def _expired(self, hop: HopSession) -> bool:
        """No transport worked for resume_grace: give up like the core would (4000)."""
        down = self._down_since
        if down is None or hop.now() < down + self.settings.resume_grace:
            return False
        grace = self.settings.resume_grace
        hop.abandon(CloseCode.SESSION_EXPIRED, f"expired: no transport for {grace:g} s")
        return True

    def _reprobe_due(self, hop: HopSession) -> bool:
        return (
            hop.transport == "long-poll"
            and self._reprobe_at is not None
            and hop.now() >= self._reprobe_at
        )

    async def _resume(self, hop: HopSession) -> None:
        """Put the session back on a transport after it lost its own."""
        if self._failures:
            await asyncio.sleep(self._reconnect.after(self._failures))
        if hop.closed or hop.current is not None:
            return
        # WebSocket first unless it is in back-off (failed, demoted, or never
        # tried yet with prefer="long-poll").
        if self._reprobe_at is None or hop.now() >= self._reprobe_at:
            if await self._try_websocket(hop):
                return
            self.fallbacks += 1
            self._schedule_reprobe(double=True)
            self._start_long_poll(hop, self._websocket_failed())
        else:
            self._start_long_poll(hop, (ladder.WEBSOCKET_CLOSED, self._lost_reason))
        if self._reprobe_at is None:
            self._schedule_reprobe(double=False)
