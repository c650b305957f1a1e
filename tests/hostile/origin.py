"""The recording origin the hostile suite and ``bench/attacks.py`` attack through gateways.

A real aiohttp application that records every request it gets (method, raw
target, the headers smuggling would show in, body length, head length), so
an attack's row or assertion can say what reached the origin. Routes:
``/ws`` (echoes ``echo:`` + each message), ``/stream`` (a long response for a
peer that never reads), ``/hold?s=N`` (held N seconds, counted), ``/__seen``
(the records, cleared; for an origin in another process) and everything
else (recorded and answered with its record). Imports nothing from
``gateway``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

MiB = 1024 * 1024


@dataclass
class Origin:
    """A real aiohttp origin that records every request it gets.

    Several origins may share one ``seen`` list (the bench's ``main`` and
    ``evil`` sites); each record names its origin (``site``).
    """

    name: str
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    held: int = 0
    peak_held: int = 0
    #: A ``/stream`` response sends at most this many 64 KiB chunks.
    stream_chunks: int = 4096  # 256 MiB

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def paths(self) -> list[str]:
        return [e["path"] for e in self.seen]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_get("/__seen", self.seen_route)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/hold", self.hold)
        app.router.add_route("*", "/{tail:.*}", self.any)
        return app

    def record(self, request: web.Request, body: int | None) -> dict[str, Any]:
        entry = {
            "site": self.name,
            "method": request.method,
            "path": request.raw_path,
            "host": request.headers.get("Host"),
            "xff": request.headers.get("X-Forwarded-For"),
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

    async def seen_route(self, request: web.Request) -> web.Response:
        """Every request recorded so far (cleared unless ``?clear=0``), and the held count."""
        out = list(self.seen)
        if request.query.get("clear", "1") == "1":
            self.seen.clear()
        return web.json_response({"seen": out, "connections": self.held})

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
        for _ in range(self.stream_chunks):
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
