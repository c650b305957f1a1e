"""Forward one HTTP exchange to the next hop, streaming both bodies.

A legacy long-poll client must not be able to tell the gateway is there, so
the forwarder changes only what HTTP says a proxy changes (hop-by-hop
headers, ``Via``, ``X-Forwarded-*``) and never holds a whole body: request
bytes are pulled from the client as the upstream connection can take them,
response bytes are written to the client as they arrive (an SSE event or a
forever-frame ``<script>`` shows up downstream as soon as it leaves the
origin).

Errors before the response starts become a ``502``/``504`` with a plain-text
body naming the upstream and what failed.  After the response has started
the only honest signal left is to cut the connection, so a truncated body is
never passed off as complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.core import discovery
from gateway.core import headers as hdr
from gateway.glue.heads import request_pairs
from gateway.glue.origin import ForwardSettings, Upstream
from gateway.status import GatewayStats
from gateway.transports.aiohttp_internals import RelayedResponse
from gateway.transports.http import describe, request_body, text_error
from gateway.transports.origin_client import OriginConnectError, OriginPool

log = logging.getLogger("hopgate.forward")


class Forwarder:
    """Sends requests to upstreams through one shared ``ClientSession``.

    ``direct``: the lean client (``origin_client``) for plain ``http://``
    exchanges, where no proxy sits on the way; WebSockets and ``https`` go
    through ``client``.
    """

    def __init__(
        self,
        config: ForwardSettings,
        client: aiohttp.ClientSession,
        stats: GatewayStats,
        *,
        direct: OriginPool | None = None,
    ):
        self.config = config
        self.client = client
        self.stats = stats
        self.direct = direct
        #: Called with the origin key when a plain response carries a discovery note.
        self.on_note: Callable[[str, discovery.Note], None] | None = None
        #: Mark plain requests as coming from a gateway (hop-by-hop ``Hopgate``).
        self.mark_requests = False
        #: Answer marked requests with a note naming this session path.
        self.advertise_path: str | None = None
        self._last_host: tuple[URL | None, str] = (None, "")

    def _upstream_host(self, target: URL | None) -> str | None:
        """``Host`` for ``target`` (None: keep the client's).

        A tunnel asks for its upstream's on every request and yarl's parts
        cost, so the last answer is kept (by identity: a plain request's URL is new).
        """
        if self.config.preserve_host or target is None:
            return None
        if target is not self._last_host[0]:
            self._last_host = (target, host_header(target))
        return self._last_host[1]

    def outgoing_headers(self, request: web.BaseRequest, target: URL | None) -> CIMultiDict[str]:
        """Headers to send to ``target`` for ``request`` (``None``: keep the client's Host)."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        upstream_host = self._upstream_host(target)
        return hdr.request_headers_for_upstream(
            request.headers,
            http_version=(request.version.major, request.version.minor),
            via_name=self.config.via_name,
            client_ip=peer[0] if peer else None,
            proto=request.scheme,
            upstream_host=upstream_host,
        )

    def outgoing_pairs(
        self, request: web.BaseRequest, target: URL | None
    ) -> list[tuple[bytes, bytes]]:
        """:meth:`outgoing_headers` as byte pairs, built from the head as it was read.

        For a stream's OPEN, which carries bytes: one pass over aiohttp's
        ``raw_headers``, no ``CIMultiDict`` built and encoded back per request.
        """
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return request_pairs(
            request.raw_headers,
            http_version=(request.version.major, request.version.minor),
            via_name=self.config.via_name,
            client_ip=peer[0] if peer else None,
            proto=request.scheme,
            upstream_host=self._upstream_host(target),
        )

    async def forward(
        self, request: web.BaseRequest, target: URL, *, origin_key: str
    ) -> web.StreamResponse:
        """Relay ``request`` to ``target`` and stream the answer back."""
        state = self.stats.upstream(origin_key)
        state.requests += 1
        self.stats.active_streams += 1
        try:
            return await self._relay(request, target, origin_key)
        finally:
            self.stats.active_streams -= 1

    async def _relay(
        self, request: web.BaseRequest, target: URL, origin_key: str
    ) -> web.StreamResponse:
        out_headers = self.outgoing_headers(request, target)
        if self.mark_requests:
            discovery.add_mark(out_headers)
        data = request_body(request) if request.body_exists else None
        try:
            upstream = await self.request_upstream(request.method, target, out_headers, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.upstream(origin_key).errors += 1
            return self.error_response(exc, target)
        note = discovery.note_from(upstream.headers) if self.on_note is not None else None
        if self.on_note is not None and note is not None:
            self.on_note(origin_key, note)
        try:
            return await self._stream_back(request, upstream)
        except BaseException:
            upstream.close()
            raise
        finally:
            upstream.release()

    async def request_upstream(
        self,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> Upstream:
        """:meth:`open_upstream` through the lean client where it applies.

        Plain forwarding and the tunnel's replay take this way: a plain
        ``http://`` origin with no proxy between (``direct``) gets the head
        as one write, and the same bytes ``open_upstream`` would send.
        """
        if self.direct is not None and target.scheme == "http":
            return await self.direct.request(method, target, headers, body)
        return await self.open_upstream(method, target, headers, body)

    async def open_upstream(
        self,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """Send one request head (and stream ``body``) through aiohttp; the response once its
        head arrived.  No redirects followed, nothing compressed or re-chunked.
        """
        return await self.client.request(
            method,
            target,
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=None,
            chunked=None,
        )

    def replay_headers(
        self,
        incoming: hdr.HeadersIn,
        target: URL | None,
        *,
        client_ip: str | None,
        proto: str = "http",
    ) -> CIMultiDict[str]:
        """Headers for a request that reached this gateway over a tunnel stream.

        The stream stands in for an HTTP/1.1 connection from the previous
        gateway, so the rules are exactly those of ``outgoing_headers``
        (``target`` ``None``: keep the incoming Host).
        """
        upstream_host = self._upstream_host(target)
        return hdr.request_headers_for_upstream(
            incoming,
            http_version=(1, 1),
            via_name=self.config.via_name,
            client_ip=client_ip,
            proto=proto,
            upstream_host=upstream_host,
        )

    def replay_stripped(
        self,
        stripped: CIMultiDict[str],
        original_host: str | None,
        target: URL | None,
        *,
        client_ip: str | None,
    ) -> CIMultiDict[str]:
        """:meth:`replay_headers` for a head decoded and stripped in one pass (in place).

        ``glue.heads.decode_stripped`` gives both arguments: the tunnel's
        answering side builds the outgoing head once instead of twice.
        """
        upstream_host = self._upstream_host(target)
        hdr.rewrite_for_upstream(
            stripped,
            original_host=original_host,
            http_version=(1, 1),
            via_name=self.config.via_name,
            client_ip=client_ip,
            proto="http",
            upstream_host=upstream_host,
        )
        return stripped

    def close(self) -> None:
        """Close the lean client's idle connections (on stop, beside ``client.close()``)."""
        if self.direct is not None:
            self.direct.close()

    def downstream_headers(self, upstream: Upstream) -> CIMultiDict[str]:
        """The upstream response's headers as this hop passes them back."""
        version = upstream.version
        return hdr.response_headers_for_downstream(
            upstream.headers,
            http_version=(version.major, version.minor) if version else (1, 1),
            via_name=self.config.via_name,
        )

    async def _stream_back(
        self, request: web.BaseRequest, upstream: Upstream
    ) -> web.StreamResponse:
        # What of the body came with the head (all of a small answer) leaves
        # with it: one send to the client, not two.
        first = b""
        if upstream.content.is_eof():
            with contextlib.suppress(aiohttp.ClientError):  # raised again by iter_any below
                first = upstream.content.read_nowait()
        response = RelayedResponse(
            status=upstream.status, reason=upstream.reason, hold_head=bool(first)
        )
        response.headers.extend(self.downstream_headers(upstream))
        if self.advertise_path is not None and discovery.has_mark(request.headers):
            discovery.add_note(response.headers, self.advertise_path)
        await response.prepare(request)
        try:
            if first:  # the whole body: head, body (and a chunked end) in one send
                await response.write_eof(first)
                return response
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The origin failed mid-body: cut the client connection so the
            # truncation is visible instead of a short body looking complete.
            log.warning(
                "upstream %s failed mid-response: %s",
                upstream.url,
                describe(exc),
                extra={"upstream": str(upstream.url.origin()), "reason": describe(exc)},
            )
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def error_response(self, exc: BaseException, target: URL) -> web.Response:
        status, message = self.describe_failure(exc, target)
        return text_error(status, message)

    def describe_failure(self, exc: BaseException, target: URL) -> tuple[int, str]:
        """Status (502/504) and the client's message for a failed upstream request.

        The WARNING logged here names the upstream and the error in full, and
        so does a client gateway's message: its clients are its own user's
        programs. A server gateway's clients are anyone's, so its message
        (passed on by the peer gateway when tunnelled) says what failed but
        not where: the address it forwards to is nobody else's business.
        """
        public = self.stats.role == "server"
        where = f"{target.scheme}://{target.raw_authority}"
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            log.warning(
                "upstream %s timed out", where, extra={"upstream": where, "reason": "timeout"}
            )
            return (
                504,
                f"{'the upstream' if public else f'upstream {where}'} did not answer in time "
                f"(connect timeout {self.config.connect_timeout:g}s, "
                f"read timeout {self.config.upstream_timeout:g}s)",
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            logged = (
                f"TLS certificate of upstream {where} failed verification: {exc.certificate_error}"
            )
            told = "the upstream's TLS certificate failed verification"
        elif isinstance(exc, aiohttp.ClientProxyConnectionError):  # http(s)_proxy unreachable
            logged = (
                f"could not connect to proxy {exc.host}:{exc.port} (http_proxy/https_proxy) "
                f"for upstream {where}: {describe(exc.os_error)}"
            )
            told = f"could not connect to the outbound proxy: {_os_reason(exc.os_error)}"
        elif isinstance(exc, aiohttp.ClientHttpProxyError):
            logged = f"proxy refused CONNECT to upstream {where}: {exc.status} {exc.message}"
            told = f"the outbound proxy refused CONNECT: {exc.status}"
        elif isinstance(exc, aiohttp.ClientConnectorError | OriginConnectError):
            logged = f"could not connect to upstream {where}: {describe(exc.os_error)}"
            told = f"could not connect to the upstream: {_os_reason(exc.os_error)}"
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            logged = f"upstream {where} closed the connection without answering"
            told = "the upstream closed the connection without answering"
        else:
            logged = f"upstream {where} failed: {describe(exc)}"
            told = f"the upstream failed: {type(exc).__name__}"
        log.warning("%s", logged, extra={"upstream": where, "reason": logged})
        return 502, f"{told} (the gateway's log has the details)" if public else logged


def _os_reason(error: OSError) -> str:
    """``ConnectionRefusedError (Connection refused)``: the kind of failure, no address.

    asyncio's own text for a failed connect names the address it tried.
    """
    name = type(error).__name__
    if isinstance(error, socket.gaierror):  # its text is the resolver's, no address
        return f"{name} ({error.strerror})" if error.strerror else name
    return f"{name} ({os.strerror(error.errno)})" if error.errno and error.errno > 0 else name


def host_header(url: URL) -> str:
    """The ``Host`` value for a request to ``url`` (port only when not the default)."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port and url.port != {"http": 80, "https": 443}.get(url.scheme):
        return f"{host}:{url.port}"
    return host
