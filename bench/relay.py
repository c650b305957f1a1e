"""A userspace TCP delay relay: a real round-trip time on loopback, and a byte count.

``tc netem`` needs root and changes the whole interface; the RTT rows of the
benchmarks need one path delayed and every other path fast. ``DelayRelay``
listens on ``127.0.0.1`` and relays every connection to a target, holding each
chunk ``rtt / 2`` in each direction before writing it on. Order is kept (one
FIFO per direction); the delay is per chunk, not per byte, so the cost of the
relay does not grow with small writes. Each connection has four tasks (a
reader and a delayed writer per direction), whatever the traffic.

It also counts the bytes it carries (``bytes_up`` towards the target,
``bytes_down`` back), which the suite reads as "bytes on the wire".

    async with DelayRelay(0, "127.0.0.1:8080", rtt=0.050) as relay:
        ...  # connect to relay.port

CLI:  python bench/relay.py --listen 9000 --target 127.0.0.1:8080 --rtt-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque

_CHUNK = 256 * 1024


class _Pipe:
    """One direction of one connection: chunks wait in a FIFO until their due time."""

    def __init__(self, relay: DelayRelay, writer: asyncio.StreamWriter, up: bool) -> None:
        self.relay = relay
        self.writer = writer
        self.up = up
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.ready = asyncio.Event()

    async def read_from(self, reader: asyncio.StreamReader) -> None:
        """Reads as fast as the peer sends; bounded by the writer's drain below."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(_CHUNK)
                self.queue.append((loop.time() + self.relay.delay, data))
                self.ready.set()
                if not data:
                    return
                if self.up:
                    self.relay.bytes_up += len(data)
                else:
                    self.relay.bytes_down += len(data)
        except (ConnectionError, OSError):
            self.queue.append((loop.time() + self.relay.delay, None))
            self.ready.set()

    async def write_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.ready.clear()
                await self.ready.wait()
                continue
            due, data = self.queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            if data is None:
                self.writer.transport.abort()
                return
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError):
                return


class DelayRelay:
    """Relays ``127.0.0.1:listen_port`` to ``target`` adding ``rtt / 2`` each way."""

    def __init__(self, listen_port: int, target: str, rtt: float) -> None:
        host, _, port = target.rpartition(":")
        self.target_host = host or "127.0.0.1"
        self.target_port = int(port)
        self.listen_port = listen_port
        self.rtt = rtt
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def delay(self) -> float:
        return self.rtt / 2

    @property
    def port(self) -> int:
        assert self._server is not None, "start the relay first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bytes_total(self) -> int:
        return self.bytes_up + self.bytes_down

    def reset_counts(self) -> None:
        self.bytes_up = self.bytes_down = 0

    async def start(self) -> DelayRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> DelayRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)
            me.add_done_callback(self._tasks.discard)
        self._writers.update((writer, up_writer))
        up = _Pipe(self, up_writer, up=True)
        down = _Pipe(self, writer, up=False)
        parts = [up.read_from(reader), up.write_out(), down.read_from(up_reader), down.write_out()]
        try:
            await asyncio.gather(*parts)
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _serve(listen: int, target: str, rtt: float) -> None:
    async with DelayRelay(listen, target, rtt) as relay:
        print(f"relay 127.0.0.1:{relay.port} -> {target}, rtt {rtt * 1000:.1f} ms", flush=True)
        started = time.monotonic()
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            took = time.monotonic() - started
            print(f"carried {relay.bytes_up} B up, {relay.bytes_down} B down in {took:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--target", required=True, help="host:port to relay to")
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round trip added, ms")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, args.target, args.rtt_ms / 1000))


if __name__ == "__main__":
    main()
