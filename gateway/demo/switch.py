"""The path switch of ``hopgate demo --browser``: a reverse proxy that can block WebSocket.

It stands where a corporate proxy or an antivirus would, between the browser
and the gateway, and forwards everything unchanged (``Host`` too, so the
gateway sees the page as same-origin) until the person at the page blocks
WebSocket: then it cuts the WebSockets it carries and answers new upgrades
``403``, as such a proxy does, while plain HTTP (the long-poll transport)
still passes. Its own control is ``POST /.demo/websocket`` with ``block`` or
``unblock`` as the body; ``GET`` says the state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import WSMsgType, web

__all__ = ["CONTROL_PATH", "PathSwitch"]

CONTROL_PATH = "/.demo/websocket"
#: Headers that describe one connection, not the request (RFC 9110 §7.6.1), plus framing.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def _end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


class PathSwitch:
    """Forwards to ``upstream``; ``blocked`` refuses and cuts WebSockets."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.blocked = False
        self.cut = 0  # WebSockets cut by blocking
        self.refused = 0  # upgrades refused while blocked
        self._live: set[web.WebSocketResponse] = set()
        self._http: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[str]:
        """Listen on ``host:port`` (0: a free one); yields the base URL."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        self._http = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        runner = web.AppRunner(web.Application(handler_args={"max_field_size": 16384}))
        runner.app.router.add_route("*", "/{tail:.*}", self._handle)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            yield f"http://{host}:{runner.addresses[0][1]}"
        finally:
            await self.set_blocked(False)
            for ws in list(self._live):
                await ws.close(code=1001)
            await runner.cleanup()
            await self._http.close()

    async def set_blocked(self, blocked: bool) -> None:
        """Block (cut the WebSockets carried now, refuse new ones) or unblock."""
        self.blocked = blocked
        if blocked:
            for ws in list(self._live):
                self.cut += 1
                await ws.close(code=1001, message=b"WebSocket blocked on the path")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == CONTROL_PATH:
            return await self._control(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.blocked:
                self.refused += 1
                return web.Response(status=403, text="WebSocket is blocked on this path\n")
            return await self._websocket(request)
        return await self._forward(request)

    async def _control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            action = (await request.text()).strip()
            if action not in ("block", "unblock"):
                return web.Response(status=400, text="send 'block' or 'unblock'\n")
            await self.set_blocked(action == "block")
        state = {"blocked": self.blocked, "cut": self.cut, "refused": self.refused}
        return web.json_response(state, headers={"Cache-Control": "no-store"})

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read() if request.body_exists else None
        try:
            upstream = await self._http.request(
                request.method,
                self.upstream + request.path_qs,
                headers=_end_to_end(request.headers),
                data=body,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"the gateway is unreachable: {exc}\n")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.update(_end_to_end(upstream.headers))
            await response.prepare(request)
            with contextlib.suppress(aiohttp.ClientError, ConnectionResetError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("host", "origin")}
        url = self.upstream.replace("http", "ws", 1) + request.path_qs
        try:
            upstream = await self._http.ws_connect(
                url, protocols=[p for p in offered if p], headers=headers
            )
        except aiohttp.ClientError:
            return web.Response(status=502, text="the gateway refused the WebSocket\n")
        ws = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else ())
        await ws.prepare(request)
        self._live.add(ws)
        try:
            await asyncio.gather(_pump(ws, upstream), _pump(upstream, ws))
        finally:
            self._live.discard(ws)
            await upstream.close()
            await ws.close()
        return ws


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy messages one way until either side closes; then close the other."""
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
        while True:
            msg = await source.receive()
            if msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            else:
                break
    await sink.close()
