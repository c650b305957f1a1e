"""A hop session driven by hand: the client session and tunnel cores over one raw carrier.

The doctor does not use the gateway's own connector: that one hides what
the path does (it falls back, retries, re-probes). Here the same pure cores
(``core.session.machine.Session``, ``core.tunnel.streams.Tunnel``) run over
a ``Carrier`` the doctor owns, so each batch sent and received is seen and
timed. The gateway on the other end cannot tell this from a client gateway.

What the peer answers without an origin: PING frames (PONG, always) and
cumulative ACKs for any DATA. So small frames are PINGs; the 1 MiB upward
message is a tunnel DATA frame for a stream that has already ended (the
tunnel ignores late frames of a finished stream, the session still
acknowledges the whole message); the downward traffic is the origin's
answer to a tunnelled ``GET`` of the URL's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.core.session.config import SessionConfig
from gateway.core.session.errors import RemoteProtocolError
from gateway.core.session.events import MessageReceived
from gateway.core.session.frames import (
    MAX_FRAGMENT_SIZE,
    Ack,
    FrameDecoder,
    Hello,
    Pong,
    encode_ping,
    new_packer,
)
from gateway.core.session.machine import Session
from gateway.core.tunnel.errors import RemoteProtocolError as TunnelProtocolError
from gateway.core.tunnel.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from gateway.core.tunnel.frames import encode_data
from gateway.core.tunnel.streams import Tunnel
from gateway.doctor.wire import Endpoint, WireError, exchange

__all__ = ["Carrier", "Created", "HopClient", "LongPollCarrier", "TunnelAnswer"]

_MiB: Final = 1024 * 1024
#: Our end never heartbeats on its own: the idle test must measure silence.
_CORE: Final = SessionConfig(
    fragment_size=MAX_FRAGMENT_SIZE,
    max_batch_bytes=2 * _MiB + 4096,
    heartbeat_interval=24 * 3600.0,
    stall_timeout=24 * 3600.0,
    resume_grace=24 * 3600.0,
)
#: PING nonces of ours start here, far from the core's own probe and heartbeat nonces.
PING_BASE: Final = 1 << 40


class Carrier(Protocol):
    """One transport as the doctor sees it: whole batches out and in."""

    ended: str | None

    async def send(self, data: bytes) -> None: ...

    async def receive(self, timeout: float) -> bytes | None: ...


@dataclass(frozen=True)
class Created:
    session_id: str
    token: bytes
    hello: bytes


@dataclass(frozen=True)
class TunnelAnswer:
    status: int | None
    size: int
    elapsed: float
    error: str | None = None


class HopClient:
    """The client end of one session: feeds batches to the cores and records what came back."""

    def __init__(self, created: Created) -> None:
        self.core = Session(
            _CORE,
            session_id=created.session_id,
            token=created.token,
            is_client=True,
            now=time.monotonic(),
        )
        self.core.receive_data(created.hello, time.monotonic())
        self.core.events_received()
        self.tunnel = Tunnel(opener=True)
        self._decoder = FrameDecoder()
        self._packer = new_packer()
        self.messages_sent = 0
        self.acked = 0
        self.pongs: dict[int, float] = {}
        self.error: str | None = None

    def feed(self, batch: bytes) -> None:
        now = time.monotonic()
        with contextlib.suppress(RemoteProtocolError):
            for frame in self._decoder.decode(batch):
                if isinstance(frame, Ack):
                    self.acked = max(self.acked, frame.received)
                elif isinstance(frame, Hello):
                    self.acked = max(self.acked, frame.last_received)
                elif isinstance(frame, Pong):
                    self.pongs.setdefault(frame.nonce, now)
        try:
            self.core.receive_data(batch, now)
        except RemoteProtocolError as exc:
            self.error = f"the gateway broke the session protocol: {exc.reason}"
        for event in self.core.events_received():
            if isinstance(event, MessageReceived) and isinstance(event.data, bytes):
                try:
                    self.tunnel.receive_message(event.data)
                except TunnelProtocolError as exc:
                    self.error = f"the gateway broke the tunnel protocol: {exc}"

    def send_message(self, message: bytes) -> None:
        self.core.send_message(message)
        self.messages_sent += 1

    def outgoing(self) -> bytes | None:
        while self.tunnel.has_pending() and self.core.writable:
            message = self.tunnel.next_message()
            if message is None:
                break
            self.send_message(message)
        now = time.monotonic()
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= now:
            self.core.handle_timer(now)
        return self.core.data_to_send(now) if self.core.wants_write else None

    def ping(self, index: int) -> bytes:
        return encode_ping(self._packer, self.ping_nonce(index))

    @staticmethod
    def ping_nonce(index: int) -> int:
        return PING_BASE + index

    async def pump(self, carrier: Carrier, done: Callable[[], bool], timeout: float) -> bool:
        """Send what is due and feed what arrives until ``done()``; False on timeout or loss."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.error or carrier.ended:
                return False
            batch = self.outgoing()
            if batch:
                await carrier.send(batch)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            got = await carrier.receive(min(left, 0.5))
            if got:
                self.feed(got)
        return True

    async def tunnel_get(
        self, carrier: Carrier, target: str, host: str, timeout: float
    ) -> TunnelAnswer:
        """GET ``target`` from the gateway's origin through the session."""
        started = time.monotonic()
        sid = self.tunnel.open_http(
            "GET", target, [("Host", host), ("User-Agent", "hopgate-doctor")]
        )
        status: int | None = None
        size = 0
        finished: str | None = None

        def done() -> bool:
            nonlocal status, size, finished
            for event in self.tunnel.events_received():
                if isinstance(event, ResponseReceived) and event.stream_id == sid:
                    status = event.status
                    finished = None if event.has_body else "end"
                elif isinstance(event, DataReceived) and event.stream_id == sid:
                    size += len(event.data)
                    self.tunnel.consumed(sid, len(event.data))
                elif isinstance(event, StreamEnded) and event.stream_id == sid:
                    finished = "end"
                elif isinstance(event, StreamReset) and event.stream_id == sid:
                    finished = f"reset: {event.reason}"
            return finished is not None

        ok = await self.pump(carrier, done, timeout)
        elapsed = time.monotonic() - started
        if not ok:
            why = self.error or carrier.ended or f"no whole answer within {timeout:g} s"
            return TunnelAnswer(status, size, elapsed, why)
        error = None if finished == "end" else finished
        return TunnelAnswer(status, size, elapsed, error)

    async def send_big(
        self, carrier: Carrier, stream_id: int, size: int, timeout: float
    ) -> float | None:
        """About ``size`` bytes up in one message; seconds until the session acked it, or None."""
        started = time.monotonic()
        self.send_message(encode_data(self._packer, stream_id, bytes(size)))
        seq = self.messages_sent
        ok = await self.pump(carrier, lambda: self.acked >= seq, timeout)
        return time.monotonic() - started if ok else None


class LongPollCarrier:
    """The long-poll transport on raw requests: a held GET in a loop, a POST per batch."""

    def __init__(
        self, endpoint: Endpoint, path: str, token: str, last: Callable[[], int], hold: float
    ) -> None:
        self._endpoint = endpoint
        self._path = path
        self._headers = {"X-Hopgate-Token": token, "Cache-Control": "no-store"}
        self._last = last
        self._hold = hold
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._poller: asyncio.Task[None] | None = None
        self.ended: str | None = None
        self.held_answers = 0

    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll(), name="doctor-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while self.ended is None:
            target = f"{self._path}?last={self._last()}&epoch=1"
            try:
                answer = await exchange(
                    self._endpoint, "GET", target, self._headers, timeout=self._hold
                )
            except WireError as exc:
                self.ended = f"held GET failed: {exc}"
                return
            if answer.status != 200:
                self.ended = f"held GET answered {answer.status}"
                return
            self.held_answers += 1
            if answer.body:
                self._inbox.put_nowait(answer.body)

    async def send(self, data: bytes) -> None:
        headers = {**self._headers, "Content-Type": "application/octet-stream"}
        try:
            answer = await exchange(self._endpoint, "POST", f"{self._path}?epoch=1", headers, data)
        except WireError as exc:
            self.ended = f"POST failed: {exc}"
            return
        if answer.status != 200:
            self.ended = f"POST answered {answer.status}"
        elif answer.body:
            self._inbox.put_nowait(answer.body)

    async def receive(self, timeout: float) -> bytes | None:
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.get()
        except TimeoutError:
            return None
