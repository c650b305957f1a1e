"""The doctor's steps, in path order, each on raw connections; ``run`` returns the ``Findings``.

1. TCP (and TLS) connect; 2. an ordinary request, marked like a gateway's;
3. the discovery hello; 4. session creation (with the hop secret when
given); 5. the WebSocket upgrade of that session; 6. frames over it (the
probe, spaced PINGs, a 1 MiB message up, the origin's answer down);
7. a long-poll round trip on a second session; 8. optionally, the idle test
on the WebSocket of step 5. A step that cannot run (no gateway, no 101)
leaves its findings empty; ``verdict.judge`` decides what that means.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any, Final

from multidict import CIMultiDict
from yarl import URL

from gateway.core import discovery
from gateway.core.session.errors import RemoteProtocolError
from gateway.doctor.hop import Created, HopClient, LongPollCarrier
from gateway.doctor.verdict import Findings
from gateway.doctor.wire import Endpoint, RawWebSocket, WireError, exchange, open_websocket
from gateway.transports.handshake import (
    AUTH_HEADER,
    SESSION_HEADER,
    TOKEN_HEADER,
    auth_header_value,
    encode_token,
    read_created,
)
from gateway.transports.ws import SUBPROTOCOL

__all__ = ["Options", "run"]

_SMALL_PINGS: Final = 5
_PING_GAP: Final = 0.2
_BIG: Final = 1024 * 1024 - 64
#: Answer fields of the upgrade that tell what the path did with it.
_SHOWN: Final = (
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "server",
    "via",
    "content-type",
    "x-hopgate-error",
)


@dataclass(frozen=True, kw_only=True)
class Options:
    url: URL
    hop_secret: str | None = None
    ca_file: str | None = None
    idle_test: float | None = None
    timeout: float = 10.0
    #: Longest a held poll is waited for (the gateway's --hold-time is 25 s by default).
    hold: float = 40.0


def _base(url: URL) -> str:
    """Where the gateway's own paths live: the URL's directory (``/app/x`` and ``/app/``: ``/app``).

    Like a client gateway's ``--upstream http://host/app/``, the hello and the
    sessions live below it; a last segment is taken for a page, not a directory.
    """
    return url.path.rsplit("/", 1)[0]


def _one_line(body: bytes) -> str:
    text = " ".join(body[:300].decode("utf-8", "replace").split())
    return text[:120]


async def run(options: Options) -> Findings:
    url = options.url
    findings = Findings(url=str(url), tls=url.scheme == "https", idle_test_s=options.idle_test)
    endpoint, findings = await _connect(options, findings)
    if endpoint is None:
        return findings
    findings = await _ordinary(endpoint, findings)
    findings = await _hello(endpoint, findings)
    created, findings = await _create(endpoint, options, findings)
    if created is None:
        return findings
    hop = HopClient(created)
    path = f"{_base(url)}{findings.session_path}/{created.session_id}"
    ws, findings = await _upgrade(endpoint, path, created, findings)
    if ws is not None:
        try:
            findings = await _frames(hop, ws, endpoint, findings)
            # Before the long-poll step, so nothing else runs while the socket sits idle.
            if options.idle_test and findings.probe_ms is not None:
                findings = await _idle(hop, ws, options.idle_test, findings)
        finally:
            await _goodbye(hop, ws)
    findings = await _long_poll(endpoint, options, findings)
    return findings


async def _connect(options: Options, f: Findings) -> tuple[Endpoint | None, Findings]:
    """Step 1: TCP, and for https the certificate; on a bad one later steps go on unverified."""
    url = options.url
    context: ssl.SSLContext | None = None
    if f.tls:
        context = ssl.create_default_context(cafile=options.ca_file)
    endpoint = Endpoint(url, context, options.timeout)
    started = time.monotonic()
    try:
        _, writer = await endpoint.connect()
    except WireError as exc:
        if context is None or "certificate" not in str(exc):
            return None, replace(f, connect_error=str(exc))
        f = replace(f, tls_error=str(exc))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        endpoint = Endpoint(url, context, options.timeout)
        started = time.monotonic()
        try:
            _, writer = await endpoint.connect()
        except WireError as again:
            return None, replace(f, connect_error=str(again))
    elapsed = (time.monotonic() - started) * 1000
    writer.close()
    return endpoint, replace(f, connect_ms=elapsed)


async def _ordinary(endpoint: Endpoint, f: Findings) -> Findings:
    """Step 2: GET the URL's path, marked as a gateway's request: a note back means direct."""
    mark: CIMultiDict[str] = CIMultiDict()
    discovery.add_mark(mark)
    target = endpoint.url.raw_path_qs or "/"
    try:
        answer = await exchange(endpoint, "GET", target, dict(mark), limit=64 * 1024)
    except WireError as exc:
        return replace(f, request_error=str(exc))
    note = discovery.note_from(CIMultiDict(answer.headers))
    return replace(
        f,
        request_status=answer.status,
        server=answer.headers.get("server"),
        via=answer.headers.get("via"),
        note_seen=note is not None,
        session_path=note.session_path if note else None,
    )


async def _hello(endpoint: Endpoint, f: Findings) -> Findings:
    """Step 3: the well-known hello, checked with ``discovery.check_hello``."""
    nonce = secrets.token_urlsafe(18)
    target = f"{_base(endpoint.url)}{discovery.HELLO_PATH}?nonce={nonce}"
    try:
        answer = await exchange(endpoint, "GET", target, limit=64 * 1024)
    except WireError:
        return f
    note = None
    if answer.status == 200:
        try:
            body: Any = json.loads(answer.body)
        except ValueError:
            body = None
        note = discovery.check_hello(body, nonce)
    session_path = note.session_path if note else f.session_path
    return replace(
        f,
        hello_status=answer.status,
        hello_proof=note is not None,
        session_path=session_path or discovery.DEFAULT_SESSION_PATH,
        server=f.server or answer.headers.get("server"),
        via=f.via or answer.headers.get("via"),
    )


async def _create(
    endpoint: Endpoint, options: Options, f: Findings
) -> tuple[Created | None, Findings]:
    """Step 4: POST for a session, exactly as a client gateway's connector does."""
    headers = {"Accept": "application/octet-stream", "Cache-Control": "no-store"}
    if options.hop_secret is not None:
        headers[AUTH_HEADER] = auth_header_value(options.hop_secret)
    target = f"{_base(endpoint.url)}{f.session_path}"
    try:
        answer = await exchange(endpoint, "POST", target, headers, limit=64 * 1024)
    except WireError as exc:
        return None, replace(f, session_error=str(exc))
    f = replace(f, session_status=answer.status)
    if answer.status != 200:
        text = _one_line(answer.body)
        return None, replace(f, session_error=f"POST {f.session_path}: {answer.status} {text}")
    session_id = answer.headers.get(SESSION_HEADER.lower(), "")
    try:
        token = read_created(session_id, answer.headers.get(TOKEN_HEADER.lower(), ""), answer.body)
    except ValueError as exc:
        why = f"POST {f.session_path}: 200 but {exc} (not a gateway)"
        return None, replace(f, session_error=why)
    return Created(session_id, token, answer.body), replace(f, session_created=True)


async def _upgrade(
    endpoint: Endpoint, path: str, created: Created, f: Findings
) -> tuple[RawWebSocket | None, Findings]:
    """Step 5: the RFC 6455 handshake for that session, with wsproto."""
    headers = {TOKEN_HEADER: encode_token(created.token)}
    upgrade = await open_websocket(endpoint, f"{path}?epoch=1", headers, SUBPROTOCOL)
    shown = {k: v for k, v in upgrade.headers.items() if k in _SHOWN}
    if "sec-websocket-accept" in shown and upgrade.socket is not None:
        shown["sec-websocket-accept"] = "valid"  # wsproto checked it against our key
    f = replace(
        f,
        upgrade_body=_one_line(upgrade.body),
        upgrade_status=upgrade.status,
        upgrade_error=upgrade.error,
        upgrade_headers=shown,
        subprotocol_echoed=upgrade.subprotocol == SUBPROTOCOL,
    )
    if upgrade.socket is not None and upgrade.subprotocol != SUBPROTOCOL:
        await upgrade.socket.close()
        return None, f
    return upgrade.socket, f


async def _frames(hop: HopClient, ws: RawWebSocket, endpoint: Endpoint, f: Findings) -> Findings:
    """Step 6: probe, spaced PINGs, the origin's answer down, 1 MiB up."""
    now = time.monotonic()
    nonce, probe = hop.core.probe_request(now)
    await ws.send(probe)
    reply = await ws.receive(endpoint.timeout)
    answered = None
    if reply is not None:
        try:
            answered = hop.core.probe_check(reply, time.monotonic())
        except RemoteProtocolError as exc:
            return replace(f, probe_error=f"bad probe reply: {exc.reason}")
    if answered is None or answered.nonce != nonce:
        why = ws.ended or f"no answer to the probe within {endpoint.timeout:g} s"
        return replace(f, probe_error=why)
    f = replace(f, probe_ms=answered.rtt * 1000)
    hop.core.transport_attached(time.monotonic())
    f = await _pings(hop, ws, f)
    down = await hop.tunnel_get(
        ws, endpoint.url.raw_path_qs or "/", endpoint.host_header, endpoint.timeout
    )
    f = replace(
        f,
        down_status=down.status,
        down_bytes=down.size,
        down_ms=None if down.error else down.elapsed * 1000,
    )
    if down.error is None:
        took = await hop.send_big(ws, 1, _BIG, endpoint.timeout)
        f = replace(f, big_up_bytes=_BIG, big_up_ms=None if took is None else took * 1000)
    return f


async def _pings(hop: HopClient, ws: RawWebSocket, f: Findings) -> Findings:
    """Small frames each way, spaced: PONGs that only come together mean buffering."""
    sent: list[float] = []
    # The first regular batch (HELLO) makes the gateway attach this socket.
    await hop.pump(ws, lambda: not hop.core.wants_write, 1.0)
    for index in range(_SMALL_PINGS):
        sent.append(time.monotonic())
        await ws.send(hop.ping(index))
        await hop.pump(ws, lambda: False, _PING_GAP)
    want = {hop.ping_nonce(i) for i in range(_SMALL_PINGS)}
    await hop.pump(ws, lambda: want <= hop.pongs.keys(), 3.0)
    delays = tuple(
        (hop.pongs[hop.ping_nonce(i)] - at) if hop.ping_nonce(i) in hop.pongs else None
        for i, at in enumerate(sent)
    )
    return replace(f, pong_delays=delays, ping_span=sent[-1] - sent[0])


async def _long_poll(endpoint: Endpoint, options: Options, f: Findings) -> Findings:
    """Step 7: a second session on long-poll only: the tunnelled GET over a held poll + POST."""
    created, after = await _create(endpoint, options, f)
    if created is None:
        return replace(f, long_poll_error=after.session_error or "no session")
    hop = HopClient(created)
    path = f"{_base(endpoint.url)}{f.session_path}/{created.session_id}"
    carrier = LongPollCarrier(
        endpoint, path, encode_token(created.token), lambda: hop.core.last_received, options.hold
    )
    hop.core.transport_attached(time.monotonic())
    carrier.start()
    try:
        answer = await hop.tunnel_get(
            carrier, endpoint.url.raw_path_qs or "/", endpoint.host_header, options.hold
        )
        if answer.error is not None:
            return replace(f, long_poll_error=f"tunnelled GET over long-poll: {answer.error}")
        hop.core.close(1000, "doctor done", now=time.monotonic())
        await hop.pump(carrier, lambda: not hop.core.wants_write, 2.0)
        return replace(f, long_poll_ms=answer.elapsed * 1000)
    finally:
        await carrier.stop()


async def _idle(hop: HopClient, ws: RawWebSocket, seconds: float, f: Findings) -> Findings:
    """Step 8: leave the WebSocket idle until the path closes it or ``seconds`` pass.

    The gateway's own heartbeat (a PING after ``--heartbeat`` seconds of
    silence) is answered, as a client gateway would; it also resets the
    path's idle timer, so the longest silence survived is what is known.
    """
    deadline = time.monotonic() + seconds
    since = ws.last_traffic
    longest = 0.0
    while time.monotonic() < deadline and ws.ended is None:
        batch = await ws.receive(min(1.0, max(0.0, deadline - time.monotonic())))
        if batch:
            longest = max(longest, ws.last_traffic - since)
            hop.feed(batch)
            reply = hop.outgoing()
            if reply:
                await ws.send(reply)
            since = ws.last_traffic
    if ws.ended is None:
        return replace(f, idle_longest_silence=max(longest, time.monotonic() - since))
    silent = time.monotonic() - ws.last_traffic
    f = replace(f, idle_longest_silence=max(longest, silent))
    if ws.ended.startswith("close frame"):
        return replace(f, idle_closed_by=f"the gateway closed it ({ws.ended}) after {silent:.1f} s")
    return replace(f, idle_killed_after=silent, idle_closed_by=ws.ended)


async def _goodbye(hop: HopClient, ws: RawWebSocket) -> None:
    """Close the session so it does not wait out its resume grace on the gateway."""
    if ws.ended is None:
        try:
            hop.core.close(1000, "doctor done", now=time.monotonic())
            await hop.pump(ws, lambda: not hop.core.wants_write, 2.0)
        except Exception:
            pass
    await ws.close()
