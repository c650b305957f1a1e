"""A hostile hop peer: the session and tunnel wire formats spoken by hand.

Written from ``docs/protocol.md`` and ``docs/tunnel.md`` with nothing but
msgpack and aiohttp, so it keeps working whatever the gateway's own cores
look like inside, and so it can say what an honest peer never would: frames
beyond credit, lying ``Content-Length``, messages that never finish, polls
and POSTs that never end. The session layer below it is honest (sequence
numbers, acks, pongs): the attacks are in what it carries and in how many.

Used by the CI suite (``tests/hostile``) and by ``bench/attacks.py``; the
floods and attack catalogues built on it are in ``payloads.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import msgpack

from tests.waiting import woken_until

SESSION_PATH: Final = "/.hopgate/session"
SESSION_HEADER: Final = "X-Hopgate-Session"
TOKEN_HEADER: Final = "X-Hopgate-Token"
AUTH_HEADER: Final = "X-Hopgate-Auth"
SUBPROTOCOL: Final = "hopgate.v1"
STATUS_PATH: Final = "/.hopgate/status"

#: Session frame types (docs/protocol.md section 1).
S_HELLO, S_DATA, S_ACK, S_PING, S_PONG, S_CLOSE, S_ABORT = range(1, 8)
#: Tunnel frame types (docs/tunnel.md).
OPEN_HTTP, OPEN_WS, RESPONSE, ACCEPT, DATA, END, MESSAGE, CLOSE, WINDOW, RESET = range(1, 11)
FIN: Final = 0x01
TEXT: Final = 0x02
FRAGMENT: Final = 64 * 1024
BASE_WINDOW: Final = 64 * 1024


def pack(*fields: Any) -> bytes:
    return bytes(msgpack.packb(list(fields), use_bin_type=True))


def decode_token(value: str) -> bytes:
    raw = value.encode("ascii")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def unpack_all(batch: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(batch), 1))
    unpacker.feed(batch)
    return list(unpacker)


# -- tunnel frames ------------------------------------------------------------------


def headers_list(headers: list[tuple[str, str]] | None) -> list[bytes]:
    flat: list[bytes] = []
    for name, value in headers or []:
        flat += [name.encode("latin-1"), value.encode("latin-1")]
    return flat


def open_http(
    sid: int,
    method: str,
    target: bytes | str,
    headers: list[tuple[str, str]] | None = None,
    *,
    has_body: bool = False,
    window: int = BASE_WINDOW,
) -> bytes:
    if isinstance(target, str):
        target = target.encode()
    return pack(OPEN_HTTP, sid, window, method, target, headers_list(headers), has_body)


def open_ws(
    sid: int,
    target: bytes | str,
    headers: list[tuple[str, str]] | None = None,
    protocols: list[str] | None = None,
    *,
    window: int = BASE_WINDOW,
) -> bytes:
    if isinstance(target, str):
        target = target.encode()
    return pack(OPEN_WS, sid, window, target, headers_list(headers), protocols or [])


def data(sid: int, payload: bytes) -> bytes:
    return pack(DATA, sid, payload)


def end(sid: int) -> bytes:
    return pack(END, sid)


def message(sid: int, payload: bytes, *, fin: bool = True) -> bytes:
    return pack(MESSAGE, sid, FIN if fin else 0, payload)


def window(sid: int, increment: int) -> bytes:
    return pack(WINDOW, sid, increment)


def reset(sid: int, code: int = 0, reason: str = "") -> bytes:
    return pack(RESET, sid, code, reason)


# -- sessions over raw HTTP ------------------------------------------------------------


@dataclass
class Created:
    status: int
    session_id: str = ""
    token: str = ""
    body: bytes = b""


async def create_session(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None
) -> Created:
    """``POST /.hopgate/session`` as an attacker would: any headers, no checks."""
    async with http.post(base + SESSION_PATH, headers=headers or {}) as resp:
        body = await resp.read()
        return Created(
            resp.status,
            resp.headers.get(SESSION_HEADER, ""),
            resp.headers.get(TOKEN_HEADER, ""),
            body,
        )


# -- a whole hostile peer over a WebSocket transport -------------------------------


@dataclass
class Stream:
    """What the gateway answered on one tunnel stream."""

    head: list[Any] | None = None  # RESPONSE or ACCEPT frame
    reset: list[Any] | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    credit: int = BASE_WINDOW  # bytes we may still send on it
    closed: list[Any] | None = None

    @property
    def accepted(self) -> bool:
        """An ACCEPT came (a WebSocket stream the gateway took)."""
        return self.head is not None and self.head[0] == ACCEPT

    @property
    def refused(self) -> bool:
        """Reset, or answered with a 4xx/5xx head."""
        return self.reset is not None or (
            self.head is not None and self.head[0] == RESPONSE and self.head[2] >= 400
        )


class HostilePeer:
    """One hop session over a WebSocket, carrying tunnel batches of our making.

    ``send(*frames)`` sends the frames as one session message (one tunnel
    batch); whatever the gateway sends back is decoded into ``streams``.
    ``read=False`` keeps the session honest but never returns tunnel credit
    (no WINDOW frames), as a peer that stops reading would.
    """

    def __init__(self, base: str, *, timeout: float = 10.0) -> None:
        self.base = base
        self.timeout = timeout
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session_id = ""
        self.token = b""
        self.seq = 0
        self.received = 0
        self.acked_by_peer = 0
        self.streams: dict[int, Stream] = defaultdict(Stream)
        self.closed: tuple[int, str] | None = None
        self.ws_close_code: int | None = None
        self.changed = asyncio.Event()
        self.bytes_received = 0
        self._partial = bytearray()
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self.next_sid = 1

    async def __aenter__(self) -> HostilePeer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self, http: aiohttp.ClientSession | None = None) -> None:
        self.http = http or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False)
        )
        self._own_http = http is None
        created = await create_session(self.http, self.base)
        if created.status != 200:
            raise ConnectionError(f"session refused: {created.status} {created.body[:200]!r}")
        self.session_id, self.token = created.session_id, decode_token(created.token)
        url = f"{self.base}{SESSION_PATH}/{self.session_id}?epoch=1"
        self.ws = await self.http.ws_connect(
            url,
            protocols=(SUBPROTOCOL,),
            headers={TOKEN_HEADER: created.token},
            max_msg_size=0,
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        )
        # The probe: HELLO + PING -> HELLO + PONG.
        await self.ws.send_bytes(pack(S_HELLO, 1, self.session_id, 0, self.token) + pack(S_PING, 1))
        async with asyncio.timeout(self.timeout):
            reply = await self.ws.receive()
        if reply.type is not aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"probe failed: {reply.type} {reply.data!r}")
        self._reader = asyncio.create_task(self._read(), name="hostile-peer-reader")

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.ws.close()
        if self.http is not None and self._own_http:
            await self.http.close()

    def sid(self) -> int:
        """The next odd stream id (we opened the session)."""
        sid = self.next_sid
        self.next_sid += 2
        return sid

    # -- sending ---------------------------------------------------------------

    def _session_batches(self, payload: bytes) -> list[bytes]:
        """One session message as DATA fragments, at most 16 fragments per batch."""
        parts = [pack(S_ACK, self.received)] if self.received else []
        batches = []
        view = memoryview(payload)
        offset = 0
        while True:
            chunk = view[offset : offset + FRAGMENT]
            offset += len(chunk)
            self.seq += 1
            last = offset >= len(payload)
            parts.append(pack(S_DATA, self.seq, FIN if last else 0, bytes(chunk)))
            if last or len(parts) >= 16:
                batches.append(b"".join(parts))
                parts = []
            if last:
                return batches

    async def send(self, *frames: bytes) -> None:
        """Send ``frames`` as one tunnel batch (one session message)."""
        assert self.ws is not None
        async with self._send_lock:
            for batch in self._session_batches(b"".join(frames)):
                await self.ws.send_bytes(batch)

    async def send_session_raw(self, batch: bytes) -> None:
        """Bytes straight onto the session transport (malformed msgpack...)."""
        assert self.ws is not None
        await self.ws.send_bytes(batch)

    async def ack(self) -> None:
        assert self.ws is not None
        async with self._send_lock:
            await self.ws.send_bytes(pack(S_ACK, self.received))

    # -- receiving -------------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self.bytes_received += len(msg.data)
                    await self._on_batch(msg.data)
                    self.changed.set()
        finally:
            self.ws_close_code = self.ws.close_code
            if self.closed is None:
                self.closed = (self.ws.close_code or 0, "websocket closed")
            self.changed.set()

    async def _on_batch(self, batch: bytes) -> None:
        got_data = False
        for frame in unpack_all(batch):
            kind = frame[0]
            if kind == S_DATA:
                _, seq, flags, payload = frame
                got_data = True
                if seq != self.received + 1:
                    continue
                self.received = seq
                self._partial += payload
                if flags & FIN:
                    whole, self._partial = bytes(self._partial), bytearray()
                    self._on_tunnel(whole)
            elif kind == S_PING:
                await self.ws.send_bytes(pack(S_PONG, frame[1]))  # type: ignore[union-attr]
            elif kind in (S_ACK,):
                self.acked_by_peer = max(self.acked_by_peer, frame[1])
            elif kind in (S_CLOSE, S_ABORT):
                self.closed = (frame[-2], frame[-1])
                if kind == S_CLOSE:
                    got_data = True
        if got_data:
            await self.ack()

    def _on_tunnel(self, batch: bytes) -> None:
        for frame in unpack_all(batch):
            kind, sid = frame[0], frame[1]
            stream = self.streams[sid]
            if kind in (RESPONSE, ACCEPT):
                stream.head = frame
                if kind == ACCEPT:
                    stream.credit = frame[2]
            elif kind == DATA:
                stream.body += frame[2]
            elif kind == MESSAGE:
                stream.body += frame[3]
            elif kind == END:
                stream.ended = True
            elif kind == WINDOW:
                stream.credit += frame[2]
            elif kind == RESET:
                stream.reset = frame
            elif kind == CLOSE:
                stream.closed = frame

    async def until(self, predicate: Any, timeout: float | None = None) -> bool:
        """Wait until ``predicate()``; False on timeout (or the session ending first)."""

        def done_or_ended() -> bool:
            ended = self.closed is not None and self._reader is not None and self._reader.done()
            return bool(predicate()) or ended

        woke = await woken_until(self.changed, done_or_ended, timeout or self.timeout)
        return woke and bool(predicate())

    async def answer(self, sid: int, timeout: float | None = None) -> Stream:
        """The stream once it has a head or a reset (or whatever came in ``timeout``)."""
        stream = self.streams[sid]
        await self.until(lambda: stream.head is not None or stream.reset is not None, timeout)
        return stream

    async def complete(self, sid: int, timeout: float | None = None) -> Stream:
        """The stream once its response body ended (or it was reset)."""
        stream = self.streams[sid]

        def done() -> bool:
            if stream.reset is not None or stream.ended:
                return True
            return stream.head is not None and stream.head[0] == RESPONSE and not stream.head[5]

        await self.until(done, timeout)
        return stream


# -- raw sockets ---------------------------------------------------------------------


def raw_exchange(
    host: str, port: int, request: bytes, *, timeout: float = 5.0, read_limit: int = 1 << 20
) -> bytes:
    """Send raw bytes, read until the server closes or ``timeout``: whatever came back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        total = 0
        with contextlib.suppress(OSError):
            while total < read_limit:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """Status code of the first response in ``answer`` (None if there is none)."""
    line = answer.split(b"\r\n", 1)[0].split()
    if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit():
        return int(line[1])
    return None


def statuses_of(answer: bytes) -> list[int]:
    """Status codes of every response head found in ``answer``."""
    found = []
    for part in answer.split(b"HTTP/1.")[1:]:
        fields = part.split(b" ", 2)
        if len(fields) >= 2 and fields[1][:3].isdigit():
            found.append(int(fields[1][:3]))
    return found


def response_complete(data: bytes) -> bool:
    """True once ``data`` holds a whole response head and its Content-Length body."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = 0
    for line in data[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            return data.endswith(b"0\r\n\r\n")
    return len(data) >= head_end + 4 + length


async def async_raw_exchange(
    host: str, port: int, request: bytes, *, timeout: float = 5.0, whole: bool = False
) -> bytes:
    """Send raw bytes; return the first whole response (or all until close with ``whole``).

    The write side stays open: a half-close would read as a client gone away.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    data += chunk
                    if not whole and response_complete(data):
                        break
        return data
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
