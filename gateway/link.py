"""The upstream link: what one gateway knows and does about one next hop.

Theory of operation
-------------------
A gateway keeps one :class:`UpstreamLink` per next hop: the configured
``--upstream``, or (forward-proxy mode) one per origin that has said it is a
gateway, at most ``MAX_LINKS`` of them, least recently used evicted first
(:class:`LinkTable`).  A link owns the hop's :class:`~gateway.core.ladder.Ladder`
and one background task that does everything slow, so a forwarded request
never waits for discovery or for a session to open::

      peer unknown ──hello: proof ok──▶ gateway ──session opens──▶ long-poll ⇄ websocket
        │   ▲                             ▲  │                                  │
        │   └── legacy_recheck passed ──┐ │  └─ connect failed: back off ◀──────┤
        └─hello: no proof──▶ legacy ────┘ └── a note on any response      session lost:
                                                                          plain, back off

* **Learning.**  The peer is a gateway when (a) the Forwarder reports a
  discovery note on any upstream response (:meth:`UpstreamLink.note_seen`,
  free: the request was going there anyway), or (b) for a configured
  ``--upstream``, one ``GET /.hopgate/hello?nonce=N`` sent when the gateway
  starts answers with the proof for ``N`` (``discovery.check_hello``).  A
  peer without the proof is *legacy* and is not asked again until
  ``legacy_recheck`` has passed: a legacy origin pays one request per recheck
  period and nothing per forwarded request.  An unreachable peer (refused
  connection, a proxy's 502/503/504) is neither: the hello is retried with a
  back-off that grows to ``legacy_recheck``.
* **Climbing.**  For a gateway peer the task opens a session with a
  :class:`~gateway.transports.connector.SessionConnector` (one attempt at a
  time, spaced by the ladder's back-off), wraps it in a
  ``TunnelLink(opener=True)`` and reports the session's transport changes to
  the ladder.  Requests use :meth:`UpstreamLink.tunnel` while it is live.
* **Falling.**  When the session ends the link drops the tunnel (requests
  go plain at once), tells the ladder (``fallbacks`` + 1, back-off), and the
  task tries again when the back-off has passed.

``/.hopgate/status`` reads each hop's state from its link when the page is
served (:meth:`UpstreamLink.report`, from the ladder): the ladder is the one
place its counters live, nothing is copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import aiohttp
from yarl import URL

from gateway.core import discovery
from gateway.core.backoff import Backoff
from gateway.core.cluster import short_id
from gateway.core.idle import IdleLearner
from gateway.core.ladder import (
    SHUTDOWN,
    Ladder,
    LadderSettings,
    Peer,
    Rung,
    Transition,
)
from gateway.core.tunnel import TunnelConfig
from gateway.edges.forward import Forwarder
from gateway.glue.link import TunnelLink
from gateway.handover import Retiring, session_ended, until_closed_or_moved
from gateway.status import GatewayStats, HopReport, no_link
from gateway.transports.connector import SessionConnector
from gateway.transports.errors import (
    NotAGateway,
    PeerUnreachable,
    SessionRefused,
    SessionUnavailable,
)
from gateway.transports.hopsession import HopSession
from gateway.transports.http import describe, read_bounded
from gateway.transports.session_settings import SessionSettings
from gateway.transports.tasks import TaskSet

log = logging.getLogger("hopgate.link")

#: Forward-proxy mode: links kept at once (least recently used evicted).
MAX_LINKS: Final = 64
#: Largest hello answer read; a real one is about 150 bytes.
MAX_HELLO_BODY: Final = 4096
#: Statuses that mean "a proxy could not reach it", not "it is legacy".
UNREACHABLE_STATUSES: Final = frozenset({502, 503, 504})
#: After an error nobody expected in a link's background work, the pause before it
#: goes on (requests meanwhile go plain or on the session already up).
RECOVER_AFTER: Final = 5.0


class UpstreamLink:
    """One next hop: discovery, its session and tunnel, its rung on the ladder."""

    def __init__(
        self,
        url: URL,
        *,
        key: str,
        http: aiohttp.ClientSession,
        forwarder: Forwarder,
        stats: GatewayStats,
        session_settings: SessionSettings,
        ladder_settings: LadderSettings | None = None,
        hop_secret: str | None = None,
        check_hello: bool = True,
        hello_timeout: float = 10.0,
        tunnel_config: TunnelConfig | None = None,
    ) -> None:
        self.url = url
        self.key = key
        self.ladder = Ladder(ladder_settings)
        #: This hop's heartbeat, lowered when the path kills idle WebSockets (kept across sessions).
        self.idle = IdleLearner(session_settings.heartbeat)
        self._http = http
        self._forwarder = forwarder
        self._stats = stats
        self._session_settings = session_settings
        self._hop_secret = hop_secret
        self._check_hello = check_hello
        self._hello_timeout = hello_timeout
        self._tunnel_config = tunnel_config
        self._hello_at = 0.0
        self._hello_retry = Backoff(
            self.ladder.settings.retry_initial, self.ladder.settings.legacy_recheck
        )
        #: Notes are not believed before this time: the session endpoint
        #: showed the peer is not a gateway (an origin echoing our mark back).
        self._notes_ignored_until = 0.0
        #: Where the peer's sessions live: what its latest note or hello said.
        self._session_path = discovery.DEFAULT_SESSION_PATH
        self._tunnel: TunnelLink | None = None
        self._hop: HopSession | None = None
        self._connector: SessionConnector | None = None
        self._wake = asyncio.Event()
        #: Sessions the peer said GOAWAY on, finishing their streams.
        self._retiring = Retiring()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._loop = asyncio.get_running_loop()
        #: Told of each session this link opens, with its connector (the metrics count them).
        self.on_session: Callable[[HopSession, SessionConnector], None] | None = None
        stats.upstream(key).report = self.report

    def __repr__(self) -> str:
        return f"<UpstreamLink {self.key} {self.ladder.peer.value} {self.ladder.rung}>"

    # -- public -------------------------------------------------------------

    def start(self) -> None:
        """Start the background task (hello, sessions); returns at once."""
        if self._task is None and not self._closing:
            self._task = self._loop.create_task(self._run(), name=f"link-{self.key}")

    def tunnel(self) -> TunnelLink | None:
        """The live tunnel to this hop, or ``None``: forward plain.

        While the session is between transports (resuming after a dropped
        connection, or its peer is gone) new requests go plain: that works
        at once or fails at once, instead of waiting for a resume.
        """
        tunnel = self._tunnel
        if tunnel is None or not tunnel.alive:
            return None
        if tunnel.hop.transport == "none" and not tunnel.predicting:
            return None  # (a poll-ahead answer is awaited: its poll must not go plain)
        return tunnel

    def note_seen(self, note: discovery.Note | None = None) -> None:
        """A discovery note came back on a response from this hop: sessions live at its path."""
        if self._loop.time() < self._notes_ignored_until:
            return
        if note is not None:
            self._session_path = note.session_path
        if self.ladder.peer is not Peer.GATEWAY:
            log.info(
                "= %s answered with a hopgate note: it is a gateway",
                self.key,
                extra={"upstream": self.key},
            )
            self.ladder.peer_is_gateway()
        if self.ladder.rung == "plain":
            self._wake.set()

    @property
    def session(self) -> HopSession | None:
        return self._hop

    async def close(self) -> None:
        """Stop trying; close the tunnel and the session (within the session close timeout)."""
        self._closing = True
        state = self._stats.upstreams.get(self.key)
        if state is not None and state.report == self.report:
            state.report = no_link  # its figures outlive the link, not the link itself
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._retiring.close()

    # -- the background task ---------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._step()
            except Exception:
                # A bug, not a network failure (those are handled where they
                # happen): without this the task would end unseen, and the hop
                # would stay plain until a restart.
                log.exception(
                    "hop link to %s: unexpected error; going on in %g s", self.key, RECOVER_AFTER
                )
                await self._sleep(RECOVER_AFTER)

    async def _step(self) -> None:
        now = self._loop.time()
        if self._hello_due(now):
            await self._hello()
        elif self.ladder.should_connect(now):
            await self._session()
        else:
            await self._sleep(self._next_wake(now) - now)

    def _hello_due(self, now: float) -> bool:
        return self._check_hello and self.ladder.should_check_hello(now) and now >= self._hello_at

    def _next_wake(self, now: float) -> float:
        if self.ladder.peer is Peer.GATEWAY:
            return self.ladder.next_attempt()
        if self._check_hello:
            return self._hello_at
        return now + 3600.0  # nothing to do until a note wakes us

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    # -- discovery through the well-known path ----------------------------------

    def hello_url(self, nonce: str) -> URL:
        path = self.url.path.rstrip("/") + discovery.HELLO_PATH
        return self.url.with_path(path).with_query(nonce=nonce)

    async def _hello(self) -> None:
        nonce = secrets.token_urlsafe(18)
        url = self.hello_url(nonce)
        note = None
        try:
            status, body = await self._fetch_hello(url)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            self._hello_unreachable(f"hello to {self.key} failed: {describe(exc)}")
            return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            # It was reached and did not answer like a gateway (which answers
            # at once): a legacy server holding or dropping unknown paths.
            why = f"hello answered with {describe(exc)}"
        else:
            if status in UNREACHABLE_STATUSES:
                self._hello_unreachable(f"hello to {self.key} answered {status}")
                return
            note = discovery.check_hello(body, nonce) if status == 200 else None
            why = f"hello answered {status} without the proof"
        now = self._loop.time()
        self._hello_retry = self._hello_retry.reset()
        if note is None:
            log.info(
                "= %s is not a gateway (%s); asking again in %gs",
                self.key,
                why,
                self.ladder.settings.legacy_recheck,
                extra={"upstream": self.key, "reason": why},
            )
            self.ladder.peer_is_legacy(now)
            self._hello_at = now + self.ladder.settings.legacy_recheck
        else:
            log.info("= %s proved it is a gateway (hello)", self.key, extra={"upstream": self.key})
            self._session_path = note.session_path
            self.ladder.peer_is_gateway()

    async def _fetch_hello(self, url: URL) -> tuple[int, object]:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._hello_timeout, sock_read=self._hello_timeout
        )
        headers = {"Accept": "application/json", "Cache-Control": "no-store"}
        async with asyncio.timeout(self._hello_timeout * 2):
            async with self._http.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    return resp.status, None
                raw = await read_bounded(resp.content, MAX_HELLO_BODY, declared=resp.content_length)
        try:
            return 200, json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return 200, None

    def _hello_unreachable(self, reason: str) -> None:
        # Unreachable is for the operator to fix: WARNING, at the back-off's pace.
        log.warning(
            "= %s; retrying in %gs",
            reason,
            self._hello_retry.delay,
            extra={"upstream": self.key, "reason": reason},
        )
        self.ladder.last_error = reason
        self._hello_at = self._loop.time() + self._hello_retry.delay
        self._hello_retry = self._hello_retry.doubled()

    # -- the session -------------------------------------------------------------

    async def _open(self) -> tuple[SessionConnector, HopSession] | None:
        """Open a session (its connector tells the ladder why each switch happens), or None."""
        self.ladder.connect_started()
        connector = SessionConnector(
            self.url,
            self._http,
            self._session_settings,
            hop_secret=self._hop_secret,
            on_transport_change=self._transport_changed,
            session_path=self._session_path,
            idle=self.idle,
        )
        self._connector = connector
        try:
            return connector, await connector.connect()
        except SessionUnavailable as exc:
            self._connector = None
            await self._connect_failed(connector, exc)
            return None
        except BaseException:
            self._connector = None
            await connector.close()
            self.ladder.connect_failed(self._loop.time(), "cancelled")
            raise

    async def _session(self) -> None:
        """Open a session, serve it as a tunnel until it ends, then fall to plain."""
        opened_session = await self._open()
        if opened_session is None:
            return
        connector, hop = opened_session
        # ``upstream`` is this hop's URL: the Host a plain request would carry.
        tunnel = TunnelLink(
            hop,
            opener=True,
            forwarder=self._forwarder,
            upstream=self.url,
            config=self._tunnel_config,
        )
        self._hop, self._tunnel = hop, tunnel
        self._stats.active_sessions += 1
        if self.on_session is not None:
            self.on_session(hop, connector)
        transport: Rung = "websocket" if hop.transport == "websocket" else "long-poll"
        opened, detail = connector.last_switch
        self.ladder.session_up(self._loop.time(), transport, opened, detail)
        log.info(
            "= hop to %s: session %s… %s%s",
            self.key,
            short_id(hop.session_id),
            "upgraded to a WebSocket" if transport == "websocket" else "settled on long-poll",
            f" ({detail})" if detail else "",
            extra={"upstream": self.key, "transport": transport, "reason": opened},
        )
        token, reason, now_again = SHUTDOWN, "gateway stopping", False
        moved = asyncio.Event()
        tunnel.on_goaway = lambda _tunnel: moved.set()
        closed: tuple[int, str] | None = (0, "")
        try:
            closed = await until_closed_or_moved(hop, moved)
            token, reason, now_again = session_ended(closed, self._stats)
        finally:
            self._tunnel = None
            self._stats.active_sessions -= 1
            if closed is None and not self._closing:
                self._retiring.retire(tunnel, connector)  # its streams finish there
            else:
                with contextlib.suppress(Exception):
                    await tunnel.close()
                with contextlib.suppress(Exception):
                    await connector.close()
            self._hop = None
            self._connector = None
            if self._closing:
                token, now_again = SHUTDOWN, False
            self.ladder.session_lost(self._loop.time(), token, reason, retry_now=now_again)
        if not self._closing:
            log.info(
                "= hop to %s fell back to plain HTTP: %s; next attempt in %.1fs",
                self.key,
                reason,
                max(0.0, self.ladder.next_attempt() - self._loop.time()),
                extra={"upstream": self.key, "transport": "plain", "reason": token},
            )

    async def _connect_failed(self, connector: SessionConnector, exc: SessionUnavailable) -> None:
        reason = exc.reason
        with contextlib.suppress(Exception):
            await connector.close()
        now = self._loop.time()
        self.ladder.connect_failed(now, reason)
        if isinstance(exc, NotAGateway):
            # The note or hello was not backed by a session endpoint: believe
            # neither again before the legacy recheck period.
            recheck = now + self.ladder.settings.legacy_recheck
            self.ladder.peer_is_legacy(now)
            self._hello_at = self._notes_ignored_until = recheck
        # Unreachable, or refused for a wrong hop secret: the operator must act.
        must_act = isinstance(exc, PeerUnreachable) or (
            isinstance(exc, SessionRefused) and exc.status == 403
        )
        log.log(
            logging.WARNING if must_act else logging.INFO,
            "= no session with %s: %s; next attempt in %.1fs",
            self.key,
            reason,
            max(0.0, self.ladder.next_attempt() - now),
            extra={"upstream": self.key, "reason": reason},
        )

    def _transport_changed(self, old: str, new: str) -> None:
        if new not in ("websocket", "long-poll"):
            return  # between transports: the session resumes on its own
        rung: Rung = "websocket" if new == "websocket" else "long-poll"
        connector = self._connector
        if connector is None:
            return
        reason, detail = connector.last_switch
        before = self.ladder.rung
        if before == "plain":
            return  # the session is still opening: session_up records the move
        self.ladder.transport_changed(self._loop.time(), rung, reason, detail)
        if self.ladder.rung != before:
            log.info(
                "= hop to %s moved from %s to %s: %s",
                self.key,
                before,
                rung,
                detail or reason,
                extra={"upstream": self.key, "transport": rung, "reason": reason},
            )

    # -- status ----------------------------------------------------------------------

    def report(self) -> HopReport:
        """This hop as ``/.hopgate/status`` shows it, read from the ladder now."""
        ladder = self.ladder
        hop = self._hop
        # The ladder keeps loop time; status shows wall-clock time.
        offset = time.time() - self._loop.time()
        return HopReport(
            transport=ladder.rung,
            upgrades=ladder.upgrades,
            fallbacks=ladder.fallbacks,
            peer=ladder.peer.value,
            last_error=ladder.last_error,
            session=short_id(hop.session_id) if hop is not None else None,
            session_transport=hop.transport if hop is not None else None,
            session_resumes=hop.resumes if hop is not None else None,
            transitions=tuple(
                Transition(t.at + offset, t.from_rung, t.to_rung, t.reason, t.detail)
                for t in ladder.transitions
            ),
            switches=dict(ladder.switches),
            heartbeat_s=self.idle.heartbeat,
            heartbeat_learned=None if self.idle.learned is None else round(self.idle.learned, 1),
        )


class LinkTable:
    """The links of one gateway, by key; bounded, least recently used evicted."""

    def __init__(self, make: Callable[[str], UpstreamLink], *, limit: int = MAX_LINKS) -> None:
        self._make = make
        self._limit = limit
        self._links: OrderedDict[str, UpstreamLink] = OrderedDict()
        self._evicted = TaskSet()

    def __len__(self) -> int:
        return len(self._links)

    def get(self, key: str) -> UpstreamLink | None:
        """The link for ``key`` if there is one (marks it recently used)."""
        link = self._links.get(key)
        if link is not None:
            self._links.move_to_end(key)
        return link

    def ensure(self, key: str) -> UpstreamLink:
        """The link for ``key``, started if new; may evict the least recently used."""
        link = self.get(key)
        if link is not None:
            return link
        link = self._links[key] = self._make(key)
        link.start()
        while len(self._links) > self._limit:
            _, old = self._links.popitem(last=False)
            self._evicted.spawn(old.close())
        return link

    async def close(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(
            *(link.close() for link in links), self._evicted.wait(), return_exceptions=True
        )
