"""The gateway's HTTP client towards origins and next hops.

Two pools, each bounded by ``--max-connections``: the lean client of
``gateway.transports.origin_client`` for plain ``http://`` requests with no
proxy between (``direct_client``: half the CPU of aiohttp's request path),
and aiohttp's for the rest (``origin_client``), verified against the
system CAs plus ``--ca-file``.  Hop sessions dial through the same pool with
a client of their own (``gateway.transports.http.session_client``),
without this one's refusal-capturing middleware.

A ``hopgate client`` sends all of it through the proxy ``http_proxy`` /
``https_proxy`` / ``no_proxy`` name (``outgoing_proxies``;
``gateway.transports.proxy`` says how); a ``hopgate server`` connects directly.
"""

from __future__ import annotations

import ssl

import aiohttp

from gateway.config import Role
from gateway.settings import ClientSettings
from gateway.transports.aiohttp_internals import never_resend
from gateway.transports.http import capture_refusal
from gateway.transports.origin_client import OriginPool
from gateway.transports.proxy import ProxyTable, log_proxies, proxy_connector

__all__ = ["client_ssl_context", "direct_client", "origin_client", "outgoing_proxies"]


def client_ssl_context(client: ClientSettings) -> ssl.SSLContext:
    """Verification context for ``https://`` upstreams: system CAs plus ``--ca-file``."""
    context = ssl.create_default_context()
    if client.ca_file is not None:
        context.load_verify_locations(cafile=str(client.ca_file))
    return context


def outgoing_proxies(role: Role) -> ProxyTable | None:
    """The client role's proxies, read from the environment once and logged; None for a server.

    ``ConfigError`` when a variable is malformed or names a proxy hopgate
    cannot speak to (an unset variable is not an error: connect directly).
    """
    if role != "client":
        return None
    proxies = ProxyTable.from_env()
    log_proxies(proxies)
    return proxies


def direct_client(client: ClientSettings) -> OriginPool:
    """The lean client for plain ``http://`` origins reached without a proxy.

    Its own pool, bounded by ``--max-connections`` like ``origin_client``'s
    (which keeps WebSockets and ``https``), with the same timeouts.
    """
    return OriginPool(
        limit=client.max_connections,
        connect_timeout=client.connect_timeout,
        read_timeout=client.upstream_timeout,
    )


def origin_client(
    client: ClientSettings, *, proxies: ProxyTable | None = None
) -> aiohttp.ClientSession:
    """The gateway's HTTP client towards origins and next hops (plain requests)."""
    context = client_ssl_context(client)
    if proxies:
        connector: aiohttp.TCPConnector = proxy_connector(
            proxies, limit=client.max_connections, ssl=context, enable_cleanup_closed=True
        )
    else:
        connector = aiohttp.TCPConnector(
            limit=client.max_connections, ssl=context, enable_cleanup_closed=True
        )
    session = aiohttp.ClientSession(
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
            total=None, connect=client.connect_timeout, sock_read=client.upstream_timeout
        ),
    )
    # A long-poll GET often consumes messages: never sent to the origin twice.
    never_resend(session)
    return session
