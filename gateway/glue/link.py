"""TunnelLink: HTTP exchanges and endpoint WebSockets carried over one hop session.

This is the I/O side of ``docs/tunnel.md``: one :class:`TunnelLink` owns one
:class:`~gateway.core.tunnel.Tunnel` core and drives it over one live
:class:`~gateway.transports.hopsession.HopSession`; the core stays pure.

A link is made of small parts, one module each:

* ``driver.py``: the core and the session paired, events routed to one sink
  per stream, output flushed once per loop turn, body lengths and backlogs
  checked, the link's tasks;
* ``opener.py``: the side that opened the session (the downstream gateway)
  opens streams, one per request of its clients (``forward``,
  ``forward_websocket``);
* ``answerer.py``: the other side answers them, as requests to its
  configured upstream, or passes them on to the next hop's link
  (``relay.py``);
* ``wsbridge.py``: an endpoint WebSocket and its stream, on either side;
* ``mailbox.py``, ``heads.py``, ``origin.py``: what they share.

Streams only flow downstream -> upstream: an opening link has no answerer,
so a stream its peer opens is refused.

Flow control is tied to the real consumers. Request body bytes are
``consumed()`` when the origin connection took them (the body generator is
resumed by aiohttp after the previous chunk was written), response bytes when
``await response.write()`` returned downstream, WebSocket messages when the
endpoint's send returned, relayed bytes when the next tunnel queued them. A
slow reader therefore only stalls its own stream; the core's scheduler keeps
the others moving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web
from yarl import URL

from gateway.core.session.events import GoAwayReceived
from gateway.core.tunnel import Tunnel, TunnelConfig
from gateway.core.tunnel.frames import MAX_STREAM_ID
from gateway.glue.answerer import Answerer
from gateway.glue.driver import TunnelDriver
from gateway.glue.opener import Opener
from gateway.glue.origin import OriginClient
from gateway.status import GatewayStats

if TYPE_CHECKING:
    from gateway.transports.hopsession import HopSession

__all__ = ["TunnelLink"]


class TunnelLink:
    """A Tunnel core driven over one HopSession, with the role of this side of it."""

    # One per hop session, thousands idle at once: no per-instance dict.
    __slots__ = ("_opening", "driver", "goaway", "on_goaway")

    def __init__(
        self,
        hop: HopSession,
        *,
        opener: bool,
        forwarder: OriginClient,
        upstream: URL | None,
        next_hop: Callable[[], TunnelLink | None] | None = None,
        config: TunnelConfig | None = None,
        peer_ip: str | None = None,
        session_connections: int | None = None,
        address_slots: asyncio.Semaphore | None = None,
    ) -> None:
        """``opener``: this gateway opened the session and opens its streams.
        ``upstream``: this gateway's configured upstream (the origin behind a server
        gateway; the next gateway for a client one, used for the ``Host`` it would
        send). ``next_hop``: where an answering link relays its streams while that
        link is live. The rest: see :class:`~gateway.glue.answerer.Answerer`.
        """
        self.driver = TunnelDriver(
            hop,
            opener=opener,
            forwarder=forwarder,
            upstream=upstream,
            config=config,
            peer_ip=peer_ip,
        )
        self._opening = Opener(self.driver)
        #: Opening side: the last stream id the peer's GOAWAY promised to serve, once it sent one.
        self.goaway: int | None = None
        #: Told once the peer said GOAWAY (the UpstreamLink opens the next session).
        self.on_goaway: Callable[[TunnelLink], None] | None = None
        if opener:
            hop.on_event = self._session_event
        else:
            answerer = Answerer(
                self.driver,
                next_hop=_drivers_of(next_hop) if next_hop is not None else None,
                session_connections=session_connections,
                address_slots=address_slots,
            )
            self.driver.on_stream = answerer.accept

    def __repr__(self) -> str:
        side = "opener" if self.driver.opener else "answerer"
        return f"<TunnelLink {self.name} {side} streams={self.tunnel.stream_count}>"

    @property
    def alive(self) -> bool:
        return self.driver.alive

    @property
    def hop(self) -> HopSession:
        return self.driver.hop

    @property
    def tunnel(self) -> Tunnel:
        return self.driver.tunnel

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def stats(self) -> GatewayStats:
        return self.driver.stats

    @property
    def upstream(self) -> URL | None:
        return self.driver.upstream

    @property
    def predicting(self) -> bool:
        """Poll-ahead answers are held or awaited here: a poll must wait for them, even
        between transports, rather than reach the origin beside the predicted one."""
        return self._opening.predicting

    def forward(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> Coroutine[Any, Any, web.StreamResponse]:
        """See :meth:`~gateway.glue.opener.Opener.forward` (raises ``NotSent``).

        Hands back the opener's coroutine rather than awaiting it in one of its own:
        a frame less for each resumption of a request.
        """
        return self._opening.forward(request, target, origin_key=origin_key)

    def forward_websocket(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> Coroutine[Any, Any, web.StreamResponse]:
        """See :meth:`~gateway.glue.opener.Opener.forward_websocket` (raises ``NotSent``)."""
        return self._opening.forward_websocket(request, target, origin_key=origin_key)

    @property
    def idle(self) -> bool:
        """No stream in flight: a session that was told GOAWAY may close now."""
        return self.tunnel.stream_count == 0

    def go_away(self, reason: str, *, final: bool = False) -> int:
        """Answering side (draining): tell the peer to open new streams elsewhere.

        As RFC 9113 section 6.8 advises: first a GOAWAY promising every stream
        (``MAX_STREAM_ID``), so one that crosses it on the wire is still served;
        then, at least a round trip later, ``final``: the streams opened so far
        are served, later OPENs refused unprocessed (``Tunnel.go_away``), which
        only a peer that ignores GOAWAY still sends. Returns the id sent.
        """
        last = self.tunnel.go_away() if final else MAX_STREAM_ID
        self.hop.core.go_away(last, reason)
        self.hop.wake()
        return last

    def _session_event(self, event: object) -> None:
        if isinstance(event, GoAwayReceived):
            first = self.goaway is None
            self.goaway = event.last_stream_id
            if not first:
                return  # the final one (``go_away``): it only names the last stream
            self.driver.log.info(
                "= hop session to %s: the peer said GOAWAY (%s); new requests go elsewhere",
                self.name,
                event.reason or "no reason",
            )
            if self.on_goaway is not None:
                self.on_goaway(self)

    async def close(self) -> None:
        """Stop every stream (downstream: 502 / 1001; upstream: origin requests cancelled), then
        close the hop session gracefully."""
        await self.driver.close()


def _drivers_of(next_hop: Callable[[], TunnelLink | None]) -> Callable[[], TunnelDriver | None]:
    def following() -> TunnelDriver | None:
        link = next_hop()
        return link.driver if link is not None else None

    return following
