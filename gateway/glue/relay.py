"""Relay: a middle gateway passes a stream from one tunnel link to the next, frame by frame.

``client gw -> relay gw -> server gw``: the relay gateway answers a stream on
its downstream link (``inbound``) by opening one on its upstream link
(``outbound``) and moving everything across, with no task and no HTTP
re-encoding:

* heads are rewritten by the hop rules a plain relay applies (``Via``,
  ``X-Forwarded-For`` with the downstream gateway's address, ``Host`` of the
  next hop; responses get its ``Via``), everything else passes as is;
* framing is checked both ways as on an answering or opening gateway
  (``framing.py``): a head whose ``Content-Length``/``Transfer-Encoding`` is
  invalid or lies about the stream is reset, a declared length is counted as
  the DATA arrive (the link resets the stream before passing on a byte too
  many, or an END that comes short), and the head passed on carries only
  the checked length;
* a DATA payload is handed to the other tunnel as the *same bytes object*
  (queued by reference, copied once into the outgoing batch);
* a received chunk is credited back (``consumed``) only once the other
  tunnel took it, so each direction holds at most one window plus
  ``max_pending`` here, and a slow far end slows the near end through the
  windows, hop by hop;
* a reset crosses in both directions; an outbound stream reset with
  ``retry_safe`` (its OPEN never left, or the next gateway REFUSED it) is
  reset inbound with ``REFUSED``, so the exactly-once promise crosses relays.

The two halves are sinks registered on their links; the links route events
to them synchronously from their session callbacks.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from gateway.core import headers as hdr
from gateway.core.tunnel.errors import ResetCode, TunnelUsageError
from gateway.core.tunnel.events import (
    DataReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
    WebSocketAccepted,
    WebSocketClosed,
    WebSocketMessage,
    WebSocketRequested,
)
from gateway.core.tunnel.framing import Framing, FramingError, response_framing
from gateway.glue.driver import TunnelDriver
from gateway.glue.heads import decode_headers, set_framing, under_upstream
from gateway.status import RequestRecord
from gateway.transports.http import refusal_headers

__all__ = ["relay_stream"]

# Items held between the two tunnels: (kind, payload, credit, code, reason).
_DATA: Final = 0
_MESSAGE: Final = 1
_END: Final = 2
_CLOSE: Final = 3

_Item = tuple[int, bytes | str, int, int, str]


def _held(event: Event) -> _Item | None:
    """The queue item for an event that passes to the other side as it came, else None.

    Both directions hold the same four kinds (body bytes, WebSocket message,
    end of body, WebSocket close); payloads keep their bytes object.
    """
    if isinstance(event, DataReceived):
        return (_DATA, event.data, len(event.data), 0, "")
    if isinstance(event, WebSocketMessage):
        return (_MESSAGE, event.data, event.size, 0, "")
    if isinstance(event, StreamEnded):
        return (_END, b"", 0, 0, "")
    if isinstance(event, WebSocketClosed):
        return (_CLOSE, b"", 0, event.code, event.reason)
    return None


def relay_stream(
    inbound: TunnelDriver,
    outbound: TunnelDriver,
    event: RequestReceived | WebSocketRequested,
    framing: Framing,
) -> None:
    """Open ``event``'s stream on ``outbound`` and relay it until both sides are done.

    ``framing``: the request's, checked by ``inbound`` (which counts its body).
    """
    in_sid = event.stream_id
    upstream = inbound.upstream  # this gateway's upstream: the next gateway, as on a plain path
    target = event.target
    if upstream is not None:
        url = under_upstream(upstream, target)
        if url is None:
            inbound.reset(in_sid, ResetCode.PROTOCOL, "target does not stay on the next hop")
            return
        target = url.raw_path_qs.encode("utf-8", "surrogateescape")
    forwarder = inbound.forwarder
    headers = forwarder.replay_headers(
        decode_headers(event.headers), upstream, client_ip=inbound.peer_ip
    )
    set_framing(headers, framing.length)
    try:
        if isinstance(event, RequestReceived):
            out_sid = outbound.tunnel.open_http(
                event.method, target, headers.items(), has_body=event.has_body
            )
        else:
            out_sid = outbound.tunnel.open_websocket(target, headers.items(), event.protocols)
    except TunnelUsageError as exc:  # the outbound tunnel closed under us
        inbound.reset(in_sid, ResetCode.REFUSED, f"next hop unavailable: {exc}")
        return
    method = event.method if isinstance(event, RequestReceived) else "GET"
    relay = _Relay(
        inbound, in_sid, outbound, out_sid, method, ws=isinstance(event, WebSocketRequested)
    )
    relay.target = event.target
    if isinstance(event, RequestReceived) and not event.has_body:
        relay.in_done = True
    inbound.log.debug("= relaying stream %d as %d on %s", in_sid, out_sid, outbound.name)
    outbound.schedule_flush()


class _Half:
    """The sink one link routes a relayed stream's events to."""

    __slots__ = ("inbound", "relay")

    def __init__(self, relay: _Relay, *, inbound: bool) -> None:
        self.relay = relay
        self.inbound = inbound

    def deliver(self, event: Event) -> None:
        if self.inbound:
            self.relay.from_inbound(event)
        else:
            self.relay.from_outbound(event)


class _Relay:
    __slots__ = (
        "done",
        "dropping",
        "in_done",
        "in_half",
        "in_sid",
        "inbound",
        "method",
        "opened",
        "out_done",
        "out_half",
        "out_sid",
        "outbound",
        "size",
        "status",
        "target",
        "to_in",
        "to_out",
        "ws",
    )

    def __init__(
        self,
        inbound: TunnelDriver,
        in_sid: int,
        outbound: TunnelDriver,
        out_sid: int,
        method: str,
        *,
        ws: bool,
    ) -> None:
        self.inbound, self.in_sid = inbound, in_sid
        self.outbound, self.out_sid = outbound, out_sid
        self.method = method
        self.ws = ws
        self.to_out: deque[_Item] = deque()
        self.to_in: deque[_Item] = deque()
        self.in_done = False  # the downstream peer finished sending (END/CLOSE or no body)
        self.out_done = False  # the upstream peer finished sending
        self.done = False
        self.dropping = False
        # For the access record (``_finish``): the request as it came, the answer's status and size.
        self.target = b""
        self.opened = inbound.loop.time()
        self.status = 0
        self.size = 0
        self.in_half = _Half(self, inbound=True)
        self.out_half = _Half(self, inbound=False)
        inbound.register(in_sid, self.in_half)
        outbound.register(out_sid, self.out_half)
        if not ws:
            inbound.stats.active_streams += 1

    # -- events ----------------------------------------------------------------------------

    def from_inbound(self, event: Event) -> None:
        if self.dropping:  # the far side answered and no longer wants the upload
            if isinstance(event, DataReceived):
                self.inbound.credit(self.in_sid, len(event.data))
            elif isinstance(event, StreamEnded):
                self.in_done = True
                self._maybe_finish()
            elif isinstance(event, StreamReset):
                self._finish()
            return
        item = _held(event)
        if item is not None:
            self.to_out.append(item)
        elif isinstance(event, StreamReset):
            self.outbound.reset(self.out_sid, event.code, event.reason)
            self._finish()
            return
        elif isinstance(event, StreamWritable):
            self._pump(self.to_in, self.outbound, self.out_sid, self.inbound, self.in_sid)
            return
        self._pump(self.to_out, self.inbound, self.in_sid, self.outbound, self.out_sid)

    def from_outbound(self, event: Event) -> None:
        inbound, in_sid = self.inbound, self.in_sid
        if isinstance(event, ResponseReceived):
            self._respond(event)
            return
        if isinstance(event, WebSocketAccepted):
            self.status = 101
            inbound.tunnel.accept_websocket(in_sid, event.protocol, event.headers)
            inbound.schedule_flush()
            return
        item = _held(event)
        if item is not None:
            self.to_in.append(item)
        elif isinstance(event, StreamReset):
            if self.out_done and not self.in_done:
                # After a complete response a reset only stops the upload; a
                # reset inbound now would also drop the response still queued.
                self.dropping = True
                self.to_out.clear()
                return
            code = ResetCode.REFUSED if event.retry_safe else event.code
            inbound.reset(in_sid, code, event.reason)
            self._finish()
            return
        elif isinstance(event, StreamWritable):
            self._pump(self.to_out, self.inbound, self.in_sid, self.outbound, self.out_sid)
            return
        self._pump(self.to_in, self.outbound, self.out_sid, self.inbound, self.in_sid)

    def _respond(self, event: ResponseReceived) -> None:
        """Pass the next hop's response head inbound, its framing checked and set anew."""
        inbound, in_sid = self.inbound, self.in_sid
        via = inbound.forwarder.config.via_name
        raw = decode_headers(event.headers)
        if self.ws:  # a refusal: its body is collected and framed anew downstream
            headers = refusal_headers(raw, (1, 1), via)
            self.in_done = True
        else:
            try:
                framing = response_framing(
                    event.headers, has_body=event.has_body, method=self.method, status=event.status
                )
            except FramingError as exc:
                inbound.log.warning("< relayed stream %d: bad response head: %s", in_sid, exc)
                self.outbound.reset(self.out_sid, ResetCode.PROTOCOL, exc.reason)
                return  # the reset crosses to the inbound stream
            headers = hdr.response_headers_for_downstream(raw, http_version=(1, 1), via_name=via)
            set_framing(headers, framing.length)
            if framing.counted and framing.length is not None:
                self.outbound.count_body(self.out_sid, framing.length)
        inbound.tunnel.respond(
            in_sid, event.status, event.reason, headers.items(), has_body=event.has_body
        )
        self.status = event.status
        if not event.has_body:
            self.out_done = True
        inbound.schedule_flush()
        self._maybe_finish()

    # -- moving held items -------------------------------------------------------------------

    def _pump(
        self,
        queue: deque[_Item],
        source: TunnelDriver,
        source_sid: int,
        sink: TunnelDriver,
        sink_sid: int,
    ) -> None:
        """Move held items to ``sink`` while it takes them; credit ``source`` for each."""
        tunnel, origin = sink.tunnel, source.tunnel
        while queue:
            kind, payload, credit, code, reason = queue[0]
            if kind in (_DATA, _MESSAGE):
                if not tunnel.is_writable(sink_sid):
                    break
                queue.popleft()
                if kind == _DATA:
                    assert isinstance(payload, bytes)
                    tunnel.send_data(sink_sid, payload)  # the same bytes object
                    if sink is self.inbound:
                        self.size += credit
                else:
                    tunnel.send_ws_message(sink_sid, payload)
                origin.consumed(source_sid, credit)
            else:
                queue.popleft()
                if kind == _END:
                    tunnel.end(sink_sid)
                else:
                    tunnel.close_websocket(sink_sid, code, reason)
                if source is self.inbound:
                    self.in_done = True
                else:
                    self.out_done = True
        sink.schedule_flush()
        source.schedule_flush()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.in_done and self.out_done and not self.to_in and not self.to_out:
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.inbound.unregister(self.in_sid, self.in_half)
        self.outbound.unregister(self.out_sid, self.out_half)
        if not self.ws:
            self.inbound.stats.active_streams -= 1
        self._record()

    def _record(self) -> None:
        """The relayed request, once, in this gateway's access log and metrics (as answered)."""
        if not self.status:
            return  # reset before any answer: no request this gateway answered
        duration = self.inbound.loop.time() - self.opened
        self.inbound.stats.record(
            RequestRecord.over_hop(self.method, self.target, self.status, duration, self.size)
        )
