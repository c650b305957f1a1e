"""What the hostile peer sends: floods shared by the suite and ``bench/``, and attack catalogues.

* ``open_websockets`` / ``push_unfinished``: many tunnelled WebSockets, each
  pushed a message that never finishes, as fast as the gateway's credit allows;
* ``MALFORMED``, ``EDGE_SMUGGLING``, ``open_variants``: inputs every gateway
  must refuse (close the session, answer 400, refuse the stream);
* ``SMUGGLED`` / ``send_carrier``: a request hidden in a tunnelled body.

Written with ``peer.py`` only (no ``gateway`` import), like it.
"""

from __future__ import annotations

import asyncio
from typing import Final

from tests.hostile.peer import HostilePeer, Stream, data, end, message, open_http, open_ws

# -- attacks shared by the suite and bench/attacks.py ----------------------------------


async def open_websockets(
    peer: HostilePeer, n: int, target: str = "/ws", *, timeout: float | None = None
) -> list[int]:
    """Open ``n`` tunnelled WebSockets; the ids of those accepted within ``timeout``."""
    sids = [peer.sid() for _ in range(n)]
    for i in range(0, n, 32):
        await peer.send(*(open_ws(s, target, [("Host", "x")]) for s in sids[i : i + 32]))
    await peer.until(
        lambda: all(peer.streams[s].head or peer.streams[s].reset for s in sids), timeout
    )
    return [s for s in sids if peer.streams[s].accepted]


async def push_unfinished(
    peer: HostilePeer,
    sids: list[int],
    size: int,
    *,
    chunk_size: int = 256 * 1024,
    stall: float = 3.0,
    stop: asyncio.Event | None = None,
) -> int:
    """Send each stream a WebSocket message of ``size`` bytes that never finishes (no FIN).

    Sends as fast as the gateway grants credit; returns when every message
    is out, or no credit came for ``stall`` seconds (the gateway bounded us),
    or the session ended. Returns the bytes the gateway let us send.
    """
    chunk = b"x" * chunk_size
    sent = dict.fromkeys(sids, 0)
    total = 0

    def open_streams() -> list[int]:
        return [s for s in sids if sent[s] < size and peer.streams[s].reset is None]

    while peer.closed is None and not (stop is not None and stop.is_set()):
        frames = []
        for s in open_streams():
            stream = peer.streams[s]
            k = min(chunk_size, size - sent[s], stream.credit)
            if k <= 0:
                continue
            stream.credit -= k
            sent[s] += k
            total += k
            frames.append(message(s, chunk[:k], fin=False))
            if len(frames) >= 4:
                await peer.send(*frames)
                frames = []
        if frames:
            await peer.send(*frames)
            continue
        if not open_streams():
            break
        if not await peer.until(
            lambda: any(peer.streams[s].credit > 0 for s in open_streams()), stall
        ):
            break
    return total


# -- attack catalogues ------------------------------------------------------------------

#: Malformed session batches of every kind (each must close its session only).
MALFORMED: Final = [
    b"\xc1",
    b"\x91\xc1",
    b"\x81\x01\x02",
    b"\x93\x02\x01",
    b"\xc6\xff\xff\xff\xff",
    b"\x92\x02\xa1x",
    b"\xd4\x01\x01",
    b"\x94\x02\x01\x01\xc3",
]

#: Edge request smuggling: each must be answered 400 with nothing at the origin.
EDGE_SMUGGLING: Final = {
    "CL+TE": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE.CL": b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "CL.TE": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "two lengths": b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "obs-fold": b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    "bare LF": b"GET /s HTTP/1.1\nHost: x\n\n",
    "TE xchunked": b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
}


def open_variants(evil: int) -> list[tuple[str, bytes, list[tuple[str, str]]]]:
    h = [("Host", f"127.0.0.1:{evil}")]
    return [
        ("GET", f"http://127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"http://127.0.0.1:{evil}".encode(), h),
        ("GET", f"HTTP://127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"https://127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"ws://127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"m://127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"//127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"///127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f":{evil}/steal".encode(), h),
        ("GET", f"@127.0.0.1:{evil}/steal".encode(), h),
        ("CONNECT", f"127.0.0.1:{evil}".encode(), h),
        ("CONNECT", b"/x", h),
        ("OPTIONS", b"*", h),
        ("GET", b"*", h),
        ("GET", f"/\\\\127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"/steal HTTP/1.1\r\nHost: 127.0.0.1:{evil}".encode(), h),
        ("GET", f"/%2F127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"\thttp://127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f" http://127.0.0.1:{evil}/".encode(), h),
        ("GET", b"", h),
        ("GET", f"http://x@127.0.0.1:{evil}/steal".encode(), h),
        ("GET", f"http://127.0.0.1:{evil}\\@main/steal".encode(), h),
    ]


#: The request an attacker tries to smuggle to the origin inside a tunnelled body.
SMUGGLED = (
    b"GET /smuggled HTTP/1.1\r\nHost: evil.example\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\nContent-Length: 0\r\n\r\n"
)


async def send_carrier(peer: HostilePeer, body: bytes = SMUGGLED) -> Stream:
    """A tunnelled POST whose honest body is another request's head (a smuggling carrier)."""
    sid = peer.sid()
    await peer.send(
        open_http(
            sid,
            "POST",
            "/carrier",
            [("Host", "x"), ("Content-Length", str(len(body)))],
            has_body=True,
        ),
        data(sid, body),
        end(sid),
    )
    return await peer.complete(sid, 5)
