"""The opening side: this gateway's client request goes through the tunnel as a stream.

The gateway that opened the hop session (the downstream one) opens streams:
:meth:`Opener.forward` for an HTTP exchange, :meth:`Opener.forward_websocket`
for an endpoint WebSocket, each run by the aiohttp handler task of the
request it carries.

Headers. The stream stands in for the plain HTTP/1.1 connection to the next
gateway, so the OPEN carries the head this gateway would have sent it over
plain HTTP (``outgoing_headers``: hop-by-hop fields stripped, ``Expect``
answered locally, its own ``Via``, ``X-Forwarded-For`` with its client's
address, ``-Proto``, ``-Host``, ``Host`` rewritten to the next hop's unless
``preserve_host``) and a target as the next hop would get it
(:func:`tunnel_target`). The response head passes through
``response_headers_for_downstream`` once more (its own ``Via``).

Framing. The RESPONSE head is checked like a request head on the answering
side: a ``Content-Length``/``Transfer-Encoding`` claim that is invalid or
contradicts the stream resets it; a body that passes or falls short of its
length cuts the client's connection rather than look complete.

Exactly once. :meth:`Opener.forward` raises :class:`NotSent` only while the
OPEN has provably not been handed to the session (``Tunnel.open_sent``);
from then on every failure is an HTTP answer: session loss -> 502 "not
retried", a peer RESET -> its code's status; except the body-less requests
``retry.py`` lets send once more on the next session (:class:`Retry`).
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.core.tunnel.errors import ResetCode
from gateway.core.tunnel.events import (
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WebSocketAccepted,
)
from gateway.core.tunnel.framing import BodyCounter, Framing, FramingError, response_framing
from gateway.glue.driver import TunnelDriver
from gateway.glue.heads import decode_headers, downstream_fields, pairs, text
from gateway.glue.mailbox import EndpointDone, Mailbox
from gateway.glue.pollahead import AheadClient, mark_pairs
from gateway.glue.retry import IDEMPOTENT_METHODS, NotSent, Retry, retryable
from gateway.glue.streamgate import QUEUE_FACTOR, RETRY_AFTER, GateFull, StreamGate
from gateway.glue.wsbridge import bridge_websocket
from gateway.transports.aiohttp_internals import RelayedResponse
from gateway.transports.http import (
    CLOSE_TIMEOUT,
    MAX_REFUSAL_BODY,
    aiohttp_limit,
    offered_protocols,
    refusal_headers,
    request_body,
    run_shielded,
    strip_handshake,
    text_error,
)

__all__ = ["IDEMPOTENT_METHODS", "NotSent", "Opener", "Retry", "tunnel_target"]

_BAD_HANDSHAKE = (
    "invalid WebSocket handshake: needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13"
)


class _PeerFull(Exception):
    """The peer refused the OPEN for its stream limit; nothing of the request was processed."""

    def __init__(self, sid: int) -> None:
        super().__init__(sid)
        self.sid = sid


#: The reason the answering core gives for a REFUSED over its ``max_streams``
#: (gateway/core/tunnel/receiving.py); a relaying gateway passes it on.
_TOO_MANY_STREAMS = "too many streams"
#: Put before a stream's events when its OPEN missed the busy turn's flush (_check_sent).
_UNSENT: Final = EndpointDone(closed=False)
#: Times a body-less request refused that way goes through the gate again.
_REFUSED_RETRIES = 3


def tunnel_target(upstream: URL | None, request: web.BaseRequest) -> str:
    """The origin-form target the next hop would receive on a plain path (base path kept)."""
    base = upstream.raw_path.rstrip("/") if upstream is not None else ""
    return base + request.raw_path


def _refused_for_streams(reset: StreamReset) -> bool:
    return reset.remote and reset.code == ResetCode.REFUSED and reset.reason == _TOO_MANY_STREAMS


def _ends_next(box: Mailbox, counter: BodyCounter | None) -> bool:
    """The END is already here and the body is whole: the last chunk goes as the end."""
    ended = bool(box.events) and type(box.events[0]) is StreamEnded
    return ended and (counter is None or counter.ended() is None)


def _whole_body(box: Mailbox, framing: Framing) -> bytes | None:
    """The body, taken with its END, if both are here and it has the declared length."""
    events = box.events
    if len(events) != 2:
        return None
    data, end = events
    if type(data) is not DataReceived or type(end) is not StreamEnded:
        return None
    if framing.length is not None and len(data.data) != framing.length:
        return None  # too short or too long: _relay_body cuts the connection
    events.clear()
    return data.data


def _check_own_target(target: str) -> None:
    if not target.startswith("/") or target.startswith("//"):
        raise ValueError(f"tunnel targets are origin-form paths, not {target[:60]!r}")


class Opener:
    """Carries this gateway's client requests as streams of ``link``."""

    # One per hop session, thousands idle at once: no per-instance dict.
    __slots__ = ("_ahead", "_gate", "_link", "_sids", "_unchecked")

    def __init__(self, link: TunnelDriver) -> None:
        self._link = link
        #: Poll-ahead answers the next gateway pushed (glue/pollahead.py).
        self._ahead = AheadClient(link) if link.opener else None
        self._gate: StreamGate | None = None  # made by the first request
        self._sids: set[int] | None = None  # our streams not yet unregistered (idem)
        #: OPENs of this loop turn's busy requests, checked once its flush ran.
        self._unchecked: list[tuple[int, Mailbox]] | None = None

    @property
    def predicting(self) -> bool:
        """Poll-ahead predictions are held or awaited (glue/pollahead.py)."""
        return self._ahead is not None and self._ahead.holding

    def _register(self, sid: int, box: Mailbox) -> None:
        self._link.register(sid, box)
        if self._sids is None:
            self._sids = set()
        self._sids.add(sid)

    def _unregister(self, sid: int, box: Mailbox) -> None:
        self._link.unregister(sid, box)
        if self._sids is not None:
            self._sids.discard(sid)

    async def _admit(self) -> web.Response | None:
        """Take a stream slot (see ``streamgate``): None, or the 503 for a full queue.

        Raises :class:`NotSent` when no slot came free in time: the request
        never left, so it may go plain.
        """
        link = self._link
        gate = self._gate
        if gate is None:
            limit = link.config.max_streams  # our own --max-streams; lowered when the peer refuses
            gate = self._gate = StreamGate(limit, queue_cap=QUEUE_FACTOR * limit)
        wait = link.forwarder.config.connect_timeout
        stats = link.stats
        waits = gate.full
        if waits:
            stats.waiting_for_stream += 1
            if stats.limit_holds_up("--max-streams", link.loop.time()):
                link.log.warning(
                    "= hop session to %s: all %d streams in use (--max-streams here, or the "
                    "peer's once it refused one; held long-polls count), so further requests "
                    "wait up to --connect-timeout (%g s), then go plain; raise --max-streams "
                    "on both gateways if this many run at once",
                    link.name,
                    gate.limit,
                    wait,
                )
        try:
            await gate.acquire(wait)
        except GateFull as exc:
            return self._busy(str(exc))
        except TimeoutError:
            why = f"no stream came free within {wait:g} s (all {gate.limit} in use)"
            raise NotSent(f"hop session to {link.name}: {why}") from None
        finally:
            if waits:
                stats.waiting_for_stream -= 1
        return None

    def _release(self) -> None:
        assert self._gate is not None
        self._gate.release()

    async def forward(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> web.StreamResponse:
        """Carry ``request`` over the tunnel; ``target`` as :func:`tunnel_target` gives it.

        Raises :class:`NotSent` only if the OPEN never reached the session.
        """
        _check_own_target(target)
        if not self._link.alive:
            raise NotSent(f"hop session to {self._link.name} is closed")
        ahead = self._ahead
        if ahead is not None and ahead.holding:
            predicted = await ahead.answer(request, target)
            if predicted is not None:
                return predicted
        for _ in range(_REFUSED_RETRIES):
            gate = self._gate
            if gate is None or not gate.take():  # a free slot needs no coroutine
                refused = await self._admit()
                if refused is not None:
                    return refused
            try:
                return await self._forward(request, target, origin_key=origin_key)
            except _PeerFull as full:
                self._peer_full(full.sid)  # then wait for a stream again: it was not processed
            finally:
                self._release()
        return self._busy(f"the peer refused it {_REFUSED_RETRIES} times: too many streams")

    def _peer_full(self, sid: int) -> None:
        """The peer holds fewer streams than we thought: open no more than it has now.

        It takes OPENs in order, so it held those of ours opened before ``sid``.
        """
        gate = self._gate
        assert gate is not None
        held = sum(1 for other in self._sids or () if other < sid)
        before, limit = gate.limit, gate.lower_limit(held)
        if limit == before:
            return  # the rest of a burst sent before the first refusal came back
        self._link.log.info(
            "= hop session to %s: the peer refused a stream; at most %d streams from now on",
            self._link.name,
            limit,
        )

    def _busy(self, why: str) -> web.Response:
        link = self._link
        link.log.warning("= hop session to %s busy: %s", link.name, why)
        return text_error(
            503,
            f"hop session to {link.name} busy ({why}); retry shortly",
            **{"Retry-After": str(RETRY_AFTER)},
        )

    async def _forward(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> web.StreamResponse:
        link = self._link
        headers = link.forwarder.outgoing_pairs(request, link.upstream)
        has_body = request.body_exists
        ahead = self._ahead
        if ahead is not None:
            headers = mark_pairs(headers)
        box = Mailbox()
        sid = link.tunnel.open_http(request.method, target, headers, has_body=has_body)
        self._register(sid, box)
        if ahead is not None:
            ahead.track(sid, request, target)
        if not has_body and link.tunnel.stream_count > 1:
            # Busy: the OPEN goes with the flush at the end of this loop turn, checked
            # after it by _check_sent; the task resumes once, with the answer.
            link.schedule_flush()
            self._check_after_flush(sid, box)
        elif not self._sent_now(sid, box):
            await self._hand_over(sid, box)  # an upload starts once its OPEN is in
        counts = link.stats.upstream(origin_key)
        counts.requests += 1
        link.stats.active_streams += 1
        upload = link.loop.create_task(self._upload(sid, box, request)) if has_body else None
        try:
            return await self._receive_response(request, sid, box)
        except NotSent:
            counts.requests -= 1  # it goes plain, and is counted there
            raise
        except BaseException:
            link.reset(sid, ResetCode.CANCEL, "client went away")
            link.flush()
            raise
        finally:
            if upload is not None:
                if not upload.done():
                    upload.cancel()
                    link.reset(sid, ResetCode.CANCEL, "response complete before the request body")
                    await asyncio.gather(upload, return_exceptions=True)
                elif not upload.cancelled():
                    # No await once the answer is out: a client that closes at once
                    # would cancel this handler, and aiohttp logs no cancelled request.
                    upload.exception()
            self._unregister(sid, box)
            if ahead is not None:
                ahead.untrack(sid)
            link.stats.active_streams -= 1

    def _sent_now(self, sid: int, box: Mailbox) -> bool:
        """Flush the OPEN of ``sid``: True if it is in the session now, else await _hand_over.

        Apart, so the usual request sent at once awaits no coroutine for it.
        """
        link = self._link
        tunnel = link.tunnel
        if tunnel.stream_count > 1:
            # Busy: the flush at the end of this loop turn, not one now, so the
            # OPENs of every request that came in this turn share one session
            # message (and one ack). Alone: at once, no extra loop turn.
            link.schedule_flush()
            return False
        link.flush()
        return box.reset is None and tunnel.open_sent(sid)

    def _check_after_flush(self, sid: int, box: Mailbox) -> None:
        """Have :meth:`_check_sent` look at the OPEN of ``sid`` once the due flush ran."""
        pending = self._unchecked
        if pending is None:
            pending = self._unchecked = []
        if not pending:  # after the flush just scheduled (or due already): call_soon is FIFO
            self._link.loop.call_soon(self._check_sent)
        pending.append((sid, box))

    def _check_sent(self) -> None:
        """The busy turn's flush ran: an OPEN not in the session wakes its task (_UNSENT).

        Its task then waits in :meth:`_hand_over` as one alone does, and the
        request may still go plain (``NotSent``). An OPEN that went needs no
        wake-up: its task resumes with the answer, one step instead of two.
        """
        pending, self._unchecked = self._unchecked, None
        tunnel = self._link.tunnel
        for sid, box in pending or ():
            if self._sids is None or sid not in self._sids:
                continue  # its request already ended (the client went away)
            if box.reset is None and tunnel.open_sent(sid):
                continue
            box.events.appendleft(_UNSENT)  # before a reset: _hand_over reads that one
            box.wake()

    async def _hand_over(self, sid: int, box: Mailbox) -> None:
        """Return once the OPEN of ``sid``, flushed or due to be, is in the session.

        Else reset it and raise NotSent.
        """
        link = self._link
        tunnel = link.tunnel
        try:
            if box.reset is None and not tunnel.open_sent(sid):
                await asyncio.sleep(0)  # resumes after that flush
            if box.reset is None and tunnel.open_sent(sid):
                return  # the usual case, and no timer armed for it
            async with asyncio.timeout(link.forwarder.config.connect_timeout):
                while box.reset is None and not tunnel.open_sent(sid):
                    await link.session_writable()
                    link.flush()
        except TimeoutError:
            pass
        except BaseException:
            link.reset(sid, ResetCode.CANCEL, "client went away")
            raise
        reset = box.reset
        if reset is None and tunnel.open_sent(sid):
            return
        if reset is not None and not reset.retry_safe:
            return  # it did go: the reset is answered like any other
        link.reset(sid, ResetCode.CANCEL, "not sent")  # vanishes: its OPEN never left
        self._unregister(sid, box)
        why = reset.reason if reset is not None else "the session stayed full"
        raise NotSent(f"hop session to {link.name} could not take the request: {why}")

    async def _upload(self, sid: int, box: Mailbox, request: web.BaseRequest) -> None:
        link = self._link
        tunnel = link.tunnel
        try:
            async for chunk in request_body(request):
                if not await box.wait_writable(tunnel, sid):
                    return
                tunnel.send_data(sid, chunk)
                link.schedule_flush()
        except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
            link.reset(sid, ResetCode.CANCEL, f"client request body failed: {type(exc).__name__}")
            return
        tunnel.end(sid)
        link.schedule_flush()

    async def _receive_response(
        self, request: web.BaseRequest, sid: int, box: Mailbox
    ) -> web.StreamResponse:
        link = self._link
        head = await box.next_event()
        if head is _UNSENT:  # its OPEN did not go with the busy turn's flush
            await self._hand_over(sid, box)
            head = await box.next_event()
        if not isinstance(head, ResponseReceived):
            assert isinstance(head, StreamReset), head
            if _refused_for_streams(head):
                if not request.body_exists:
                    raise _PeerFull(sid)  # no body read yet: the gate may send it again
                self._peer_full(sid)
            why = retryable(request, head)
            if why is not None:
                raise Retry(f"hop session to {link.name}: {why}")
            return self._reset_answer(head)
        try:
            framing = response_framing(
                head.headers, has_body=head.has_body, method=request.method, status=head.status
            )
        except FramingError as exc:
            link.log.warning("< stream %d: response head refused: %s", sid, exc.reason)
            link.reset(sid, ResetCode.PROTOCOL, exc.reason)
            return text_error(502, f"hop session {link.name} sent a bad response: {exc.reason}")
        # The body came with the head (a small answer does): one send to the client, not two.
        hold = head.has_body and framing.counted and box.backlog > 0
        reason = text(head.reason) or None
        response = RelayedResponse(status=head.status, reason=reason, hold_head=hold)
        # response_headers_for_downstream; the peer's Transfer-Encoding never passes
        via_name = link.forwarder.config.via_name
        response.headers.extend(downstream_fields(head.headers, (1, 1), via_name, framing.length))
        writer = await response.prepare(request)
        data = _whole_body(box, framing) if hold else None
        if data is not None:
            # The usual small answer, all here: head, body (and a chunked end) in one
            # send, without a coroutine to relay a body of one piece.
            await response.write_eof(data)
            link.credit(sid, len(data))
            return response
        problem = await self._relay_body(sid, box, response, framing) if head.has_body else None
        if problem is not None:
            link.log.warning("= stream %d: response cut: %s", sid, problem)
            if writer is not None:
                writer.send_headers()  # a held head goes before the cut, as it always did
            if request.transport is not None:
                request.transport.close()  # a truncated or overlong body must not look complete
            return response
        await response.write_eof()
        return response

    async def _relay_body(
        self, sid: int, box: Mailbox, response: web.StreamResponse, framing: Framing
    ) -> str | None:
        """Write the response body downstream; why the client connection must be cut, if so.

        A body that passes its declared length is stopped before the excess is
        written; one that ends short, or is reset, leaves the client a
        connection that must be closed, never a short body that looks whole.
        """
        link = self._link
        counter = BodyCounter(framing.length) if framing.length is not None else None
        while True:
            event = await box.next_event()
            if isinstance(event, DataReceived):
                size = len(event.data)
                if counter is not None and framing.counted:
                    problem = counter.data(size)
                    if problem is not None:
                        link.reset(sid, ResetCode.PROTOCOL, problem)
                        return problem
                if framing.counted:  # else a body a HEAD/304 answer cannot carry: dropped
                    last = _ends_next(box, counter)  # a chunked end goes in the same send
                    await (response.write_eof if last else response.write)(event.data)
                link.credit(sid, size)
            elif isinstance(event, StreamEnded):
                short_body = counter.ended() if counter is not None and framing.counted else None
                if short_body is not None:
                    link.reset(sid, ResetCode.PROTOCOL, short_body)
                return short_body
            else:
                assert isinstance(event, StreamReset), event
                return f"stream reset mid-response: {event.reason}"

    def _reset_answer(self, reset: StreamReset) -> web.Response:
        name = self._link.name
        if reset.code == ResetCode.SESSION_LOST and not reset.remote:
            return text_error(
                502, f"hop session to {name} lost after the request was sent; not retried"
            )
        status = ResetCode.of(reset.code).http_status
        # REFUSED: nothing was processed; the peer's own stream limit is lower than ours.
        retry = {"Retry-After": str(RETRY_AFTER)} if reset.code == ResetCode.REFUSED else {}
        why = reset.reason or "stream reset"
        return text_error(status, f"{why} (via hop session {name})", **retry)

    # -- an endpoint WebSocket -----------------------------------------------------------------

    async def forward_websocket(
        self, request: web.BaseRequest, target: str, *, origin_key: str
    ) -> web.StreamResponse:
        """Carry the client's WebSocket over the tunnel; the 101 only if the origin gave one."""
        link = self._link
        _check_own_target(target)
        offered = offered_protocols(request.headers)
        if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
            return text_error(400, _BAD_HANDSHAKE)
        if not link.alive:
            raise NotSent(f"hop session to {link.name} is closed")
        refused = await self._admit()
        if refused is not None:
            return refused
        bridged = False
        try:
            sid, box, answer = await self._open_websocket(request, target, offered, origin_key)
            if isinstance(answer, web.WebSocketResponse):
                bridged = True  # the bridge gives the stream slot back when it ends
                await run_shielded(self._bridge_detached(sid, box, answer))
            return answer
        finally:
            if not bridged:
                self._release()

    async def _open_websocket(
        self, request: web.BaseRequest, target: str, offered: list[str], origin_key: str
    ) -> tuple[int, Mailbox, web.StreamResponse]:
        """Open the stream and relay the handshake: (sid, mailbox, the client's answer)."""
        link = self._link
        headers = link.forwarder.outgoing_headers(request, link.upstream)
        strip_handshake(headers)
        box = Mailbox()
        sid = link.tunnel.open_websocket(target, pairs(headers), offered)
        self._register(sid, box)
        if not self._sent_now(sid, box):
            await self._hand_over(sid, box)
        link.stats.upstream(origin_key).requests += 1
        accepted = False
        try:
            answer = await self._handshake(request, sid, box)
            accepted = isinstance(answer, web.WebSocketResponse)
        except BaseException:
            link.reset(sid, ResetCode.CANCEL, "client went away")
            raise
        finally:
            if not accepted:
                self._unregister(sid, box)
        return sid, box, answer

    async def _handshake(
        self, request: web.BaseRequest, sid: int, box: Mailbox
    ) -> web.StreamResponse:
        """The client's ``101`` if the far side accepted, else the answer it gets instead."""
        head = await box.next_event()
        if isinstance(head, StreamReset):
            return self._reset_answer(head)
        if isinstance(head, ResponseReceived):
            return await self._refusal_answer(sid, box, head)
        assert isinstance(head, WebSocketAccepted), head
        client = web.WebSocketResponse(
            protocols=(head.protocol,) if head.protocol else (),
            autoclose=False,
            autoping=False,
            compress=False,
            max_msg_size=aiohttp_limit(self._link.config.max_ws_message),
            timeout=CLOSE_TIMEOUT,
        )
        await client.prepare(request)
        return client

    async def _bridge_detached(self, sid: int, box: Mailbox, client: web.WebSocketResponse) -> None:
        try:
            await bridge_websocket(self._link, sid, box, client)
        finally:
            self._unregister(sid, box)
            self._release()

    async def _refusal_answer(
        self, sid: int, box: Mailbox, head: ResponseReceived
    ) -> web.StreamResponse:
        link = self._link
        body = bytearray()
        while head.has_body:
            event = await box.next_event()
            if isinstance(event, DataReceived):
                body += event.data
                link.credit(sid, len(event.data))
                if len(body) > MAX_REFUSAL_BODY:
                    link.reset(sid, ResetCode.TOO_LARGE, "refusal body too large")
                    return text_error(502, "WebSocket refusal body over the limit")
            elif isinstance(event, StreamEnded):
                break
            else:
                assert isinstance(event, StreamReset), event
                return self._reset_answer(event)
        headers = refusal_headers(
            decode_headers(head.headers), (1, 1), link.forwarder.config.via_name
        )
        return web.Response(
            status=head.status, reason=text(head.reason) or None, headers=headers, body=bytes(body)
        )
