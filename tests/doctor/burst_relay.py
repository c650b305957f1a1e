"""A TCP relay that passes HTTP as is but, once a connection is upgraded (``101``), holds the
bytes towards the client and releases them once every ``period`` seconds.

Like an inspecting proxy that scans a tunnel in chunks: frames do arrive, in
bursts. ``tests/faultproxy.py`` covers the other cases (refused upgrade, black hole).
"""

from __future__ import annotations

import asyncio
import contextlib


class BurstRelay:
    def __init__(self, target_port: int, period: float = 1.0) -> None:
        self.target_port = target_port
        self.period = period
        self.port = 0
        self.upgraded = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> BurstRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        tasks = [
            asyncio.create_task(self._copy(reader, up_writer)),
            asyncio.create_task(self._down(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        writer.write(first)
        if not first.startswith(b"HTTP/1.1 101"):
            await self._copy(reader, writer)
            return
        self.upgraded += 1
        held = bytearray()
        loop = asyncio.get_running_loop()
        release = loop.time() + self.period
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                try:
                    async with asyncio.timeout_at(release):
                        data = await reader.read(65536)
                    if not data:
                        return
                    held += data
                except TimeoutError:
                    writer.write(bytes(held))
                    held.clear()
                    await writer.drain()
                    release = loop.time() + self.period
