"""Pass a legacy endpoint's own WebSocket through the gateway, message by message.

Theory of operation
-------------------
A client that sends ``GET /ws`` with ``Upgrade: websocket`` to a gateway
(reverse, sidecar or forward proxy) gets a WebSocket to the origin behind
it.  The gateway is a WebSocket *endpoint* on each side (aiohttp server
towards the client, aiohttp client towards the origin) and relays whole
messages between the two, which is what later lets a WebSocket travel over
a hop session instead of a raw socket.

Handshake, in this order, so the client never sees a ``101`` the origin did
not give:

1. the client's handshake is checked (``400`` if it is not a valid RFC 6455
   one); nothing has reached the origin yet;
2. the gateway opens the WebSocket to the origin with the client's
   end-to-end headers (``Forwarder.outgoing_headers``: cookies, auth,
   ``Origin``, ``Via``, ``X-Forwarded-*``) and the client's
   ``Sec-WebSocket-Protocol`` offer; aiohttp writes ``Upgrade``,
   ``Connection`` and the other ``Sec-WebSocket-*`` headers itself;
3. if the origin refuses (anything but ``101``), the client gets the
   origin's status, headers and body (see ``capture_refusal``);
4. otherwise the client gets its ``101`` with the subprotocol the origin
   chose.

Extensions are per connection: neither side negotiates compression, each
hop carries plain frames.

Relay.  One pump per direction reads a message and writes it to the other
side; a write waits for the socket to drain, and aiohttp stops reading a
socket whose queue is full, so a slow receiver slows its sender instead of
growing a buffer.  aiohttp assembles fragmented messages, so a message is
held whole once, up to ``MAX_MESSAGE_SIZE``; a bigger one closes that side
with ``1009`` and the other with the same code.  Pings and pongs are
relayed end to end, so a client's ping measures the path to the origin.

Closing.  When one side sends Close, the other pump is stopped, the other
side gets a Close with the same code and reason, and its answering code is
sent back to the side that started: the close handshake spans the gateway.
A side that vanishes without a Close makes the gateway close the other side
with ``1001 Going Away``.  The relay runs in its own task: aiohttp cancels a
handler once the client's socket closes, which a finished close handshake
does too, and the origin must still get its Close.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from yarl import URL

from gateway.edges.forward import Forwarder
from gateway.status import GatewayStats
from gateway.transports.http import (
    CLOSE_TIMEOUT,
    MAX_REFUSAL_BODY,
    OriginRefused,
    Peer,
    aiohttp_limit,
    close_peer,
    connect_origin,
    describe,
    offered_protocols,
    refusal_headers,
    run_shielded,
    sendable,
    text_error,
)

log = logging.getLogger("hopgate.websocket")

#: Largest message relayed in either direction (aiohttp holds a message whole).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


async def pass_through(
    request: web.BaseRequest,
    target: URL,
    *,
    forwarder: Forwarder,
    origin_key: str,
    max_msg_size: int | None = None,
) -> web.StreamResponse:
    """Relay the client's WebSocket ``request`` to ``target`` until either side closes.

    ``forwarder.client`` must carry the ``capture_refusal`` middleware.
    ``max_msg_size`` defaults to ``MAX_MESSAGE_SIZE``, read at call time.
    """
    max_msg_size = max_msg_size or MAX_MESSAGE_SIZE
    if not web.WebSocketResponse().can_prepare(request).ok:
        return text_error(
            400,
            "invalid WebSocket handshake: needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
        )
    stats = forwarder.stats
    stats.upstream(origin_key).requests += 1
    try:
        origin = await _connect_origin(request, target, forwarder, max_msg_size)
    except OriginRefused as refusal:
        return _refusal_response(refusal, forwarder, target)
    except Exception as exc:
        stats.upstream(origin_key).errors += 1
        return forwarder.error_response(exc, target)
    try:
        client = await _accept_client(request, origin, max_msg_size)
    except BaseException:
        await close_peer(origin, WSCloseCode.GOING_AWAY, "client handshake failed")
        raise
    await run_shielded(_relay(client, origin, stats))
    return client


async def _connect_origin(
    request: web.BaseRequest, target: URL, forwarder: Forwarder, max_msg_size: int
) -> aiohttp.ClientWebSocketResponse:
    headers = forwarder.outgoing_headers(request, target)
    return await connect_origin(
        forwarder.client, target, headers, offered_protocols(request.headers), max_msg_size
    )


async def _accept_client(
    request: web.BaseRequest, origin: aiohttp.ClientWebSocketResponse, max_msg_size: int
) -> web.WebSocketResponse:
    """The client's ``101``, echoing the subprotocol the origin chose."""
    client = web.WebSocketResponse(
        protocols=(origin.protocol,) if origin.protocol else (),
        autoclose=False,
        autoping=False,
        compress=False,
        max_msg_size=aiohttp_limit(max_msg_size),
        timeout=CLOSE_TIMEOUT,
    )
    await client.prepare(request)
    return client


def _refusal_response(refusal: OriginRefused, forwarder: Forwarder, target: URL) -> web.Response:
    where = f"{target.scheme}://{target.raw_authority}"
    if refusal.body is None:
        return text_error(
            502,
            f"upstream {where} refused the WebSocket upgrade with status {refusal.status} "
            f"and a body over {MAX_REFUSAL_BODY} bytes",
        )
    return web.Response(
        status=refusal.status,
        reason=refusal.reason,
        headers=refusal_headers(refusal.headers, refusal.http_version, forwarder.config.via_name),
        body=refusal.body,
    )


async def _relay(
    client: web.WebSocketResponse, origin: aiohttp.ClientWebSocketResponse, stats: GatewayStats
) -> None:
    """Pump both ways; on the first end, close the other side with the same code."""
    stats.active_websockets += 1
    from_client = asyncio.create_task(_pump(client, origin))
    from_origin = asyncio.create_task(_pump(origin, client))
    try:
        done, _ = await asyncio.wait(
            (from_client, from_origin), return_when=asyncio.FIRST_COMPLETED
        )
        if from_client in done:
            await _close_after(client, origin, _ending(from_client), from_origin)
        else:
            await _close_after(origin, client, _ending(from_origin), from_client)
    finally:
        # Also reached when the handler is cancelled because the client's
        # connection closed: the origin still gets a proper Close, with the
        # client's code if it sent one.
        await close_peer(origin, sendable(client.close_code), "client connection closed")
        await _stop(from_client, from_origin)
        stats.active_websockets -= 1


async def _pump(source: Peer, sink: Peer) -> WSMessage:
    """Copy messages from ``source`` to ``sink``; return the message that ended it."""
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        else:
            return msg


def _ending(pump: asyncio.Task[WSMessage]) -> WSMessage | None:
    """The message that ended ``pump``, or ``None`` if a write failed."""
    if pump.cancelled() or pump.exception() is not None:
        why = "cancelled" if pump.cancelled() else describe(pump.exception() or Exception())
        log.debug("websocket pump failed: %s", why)
        return None
    return pump.result()


async def _stop(*pumps: asyncio.Task[WSMessage]) -> None:
    for task in pumps:
        task.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)


async def _close_after(
    source: Peer, sink: Peer, ending: WSMessage | None, sink_pump: asyncio.Task[WSMessage]
) -> None:
    """``source`` ended with ``ending``: close ``sink`` alike, then answer ``source``.

    ``sink.close`` waits for the sink's own Close, whose code goes back to
    the source, so both close handshakes complete with matching codes.
    aiohttp's two WebSocket classes differ here: the client one's ``close``
    interrupts a ``receive`` running in another task and then reads the
    answer itself (cancelling that ``receive`` instead would make it give
    up on the answer), while the server one only reads the answer if no
    ``receive`` is running, so its pump is stopped first.
    """
    if ending is not None and ending.type is WSMsgType.CLOSE:
        code, reason = sendable(ending.data), ending.extra or ""
    elif ending is not None and isinstance(ending.data, aiohttp.WebSocketError):
        # aiohttp already closed ``source`` with the code the error called
        # for (1009 message too big, 1002 protocol error, 1007 bad UTF-8).
        code, reason = sendable(ending.data.code), str(ending.data)
    else:
        code, reason = WSCloseCode.GOING_AWAY, "peer connection lost"
    if isinstance(sink, web.WebSocketResponse):
        await _stop(sink_pump)
    await close_peer(sink, code, reason)
    # No await in between: once the client's socket is closed, aiohttp
    # cancels this handler at its next suspension point.
    await close_peer(source, sendable(sink.close_code) if sink.close_code else code, "")
