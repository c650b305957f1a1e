"""Which handler answers a request: the one router of a gateway (and of its tests).

Dispatch is done by hand rather than with aiohttp's path router: a forward
proxy sees absolute-form and authority-form (``CONNECT``) targets that a path
router cannot express, and the status path must be answered only when it is
addressed to *this* gateway.  :class:`Router` gives each form of request
target one answer (``gateway.core.targets``)::

    OPTIONS *                      answered here (Allow)
    CONNECT host:port              forward proxy: a TCP tunnel; else 403
    http://other/...               forward proxy: relayed to it; else 400
    /.hopgate/status               the status page (loopback clients by default)
    /.hopgate/metrics, ready, live gateway.admin (metrics: as status; ready, live: anyone)
    /.hopgate/hello                discovery's proof        ┐ only with hop sessions
    /.hopgate/session...           SessionServer            ┘ (--upgrade auto)
    /anything else                 relayed to --upstream, and only there

:class:`Relay` passes a request on: over the next hop's live tunnel when
there is one, falling back to plain HTTP only if the tunnel says nothing of
the request left (``NotSent``), so no request reaches the origin twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from yarl import URL

from gateway.admin import OwnPaths
from gateway.core import discovery
from gateway.core.targets import (
    AbsoluteForm,
    AsteriskForm,
    AuthorityForm,
    BadTarget,
    join_upstream,
    names_this_listener,
    parse_target,
)
from gateway.edges import cors
from gateway.edges.forward import Forwarder
from gateway.edges.websocket import pass_through
from gateway.glue.link import TunnelLink
from gateway.glue.retry import NotSent, Retry
from gateway.logs import ROUTE_KEY
from gateway.settings import RouteSettings, normal_origin
from gateway.status import GatewayStats
from gateway.transports.endpoint import SessionServer
from gateway.transports.http import is_websocket_upgrade, text_error

__all__ = ["MAX_NONCE", "Handler", "Relay", "Router"]

log = logging.getLogger("hopgate")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

#: Longest ``nonce`` a hello request may carry.
MAX_NONCE: Final = 128


class Relay:
    """Pass a request on to its target: over the next hop's live tunnel, else plain.

    ``tunnel_for(origin_key)`` names the live tunnel towards that origin, if
    any; ``on_not_sent(reason)`` hears of each request a tunnel gave back.
    ``retry_tunnel(origin_key, old)`` waits for the next session's tunnel
    for a request the old one says may be sent once more (``Retry``); with
    none in time the retry goes plain. A WebSocket handshake is passed as a
    WebSocket either way.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        tunnel_for: Callable[[str], TunnelLink | None],
        *,
        on_not_sent: Callable[[str], None] | None = None,
        retry_tunnel: Callable[[str, TunnelLink], Awaitable[TunnelLink | None]] | None = None,
    ) -> None:
        self.forwarder = forwarder
        self._tunnel_for = tunnel_for
        self._on_not_sent = on_not_sent
        self._retry_tunnel = retry_tunnel

    async def __call__(
        self, request: web.BaseRequest, target: URL, *, origin_key: str
    ) -> web.StreamResponse:
        tunnel = self._tunnel_for(origin_key)
        # What the next hop would get as its request-target on a plain path;
        # a path a tunnel cannot name ("//x") simply goes plain.
        path = target.raw_path_qs
        if tunnel is not None and path.startswith("/") and not path.startswith("//"):
            # The access log and the metrics tell tunnelled requests from plain ones.
            request[ROUTE_KEY] = "tunnel"
            try:
                return await self._over(tunnel, request, path, origin_key)
            except Retry as exc:
                answer = await self._again(tunnel, request, path, origin_key, exc)
                if answer is not None:
                    return answer
            except NotSent as exc:
                # Nothing of the request left this gateway: plain HTTP is its
                # first and only delivery.
                log.info(
                    "= %s %s not sent over the hop session (%s): forwarding plain",
                    request.method,
                    target,
                    exc,
                    extra={"upstream": origin_key, "reason": str(exc)},
                )
                if self._on_not_sent is not None:
                    self._on_not_sent(str(exc))
        request[ROUTE_KEY] = "plain"
        if is_websocket_upgrade(request):
            return await pass_through(
                request,
                target,
                forwarder=self.forwarder,
                origin_key=origin_key,
                max_msg_size=self.forwarder.config.max_ws_message,
            )
        return await self.forwarder.forward(request, target, origin_key=origin_key)

    def _over(
        self, tunnel: TunnelLink, request: web.BaseRequest, path: str, origin_key: str
    ) -> Awaitable[web.StreamResponse]:
        # Not a coroutine: the tunnel's is awaited directly, one frame less for each
        # of a request's resumptions to pass through.
        if is_websocket_upgrade(request):
            return tunnel.forward_websocket(request, path, origin_key=origin_key)
        return tunnel.forward(request, path, origin_key=origin_key)

    async def _again(
        self, old: TunnelLink, request: web.BaseRequest, path: str, origin_key: str, why: Retry
    ) -> web.StreamResponse | None:
        """Send a ``Retry`` once more: on the next session, else (None) plain."""
        log.info(
            "= %s %s sent again (%s)",
            request.method,
            path,
            why,
            extra={"upstream": origin_key, "reason": str(why)},
        )
        tunnel = await self._retry_tunnel(origin_key, old) if self._retry_tunnel else None
        if tunnel is None:
            return None
        try:
            return await self._over(tunnel, request, path, origin_key)
        except Retry as exc:  # once is all RFC 9110 allows an intermediary
            return text_error(502, f"{exc}; it was sent again once already, not retried")
        except NotSent:
            return None


class Router:
    """One answer for each request a gateway receives (see the module docstring).

    ``sessions`` serves the hop paths (``None``: they are forwarded like any
    other); ``connect`` serves a forward proxy's ``CONNECT``; ``own_url``
    names this gateway in the hint a misdirected request gets; ``own_paths``
    answers status, metrics, ready and live (the admin listener uses the
    same one).
    """

    def __init__(
        self,
        routes: RouteSettings,
        *,
        relay: Relay,
        stats: GatewayStats,
        sessions: SessionServer | None = None,
        connect: Handler | None = None,
        own_url: Callable[[], str] = lambda: "http://HOST:PORT",
        own_paths: OwnPaths | None = None,
    ) -> None:
        self.routes = routes
        self._own_paths = own_paths
        self.relay = relay
        self.stats = stats
        self.sessions = sessions
        self._connect = connect
        self._own_url = own_url

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            target = parse_target(request.method, request.raw_path)
        except BadTarget as exc:
            return text_error(400, str(exc))
        if isinstance(target, AsteriskForm):
            return _options_asterisk(self.routes.forward_proxy)
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
        return names_this_listener(target.url, tls=self.routes.tls, local=local)

    async def _origin_form(self, request: web.BaseRequest, path_qs: str) -> web.StreamResponse:
        """``/path?query``: this gateway's own paths, else the upstream (only there)."""
        if self._own_paths is not None:
            answer = self._own_paths.answer(request)  # status, metrics, ready, live
            if answer is not None:
                return answer
        if self.sessions is not None:
            if request.path == discovery.HELLO_PATH:
                return _hello(request)
            if self.sessions.handles(request):
                return await self._session_request(request, self.sessions)
        upstream = self.routes.upstream
        if upstream is None:
            return text_error(
                400,
                "this gateway is a forward proxy: set it as your HTTP proxy "
                f"(e.g. http_proxy={self._own_url()}) or start it with --upstream URL",
            )
        try:
            target = join_upstream(upstream, path_qs)
        except BadTarget as exc:
            return text_error(400, str(exc))
        return await self.relay(request, target, origin_key=str(upstream))

    async def _proxy_request(
        self, request: web.BaseRequest, target: AbsoluteForm | AuthorityForm
    ) -> web.StreamResponse:
        """A request addressed to another host: only a forward proxy serves it.

        A sidecar or reverse gateway forwards solely to its configured
        upstream; anything else would make it an open proxy.  The refusal
        does not name the upstream: that is nobody else's business.
        """
        connect = isinstance(target, AuthorityForm)
        if not self.routes.forward_proxy or (connect and self._connect is None):
            what = "CONNECT" if connect else "an absolute-form target (http://host/...)"
            return text_error(
                403 if connect else 400,
                f"this gateway forwards only to its configured upstream; it is not an open "
                f"proxy, so {what} is refused (a forward proxy is a client gateway without "
                "--upstream)",
            )
        if isinstance(target, AuthorityForm):
            assert self._connect is not None
            return await self._connect(request)
        return await self.relay(request, target.url, origin_key=target.origin)

    async def _session_request(
        self, request: web.BaseRequest, sessions: SessionServer
    ) -> web.StreamResponse:
        """A request of a hop session: refused if a browser page of a foreign origin sent it.

        An allowed page gets CORS headers (and its preflight a 204), so a
        page on another origin can use this gateway; a refused one gets none.
        """
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser
            return await sessions.handle(request)
        if not self._origin_allowed(origin, request):
            log.warning(
                "= hop session request from origin %r refused (not same-origin, not in "
                "--allowed-origin)",
                origin,
                extra={"reason": "origin not allowed"},
            )
            return text_error(
                403,
                f"origin {origin} may not open hop sessions here "
                "(not same-origin and not in --allowed-origin): start the gateway with "
                f"--allowed-origin {origin}",
            )
        credentials = self.routes.allow_credentials
        if cors.is_preflight(request):
            return cors.preflight(origin, credentials=credentials)
        response = await sessions.handle(request)
        cors.allow(response, origin, credentials=credentials)
        return response

    def _origin_allowed(self, origin: str, request: web.BaseRequest) -> bool:
        """Same origin as the request's ``Host`` (or ``X-Forwarded-Host``), or allowed by flag."""
        normal = normal_origin(origin)
        if normal in self.routes.allowed_origins:
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


def _hello(request: web.BaseRequest) -> web.Response:
    """``GET /.hopgate/hello?nonce=N``: prove this is a gateway (never forwarded)."""
    if request.method not in ("GET", "HEAD"):
        return text_error(405, f"{discovery.HELLO_PATH} answers GET only", Allow="GET, HEAD")
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


def _options_asterisk(forward_proxy: bool) -> web.Response:
    """``OPTIONS *``: a question about this server, so this gateway answers it.

    It cannot be passed on: aiohttp's client has no way to send the
    asterisk-form, and sending ``OPTIONS /`` instead asks about a resource.
    """
    methods = "OPTIONS, GET, HEAD, POST, PUT, PATCH, DELETE"
    if forward_proxy:
        methods += ", CONNECT"
    return web.Response(status=200, headers={"Allow": methods, "Cache-Control": "no-store"})


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
