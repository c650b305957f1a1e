"""bench/bare_relay.py: the byte-copying relay behind the legacy table's floor column."""

from __future__ import annotations

import asyncio
import contextlib

from bench.bare_relay import serve
from tests.bench.test_bench_relay import echo_server
from tests.processes import free_port


async def relay_to(port: int) -> tuple[asyncio.Server, int]:
    relay = await serve(0, f"127.0.0.1:{port}")
    return relay, relay.sockets[0].getsockname()[1]


async def test_carries_both_ways_in_order_and_passes_a_half_close() -> None:
    server = await echo_server()
    relay, port = await relay_to(server.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        chunks = [bytes([i % 256]) * (1 + i % 997) for i in range(400)]
        for chunk in chunks:
            writer.write(chunk)
        expected = b"".join(chunks)
        assert await asyncio.wait_for(reader.readexactly(len(expected)), 10) == expected
        writer.write(b"last")
        writer.write_eof()
        # The echo server answers "last" after our EOF reached it, then ends: both came back.
        assert await asyncio.wait_for(reader.read(), 5) == b"last"
        writer.close()
    finally:
        relay.close()
        server.close()
        await server.wait_closed()


async def test_a_reader_that_stops_stops_the_writer_on_the_far_side() -> None:
    """Flow control: the relay holds about one buffer per direction, not the whole stream."""
    stalled = asyncio.Event()
    sent = 0

    async def firehose(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        block = b"f" * 65536
        try:
            while sent < 64 * 1024 * 1024:
                writer.write(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    stalled.set()
                    await writer.drain()
                sent += len(block)
        except ConnectionError:
            pass

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    relay, port = await relay_to(server.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
        await asyncio.wait_for(stalled.wait(), 20)
        # Kernel buffers on three sockets plus the relay's own: far below the 64 MiB sent.
        assert sent < 16 * 1024 * 1024, sent
        got = 0
        while got < sent:  # reading again lets it go on
            got += len(await asyncio.wait_for(reader.read(1 << 20), 10))
        writer.close()
    finally:
        relay.close()
        server.close()


async def test_a_target_that_is_not_there_closes_the_client() -> None:
    relay, port = await relay_to(free_port())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        # Closed with our request unread: the kernel may reset rather than end it.
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        relay.close()
