"""An endpoint WebSocket beside us <-> its tunnel stream, on either side of the tunnel.

The opening side bridges its client's WebSocket, the answering side the one
it opened to the origin; both run :func:`bridge_websocket`. One reader task
moves endpoint messages into the stream while the stream takes them
(``wait_writable``); the caller's task writes the stream's messages to the
endpoint and runs the close handshake across the tunnel: the first side to
close gets the far side's answering code back. A reset or a vanished endpoint
ends the other side with ``1001`` (or the reset code's close code).

Writing gathers: the messages waiting in the mailbox (up to GATHER_BYTES)
leave in one socket write (``send_frames``), where one ``send_bytes`` each
cost a syscall each. They are credited back to the sender as soon as they
are in the transport, not after it drained: ``send_frames`` first waits
while the transport is above its high-water mark, so a slow endpoint leaves
its messages uncredited in the mailbox and stalls its own stream only, and
the bridge holds at most the stream's window there plus the high-water mark
and one write in the transport.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web

from gateway.core.tunnel.errors import ResetCode
from gateway.core.tunnel.events import StreamReset, WebSocketClosed, WebSocketMessage
from gateway.glue.driver import LINK_CLOSED, TunnelDriver
from gateway.glue.heads import short
from gateway.glue.mailbox import EndpointDone, Mailbox
from gateway.transports.aiohttp_internals import send_frames
from gateway.transports.http import CLOSE_TIMEOUT, Peer, close_peer, sendable

__all__ = ["GATHER_BYTES", "bridge_websocket"]

#: Payload bytes of waiting messages written to the endpoint in one go (one
#: message at least, however large).
GATHER_BYTES: Final = 256 * 1024


async def bridge_websocket(link: TunnelDriver, sid: int, box: Mailbox, peer: Peer) -> None:
    """Relay ``peer`` (the endpoint beside us) and stream ``sid`` until both sides closed."""
    link.stats.active_websockets += 1
    reader = link.loop.create_task(_ws_reader(link, sid, box, peer))
    clean = False
    try:
        clean = await _ws_writer(link, sid, box, peer, reader)
    finally:
        if not clean:
            link.reset(sid, ResetCode.CANCEL, "endpoint WebSocket gone")
            await close_peer(peer, 1001, "hop stream lost")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        link.stats.active_websockets -= 1


async def _ws_reader(link: TunnelDriver, sid: int, box: Mailbox, peer: Peer) -> None:
    """Endpoint -> stream; posts EndpointDone when the endpoint closed or vanished."""
    tunnel = link.tunnel
    while True:
        msg = await peer.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if not await box.wait_writable(tunnel, sid):
                return
            tunnel.send_ws_message(sid, msg.data)
            link.schedule_flush()
        elif kind is WSMsgType.PING:
            await peer.pong(msg.data)
        elif kind is WSMsgType.PONG:
            continue
        elif kind is WSMsgType.CLOSING:
            return  # our own close() interrupted this receive
        elif kind is WSMsgType.CLOSE:
            tunnel.close_websocket(sid, int(sendable(msg.data)), short(msg.extra or ""))
            link.schedule_flush()
            box.post(EndpointDone(closed=True))
            return
        else:
            code = 1001
            if isinstance(msg.data, aiohttp.WebSocketError):
                code = int(sendable(msg.data.code))
            tunnel.close_websocket(sid, code, "endpoint connection lost")
            link.schedule_flush()
            box.post(EndpointDone(closed=False))
            return


async def _ws_writer(
    link: TunnelDriver, sid: int, box: Mailbox, peer: Peer, reader: asyncio.Task[None]
) -> bool:
    """Stream -> endpoint; True when the close handshake completed on both sides."""
    endpoint_done = False
    while True:
        if endpoint_done:
            try:
                async with asyncio.timeout(2 * CLOSE_TIMEOUT):
                    event = await box.next_event()
            except TimeoutError:
                return False
        else:
            event = await box.next_event()
        if isinstance(event, WebSocketMessage):
            batch, size = _gather(box, event)
            if not endpoint_done:
                await _send(peer, batch)
            link.tunnel.consumed(sid, size)
            link.schedule_flush()
        elif isinstance(event, EndpointDone):
            endpoint_done = True
        elif isinstance(event, WebSocketClosed):
            if endpoint_done:  # the far side's answer to our close
                await close_peer(peer, sendable(event.code), event.reason)
                return True
            await _close_first(link, sid, peer, reader, event)
            return True
        else:
            assert isinstance(event, StreamReset), event
            await close_peer(peer, _reset_close_code(event), event.reason)
            return True


def _reset_close_code(reset: StreamReset) -> int:
    """The endpoint's close code; 1012 (service restart) when the session died under the stream.

    Our own stop says 1001 (``LINK_CLOSED``); a session lost otherwise (its
    instance crashed) tells the endpoint to reconnect, which goes to a new session.
    """
    lost = reset.code == ResetCode.SESSION_LOST and not reset.remote
    return 1012 if lost and reset.reason != LINK_CLOSED else ResetCode.of(reset.code).ws_close_code


def _gather(box: Mailbox, first: WebSocketMessage) -> tuple[list[bytes | str], int]:
    """``first`` and the messages right behind it in ``box``, up to GATHER_BYTES; their size."""
    batch, size = [first.data], first.size
    events = box.events
    while events and size < GATHER_BYTES:
        event = events[0]
        if not isinstance(event, WebSocketMessage):
            break  # a close or a reset waits for the messages before it
        events.popleft()
        batch.append(event.data)
        size += event.size
    return batch, size


async def _send(peer: Peer, batch: list[bytes | str]) -> None:
    try:
        if await send_frames(peer, batch):
            return
        for data in batch:  # compressed, or closing: aiohttp frames each (and drains)
            if isinstance(data, str):
                await peer.send_str(data)
            else:
                await peer.send_bytes(data)
    except (ConnectionError, aiohttp.ClientError):
        pass  # the reader reports the endpoint's end


async def _close_first(
    link: TunnelDriver,
    sid: int,
    peer: Peer,
    reader: asyncio.Task[None],
    event: WebSocketClosed,
) -> None:
    """The far side closed first: close ``peer`` alike and send its answering code back."""
    if isinstance(peer, web.WebSocketResponse):
        reader.cancel()  # aiohttp's server side reads the answer only then
        await asyncio.gather(reader, return_exceptions=True)
    await close_peer(peer, sendable(event.code), event.reason)
    answer = int(sendable(peer.close_code)) if peer.close_code else event.code
    link.tunnel.close_websocket(sid, answer, "")
    link.schedule_flush()
