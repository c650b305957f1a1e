"""The gateway's HTTP client towards origins and next hops.

One pool for the whole gateway (``--max-connections``), verified against the
system CAs plus ``--ca-file``.  Hop sessions dial through the same pool with
a client of their own (``gateway.transports.connector.session_client``),
without this one's refusal-capturing middleware.
"""

from __future__ import annotations

import ssl

import aiohttp

from gateway.settings import ClientSettings
from gateway.transports.aiohttp_internals import never_resend
from gateway.transports.http import capture_refusal

__all__ = ["client_ssl_context", "origin_client"]


def client_ssl_context(client: ClientSettings) -> ssl.SSLContext:
    """Verification context for ``https://`` upstreams: system CAs plus ``--ca-file``."""
    context = ssl.create_default_context()
    if client.ca_file is not None:
        context.load_verify_locations(cafile=str(client.ca_file))
    return context


def origin_client(client: ClientSettings) -> aiohttp.ClientSession:
    """The gateway's HTTP client towards origins and next hops (plain requests)."""
    connector = aiohttp.TCPConnector(
        limit=client.max_connections,
        ssl=client_ssl_context(client),
        enable_cleanup_closed=True,
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
