"""The gateway process: listen, dispatch each request, shut down gracefully.

``Gateway`` is the one object a caller needs: ``await gw.start()`` binds the
listening socket (port 0 picks a free one, see ``gw.port``), ``await
gw.stop()`` closes the listener, lets held requests finish for
``shutdown_grace`` seconds and then ends them.  ``serve()`` wraps both with
signal handling for the CLI; tests and ``hopgate demo`` start gateways
in-process through the same class.

Dispatch is done by hand on aiohttp's low-level server rather than with a
router: a forward proxy sees absolute-form and authority-form (``CONNECT``)
targets that a path router cannot express, and the status path must be
answered only when it is addressed to *this* gateway.

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
import contextlib
import json
import logging
import signal
import ssl
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.core import discovery
from gateway.core.ladder import LadderSettings
from gateway.core.targets import (
    AbsoluteForm,
    AsteriskForm,
    AuthorityForm,
    BadTarget,
    join_upstream,
    names_this_listener,
    parse_target,
)
from gateway.edges.connect import open_tunnel
from gateway.edges.forward import Forwarder
from gateway.edges.inbound import (
    AcceptErrorFilter,
    GuardedServer,
    InboundLimits,
    derive_max_clients,
)
from gateway.edges.websocket import pass_through
from gateway.glue.bridge import NotSent, TunnelLink, answering_config
from gateway.link import LinkTable, UpstreamLink
from gateway.status import STATUS_PATH, GatewayStats, status_refusal
from gateway.transports.aiohttp_internals import never_resend
from gateway.transports.endpoint import SESSION_PATH, SessionServer
from gateway.transports.hopsession import HopSession, SessionSettings
from gateway.transports.http import capture_refusal, is_websocket_upgrade, text_error
from gateway.transports.registry import client_key

log = logging.getLogger("hopgate")

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'

#: Longest ``nonce`` a hello request may carry.
MAX_NONCE = 128


def client_ssl_context(config: Config) -> ssl.SSLContext:
    """Verification context for ``https://`` upstreams: system CAs plus ``--ca-file``."""
    context = ssl.create_default_context()
    if config.ca_file is not None:
        context.load_verify_locations(cafile=str(config.ca_file))
    return context


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return context


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

    ``ladder`` and ``session_settings`` override the hop timings (back-off,
    hold time...) that have no flag; tests use them to run fast.
    """

    def __init__(
        self,
        config: Config,
        *,
        ladder: LadderSettings | None = None,
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.config = config
        mode = "sidecar" if config.role == "server" else "reverse"
        if config.forward_proxy:
            mode = "forward-proxy"
        self.stats = GatewayStats(role=config.role, mode=mode)
        if config.upstream is not None:
            self.stats.upstream(str(config.upstream))
        self._runner: web.ServerRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._forwarder: Forwarder | None = None
        self._ladder_settings = ladder
        self._session_settings = session_settings
        #: Hop sessions opened to this gateway (``None`` with ``--upgrade never``).
        self.sessions: SessionServer | None = None
        self._links: LinkTable | None = None
        self._accepted: set[TunnelLink] = set()
        #: A client address's sessions share a quarter of --max-connections, so
        #: one address (up to --max-sessions-per-client sessions) cannot take all.
        #: (--max-connections 0, unlimited, shares nothing.)
        self._address_slots = SharedSlots(config.max_connections // 4)
        self._allowed_origins = frozenset(_normal_origin(o) for o in config.allowed_origins)
        self.port = 0
        #: Inbound connection cap and head deadline (set up by ``start``).
        self.inbound: InboundLimits | None = None
        self._exception_handler: AcceptErrorFilter | None = None

    @property
    def url(self) -> str:
        return self.config.listen_url(self.port)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            ssl=client_ssl_context(self.config),
            enable_cleanup_closed=True,
        )
        self._client = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # A response nobody reads (a stalled tunnel stream) holds what aiohttp
            # read ahead: ~1 MiB per origin connection at the 64 KiB default.
            read_bufsize=16 * 1024,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            # Hands a refused WebSocket handshake (status, body) back to the
            # pass-through instead of letting ws_connect drop the body.
            middlewares=(capture_refusal,),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout,
                sock_read=self.config.upstream_timeout,
            ),
        )
        # A long-poll GET often consumes messages: never sent to the origin twice.
        never_resend(self._client)
        self._forwarder = Forwarder(self.config, self._client, self.stats)
        if self.hop_upgrade:
            self._start_hop_layer(self._forwarder)
        server = GuardedServer(
            self._dispatch,
            limits=self._start_inbound_limits(),
            keepalive_timeout=self.config.keepalive_timeout,
            handler_cancellation=True,
            # Bodies pass through as sent: a gzip upload stays gzip.
            auto_decompress=False,
            access_log=logging.getLogger("hopgate.access"),
            access_log_format=ACCESS_LOG_FORMAT,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=self.config.shutdown_grace)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.listen_host,
            self.config.listen_port,
            ssl_context=server_ssl_context(self.config),
        )
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise OSError(
                exc.errno,
                f"cannot listen on {self.config.listen_host}:{self.config.listen_port}: "
                f"{exc.strerror}; pick another --listen port",
            ) from exc
        self.port = self._runner.addresses[0][1]
        target = self.config.upstream or "any origin (forward proxy)"
        log.info(
            "= %s gateway listening on %s, forwarding to %s", self.config.role, self.url, target
        )
        if self._links is not None and self.config.upstream is not None:
            self._links.ensure(str(self.config.upstream))

    async def stop(self) -> None:
        """Close the listener; held requests get ``shutdown_grace`` to finish, then end.

        Sessions other gateways opened to this one are closed at once (with
        1001), so they fall back to plain HTTP instead of holding their own
        shutdown up; this gateway's own sessions to its upstreams close only
        after its held requests, which may be riding them, are done.
        """
        accepted = asyncio.create_task(self._close_accepted())
        try:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        finally:
            await accepted
            await self._close_links()
            if self._client is not None:
                await self._client.close()
                self._client = None
            self._stop_inbound_limits()

    def _start_inbound_limits(self) -> InboundLimits:
        """The connection cap (``--max-clients``, 0 = half the raised open-file limit)."""
        cap, nofile = derive_max_clients(self.config.max_clients)
        limits = InboundLimits(max_clients=cap, header_timeout=self.config.header_timeout)
        self.inbound = limits
        self.stats.clients = limits.figures
        log.info("= up to %d client connections at once (open-file limit %d)", cap, nofile)
        if self.config.max_connections and cap + self.config.max_connections > nofile:
            log.warning(
                "= --max-clients %d plus --max-connections %d exceed the open-file limit %d: "
                "lower one or raise the limit (ulimit -n)",
                cap,
                self.config.max_connections,
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

    # -- the hop layer ---------------------------------------------------------------

    @property
    def hop_upgrade(self) -> bool:
        return self.config.upgrade == "auto"

    def link(self, key: str | None = None) -> UpstreamLink | None:
        """The link to ``key`` (default: the configured upstream), if there is one."""
        if self._links is None:
            return None
        if key is None:
            if self.config.upstream is None:
                return None
            key = str(self.config.upstream)
        return self._links.get(key)

    def _start_hop_layer(self, forwarder: Forwarder) -> None:
        settings = self._session_settings or SessionSettings.from_config(
            self.config, close_timeout=min(10.0, self.config.shutdown_grace)
        )
        self._session_settings = settings
        self.sessions = SessionServer(
            settings,
            on_session=self._on_session,
            hop_secret=self.config.hop_secret,
            stats=self.stats,
        )
        self._links = LinkTable(self._new_link)
        forwarder.mark_requests = True
        forwarder.advertise_path = SESSION_PATH
        forwarder.on_note = self._note_seen

    def _new_link(self, key: str) -> UpstreamLink:
        assert self._client is not None and self._forwarder is not None
        assert self._session_settings is not None
        configured = self.config.upstream is not None and key == str(self.config.upstream)
        return UpstreamLink(
            self.config.upstream if configured and self.config.upstream else URL(key),
            key=key,
            http=self._client,
            forwarder=self._forwarder,
            stats=self.stats,
            session_settings=self._session_settings,
            ladder_settings=self._ladder_settings,
            hop_secret=self.config.hop_secret,
            # The well-known path is asked only by a client gateway, of its
            # configured upstream: a sidecar's upstream is the legacy origin,
            # which must pay nothing (it still gets the free hop-by-hop mark,
            # so a sidecar in front of another gateway upgrades from a note),
            # and a forward proxy learns about origins from their notes.
            check_hello=configured and self.config.role == "client",
            hello_timeout=self.config.connect_timeout,
        )

    def _note_seen(self, origin_key: str) -> None:
        """The Forwarder saw a discovery note on a response from ``origin_key``."""
        if self._links is not None:
            self._links.ensure(origin_key).note_seen()

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
            config=answering_config(self.config),
            peer_ip=hop.peer_address,
            session_connections=self.config.session_connections,
            address_slots=self._address_slots.take(client_key(hop.peer_address)),
        )
        self._accepted.add(tunnel)
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
            async with asyncio.timeout(self.config.shutdown_grace):
                results = await asyncio.gather(*closing, return_exceptions=True)
        except TimeoutError:
            log.warning("= hop sessions did not close within the shutdown grace")
            return
        for result in results:
            if isinstance(result, Exception):
                log.warning("= closing the hop layer failed: %r", result)

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

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.requests_total += 1
        inbound = self.inbound
        if inbound is not None:
            # The head has arrived: no --header-timeout while it is handled.
            inbound.request_started(request.protocol)
        try:
            return await self._route(request)
        finally:
            if inbound is not None:
                inbound.request_finished(request.protocol)

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        """One answer for each form of request target (see ``gateway.core.targets``)."""
        try:
            target = parse_target(request.method, request.raw_path)
        except BadTarget as exc:
            return text_error(400, str(exc))
        if isinstance(target, AsteriskForm):
            return _options_asterisk(self.config.forward_proxy)
        if isinstance(target, AuthorityForm):
            return await self._proxy_request(request, target)
        if isinstance(target, AbsoluteForm):
            if not self._names_me(request, target):
                return await self._proxy_request(request, target)
            # Absolute-form naming this very listener is origin-form (RFC 9112 3.2.2).
            return await self._origin_form(request, target.url.raw_path_qs)
        return await self._origin_form(request, target.path_qs)

    def _names_me(self, request: web.BaseRequest, target: AbsoluteForm) -> bool:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None
        return names_this_listener(target.url, tls=self.config.tls, local=local)

    async def _origin_form(self, request: web.BaseRequest, path_qs: str) -> web.StreamResponse:
        """``/path?query``: this gateway's own paths, else the upstream (only there)."""
        if request.path == STATUS_PATH:
            return self._status(request)
        if self.sessions is not None:
            if request.path == discovery.HELLO_PATH:
                return self._hello(request)
            if self.sessions.handles(request):
                return await self._session_request(request, self.sessions)
        if self.config.upstream is None:
            return text_error(
                400,
                "this gateway is a forward proxy: set it as your HTTP proxy "
                f"(e.g. http_proxy={self.url}) or start it with --upstream URL",
            )
        try:
            target = join_upstream(self.config.upstream, path_qs)
        except BadTarget as exc:
            return text_error(400, str(exc))
        return await self._relay(request, target, origin_key=str(self.config.upstream))

    async def _proxy_request(
        self, request: web.BaseRequest, target: AbsoluteForm | AuthorityForm
    ) -> web.StreamResponse:
        """A request addressed to another host: only a forward proxy serves it.

        A sidecar or reverse gateway forwards solely to its configured
        upstream; anything else would make it an open proxy.  The refusal
        does not name the upstream: that is nobody else's business.
        """
        connect = isinstance(target, AuthorityForm)
        if not self.config.forward_proxy:
            what = "CONNECT" if connect else "an absolute-form target (http://host/...)"
            return text_error(
                403 if connect else 400,
                f"this gateway forwards only to its configured upstream; it is not an open "
                f"proxy, so {what} is refused (a forward proxy is a client gateway without "
                "--upstream)",
            )
        if isinstance(target, AuthorityForm):
            return await open_tunnel(request, self.config, self.stats)
        return await self._relay(request, target.url, origin_key=target.origin)

    async def _relay(
        self, request: web.BaseRequest, target: URL, *, origin_key: str
    ) -> web.StreamResponse:
        """Pass ``request`` on to ``target``: over the hop's tunnel if live, else plain.

        A WebSocket handshake is passed as a WebSocket either way.
        """
        assert self._forwarder is not None
        link = self._links.get(origin_key) if self._links is not None else None
        tunnel = link.tunnel() if link is not None else None
        # What the next hop would get as its request-target on a plain path;
        # a path a tunnel cannot name ("//x") simply goes plain.
        path = target.raw_path_qs
        if tunnel is not None and path.startswith("/") and not path.startswith("//"):
            try:
                if is_websocket_upgrade(request):
                    return await tunnel.forward_websocket(request, path, origin_key=origin_key)
                return await tunnel.forward(request, path, origin_key=origin_key)
            except NotSent as exc:
                # Nothing of the request left this gateway: plain HTTP is its
                # first and only delivery.
                log.info(
                    "= %s %s not sent over the hop session (%s): forwarding plain",
                    request.method,
                    target,
                    exc,
                )
        if is_websocket_upgrade(request):
            return await pass_through(
                request, target, forwarder=self._forwarder, origin_key=origin_key
            )
        return await self._forwarder.forward(request, target, origin_key=origin_key)

    def _hello(self, request: web.BaseRequest) -> web.Response:
        """``GET /.hopgate/hello?nonce=N``: prove this is a gateway (never forwarded)."""
        if request.method not in ("GET", "HEAD"):
            refusal = text_error(405, f"{discovery.HELLO_PATH} answers GET only")
            refusal.headers["Allow"] = "GET, HEAD"
            return refusal
        nonce = request.query.get("nonce", "")
        if not nonce or len(nonce) > MAX_NONCE:
            return text_error(
                400, f"{discovery.HELLO_PATH} needs ?nonce= (1 to {MAX_NONCE} characters)"
            )
        return web.Response(
            text=json.dumps(discovery.hello_body(nonce)) + "\n",
            content_type="application/json",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def _session_request(
        self, request: web.BaseRequest, sessions: SessionServer
    ) -> web.StreamResponse:
        """A request of a hop session: refused if a browser page of a foreign origin sent it."""
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request):
            log.warning("= hop session request from origin %r refused", origin)
            return text_error(
                403,
                f"origin {origin} may not open hop sessions here "
                "(not same-origin and not in --allowed-origin)",
            )
        return await sessions.handle(request)

    def _origin_allowed(self, origin: str, request: web.BaseRequest) -> bool:
        """Same origin as the request's ``Host`` (or ``X-Forwarded-Host``), or allowed by flag."""
        normal = _normal_origin(origin)
        if normal in self._allowed_origins:
            return True
        parsed = _parse_origin(normal)
        if parsed is None:
            return False  # "null", or garbage
        scheme, host, port = parsed
        names = [request.headers.get("Host", "")]
        forwarded = request.headers.get("X-Forwarded-Host")
        if forwarded:
            names.append(forwarded.split(",")[0])
        return any(_host_port(name, scheme) == (host, port) for name in names)

    def _status(self, request: web.BaseRequest) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            refusal = text_error(405, f"{STATUS_PATH} answers GET only")
            refusal.headers["Allow"] = "GET, HEAD"  # RFC 9110 15.5.6: a 405 lists them
            return refusal
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else None
        refused = status_refusal(peer_ip, request.headers.keys(), public=self.config.public_status)
        if refused is not None:
            return text_error(403, refused)
        return web.Response(
            text=json.dumps(self.stats.as_json(), indent=2) + "\n",
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _options_asterisk(forward_proxy: bool) -> web.Response:
    """``OPTIONS *``: a question about this server, so this gateway answers it.

    It cannot be passed on: aiohttp's client has no way to send the
    asterisk-form, and sending ``OPTIONS /`` instead asks about a resource.
    """
    methods = "OPTIONS, GET, HEAD, POST, PUT, PATCH, DELETE"
    if forward_proxy:
        methods += ", CONNECT"
    return web.Response(status=200, headers={"Allow": methods, "Cache-Control": "no-store"})


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` -> (scheme, host, port); ``None`` if it is not one."""
    if not origin.isascii():  # yarl reads "h:١٢" as port 12
        return None
    try:
        url = URL(origin)
        port = url.port
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host or port is None:
        return None
    if url.path not in ("", "/") or url.query_string or url.user:
        return None
    return url.scheme, url.host.lower(), port


def _host_port(value: str, scheme: str) -> tuple[str, int] | None:
    """A ``Host`` header as (host, port), the port defaulting to ``scheme``'s."""
    value = value.strip().lower()
    if not value or not value.isascii():
        return None
    try:
        url = URL(f"{scheme}://{value}")
        port = url.port
    except ValueError:
        return None
    if not url.host or port is None or url.path not in ("", "/"):
        return None
    return url.host, port


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run a gateway until SIGINT/SIGTERM; a second signal forces the exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info(
                "= %s received: closing the listener, held requests get %gs to finish "
                "(signal again to stop now)",
                signal.Signals(signum).name,
                config.shutdown_grace,
            )
            stop.set()
        else:
            log.warning("= second signal: exiting now")
            raise SystemExit(1)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    gateway = Gateway(config)
    try:
        await gateway.start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await gateway.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("= stopped")
