"""Fixtures of the hostile-peer suite: a recording origin, a forbidden host, error capture.

The suite attacks running gateways the way issue 7 did (see
``bench/attacks.py`` for the same attacks at full scale, with figures):
``peer.py`` speaks the hop protocol by hand, raw sockets speak HTTP badly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import MakeOrigin

MiB = 1024 * 1024


@dataclass
class Origin:
    """A real aiohttp origin that records every request it gets."""

    name: str
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    held: int = 0
    peak_held: int = 0

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def paths(self) -> list[str]:
        return [e["path"] for e in self.seen]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/hold", self.hold)
        app.router.add_route("*", "/{tail:.*}", self.any)
        return app

    def record(self, request: web.Request, body: int | None) -> dict[str, Any]:
        entry = {
            "method": request.method,
            "path": request.raw_path,
            "host": request.headers.get("Host"),
            "via": request.headers.get("Via"),
            "cl": request.headers.get("Content-Length"),
            "te": request.headers.get("Transfer-Encoding"),
            "body": body,
            "head_len": len(request.method)
            + len(request.raw_path)
            + 12
            + sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
            + 2,
        }
        self.seen.append(entry)
        return entry

    async def any(self, request: web.Request) -> web.StreamResponse:
        # GET bodies stay unread, as at many origins: whatever follows on the
        # connection is then parsed as the next request.
        body = await request.read() if request.method in ("POST", "PUT") else None
        return web.json_response(self.record(request, None if body is None else len(body)))

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                await ws.send_bytes(
                    b"echo:" + (msg.data if isinstance(msg.data, bytes) else msg.data.encode())
                )
        return ws

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"s" * 65536
        for _ in range(4096):  # at most 256 MiB
            await resp.write(chunk)
        return resp

    async def hold(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        self.held += 1
        self.peak_held = max(self.peak_held, self.held)
        try:
            await asyncio.sleep(float(request.query.get("s", "30")))
        finally:
            self.held -= 1
        return web.Response(text="held")


@pytest.fixture
async def origin(make_origin: MakeOrigin) -> Origin:
    o = Origin("upstream")
    o.url = await make_origin(o.app())
    return o


@pytest.fixture
async def evil(make_origin: MakeOrigin) -> Origin:
    """A host no gateway may ever connect to."""
    o = Origin("evil")
    o.url = await make_origin(o.app())
    return o


class ErrorRecords(logging.Handler):
    """ERROR records of the gateway's loggers and aiohttp's server logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in self.records)


@pytest.fixture
def gateway_errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    names = ("hopgate", "aiohttp.server", "aiohttp.web", "asyncio")
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)
