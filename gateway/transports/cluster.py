"""Passing a hop-session request on to the instance of the cluster that owns the session.

Behind a load balancer without affinity, a session's held GET, its POSTs and
its WebSocket attach reach any instance. Each session id names its owner in
an authenticated form (``gateway.core.cluster``); an instance that receives a
request for another instance's session passes it on over an internal
connection and streams the answer back, so the peer cannot tell:

* long-poll GET and POST: same method, path, query and end-to-end headers,
  the body passed to the owner, the owner's status, headers and body passed
  back (a held GET stays held on the owner); bodies over ``WHOLE_BODY`` are
  streamed, smaller announced ones go in one write;
* WebSocket attach: the owner's handshake first; the peer's upgrade is
  accepted only once the owner answered ``101`` (a refusal reaches the peer
  with the owner's status, headers and body), then frames are pumped both
  ways and a close on one side is mirrored on the other.

Each forwarded request carries ``X-Hopgate-Cluster``, an HMAC proof with the
cluster secret: the owner never forwards such a request again (no loops) and
learns the real peer's address. The header is dropped from requests that
arrive from outside, whatever they claim.

Outcomes: the owner's answer (``ok``); unreachable, refused or reset (it
crashed) -> ``404 session's owner <addr> is gone``, which a peer reads as
"session lost" and opens a new one; no answer in time -> ``504``; more than
``max_forwards`` in flight on this instance -> ``503``. Forged ids never get
here: ``SessionServer`` answers them 404 before anything is dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from gateway.core import headers as hdr
from gateway.core.cluster import CLUSTER_HEADER, ClusterIds, Verdict
from gateway.status import ClusterStats
from gateway.transports.http import (
    CLOSE_TIMEOUT,
    OriginRefused,
    aiohttp_limit,
    capture_refusal,
    close_peer,
    connect_origin,
    describe,
    offered_protocols,
    offers_websocket,
    request_body,
    sendable,
    strip_handshake,
    text_error,
)

__all__ = ["ClusterForwarder", "ClusterSettings"]

log = logging.getLogger("hopgate.cluster")

#: Bodies announced at most this large are passed on whole (one write); larger are streamed.
WHOLE_BODY: Final = 256 * 1024
#: Headers aiohttp would add to a request on its own; a forward adds nothing.
_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """One instance's place in a cluster (``--cluster-secret``, ``--advertise``)."""

    secret: str
    #: Normalised ``scheme://host:port`` of this instance.
    advertise: str
    #: Requests passed to other instances at once (each held GET or WebSocket is one).
    max_forwards: int = 2048
    connect_timeout: float = 10.0
    #: Longest wait for the owner's next byte: a held GET waits up to the hold time.
    read_timeout: float = 35.0
    #: Largest WebSocket message spliced (the owner applies its own bound as well).
    max_message: int = 8 * 1024 * 1024
    #: Extra CA bundle for ``https://`` owners.
    ca_file: Path | None = None


class ClusterForwarder:
    """Judges session ids and passes other instances' requests on to them."""

    def __init__(self, settings: ClusterSettings, stats: ClusterStats) -> None:
        self.settings = settings
        self.ids = ClusterIds(settings.secret, settings.advertise)
        self.stats = stats
        self._http: aiohttp.ClientSession | None = None
        self._active = 0
        self._closed = False
        log.info(
            "= cluster instance %s: its session ids start with %s.",
            self.ids.advertise,
            self.ids.owner_part,
        )

    @property
    def active(self) -> int:
        """Forwards in flight now."""
        return self._active

    def new_id(self, nonce: str) -> str:
        return self.ids.session_id(nonce)

    async def route(self, request: web.BaseRequest, session_id: str) -> web.StreamResponse | None:
        """The answer for a request that is not this instance's to serve; None if it is.

        A request another instance passed here (valid proof) is always
        served here: unknown means 404, never a second forward.
        """
        verdict = self.ids.judge(session_id)
        if verdict.kind == "forged":
            self.stats.forged += 1
            log.debug("= refused session id %r…: %s", session_id[:12], verdict.reason)
            return text_error(404, "no such hop session (unknown or expired)")
        if verdict.kind == "plain":
            return None
        if CLUSTER_HEADER in request.headers and self._passed_here(request):
            return None
        if verdict.kind == "local":
            return None
        return await self.forward(request, verdict)

    def _passed_here(self, request: web.BaseRequest) -> bool:
        """The request carries a valid proof: another instance passed it here."""
        proof = request.headers.get(CLUSTER_HEADER, "")
        peer = self.ids.check_proof(proof, time.time(), request.method, request.path)
        if peer is not None:
            log.debug("< %s %s passed on by an instance for %s", request.method,
                      request.path[:60], peer)  # fmt: skip
        return peer is not None

    async def forward(self, request: web.BaseRequest, verdict: Verdict) -> web.StreamResponse:
        """Pass ``request`` to ``verdict.owner``, within the cap on forwards in flight."""
        if self._closed:
            return text_error(503, "this instance is shutting down", **{"Retry-After": "1"})
        if self._active >= self.settings.max_forwards:
            self.stats.busy += 1
            return text_error(
                503,
                f"this instance passes {self._active} requests to other instances already; "
                "try again",
                **{"Retry-After": "1"},
            )
        self._active += 1
        try:
            if offers_websocket(request.headers):
                return await self._splice(request, verdict.owner)
            return await self._exchange(request, verdict.owner)
        finally:
            self._active -= 1

    async def close(self) -> None:
        """End forwards in flight; later ones get 503 (the instance is stopping)."""
        self._closed = True
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    # -- HTTP ----------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            context = ssl.create_default_context()
            if self.settings.ca_file is not None:
                context.load_verify_locations(cafile=str(self.settings.ca_file))
            connector = aiohttp.TCPConnector(
                limit=self.settings.max_forwards, ssl=context, enable_cleanup_closed=True
            )
            self._http = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                middlewares=(capture_refusal,),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.settings.connect_timeout,
                    sock_read=self.settings.read_timeout,
                ),
            )
        return self._http

    def _outgoing(self, request: web.BaseRequest) -> CIMultiDict[str]:
        """The peer's end-to-end headers (its ``Host`` kept) plus our proof."""
        headers = hdr.strip_hop_by_hop(request.headers)
        headers.popall(CLUSTER_HEADER, None)
        headers[CLUSTER_HEADER] = self.ids.internal_proof(
            time.time(), request.remote or "", request.method, request.path
        )
        return headers

    async def _exchange(self, request: web.BaseRequest, owner: str) -> web.StreamResponse:
        url = URL(owner + request.raw_path, encoded=True)
        response: web.StreamResponse | None = None
        try:
            async with self._client().request(
                request.method,
                url,
                headers=self._outgoing(request),
                data=await _body(request),
                allow_redirects=False,
                skip_auto_headers=_AUTO_HEADERS,
            ) as answer:
                headers = hdr.strip_hop_by_hop(answer.headers)
                size = answer.content_length
                if size is not None and size <= WHOLE_BODY:
                    # A session answer is a batch, most of them small: one write back.
                    headers.popall("Content-Length", None)
                    body = await answer.read()
                    response = web.Response(
                        status=answer.status, reason=answer.reason, headers=headers, body=body
                    )
                else:
                    response = web.StreamResponse(
                        status=answer.status, reason=answer.reason, headers=headers
                    )
                    await response.prepare(request)
                    async for chunk in answer.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._failed(request, owner, exc, response)
        self.stats.forwarded += 1
        return response

    def _failed(
        self,
        request: web.BaseRequest,
        owner: str,
        exc: BaseException,
        response: web.StreamResponse | None,
    ) -> web.StreamResponse:
        """The answer for a forward that broke: 404 gone, 504 timeout (or a cut stream)."""
        if response is not None and response.prepared:
            # The owner's head is already out: all that is left is to cut the body short.
            log.info("= forward to %s broke mid-answer: %s", owner, describe(exc))
            self.stats.gone += 1
            if request.transport is not None:
                request.transport.close()
            return response
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            self.stats.timeouts += 1
            log.info("= session's owner %s did not answer in time", owner)
            return text_error(504, f"session's owner {owner} did not answer in time")
        self.stats.gone += 1
        log.info("= session's owner %s is gone: %s", owner, describe(exc))
        return text_error(404, f"session's owner {owner} is gone")

    # -- WebSocket -----------------------------------------------------------------------

    async def _splice(self, request: web.BaseRequest, owner: str) -> web.StreamResponse:
        """The owner's 101 first, then the peer's; frames pumped until one side closes."""
        if request.method != "GET" or not web.WebSocketResponse().can_prepare(request).ok:
            # Nothing to pass on: the owner would accept a handshake we then cannot.
            return text_error(400, "not a valid WebSocket handshake (RFC 6455 4.1)")
        url = URL(owner + request.raw_path, encoded=True)
        headers = self._outgoing(request)
        strip_handshake(headers)
        limit = self.settings.max_message
        try:
            upstream = await connect_origin(
                self._client(), url, headers, offered_protocols(request.headers), limit
            )
        except OriginRefused as refused:
            self.stats.forwarded += 1
            return _refusal(refused)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._failed(request, owner, exc, None)
        self.stats.forwarded += 1
        downstream = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False,
            autoclose=False,
            heartbeat=None,
            compress=False,
            max_msg_size=aiohttp_limit(limit),
            timeout=CLOSE_TIMEOUT,
        )
        try:
            await downstream.prepare(request)
            await _pump_both(downstream, upstream)
        finally:
            await close_peer(upstream, WSCloseCode.GOING_AWAY, "forward ended")
        return downstream


async def _body(request: web.BaseRequest) -> bytes | AsyncIterator[bytes] | None:
    """The body to pass on: read whole when it is small and announced, else streamed."""
    if not request.body_exists:
        return None
    size = request.content_length
    if size is not None and size <= WHOLE_BODY and "Expect" not in request.headers:
        return await request.read()
    return request_body(request)


def _refusal(refused: OriginRefused) -> web.Response:
    """The owner's refusal of a WebSocket as the peer gets it: status, headers, body."""
    headers = hdr.strip_hop_by_hop(refused.headers)
    headers.popall("Content-Length", None)
    strip_handshake(headers)
    return web.Response(
        status=refused.status, reason=refused.reason, headers=headers, body=refused.body or b""
    )


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: Socket, sink: Socket) -> None:
    """Copy frames from ``source`` to ``sink`` until a close, which is passed on."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif kind is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif kind is WSMsgType.PING:
            await sink.ping(message.data)
        elif kind is WSMsgType.PONG:
            await sink.pong(message.data)
        else:
            code = message.data if kind is WSMsgType.CLOSE else WSCloseCode.GOING_AWAY
            reason = message.extra if kind is WSMsgType.CLOSE and message.extra else ""
            await close_peer(sink, sendable(code), str(reason))
            await close_peer(source, sendable(code), str(reason))
            return


async def _pump_both(peer: web.WebSocketResponse, owner: aiohttp.ClientWebSocketResponse) -> None:
    """Both directions at once; when one ends with a close, the other follows within a moment."""
    tasks = [asyncio.ensure_future(_pump(peer, owner)), asyncio.ensure_future(_pump(owner, peer))]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
