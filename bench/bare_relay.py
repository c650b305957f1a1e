"""The cheapest relay asyncio can be: the floor under a pair of Python gateways.

Each accepted connection gets one connection to ``--target``, and every
chunk read on one side is written to the other in the same callback
(``asyncio.Protocol``: no task, no queue, no parsing). The legacy table runs
two of these in a row where the gateways would be (client -> relay -> relay
-> origin): the rate a legacy app keeps through two processes that do
nothing but move its bytes. Anything a gateway does (HTTP parsing, the
tunnel, the session) comes on top, so a target beyond this floor is beyond
any pair of Python (asyncio) relays on the machine, not beyond hopgate's
code. (A relay in C would cost less: this is the floor for our stack.)

Flow control is the transports' own: a side whose peer's write buffer is
over its high-water mark stops reading until it drains, so a slow reader
holds at most one buffer per direction here. A half-close (EOF) is passed
on; a socket closes once it has both read and sent an EOF, and either side
closing or failing closes the other.

    python bench/bare_relay.py --target 127.0.0.1:8080 [--listen 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


class _Side(asyncio.Protocol):
    """One socket of a relayed pair; ``peer`` is the other (set once both are up)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.closed = False
        self.got_eof = False
        self.sent_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # until the other side is up (``_pair``): nothing to hold

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None  # read only once paired
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        assert self.peer is not None  # read only once paired
        _pass_eof(self, self.peer)
        return True  # keep writing the other way until that side ends too

    def pause_writing(self) -> None:  # our buffer is full: stop the side that fills it
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def _pass_eof(side: _Side, peer: _Side) -> None:
    """``side`` read an EOF: send it on, and close each socket done both ways."""
    assert peer.transport is not None
    if peer.transport.can_write_eof():
        peer.transport.write_eof()
    peer.sent_eof = True
    for s in (side, peer):
        if s.got_eof and s.sent_eof and s.transport is not None:
            s.transport.close()


def _pair(a: _Side, b: _Side) -> None:
    """Joins two connected sides and starts reading both (a side already gone closes the other)."""
    a.peer, b.peer = b, a
    for side, other in ((a, b), (b, a)):
        assert side.transport is not None and other.transport is not None
        if side.closed:
            other.transport.close()
        else:
            side.transport.resume_reading()


async def serve(listen: int, target: str) -> asyncio.Server:
    """Starts relaying ``127.0.0.1:listen`` (0: any free port) to ``target`` (host:port)."""
    loop = asyncio.get_running_loop()
    host, _, port = target.rpartition(":")
    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> _Side:
        down = _Side()

        async def connect() -> None:
            try:
                _, up = await loop.create_connection(_Side, host, int(port))
            except OSError:
                if down.transport is not None:
                    down.transport.close()
                return
            _pair(down, up)

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return down

    return await loop.create_server(accepted, "127.0.0.1", listen)


async def _main(listen: int, target: str) -> None:
    server = await serve(listen, target)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port} -> {target}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--target", required=True, help="host:port to relay to")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.listen, args.target))


if __name__ == "__main__":
    main()
