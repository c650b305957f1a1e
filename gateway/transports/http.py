"""aiohttp helpers shared by the edges and the tunnel glue.

Both answer legacy HTTP clients and talk to legacy origins with aiohttp,
plain or WebSocket, so both need the same small pieces: a plain-text error a
person can act on, request and response bodies read within a bound, the
WebSocket upgrade test, and the WebSocket close and refusal rules.  They
live here, below both, so neither layer imports the other for them.  What
needs a private aiohttp detail is in ``aiohttp_internals`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass

import aiohttp
from aiohttp import WSCloseCode, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.core import headers as hdr
from gateway.transports.aiohttp_internals import never_resend
from gateway.transports.tasks import TaskSet

__all__ = [
    "CHUNK",
    "CLOSE_TIMEOUT",
    "MAX_REFUSAL_BODY",
    "BodyTooLarge",
    "OriginRefused",
    "Peer",
    "aiohttp_limit",
    "bounded_chunks",
    "capture_refusal",
    "close_peer",
    "connect_origin",
    "describe",
    "is_websocket_upgrade",
    "offered_protocols",
    "offers_websocket",
    "read_bounded",
    "refusal_headers",
    "request_body",
    "run_shielded",
    "sendable",
    "session_client",
    "strip_handshake",
    "text_error",
]

log = logging.getLogger("hopgate.http")

#: Bytes read or written per step when streaming a body.
CHUNK = 64 * 1024
#: Largest refusal body (``403`` page and the like) passed back to the client.
MAX_REFUSAL_BODY = 1024 * 1024
#: How long a closing WebSocket side may take to answer our Close.
CLOSE_TIMEOUT = 5.0

#: Handshake headers the gateway's own WebSocket client writes anew.
_HANDSHAKE_HEADERS = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept",
)
#: Codes that may not be sent in a Close frame (RFC 6455 section 7.4.1).
_UNSENDABLE = frozenset({0, 1004, 1005, 1006, 1015})

#: Either end of a relayed WebSocket: the client's (server side) or the origin's.
Peer = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


# -- plain HTTP ---------------------------------------------------------------------------


def text_error(status: int, message: str, **headers: str) -> web.Response:
    """A plain-text error the person reading a client's log can act on.

    ``X-Hopgate-Error`` tells it apart from an answer the origin gave; it is
    never cached nor sniffed as anything but text.  ``headers`` are added
    (``Allow``, ``Retry-After``).
    """
    return web.Response(
        status=status,
        text=f"hopgate: {message}\n",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Hopgate-Error": "1",
            **headers,
        },
    )


def describe(exc: BaseException) -> str:
    """``Type: message`` for a log line or an error body (just ``Type`` if it has no text)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def request_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    """The request's body as it arrives, for streaming it on (no bound: the reader paces it)."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        # aiohttp's low-level server leaves ``Expect`` to the handler; the
        # client waits for this before it sends the body we are about to pull.
        # Written to the transport, not through ``request.writer``: the
        # interim response is not part of the response body aiohttp counts.
        transport = request.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


class BodyTooLarge(ValueError):
    """A body (declared or as received) is larger than the reader's limit."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        if declared is not None:
            super().__init__(f"body of {declared} bytes exceeds {limit}")
        else:
            super().__init__(f"body exceeds {limit} bytes")
        self.limit = limit
        self.declared = declared


async def bounded_chunks(
    stream: aiohttp.StreamReader, limit: int, *, declared: int | None = None
) -> AsyncIterator[bytes]:
    """The chunks of a body, raising ``BodyTooLarge`` once more than ``limit`` bytes came.

    ``declared`` is the ``Content-Length`` if there is one: a body announced
    too large is refused before a byte of it is read.  The same for a client
    response (``resp.content``) and a server request (``request.content``).
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, declared)
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(limit)
        yield chunk


async def read_bounded(
    stream: aiohttp.StreamReader, limit: int, *, declared: int | None = None
) -> bytes:
    """The whole body, or ``BodyTooLarge`` as soon as it is larger than ``limit``."""
    body = bytearray()
    async for chunk in bounded_chunks(stream, limit, declared=declared):
        body += chunk
    return bytes(body)


# -- WebSocket ----------------------------------------------------------------------------


def offers_websocket(headers: hdr.HeadersIn) -> bool:
    """``Upgrade`` names ``websocket`` (any version, among other protocols or alone).

    The hop session endpoint refuses every request that asks for a WebSocket
    this way unless it is a valid hop WebSocket, rather than serving it as a
    long-poll request.
    """
    offered = {
        token.strip().split("/")[0].lower()
        for value in headers.getall("Upgrade", ())
        for token in value.split(",")
    }
    return "websocket" in offered


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """``GET`` with ``Connection: upgrade`` and ``Upgrade: websocket``."""
    headers = request.headers
    if request.method != "GET" or "Upgrade" not in headers:  # every plain request: no more work
        return False
    if "upgrade" not in hdr.connection_tokens(headers):
        return False
    return offers_websocket(request.headers)


def aiohttp_limit(largest: int) -> int:
    """aiohttp's ``max_msg_size`` for messages of up to ``largest`` bytes.

    aiohttp refuses a message whose size *reaches* ``max_msg_size``; our
    limits name the largest size allowed, so a message of exactly that size
    must pass.
    """
    return largest + 1


def offered_protocols(headers: hdr.HeadersIn) -> list[str]:
    """The client's ``Sec-WebSocket-Protocol`` offer, in its order."""
    return [
        token.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]


def strip_handshake(headers: CIMultiDict[str]) -> None:
    """Drop the ``Sec-WebSocket-*`` fields a WebSocket endpoint writes anew on each hop."""
    for name in _HANDSHAKE_HEADERS:
        headers.popall(name, None)


@dataclass(kw_only=True)
class OriginRefused(Exception):
    """The origin answered a WebSocket handshake with something other than ``101``."""

    status: int
    reason: str | None
    headers: CIMultiDictProxy[str]
    http_version: tuple[int, int]
    #: ``None`` when the body was larger than ``MAX_REFUSAL_BODY``.
    body: bytes | None


async def capture_refusal(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware: turn a refused WebSocket handshake into ``OriginRefused``.

    ``ClientSession.ws_connect`` discards the body of a non-``101`` answer
    and follows redirects itself; a transparent gateway must hand both back
    to its client untouched.  The middleware sees the answer first and reads
    the body while the connection is still open.  Requests without
    ``Upgrade: websocket`` (everything the plain forwarder sends, since it
    strips hop-by-hop headers) pass through untouched.
    """
    response = await handler(request)
    if response.status == 101 or request.headers.get("Upgrade", "").lower() != "websocket":
        return response
    try:
        body: bytes | None = await read_bounded(response.content, MAX_REFUSAL_BODY)
    except BodyTooLarge:
        body = None
    finally:
        response.release()
    version = response.version
    raise OriginRefused(
        status=response.status,
        reason=response.reason,
        headers=response.headers,
        http_version=(version.major, version.minor) if version else (1, 1),
        body=body,
    )


async def connect_origin(
    client: aiohttp.ClientSession,
    target: URL,
    headers: CIMultiDict[str],
    protocols: list[str],
    max_msg_size: int,
) -> aiohttp.ClientWebSocketResponse:
    """Open the gateway's own WebSocket to ``target``, offering the client's ``protocols``.

    ``headers`` are the end-to-end headers the hop rules produced; the
    handshake headers in them are dropped, aiohttp writes its own. Raises
    ``OriginRefused`` (with the ``capture_refusal`` middleware on ``client``)
    if the origin answers anything but ``101``. Shared by the pass-through
    and the tunnel's replay.
    """
    strip_handshake(headers)
    return await client.ws_connect(
        target,
        headers=headers,
        protocols=protocols,
        autoclose=False,
        autoping=False,
        compress=0,
        max_msg_size=aiohttp_limit(max_msg_size),
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
    )


def refusal_headers(
    headers: hdr.HeadersIn, http_version: tuple[int, int], via_name: str
) -> CIMultiDict[str]:
    """The headers of a refused handshake as this hop passes them back (body set anew)."""
    out = hdr.response_headers_for_downstream(headers, http_version=http_version, via_name=via_name)
    out.popall("Content-Length", None)
    strip_handshake(out)
    return out


def sendable(code: int | None) -> int:
    """``code`` if it may travel in a Close frame, else the nearest one that may."""
    if code in (0, 1005):  # a Close without a code
        return WSCloseCode.OK
    if code is None or code in _UNSENDABLE:
        return WSCloseCode.GOING_AWAY
    return code


async def close_peer(peer: Peer, code: int, reason: str) -> None:
    """Close ``peer`` with ``code`` (reason cut to fit a Close frame); quiet if it is gone."""
    if peer.closed:
        return
    try:
        await peer.close(code=code, message=reason.encode()[:123])
    except (aiohttp.ClientError, ConnectionError) as exc:
        log.debug("closing websocket failed: %s", describe(exc))


#: Relays that outlive a cancelled handler (held here so they are not collected).
_DETACHED = TaskSet()


async def run_shielded(relay: Coroutine[None, None, None]) -> None:
    """Run ``relay`` to its end even if the handler is cancelled.

    aiohttp cancels the handler as soon as the client's socket closes, and a
    completed close handshake closes it; the relay must still pass the
    close code on to the origin, so it runs in its own task.
    """
    await asyncio.shield(_DETACHED.spawn(relay))


#: Headers aiohttp would add on its own: a hop request carries only what we set.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def session_client(plain: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The HTTP client hop sessions dial with: ``plain``'s pool, none of its middleware.

    The gateway's plain client turns a refused origin WebSocket handshake
    into its own exception (to hand the origin's answer back whole); a hop
    session wants aiohttp's own errors, which ``ws`` matches by class. This
    client shares ``plain``'s connection pool and timeouts (closing it leaves
    the pool open), sends no cookies and no automatic headers, and like the
    plain one never resends a request (a held poll).
    """
    connector = plain.connector
    assert connector is not None, "a closed ClientSession"
    client = aiohttp.ClientSession(
        connector=connector,
        connector_owner=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        timeout=plain.timeout,
    )
    never_resend(client)
    return client
