"""bench/relay.py: the delay relay the RTT rows and the byte counts rely on."""

from __future__ import annotations

import asyncio
import time

from bench.relay import DelayRelay


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_adds_the_round_trip_and_keeps_order_and_counts() -> None:
    server = await echo_server()
    port = server.sockets[0].getsockname()[1]
    try:
        async with DelayRelay(0, f"127.0.0.1:{port}", rtt=0.040) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            took = []
            for _ in range(3):
                started = time.monotonic()
                writer.write(b"ping")
                await asyncio.wait_for(reader.readexactly(4), 5)
                took.append(time.monotonic() - started)
            assert min(took) >= 0.039, took
            assert max(took) < 0.040 + 0.5, took
            # Many small writes in a row: one FIFO per direction keeps them in order.
            chunks = [bytes([i % 256]) * (1 + i % 97) for i in range(500)]
            for chunk in chunks:
                writer.write(chunk)
            expected = b"".join(chunks)
            got = await asyncio.wait_for(reader.readexactly(len(expected)), 10)
            assert got == expected
            assert relay.bytes_up == relay.bytes_down == 12 + len(expected)
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_closing_side_closes_the_other() -> None:
    server = await echo_server()
    port = server.sockets[0].getsockname()[1]
    try:
        async with DelayRelay(0, f"127.0.0.1:{port}", rtt=0.010) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"last")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"last"  # then EOF
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
