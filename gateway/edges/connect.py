"""``CONNECT`` tunnels for the forward proxy: splice a client to any ``host:port``.

Theory of operation
-------------------
A legacy client that uses ``hopgate client`` as its HTTP proxy reaches
``https://`` origins (and anything else that is not plain HTTP) by asking
for a tunnel: ``CONNECT host:port``.  We dial the target first and answer
``200 Connection established`` only once the TCP connection stands, so a
client never starts TLS into a tunnel that leads nowhere; a failed dial is a
``502`` (or ``504`` after ``connect_timeout``) with a plain-text reason.

Taking over the connection after the ``200`` uses two things aiohttp
supports for exactly this case (the second is not public API, so it lives in
``transports.aiohttp_internals.take_over_reading``):

* aiohttp's HTTP parser knows ``CONNECT`` turns the rest of the connection
  into opaque bytes: it stops parsing requests (``_upgraded``), treats bytes
  that came in the same packet as the request as its payload
  (``request.content``), and its response layer knows a ``2xx`` to
  ``CONNECT`` has no body framing, so ``StreamResponse.write`` puts our bytes
  on the wire untouched (no chunking, no ``Content-Length``).
* Every later byte is held by the server protocol until someone installs a
  reader with ``request.protocol.set_parser()``: that is the hand-over hook
  ``WebSocketResponse.prepare`` uses after its ``101``.  We install a small
  feed that appends to our own ``StreamReader``; that reader pauses the
  socket when it holds ``2 * CHUNK`` bytes, so a slow target never makes us
  buffer without bound.  The other direction writes through
  ``StreamResponse.write``, which waits for the client socket to drain.

The alternatives were worse: ``transport.set_protocol()`` behind aiohttp's
back leaves its request handler waiting on a connection it no longer owns,
and reading the socket ourselves would race aiohttp's own reader.

Closing.  When the target stops sending, the client gets a TCP half-close
(``write_eof``) and may keep sending for ``HALF_CLOSE_GRACE`` seconds;
over TLS (which cannot half-close) the tunnel ends.  When the client stops
sending, aiohttp's server closes the whole connection (it never keeps a
half-open client), so whatever the client sent is delivered to the target,
then the target connection is closed.  Ending a tunnel always closes both
sockets; the access log shows ``200`` for every tunnel that was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from gateway.core.targets import BadTarget, parse_authority
from gateway.glue.origin import ForwardSettings
from gateway.status import GatewayStats
from gateway.transports.aiohttp_internals import take_over_reading
from gateway.transports.http import CHUNK, describe, text_error
from gateway.transports.proxy import ProxyError, ProxyTable, open_connection

log = logging.getLogger("hopgate.connect")

#: How long the client may keep sending after the target half-closed.
HALF_CLOSE_GRACE = 30.0


#: ``host:port`` of a CONNECT line (one parser for every request target: ``edge.targets``).
parse_connect_target = parse_authority


async def open_tunnel(
    request: web.BaseRequest,
    config: ForwardSettings,
    stats: GatewayStats,
    proxies: ProxyTable | None = None,
) -> web.StreamResponse:
    """Answer ``CONNECT``: dial the target, say ``200``, then relay until either side ends.

    ``proxies``: a ``hopgate client``'s own proxy (``https_proxy``), asked in turn.
    """
    try:
        host, port = parse_connect_target(request.raw_path)
    except BadTarget as exc:
        return text_error(400, str(exc))
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(config.connect_timeout):
            reader, writer = await open_connection(proxies, host, port, limit=CHUNK)
    except ProxyError as exc:
        log.warning("CONNECT %s failed: %s", where, exc)
        return text_error(502, f"could not connect to {where}: {exc}")
    except TimeoutError:
        log.warning("CONNECT %s timed out", where)
        return text_error(504, f"could not connect to {where} within {config.connect_timeout:g}s")
    except OSError as exc:
        log.warning("CONNECT %s failed: %s", where, exc)
        return text_error(502, f"could not connect to {where}: {exc.strerror or exc}")
    stats.active_tunnels += 1
    try:
        return await _splice(request, reader, writer)
    finally:
        stats.active_tunnels -= 1
        writer.close()


async def _splice(
    request: web.BaseRequest, target_reader: asyncio.StreamReader, target: asyncio.StreamWriter
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, reason="Connection established")
    await response.prepare(request)
    client = take_over_reading(request, CHUNK)
    try:
        await _relay(request, response, client, target_reader, target)
    finally:
        _deliver_leftover(client, target)
        # Ends the client connection too: after a tunnel there is no HTTP
        # left to read on it, and aiohttp must not linger for a request body.
        request.protocol.force_close()
    return response


async def _relay(
    request: web.BaseRequest,
    response: web.StreamResponse,
    client: aiohttp.StreamReader,
    target_reader: asyncio.StreamReader,
    target: asyncio.StreamWriter,
) -> None:
    upward = asyncio.create_task(_client_to_target(client, target))
    downward = asyncio.create_task(_target_to_client(target_reader, response, request))
    try:
        await asyncio.wait((upward, downward), return_when=asyncio.FIRST_COMPLETED)
        if not upward.done() and _half_closed(downward):
            await asyncio.wait((upward,), timeout=HALF_CLOSE_GRACE)
    finally:
        for task in (upward, downward):
            task.cancel()
        for outcome in await asyncio.gather(upward, downward, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.debug("tunnel ended: %s", describe(outcome))


def _half_closed(task: asyncio.Task[bool]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None and task.result()


async def _client_to_target(client: aiohttp.StreamReader, target: asyncio.StreamWriter) -> None:
    while chunk := await client.readany():
        target.write(chunk)
        await target.drain()
    if target.can_write_eof():
        target.write_eof()


async def _target_to_client(
    target_reader: asyncio.StreamReader, response: web.StreamResponse, request: web.BaseRequest
) -> bool:
    """Copy the target's bytes to the client; ``True`` if the client was half-closed after."""
    while chunk := await target_reader.read(CHUNK):
        await response.write(chunk)
    transport = request.transport
    if transport is None or transport.is_closing() or not transport.can_write_eof():
        return False
    transport.write_eof()
    return True


def _deliver_leftover(client: aiohttp.StreamReader, target: asyncio.StreamWriter) -> None:
    """Pass on bytes the client sent just before it went away.

    When the client closes, aiohttp cancels this handler; what its reader
    already holds is still owed to the target.  ``target.close()`` (done by
    the caller) flushes it before the FIN.
    """
    if client.exception() is not None or target.is_closing():
        return
    with contextlib.suppress(RuntimeError):
        rest = client.read_nowait()
        if rest:
            target.write(rest)
