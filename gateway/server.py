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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
from types import TracebackType

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.edge.connect import open_tunnel
from gateway.edge.forward import Forwarder, text_error, upstream_target
from gateway.edge.websocket import capture_refusal, is_websocket_upgrade, pass_through
from gateway.status import STATUS_PATH, GatewayStats

log = logging.getLogger("hopgate")

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


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


class Gateway:
    """One running hopgate gateway (server or client role)."""

    def __init__(self, config: Config) -> None:
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
        self.port = 0

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
        # aiohttp re-sends an idempotent request whose pooled connection
        # dropped, even when the origin had already received it; a long-poll
        # GET often consumes messages, so it must never reach the origin twice.
        self._client._retry_connection = False
        self._forwarder = Forwarder(self.config, self._client, self.stats)
        server = web.Server(
            self._dispatch,
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

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

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
        assert self._forwarder is not None
        absolute = request.raw_path.startswith(("http://", "https://"))
        if request.method == "CONNECT" or absolute:
            return await self._proxy_request(request, absolute)
        if request.path == STATUS_PATH:
            return self._status(request)
        if self.config.upstream is None:
            return text_error(
                400,
                "this gateway is a forward proxy: set it as your HTTP proxy "
                f"(e.g. http_proxy={self.url}) or start it with --upstream URL",
            )
        target = upstream_target(self.config.upstream, request)
        return await self._relay(request, target, origin_key=str(self.config.upstream))

    async def _proxy_request(self, request: web.BaseRequest, absolute: bool) -> web.StreamResponse:
        """A request addressed to another host: only a forward proxy serves it.

        A sidecar or reverse gateway forwards solely to its configured
        upstream; anything else would make it an open proxy.
        """
        assert self._forwarder is not None
        if not self.config.forward_proxy:
            return text_error(
                403 if request.method == "CONNECT" else 400,
                "this gateway forwards only to its configured upstream "
                f"{self.config.upstream}; it is not an open proxy",
            )
        if request.method == "CONNECT":
            return await open_tunnel(request, self.config, self.stats)
        target = URL(request.raw_path, encoded=True)
        origin = f"{target.scheme}://{target.raw_authority}"
        return await self._relay(request, target, origin_key=origin)

    async def _relay(
        self, request: web.BaseRequest, target: URL, *, origin_key: str
    ) -> web.StreamResponse:
        """Pass ``request`` on to ``target``: as a WebSocket if it asks for one."""
        assert self._forwarder is not None
        if is_websocket_upgrade(request):
            return await pass_through(
                request, target, forwarder=self._forwarder, origin_key=origin_key
            )
        return await self._forwarder.forward(request, target, origin_key=origin_key)

    def _status(self, request: web.BaseRequest) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            refusal = text_error(405, f"{STATUS_PATH} answers GET only")
            refusal.headers["Allow"] = "GET, HEAD"  # RFC 9110 15.5.6: a 405 lists them
            return refusal
        return web.Response(
            text=json.dumps(self.stats.as_json(), indent=2) + "\n",
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


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
