"""One gateway: listen, hand each request to the router, shut down gracefully.

``Gateway`` is the one object a caller needs: ``await gw.start()`` binds the
listening socket (port 0 picks a free one, see ``gw.port``), ``await
gw.stop()`` closes the listener, lets held requests finish for
``shutdown_grace`` seconds and then ends them.  ``gateway.process.serve()``
wraps both with signal handling for the CLI; tests and ``hopgate demo``
start gateways in-process through the same class.

The gateway derives its ``Settings`` from the ``Config`` once
(``gateway.settings``) and hands each layer its piece; which handler answers
a request is the ``Router``'s business (``gateway.router``).

Hop upgrade (``--upgrade auto``, the default) adds three things here:

* the gateway's own paths: ``/.hopgate/hello`` (discovery's proof, see
  ``gateway.core.discovery``) and ``/.hopgate/session...`` (hop sessions opened
  by the previous gateway, served by ``SessionServer``; each one becomes a
  ``TunnelLink`` whose streams go to ``--upstream`` only, or are relayed over
  the next hop's session when there is one);
* an ``UpstreamLink`` per next hop (``gateway.link``) that discovers a
  gateway peer and keeps a session to it;
* routing: a request goes over the next hop's live tunnel when there is one
  and falls back to plain HTTP only if the tunnel says nothing of it left
  (``NotSent``), so no request reaches the origin twice.

With ``--upgrade never`` none of this exists: the ``/.hopgate/`` paths other
than the status page are forwarded like any other, and requests go plain.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.admin import AdminServer, Health, OwnPaths
from gateway.clients import direct_client, origin_client, outgoing_proxies
from gateway.config import Config
from gateway.core import discovery
from gateway.edges.connect import open_tunnel
from gateway.edges.forward import Forwarder
from gateway.edges.inbound import (
    AcceptErrorFilter,
    GuardedServer,
    InboundLimits,
    derive_max_clients,
)
from gateway.glue.link import TunnelLink
from gateway.handover import next_tunnel, wait_drained
from gateway.link import LinkTable, UpstreamLink
from gateway.logs import ACCESS_LOG, access_log_class, log_request
from gateway.metrics import Metrics
from gateway.router import Relay, Router
from gateway.settings import ListenerSettings, Settings, derive
from gateway.startup_checks import listen_error, server_tls_context
from gateway.status import ClusterStats, GatewayStats
from gateway.transports.aiohttp_internals import set_shutdown_timeout
from gateway.transports.cluster import ClusterForwarder
from gateway.transports.endpoint import SessionServer
from gateway.transports.handshake import SESSION_PATH
from gateway.transports.hopsession import HopSession
from gateway.transports.http import describe, session_client, text_error
from gateway.transports.registry import client_key

log = logging.getLogger("hopgate")

#: Once ``--shutdown-grace`` is spent, what a handler still gets to write its last bytes.
_LAST_WORDS = 0.1


def server_ssl_context(listener: ListenerSettings) -> ssl.SSLContext | None:
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    return server_tls_context(listener.tls_cert, listener.tls_key)


class SharedSlots:
    """One semaphore of ``size`` per key, shared by its holders, dropped with the last one.

    ``size`` 0 means no limit: ``take`` gives ``None``.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def take(self, key: str) -> asyncio.Semaphore | None:
        if self._size <= 0:
            return None
        slots, holders = self._slots.get(key) or (asyncio.Semaphore(self._size), 0)
        self._slots[key] = (slots, holders + 1)
        return slots

    def release(self, key: str) -> None:
        if key not in self._slots:
            return
        slots, holders = self._slots[key]
        if holders <= 1:
            del self._slots[key]
        else:
            self._slots[key] = (slots, holders - 1)


class Gateway:
    """One running hopgate gateway (server or client role).

    ``settings`` defaults to ``derive(config)``; tests pass one with faster
    hop timings (``derive(config).replace(ladder=...)``), which have no flag.
    """

    def __init__(self, config: Config, *, settings: Settings | None = None) -> None:
        self.config = config
        self.settings = settings or derive(config)
        self.stats = GatewayStats(role=config.role, mode=self.settings.mode)
        self.stats.observers.append(log_request)
        if config.upstream is not None:
            self.stats.upstream(str(config.upstream))
        #: Ready or not (``/.hopgate/ready``): draining, upstream unreachable.
        self.health = Health(
            self.stats,
            watch_upstream=config.upstream is not None,
            unreachable_after=self.settings.admin.ready_unreachable,
        )
        #: ``/.hopgate/metrics``: this gateway's own registry.
        self.metrics = Metrics(self.stats, ready=lambda: self.health.ready)
        #: The ``--admin-listen`` listener, once started.
        self.admin: AdminServer | None = None
        self._runner: web.ServerRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        #: The hop sessions' client: the same pool, without the plain client's middleware.
        self._hop_client: aiohttp.ClientSession | None = None
        self._forwarder: Forwarder | None = None
        #: Who answers each request (set up by ``start``).
        self.router: Router | None = None
        #: Hop sessions opened to this gateway (``None`` with ``--upgrade never``).
        self.sessions: SessionServer | None = None
        self._links: LinkTable | None = None
        self._accepted: set[TunnelLink] = set()
        #: A client address's sessions share a quarter of --max-connections, so
        #: one address (up to --max-sessions-per-client sessions) cannot take all.
        #: (--max-connections 0, unlimited, shares nothing.)
        self._address_slots = SharedSlots(self.settings.hop.address_connections)
        self.port = 0
        #: Inbound connection cap and head deadline (set up by ``start``).
        self.inbound: InboundLimits | None = None
        self._exception_handler: AcceptErrorFilter | None = None

    @property
    def url(self) -> str:
        return self.config.listen_url(self.port)

    async def start(self) -> None:
        proxies = outgoing_proxies(self.config.role)
        self._client = origin_client(self.settings.client, proxies=proxies)
        self._hop_client = session_client(self._client)
        direct = None if proxies else direct_client(self.settings.client)  # no proxy: lean client
        self._forwarder = Forwarder(self.settings.forward, self._client, self.stats, direct=direct)
        if self.hop_upgrade:
            self._start_hop_layer(self._forwarder)
        self.router = Router(
            self.settings.routes,
            relay=Relay(self._forwarder, self._tunnel_for, retry_tunnel=self._retry_tunnel),
            stats=self.stats,
            sessions=self.sessions,
            connect=functools.partial(
                open_tunnel, config=self.settings.forward, stats=self.stats, proxies=proxies
            ),
            own_url=lambda: self.url,
            own_paths=OwnPaths(
                self.stats, self.metrics, self.health, public=self.settings.routes.public_status
            ),
        )
        await self._listen()
        await self._start_admin()
        target = self.config.upstream or "any origin (forward proxy)"
        log.info(
            "= %s gateway listening on %s, forwarding to %s", self.config.role, self.url, target
        )
        if self._links is not None and self.config.upstream is not None:
            self._links.ensure(str(self.config.upstream))

    async def _listen(self) -> None:
        """Bind the listening socket; a busy port says which flag to change."""
        listener = self.settings.listener
        server = GuardedServer(
            self._dispatch,
            limits=self._start_inbound_limits(),
            keepalive_timeout=listener.keepalive_timeout,
            handler_cancellation=True,
            # Bodies pass through as sent: a gzip upload stays gzip.
            auto_decompress=False,
            # Every request becomes a RequestRecord (access line, metrics): gateway.logs.
            access_log=ACCESS_LOG,
            access_log_class=access_log_class(self.stats),
            access_log_format="",
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=listener.shutdown_grace)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            listener.host,
            listener.port,
            ssl_context=server_ssl_context(listener),
        )
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise listen_error(listener.host, listener.port, exc) from exc
        self.port = self._runner.addresses[0][1]

    @property
    def admin_url(self) -> str | None:
        """Where ``--admin-listen`` serves (the bound port), if it does."""
        return self.admin.url if self.admin is not None else None

    async def _start_admin(self) -> None:
        listen = self.settings.admin.listen
        if listen is None:
            return
        self.admin = AdminServer(
            OwnPaths(self.stats, self.metrics, self.health, public=True),
            *listen,
            main_url=lambda: self.url,
        )
        try:
            await self.admin.start()
        except OSError:
            self.admin = None
            await self.stop()
            raise

    def drain(self) -> None:
        """A stop is coming: ``/.hopgate/ready`` says 503, every peer is told GOAWAY.

        The listener stays open: the peers' streams in flight finish on their
        old sessions (held polls, POSTs, resumes, internal forwards), new
        streams go to a new session (on another instance, through the load
        balancer); a new session asked of this instance gets 503.
        """
        if self.health.draining:
            return
        self.health.drain()
        for tunnel in list(self._accepted):
            tunnel.go_away("instance draining")
            self.stats.goaways_sent += 1

    async def stop(self) -> None:
        """Drain, close the listener; held requests get ``shutdown_grace`` to finish, then end.

        Sessions other gateways opened to this one are told GOAWAY (``drain``)
        and kept until their peers closed them, their streams done, or
        ``shutdown_grace`` passed; then the rest are closed (1001). This
        gateway's own sessions to its upstreams close only after its held
        requests, which may be riding them, are done.  The admin listener
        closes last, so ``ready`` says 503 all along.
        """
        self.drain()
        loop = asyncio.get_running_loop()
        grace = self.settings.listener.shutdown_grace
        deadline = loop.time() + grace
        try:
            await wait_drained(self._accepted, self._in_flight, grace)
            if self._runner is not None:  # what draining left of the grace, not a second one
                set_shutdown_timeout(self._runner, max(deadline - loop.time(), _LAST_WORDS))
            await self._stop_serving()
        finally:
            admin, self.admin = self.admin, None
            if admin is not None:
                await admin.stop()

    def _in_flight(self) -> int:
        stats = self.stats
        return stats.active_streams + stats.active_websockets + stats.active_tunnels

    async def _stop_serving(self) -> None:
        accepted = asyncio.create_task(self._close_accepted())
        try:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        finally:
            await accepted
            await self._close_links()
            if self._hop_client is not None:
                await self._hop_client.close()
                self._hop_client = None
            if self._forwarder is not None:
                self._forwarder.close()
            if self._client is not None:
                await self._client.close()
                self._client = None
            self._stop_inbound_limits()

    def _start_inbound_limits(self) -> InboundLimits:
        """The connection cap (``--max-clients``, 0 = half the raised open-file limit)."""
        listener = self.settings.listener
        cap, nofile = derive_max_clients(listener.max_clients)
        limits = InboundLimits(max_clients=cap, header_timeout=listener.header_timeout)
        self.inbound = limits
        self.stats.clients = limits.figures
        log.info("= up to %d client connections at once (open-file limit %d)", cap, nofile)
        # Two pools (plain http:// requests, and the rest) may each hold as many.
        max_connections = self.settings.client.max_connections
        if max_connections and cap + 2 * max_connections > nofile:
            log.warning(
                "= --max-clients %d plus twice --max-connections %d (two origin pools) "
                "exceed the open-file limit %d: lower one or raise the limit (ulimit -n)",
                cap,
                max_connections,
                nofile,
            )
        loop = asyncio.get_running_loop()
        self._exception_handler = limits.accept_error_filter(loop.get_exception_handler())
        loop.set_exception_handler(self._exception_handler)
        return limits

    def _stop_inbound_limits(self) -> None:
        """Give the loop its exception handler back, unless someone replaced ours since."""
        loop = asyncio.get_running_loop()
        if self._exception_handler is not None and (
            loop.get_exception_handler() is self._exception_handler
        ):
            loop.set_exception_handler(self._exception_handler.previous)
        self._exception_handler = None

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.router is not None
        self.stats.requests_total += 1
        if self.health.draining and request.method == "POST" and request.path == SESSION_PATH:
            # A new session belongs on an instance that stays: the peer retries elsewhere,
            # on a new connection (a load balancer picks the backend per connection).
            refusal = text_error(
                503, "this instance is draining: open the session again", **{"Retry-After": "1"}
            )
            refusal.force_close()
            return refusal
        inbound = self.inbound
        if inbound is not None:
            # The head has arrived: no --header-timeout while it is handled.
            inbound.request_started(request.protocol)
        try:
            return await self.router(request)
        finally:
            if inbound is not None:
                inbound.request_finished(request.protocol)

    # -- the hop layer ---------------------------------------------------------------

    @property
    def hop_upgrade(self) -> bool:
        return self.settings.routes.hop_upgrade

    def link(self, key: str | None = None) -> UpstreamLink | None:
        """The link to ``key`` (default: the configured upstream), if there is one."""
        if self._links is None:
            return None
        if key is None:
            if self.config.upstream is None:
                return None
            key = str(self.config.upstream)
        return self._links.get(key)

    def _tunnel_for(self, origin_key: str) -> TunnelLink | None:
        """The live tunnel towards ``origin_key``, if its link has one."""
        link = self._links.get(origin_key) if self._links is not None else None
        return link.tunnel() if link is not None else None

    async def _retry_tunnel(self, origin_key: str, old: TunnelLink) -> TunnelLink | None:
        """The next session's tunnel for a request sent again (failover, GOAWAY); None: plain."""
        self.stats.retried_requests += 1
        link = self._links.get(origin_key) if self._links is not None else None
        if link is None:
            return None
        return await next_tunnel(link.tunnel, old, self.settings.forward.connect_timeout)

    def _start_hop_layer(self, forwarder: Forwarder) -> None:
        cluster = self.settings.hop.cluster
        if cluster is not None:
            self.stats.cluster = ClusterStats(advertise=cluster.advertise)
        self.sessions = SessionServer(
            self.settings.session,
            on_session=self._on_session,
            hop_secret=self.settings.hop.secret,
            stats=self.stats,
            cluster=(
                ClusterForwarder(cluster, self.stats.cluster)
                if cluster is not None and self.stats.cluster is not None
                else None
            ),
        )
        self._links = LinkTable(self._new_link)
        forwarder.mark_requests = True
        forwarder.advertise_path = SESSION_PATH
        forwarder.on_note = self._note_seen

    def _new_link(self, key: str) -> UpstreamLink:
        assert self._hop_client is not None and self._forwarder is not None
        upstream = self.config.upstream
        configured = upstream is not None and key == str(upstream)
        link = UpstreamLink(
            upstream if configured and upstream is not None else URL(key),
            key=key,
            http=self._hop_client,
            forwarder=self._forwarder,
            stats=self.stats,
            session_settings=self.settings.session,
            ladder_settings=self.settings.ladder,
            hop_secret=self.settings.hop.secret,
            # The well-known path is asked only by a client gateway, of its
            # configured upstream: a sidecar's upstream is the legacy origin,
            # which must pay nothing (it still gets the free hop-by-hop mark,
            # so a sidecar in front of another gateway upgrades from a note),
            # and a forward proxy learns about origins from their notes.
            check_hello=configured and self.config.role == "client",
            hello_timeout=self.settings.hop.hello_timeout,
            tunnel_config=self.settings.tunnel,
        )
        link.on_session = self.metrics.hops.track
        return link

    def _note_seen(self, origin_key: str, note: discovery.Note) -> None:
        """The Forwarder saw a discovery note on a response from ``origin_key``."""
        if self._links is not None:
            self._links.ensure(origin_key).note_seen(note)

    def _next_hop(self) -> TunnelLink | None:
        """Where a middle gateway relays tunnelled streams: the next hop's live tunnel."""
        link = self.link()
        return link.tunnel() if link is not None else None

    def _on_session(self, hop: HopSession) -> None:
        assert self._forwarder is not None
        tunnel = TunnelLink(
            hop,
            opener=False,
            forwarder=self._forwarder,
            upstream=self.config.upstream,
            next_hop=self._next_hop if self.config.upstream is not None else None,
            config=self.settings.tunnel,
            peer_ip=hop.peer_address,
            session_connections=self.settings.forward.session_connections,
            address_slots=self._address_slots.take(client_key(hop.peer_address)),
        )
        self._accepted.add(tunnel)
        self.metrics.hops.track(hop)
        # O(1) per session: each tunnel leaves the set when its session ends.
        hop.on_finished.append(lambda _hop: self._session_ended(tunnel, hop))

    def _session_ended(self, tunnel: TunnelLink, hop: HopSession) -> None:
        self._accepted.discard(tunnel)
        self._address_slots.release(client_key(hop.peer_address))

    async def _close_accepted(self) -> None:
        """End the sessions previous gateways opened to this one, and their tunnels."""
        accepted, self._accepted = self._accepted, set()
        closing = [t.close() for t in accepted]
        if self.sessions is not None:
            closing.append(self.sessions.close())
        await self._within_grace(closing)

    async def _close_links(self) -> None:
        """Stop discovery and close this gateway's own sessions to its upstreams."""
        links, self._links = self._links, None
        if links is not None:
            await self._within_grace([links.close()])

    async def _within_grace(self, closing: list[Coroutine[Any, Any, None]]) -> None:
        if not closing:
            return
        try:
            async with asyncio.timeout(self.settings.listener.shutdown_grace):
                results = await asyncio.gather(*closing, return_exceptions=True)
        except TimeoutError:
            log.warning("= hop sessions did not close within the shutdown grace")
            return
        for result in results:
            if isinstance(result, Exception):
                log.warning("= closing the hop layer failed: %s", describe(result))

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
