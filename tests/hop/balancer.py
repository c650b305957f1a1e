"""A tiny round-robin TCP balancer for the drain and failover tests (no affinity at all).

Each new connection goes to the next backend in turn; a backend that refuses
the connection is skipped (as a load balancer's health check would, only
faster), so a killed instance's share goes to the survivors. Bytes are
spliced both ways until either side closes. ``refuse_websocket`` answers a
WebSocket upgrade ``400`` (a path that carries only plain HTTP: the hop
runs on long-poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence


class RoundRobin:
    """Listens on 127.0.0.1:``port``; ``picks`` counts the connections each backend got."""

    def __init__(self, backends: Sequence[int], *, refuse_websocket: bool = False) -> None:
        self.backends = list(backends)
        self.refuse_websocket = refuse_websocket
        self.picks = dict.fromkeys(self.backends, 0)
        self._turn = itertools.cycle(range(len(self.backends)))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            port = self.backends[next(self._turn)]
            with contextlib.suppress(OSError):
                pair = await asyncio.open_connection("127.0.0.1", port)
                self.picks[port] += 1
                return pair
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            up_reader, up_writer = upstream
            refusal = writer if self.refuse_websocket else None
            await asyncio.gather(
                _pipe(reader, up_writer, refusal), _pipe(up_reader, writer), return_exceptions=True
            )
            up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)


#: The refusal, and it says the connection ends here: a client must not pool it.
_REFUSAL = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    refuse_upgrades_to: asyncio.StreamWriter | None = None,
) -> None:
    """Copy until EOF; with ``refuse_upgrades_to`` (the client), answer an upgrade 400 and stop."""
    try:
        while data := await reader.read(65536):
            if refuse_upgrades_to is not None and b"upgrade: websocket" in data.lower():
                refuse_upgrades_to.write(_REFUSAL)
                refuse_upgrades_to.close()
                return
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


@contextlib.asynccontextmanager
async def round_robin(
    backends: Sequence[int], *, refuse_websocket: bool = False
) -> AsyncIterator[RoundRobin]:
    balancer = RoundRobin(backends, refuse_websocket=refuse_websocket)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.close()
