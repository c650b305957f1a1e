"""CORS for hop-session requests: what lets a page on another origin use a gateway.

The router decides *whether* an ``Origin`` may open hop sessions (same
origin, or ``--allowed-origin``); this module only writes the answer a
browser needs to let the page see it.  A refused origin gets none of these
headers: its 403 stays opaque to the page, which is the point.

Credentials (cookies, HTTP auth) are off unless ``--allow-credentials``:
hop sessions authenticate with their own token, so most pages never need
the browser to attach cookies to them.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from gateway.transports.handshake import AUTH_HEADER, SESSION_HEADER, TOKEN_HEADER

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "MAX_AGE", "allow", "is_preflight", "preflight"]

#: Methods hop sessions use (POST to open and send, GET to long-poll).
ALLOW_METHODS: Final = "GET, POST"
#: Request headers a page's shim sends beyond the CORS-safelisted ones
#: (Authorization: its ``auth`` option, for a proxy in front that checks it).
ALLOW_HEADERS: Final = (
    f"Authorization, Content-Type, {TOKEN_HEADER}, {AUTH_HEADER}, {SESSION_HEADER}"
)
#: Response headers the shim must read (a browser hides others from a foreign page).
EXPOSE_HEADERS: Final = f"{SESSION_HEADER}, {TOKEN_HEADER}, X-Hopgate-Error"
#: Seconds a browser may cache a preflight: one per page load, not one per poll.
MAX_AGE: Final = "600"


def is_preflight(request: web.BaseRequest) -> bool:
    """A CORS preflight: ``OPTIONS`` asking whether the real request may follow."""
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def preflight(origin: str, *, credentials: bool) -> web.Response:
    """The 204 answering an allowed origin's preflight."""
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    allow(response, origin, credentials=credentials)
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = MAX_AGE
    return response


def allow(response: web.StreamResponse, origin: str, *, credentials: bool) -> None:
    """Let the page at ``origin`` read ``response`` (unless it is already sent, a WebSocket).

    The request's own ``Origin`` is echoed, never ``*``: a wildcard would
    forbid credentials and would say more than the check decided.
    """
    if response.prepared:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers["Vary"] = "Origin"
    if credentials:
        response.headers["Access-Control-Allow-Credentials"] = "true"
