"""What the glue needs from the edge's HTTP client: the hop rules and the way to the origin.

The edge's ``Forwarder`` (``gateway/edges/forward.py``) is that client; the
glue sits below the edges and names only this protocol, so the same hop
rules apply on a plain path and through a tunnel while imports point down.
The gateway wiring passes its ``Forwarder`` in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.core import headers as hdr
from gateway.core.pollahead.rules import Rule
from gateway.status import GatewayStats
from gateway.transports.origin_client import OriginPool

__all__ = ["ForwardSettings", "OriginClient", "Upstream"]


@dataclass(frozen=True, kw_only=True)
class ForwardSettings:
    """The forwarding rules of one gateway's hop, plain or tunnelled.

    Derived from the gateway's ``Config`` by ``gateway.settings.derive``;
    the edges and the glue read these, never the ``Config``.
    """

    #: Name this gateway gives itself in ``Via``.
    via_name: str
    #: Send the client's ``Host`` upstream instead of the upstream's own host.
    preserve_host: bool
    connect_timeout: float
    #: Longest wait for the next byte from upstream (a held poll waits this long).
    upstream_timeout: float
    #: Origin connections one answered hop session may hold at once.
    session_connections: int
    #: ``--poll-ahead`` rules (server gateway): polls whose next request it issues itself.
    poll_ahead: tuple[Rule, ...] = ()
    #: Largest WebSocket message an endpoint's passed-through WebSocket may carry
    #: (``--max-message-size``; a tunnelled one is bounded by the tunnel's config).
    max_ws_message: int = 16 * 1024 * 1024

    def replace(self, **changes: Any) -> ForwardSettings:
        return dataclasses.replace(self, **changes)


class Upstream(Protocol):
    """An origin's answer once its head arrived: an ``aiohttp.ClientResponse``, or the
    lean client's ``OriginResponse`` (``gateway.transports.origin_client``)."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def version(self) -> aiohttp.HttpVersion | None: ...

    @property
    def url(self) -> URL: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]: ...

    @property
    def content(self) -> aiohttp.StreamReader: ...

    def release(self) -> Any: ...

    def close(self) -> None: ...


class OriginClient(Protocol):
    """The HTTP client a gateway uses towards its upstream, and the header rules of its hop."""

    @property
    def config(self) -> ForwardSettings: ...

    @property
    def stats(self) -> GatewayStats: ...

    @property
    def client(self) -> aiohttp.ClientSession: ...

    @property
    def direct(self) -> OriginPool | None:
        """The lean client ``request_upstream`` takes for plain ``http://`` (None: aiohttp's)."""
        ...

    def outgoing_headers(self, request: web.BaseRequest, target: URL | None) -> CIMultiDict[str]:
        """Headers this hop sends for a request it received over HTTP."""
        ...

    def outgoing_pairs(
        self, request: web.BaseRequest, target: URL | None
    ) -> list[tuple[bytes, bytes]]:
        """``outgoing_headers`` as the byte pairs a stream's OPEN carries."""
        ...

    def replay_headers(
        self,
        incoming: hdr.HeadersIn,
        target: URL | None,
        *,
        client_ip: str | None,
        proto: str = "http",
    ) -> CIMultiDict[str]:
        """Headers this hop sends for a request it received over a tunnel stream."""
        ...

    def replay_stripped(
        self,
        stripped: CIMultiDict[str],
        original_host: str | None,
        target: URL | None,
        *,
        client_ip: str | None,
    ) -> CIMultiDict[str]:
        """``replay_headers`` of a head ``heads.decode_stripped`` gave (in place)."""
        ...

    def downstream_headers(self, upstream: Upstream) -> CIMultiDict[str]:
        """The upstream response's headers as this hop passes them back."""
        ...

    async def open_upstream(
        self,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """One request to the origin through aiohttp; the response once its head arrived."""
        ...

    async def request_upstream(
        self,
        method: str,
        target: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> Upstream:
        """``open_upstream``, through the lean client where it applies (plain ``http://``)."""
        ...

    def describe_failure(self, exc: BaseException, target: URL) -> tuple[int, str]:
        """Status (502/504) and message for a failed upstream request."""
        ...
