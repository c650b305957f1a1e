"""The answering side: a stream the peer opened becomes a request to the origin.

The gateway that accepted the hop session (the upstream one) answers the
streams the other opens: it replays each as HTTP to its configured
``upstream`` through the edge's HTTP client (one task per exchange), or,
when ``next_hop()`` gives a live link, relays it frame by frame onto that
link (``relay.py``; no task at all). Streams only flow downstream ->
upstream: the opening side refuses any stream opened towards it.

Headers. The stream stands in for a plain HTTP/1.1 connection from the
downstream gateway, so its head is treated exactly like a request received
over one (``replay_headers``): hop-by-hop fields stripped again, this
gateway's ``Via``, the downstream gateway's address (``peer_ip``) added to
``X-Forwarded-For``, ``Host`` rewritten to the upstream's unless
``preserve_host``. The origin's response head passes through the rule of
``downstream_headers`` applied to its bytes (``heads.response_pairs``; this
gateway's ``Via``). So the origin sees what it would see on a plain path
through the same gateways (``X-Forwarded-For`` lacks the downstream
gateway's address only if the link was built without ``peer_ip``).

Framing is ours, never the peer's (``framing.py``). A stream delimits its
body itself, so a head's ``Content-Length``/``Transfer-Encoding`` are claims:
an OPEN whose claim is invalid or contradicts the stream is refused
(``PROTOCOL``, nothing sent), a declared length is counted as the DATA
arrive (``TunnelDriver.count_body``) and the origin gets only the length
that was checked, or a chunked body. A request body that does not end
cleanly raises in the body generator, so aiohttp sends no end of body and
closes that origin connection instead of pooling it.

Origin connections. At most ``session_connections`` origin exchanges (HTTP
and WebSocket) run per session; further streams wait for a slot in order
(their OPEN is not refused; a reset takes them out of the queue). The
gateway's total is the aiohttp connector's ``--max-connections``.

Never an open proxy. Only origin-form targets are accepted (``/``, not
``//``, no control characters: absolute-form, authority-form and ``*`` are
refused), no ``CONNECT``, header fields without CR/LF/NUL, and the URL is
built under this gateway's own ``upstream`` (checked again after parsing);
anything else is reset with ``PROTOCOL`` and logged. ``Host`` cannot steer
the connection: it always goes to ``upstream``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.core.tunnel import Tunnel
from gateway.core.tunnel.errors import ResetCode
from gateway.core.tunnel.events import (
    DataReceived,
    Headers,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WebSocketRequested,
)
from gateway.core.tunnel.framing import Framing, FramingError, request_framing
from gateway.glue.driver import TunnelDriver
from gateway.glue.heads import (
    decode_stripped,
    pairs,
    replay_pairs,
    response_pairs,
    set_framing,
    under_upstream,
)
from gateway.glue.mailbox import Mailbox
from gateway.glue.origin import Upstream
from gateway.glue.pollahead_server import AheadServer, Watch
from gateway.glue.relay import relay_stream
from gateway.glue.wsbridge import bridge_websocket
from gateway.status import RequestRecord
from gateway.transports.aiohttp_internals import limit_reads
from gateway.transports.http import OriginRefused, connect_origin, describe, refusal_headers
from gateway.transports.origin_client import host_value

__all__ = ["Answerer", "BodyAborted", "check_request"]

_TCHAR: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN: Final = re.compile(_TCHAR + rb"+")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]")
#: The token characters (``_TCHAR``), for ``bytes.translate`` to delete.
_TCHARS: Final = bytes(c for c in range(256) if _TOKEN.fullmatch(bytes([c])))
#: What a target may not hold: whitespace and control characters.
_TARGET_BAD: Final = bytes([*range(0x21), 0x7F])
#: Methods that need no token check.
_COMMON_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# Bytes one receive from an origin connection may return (see limit_reads).
_ORIGIN_READ: Final = 16 * 1024


class BodyAborted(Exception):
    """A tunnelled request body did not end cleanly; its origin connection must go."""


def check_request(method: str, target: bytes, headers: Headers) -> str | None:
    """Why a tunnelled request head must be refused, or None if it may be replayed.

    Every tunnelled request runs this once, cold, so the usual head is checked
    with C scans (a set lookup, ``translate``, ``in``) and not ``re``: the
    regular expressions only name the field a refused head fails on.
    """
    if method not in _COMMON_METHODS and (
        method == "CONNECT" or not _TOKEN.fullmatch(method.encode("ascii", "replace"))
    ):
        return f"method {method!r:.40} is not allowed through a tunnel"
    if not target.startswith(b"/") or target.startswith(b"//"):
        return f"target {target[:60]!r} is not origin-form (absolute/authority form refused)"
    if len(target.translate(None, _TARGET_BAD)) != len(target):
        return "target contains whitespace or control characters"
    if not headers:
        return None
    names = [name for name, _ in headers]
    values = b"".join([value for _, value in headers])
    if (
        b"" not in names
        and not b"".join(names).translate(None, _TCHARS)  # every name only token characters
        and b"\r" not in values
        and b"\n" not in values
        and b"\0" not in values
    ):
        return None  # a few scans for the whole head, not two per field
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            return f"malformed header field {name[:40]!r}"
    return "malformed header fields"  # not reached: some field fails the check above


def _checked_framing(event: RequestReceived | WebSocketRequested) -> Framing | str:
    """The request's framing, or why its head must be refused."""
    method = event.method if isinstance(event, RequestReceived) else "GET"
    problem = check_request(method, event.target, event.headers)
    if problem is not None:
        return problem
    has_body = isinstance(event, RequestReceived) and event.has_body
    try:
        return request_framing(event.headers, has_body=has_body)
    except FramingError as exc:
        return exc.reason


def _response_has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


class _Answer:
    """What a tunnelled request got, for its access record: status (0: none yet), body bytes."""

    __slots__ = ("size", "status", "watch")

    def __init__(self) -> None:
        self.status = 0
        self.size = 0
        #: A poll a --poll-ahead rule names: its body is kept to predict the next one.
        self.watch: Watch | None = None


#: Why a stream waits for an origin connection, with the flag that sets the limit.
SESSION_CONNECTIONS_FULL: Final = (
    "all of this hop session's origin connections are in use (--session-connections; "
    "held long-polls count), so its further requests wait for one in order; raise "
    "--session-connections if this many run at once"
)
ADDRESS_CONNECTIONS_FULL: Final = (
    "all origin connections of this peer address's hop sessions are in use (a quarter "
    "of --max-connections), so their further requests wait for one in order; raise "
    "--max-connections if this many run at once"
)


class Answerer:
    """Answers the streams the peer of ``link`` opens: to the origin, or on to the next hop."""

    # One per hop session, thousands idle at once: no per-instance dict.
    __slots__ = ("_address_slots", "_ahead", "_host", "_link", "_next_hop", "_origin_slots")

    def __init__(
        self,
        link: TunnelDriver,
        *,
        next_hop: Callable[[], TunnelDriver | None] | None = None,
        session_connections: int | None = None,
        address_slots: asyncio.Semaphore | None = None,
    ) -> None:
        """``session_connections``: origin exchanges run at once (default
        ``--session-connections``); further streams wait for a slot.
        ``address_slots``: origin exchanges shared by every session of the peer's
        address, so one address cannot take all of ``--max-connections``.
        """
        self._link = link
        self._next_hop = next_hop
        slots = session_connections or link.forwarder.config.session_connections
        self._origin_slots = asyncio.Semaphore(slots)
        self._address_slots = address_slots
        rules = link.forwarder.config.poll_ahead
        self._ahead = AheadServer(link, rules) if rules and link.upstream is not None else None
        #: ``Host`` for the lean client's requests: every target has the upstream's host and port.
        self._host = "" if link.upstream is None else host_value(link.upstream)

    def accept(self, event: RequestReceived | WebSocketRequested) -> None:
        """Check a stream the peer opened, then relay it or start its exchange with the origin."""
        link, sid = self._link, event.stream_id
        framing = _checked_framing(event)
        if isinstance(framing, str):
            link.log.warning("< refused stream %d: %s", sid, framing)
            link.reset(sid, ResetCode.PROTOCOL, framing)
            return
        if framing.counted and framing.length is not None:
            link.count_body(sid, framing.length)
        following = self._next_hop() if self._next_hop is not None else None
        if following is not None and following is not link and following.alive:
            relay_stream(link, following, event, framing)
            return
        if link.upstream is None:
            link.log.warning("< refused stream %d: no upstream configured", sid)
            link.reset(sid, ResetCode.REFUSED, "this gateway has no upstream")
            return
        target = under_upstream(link.upstream, event.target)
        if target is None:
            link.log.warning(
                "< refused stream %d: target %r leaves the upstream", sid, event.target
            )
            link.reset(sid, ResetCode.PROTOCOL, "target does not stay on this gateway's upstream")
            return
        box = Mailbox()
        link.register(sid, box)
        if isinstance(event, RequestReceived):
            box.task = link.spawn(self._serve_http(event, framing, target, box))
        else:
            box.task = link.spawn(self._serve_websocket(event, target, box))

    # -- an HTTP exchange ----------------------------------------------------------------------

    async def _serve_http(
        self, event: RequestReceived, framing: Framing, target: URL, box: Mailbox
    ) -> None:
        link, sid = self._link, event.stream_id
        opened, answer = link.loop.time(), _Answer()
        origin_key = str(link.upstream)
        forwarder = link.forwarder
        head: CIMultiDict[str] | list[tuple[bytes, bytes]]
        if forwarder.direct is not None and self._ahead is None and target.scheme == "http":
            # the lean client writes bytes: the head stays bytes from the tunnel to the origin
            config = forwarder.config
            head = replay_pairs(
                event.headers,
                via_name=config.via_name,
                client_ip=link.peer_ip,
                upstream_host=None if config.preserve_host else self._host,
                length=framing.length,
            )
        else:
            head = forwarder.replay_stripped(
                *decode_stripped(event.headers), target, client_ip=link.peer_ip
            )
            set_framing(head, framing.length)
            if self._ahead is not None:
                answer.watch = self._ahead.watch(event, head)
        body = self._tunnel_body(sid, box) if event.has_body else None
        link.stats.upstream(origin_key).requests += 1
        link.stats.active_streams += 1
        link.log.debug("< %d %s %s", sid, event.method, target.raw_path_qs)
        try:
            await self._take_slot(sid)
            try:
                await self._exchange(sid, box, event.method, target, head, body, answer)
            finally:
                self._give_slot()
        except asyncio.CancelledError:
            if box.reset is None:
                link.reset(sid, ResetCode.CANCEL, "gateway stopping")
            raise
        finally:
            link.stats.active_streams -= 1
            link.unregister(sid, box)
        self._record(event.method, event.target, answer, opened)

    def _record(self, method: str, target: bytes, answer: _Answer, opened: float) -> None:
        """One tunnelled request answered here: the access log and the metrics hear of it.

        The downstream gateway records it too, in its own log: each gateway
        counts each request once (its listener counts only what it did not
        receive over the hop).
        """
        if not answer.status:
            return
        link = self._link
        duration = link.loop.time() - opened
        link.stats.record(
            RequestRecord.over_hop(method, target, answer.status, duration, answer.size)
        )

    async def _take_slot(self, sid: int) -> None:
        """One of this session's origin slots, and one of its address's; waiters queue in order.

        Always the session's first, then the address's, so no two streams wait
        on each other's. A stream reset while it waits is cancelled out of the
        queue. Held until :meth:`_give_slot` (no context manager: one fewer
        generator per request).
        """
        session = self._origin_slots
        if session.locked():
            await self._wait(sid, session, "--session-connections", SESSION_CONNECTIONS_FULL)
        else:
            await session.acquire()  # free: returns at once
        address = self._address_slots
        if address is None:
            return
        try:
            if address.locked():
                await self._wait(sid, address, "--max-connections", ADDRESS_CONNECTIONS_FULL)
            else:
                await address.acquire()
        except BaseException:
            session.release()
            raise

    async def _wait(self, sid: int, slots: asyncio.Semaphore, flag: str, why: str) -> None:
        """Wait for a slot, counted in the status; the first wait in a minute names the flag.

        Held long-polls take origin connections for as long as the origin
        holds them, so a busy session reaches these limits in normal use: an
        operator learns which flag to raise from the log, not from latency.
        """
        link = self._link
        stats = link.stats
        if stats.limit_holds_up(flag, link.loop.time()):
            link.log.warning("= stream %d waits for an origin connection: %s", sid, why)
        else:
            link.log.debug("= stream %d waits for an origin connection", sid)
        stats.waiting_for_origin += 1
        try:
            await slots.acquire()
        finally:
            stats.waiting_for_origin -= 1

    def _give_slot(self) -> None:
        if self._address_slots is not None:
            self._address_slots.release()
        self._origin_slots.release()

    async def _exchange(
        self,
        sid: int,
        box: Mailbox,
        method: str,
        target: URL,
        head: CIMultiDict[str] | list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None,
        answer: _Answer,
    ) -> None:
        """One request to the origin and its response back over ``sid``.

        ``head`` in bytes goes to the lean client (``replay_pairs`` built it for
        that), as text through ``request_upstream``. A request body that failed
        (reset, wrong length) makes aiohttp close the connection instead of
        returning it to the pool; a response not read to its end is closed too:
        a connection whose framing is in doubt is never reused.
        """
        forwarder = self._link.forwarder
        upstream: Upstream
        try:
            if isinstance(head, list):
                assert forwarder.direct is not None  # (a bytes head is built only for it)
                upstream = await forwarder.direct.request_fields(method, target, head, body)
            else:
                upstream = await forwarder.request_upstream(method, target, head, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer.status = self._origin_failed(sid, exc, target)
            return
        try:
            await self._send_response(sid, box, method, upstream, answer)
        except BaseException:
            upstream.close()
            raise
        finally:
            upstream.release()

    def _origin_failed(self, sid: int, exc: Exception, target: URL) -> int:
        """The origin was unreachable: reset the stream with the reason a 502/504 gives.

        Returns that status (what the client gets from the downstream gateway).
        """
        link = self._link
        link.stats.upstream(str(link.upstream)).errors += 1
        status, message = link.forwarder.describe_failure(exc, target)
        code = ResetCode.TIMEOUT if status == 504 else ResetCode.CONNECT_FAILED
        link.reset(sid, code, message)
        return status

    async def _tunnel_body(self, sid: int, box: Mailbox) -> AsyncIterator[bytes]:
        """The request body as it arrives; each chunk is credited once the origin took it.

        A reset (the peer's, or ours because the body broke its declared length)
        raises instead of ending: aiohttp then sends no end of body and closes
        the connection, so the origin never takes a truncated body as complete.
        """
        link = self._link
        while True:
            event = await box.next_event()
            if isinstance(event, DataReceived):
                yield event.data
                link.credit(sid, len(event.data))
            elif isinstance(event, StreamEnded):
                return
            else:
                reason = event.reason if isinstance(event, StreamReset) else "stream gone"
                raise BodyAborted(f"request body aborted: {reason}")

    async def _send_response(
        self,
        sid: int,
        box: Mailbox,
        method: str,
        upstream: Upstream,
        answer: _Answer,
    ) -> None:
        link = self._link
        tunnel = link.tunnel
        answer.status = upstream.status
        has_body = _response_has_body(method, upstream.status)
        version = (upstream.version.major, upstream.version.minor) if upstream.version else (1, 1)
        head = response_pairs(upstream.raw_headers, version, link.forwarder.config.via_name)
        content = upstream.content
        first = b""
        try:
            if has_body and answer.watch is None:
                # A small answer is often whole already (head, body and end in one read):
                # then it leaves as one frame, and costs one flush.
                first = content.read_nowait()
                if content.at_eof():
                    answer.size += len(first)
                    tunnel.respond_whole(sid, upstream.status, upstream.reason or "", head, first)
                    self._flush_end(tunnel)
                    return
        except aiohttp.ClientError as exc:
            self._failed_mid_response(sid, exc)
            return
        tunnel.respond(sid, upstream.status, upstream.reason or "", head, has_body=has_body)
        if not has_body:
            link.schedule_flush()
            return
        # What is queued goes out before each wait below (schedule_flush), or with the
        # end: a small answer (head, body and end in one read) costs one flush, not two.
        if isinstance(upstream, aiohttp.ClientResponse):  # the lean client's read so already
            limit_reads(upstream, _ORIGIN_READ)  # (+25 MiB RSS for 64 stalled streams without)
        try:
            while True:
                # what already arrived without a coroutine (a small answer: head, body and end in
                # one read): iter_any's iterator, two awaits and its StopAsyncIteration cost 2 us
                chunk, first = first or content.read_nowait(), b""
                if not chunk:
                    if content.at_eof():
                        break
                    link.schedule_flush()
                    chunk = await content.readany()
                    if not chunk:
                        break
                if not tunnel.is_writable(sid) and not await self._flushed_until_writable(sid, box):
                    return
                answer.size += len(chunk)
                if answer.watch is not None:
                    chunk = answer.watch.hold(chunk)  # held until the next poll is announced
                    if not chunk:
                        continue
                tunnel.send_data(sid, chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._failed_mid_response(sid, exc)
            return
        if answer.watch is not None and self._ahead is not None:
            headers = link.forwarder.downstream_headers(upstream)
            held = self._ahead.answered(sid, answer.watch, upstream.status, headers)
            if held and (tunnel.is_writable(sid) or await self._flushed_until_writable(sid, box)):
                tunnel.send_data(sid, held)
        tunnel.end(sid)
        self._flush_end(tunnel)

    def _failed_mid_response(self, sid: int, exc: Exception) -> None:
        link = self._link
        link.log.warning(
            "upstream %s failed mid-response on stream %d: %s",
            link.upstream,
            sid,
            describe(exc),
            extra={"upstream": str(link.upstream), "reason": describe(exc)},
        )
        code = ResetCode.TIMEOUT if isinstance(exc, TimeoutError) else ResetCode.CANCEL
        link.reset(sid, code, f"upstream failed mid-response: {type(exc).__name__}")

    def _flush_end(self, tunnel: Tunnel) -> None:
        """After an answer's end: now if it was alone, else with the others ending this turn."""
        if tunnel.stream_count > 1:
            self._link.schedule_flush()  # busy: the answers ending this turn share one message
        else:
            self._link.flush()  # alone: now, not one loop turn later

    async def _flushed_until_writable(self, sid: int, box: Mailbox) -> bool:
        """Flush what ``sid`` queued, then wait until it takes more; False if it was reset.

        ``_send_response`` queues without flushing (a small answer leaves with its
        end), so before it waits for credit the queued data must leave: the credit
        comes back only once the peer has it.
        """
        link = self._link
        link.schedule_flush()
        return await box.wait_writable(link.tunnel, sid)

    # -- an endpoint WebSocket -----------------------------------------------------------------

    async def _serve_websocket(self, event: WebSocketRequested, target: URL, box: Mailbox) -> None:
        link, sid = self._link, event.stream_id
        opened, answer = link.loop.time(), _Answer()
        headers = link.forwarder.replay_stripped(
            *decode_stripped(event.headers), target, client_ip=link.peer_ip
        )
        set_framing(headers, None)  # a handshake has no body (a declared one was refused)
        link.stats.upstream(str(link.upstream)).requests += 1
        try:
            await self._take_slot(sid)
            try:
                await self._websocket_exchange(sid, box, target, headers, event.protocols, answer)
            finally:
                self._give_slot()
        except asyncio.CancelledError:
            if box.reset is None:
                link.reset(sid, ResetCode.CANCEL, "gateway stopping")
            raise
        finally:
            link.unregister(sid, box)
        self._record("GET", event.target, answer, opened)

    async def _websocket_exchange(
        self,
        sid: int,
        box: Mailbox,
        target: URL,
        headers: CIMultiDict[str],
        protocols: tuple[str, ...],
        answer: _Answer,
    ) -> None:
        """The origin's WebSocket bridged to ``sid``, or its refusal passed back."""
        link = self._link
        try:
            origin = await connect_origin(
                link.forwarder.client,
                target,
                headers,
                list(protocols),
                link.config.max_ws_message,
            )
        except OriginRefused as refusal:
            answer.status = refusal.status
            self._pass_refusal(sid, refusal)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer.status = self._origin_failed(sid, exc, target)
            return
        answer.status = 101
        link.tunnel.accept_websocket(sid, origin.protocol)
        link.schedule_flush()
        await bridge_websocket(link, sid, box, origin)

    def _pass_refusal(self, sid: int, refusal: OriginRefused) -> None:
        link = self._link
        if refusal.body is None:
            link.reset(
                sid,
                ResetCode.CONNECT_FAILED,
                f"upstream refused the WebSocket with {refusal.status} and an oversized body",
            )
            return
        headers = refusal_headers(
            refusal.headers, refusal.http_version, link.forwarder.config.via_name
        )
        body = refusal.body
        tunnel = link.tunnel
        tunnel.respond(sid, refusal.status, refusal.reason or "", pairs(headers), has_body=True)
        if body:
            tunnel.send_data(sid, body)  # bounded by MAX_REFUSAL_BODY; one call may exceed pending
        tunnel.end(sid)
        link.schedule_flush()
