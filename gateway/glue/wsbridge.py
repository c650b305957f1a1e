"""An endpoint WebSocket beside us <-> its tunnel stream, on either side of the tunnel.

The opening side bridges its client's WebSocket, the answering side the one
it opened to the origin; both run :func:`bridge_websocket`. One reader task
moves endpoint messages into the stream while the stream takes them
(``wait_writable``); the caller's task writes the stream's messages to the
endpoint and runs the close handshake across the tunnel: the first side to
close gets the far side's answering code back. A reset or a vanished endpoint
ends the other side with ``1001`` (or the reset code's close code).

Writing. The bridge is the stream's sink while it runs (``_Sink``): a message
that arrives while nothing waits before it is written to the endpoint at the
end of the loop turn, with every other message that came in that turn, in one
socket write (``write_frames_now``), and credited back at once: the receiving
task is not woken per message, and a burst never piles up as undelivered
events. While the endpoint's transport is above its high-water mark (or
aiohttp must frame messages itself, or the writer task still holds earlier
ones) messages wait in the mailbox instead, uncredited, for the writer task:
it waits for the transport to drain, then writes what waited (up to
GATHER_BYTES at a time) the same way. A slow endpoint thus stalls its own
stream only: the mailbox holds what the tunnel let the peer send uncredited
(the window, and chunks of unfinished messages within ``session_reassembly``),
its event count bounded as the driver bounds every mailbox
(``MAX_STREAM_BACKLOG``), and the transport its high-water mark plus one write
(one loop turn's messages, or GATHER_BYTES).
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web

from gateway.core.tunnel.errors import ResetCode
from gateway.core.tunnel.events import Event, StreamReset, WebSocketClosed, WebSocketMessage
from gateway.glue.driver import LINK_CLOSED, TunnelDriver
from gateway.glue.heads import short
from gateway.glue.mailbox import EndpointDone, Mailbox
from gateway.transports.aiohttp_internals import send_frames, write_frames_now
from gateway.transports.http import CLOSE_TIMEOUT, Peer, close_peer, sendable

__all__ = ["GATHER_BYTES", "bridge_websocket"]

#: Payload bytes of waiting messages written to the endpoint in one go (one
#: message at least, however large).
GATHER_BYTES: Final = 256 * 1024


async def bridge_websocket(link: TunnelDriver, sid: int, box: Mailbox, peer: Peer) -> None:
    """Relay ``peer`` (the endpoint beside us) and stream ``sid`` until both sides closed.

    ``box`` is the stream's sink until then (and again after, unless the stream was reset).
    """
    link.stats.active_websockets += 1
    sink = _Sink(link, sid, box, peer)
    if box.reset is None:  # else the stream is gone: the writer finds the reset in the box
        link.register(sid, sink)
    reader = link.loop.create_task(_ws_reader(link, sid, box, peer))
    clean = False
    try:
        clean = await _ws_writer(link, sink, peer, reader)
    finally:
        if not clean:
            link.reset(sid, ResetCode.CANCEL, "endpoint WebSocket gone")
            await close_peer(peer, 1001, "hop stream lost")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        sink.write_pending()
        link.unregister(sid, sink)
        if box.reset is None:
            link.register(sid, box)
        link.stats.active_websockets -= 1


class _Sink:
    """Where the link routes the stream's events while the bridge runs (see the module doc)."""

    __slots__ = ("_due", "_link", "_pending", "box", "busy", "done", "peer", "sid")

    def __init__(self, link: TunnelDriver, sid: int, box: Mailbox, peer: Peer) -> None:
        self._link = link
        self.sid = sid
        self.box = box
        self.peer = peer
        self._pending: list[WebSocketMessage] = []  # to write at the end of this loop turn
        self._due = False
        self.busy = False  # the writer task holds messages it took from the mailbox
        self.done = False  # the endpoint closed: nothing more is written to it

    @property
    def backlog(self) -> int:
        """Events waiting for the writer task (what the driver bounds per session)."""
        return self.box.backlog

    def deliver(self, event: Event) -> None:
        box = self.box
        if type(event) is WebSocketMessage and not (box.events or self.busy or self.done):
            self._pending.append(event)
            if not self._due:
                self._due = True
                self._link.loop.call_soon(self.write_pending)
            return
        self.write_pending()  # what came before goes first
        box.deliver(event)
        if type(event) is WebSocketMessage:
            self._link.check_backlog(self.sid, box)  # as the driver checks every mailbox

    def write_pending(self) -> None:
        """Write this turn's messages to the endpoint and credit them, else queue them."""
        self._due = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        link, sid, box = self._link, self.sid, self.box
        try:
            written = write_frames_now(self.peer, [event.data for event in pending])
        except ConnectionError:
            written = False
        if not written:  # the writer task takes them, in order: nothing waited before them
            for event in pending:
                box.deliver(event)
                if box.reset is None:  # a reset already ends the stream
                    link.check_backlog(sid, box)
            return
        link.credit(sid, sum(event.size for event in pending))


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
    link: TunnelDriver, sink: _Sink, peer: Peer, reader: asyncio.Task[None]
) -> bool:
    """Stream -> endpoint, what the sink left; True when the close handshake completed."""
    box, sid = sink.box, sink.sid
    while True:
        if sink.done:
            try:
                async with asyncio.timeout(2 * CLOSE_TIMEOUT):
                    event = await box.next_event()
            except TimeoutError:
                return False
        else:
            event = await box.next_event()
        if isinstance(event, WebSocketMessage):
            batch, size = _gather(box, event)
            sink.busy = True
            try:
                if not sink.done:
                    await _send(peer, batch)
            finally:
                sink.busy = False
            link.credit(sid, size)
        elif isinstance(event, EndpointDone):
            sink.done = True
        elif isinstance(event, WebSocketClosed):
            if sink.done:  # the far side's answer to our close
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
