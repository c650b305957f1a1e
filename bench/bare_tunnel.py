"""A minimal gateway pair on aiohttp's stock pieces with a WebSocket hop: hopgate's reference.

Two processes where hopgate's two gateways would be, built from the same
pieces the design fixes (aiohttp's HTTP server, its WebSocket, its HTTP
client) and nothing else:

* ``near`` answers every HTTP request by sending it, whole, as one msgpack
  message over one WebSocket to ``far``, and answers with what comes back;
* ``far`` makes each such request to ``--upstream`` with aiohttp's client and
  sends the whole answer back as one message.

No session (nothing is acknowledged, resent or resumed), no tunnel framing,
no flow control, no header filtering beyond what aiohttp needs, bodies read
whole: a request lost with the WebSocket is lost. That is not a gateway, it
is a reference: the legacy table runs it beside the hops, so what the hops
cost beyond it is what hopgate's session, tunnel and edge rules cost. It is
not a strict floor: hopgate's own origin client (``origin_client.py``) does
less per request than aiohttp's ``ClientSession``, which this uses as a
user's first gateway would.

    python bench/bare_tunnel.py far --upstream http://127.0.0.1:8080
    python bench/bare_tunnel.py near --target ws://127.0.0.1:PORT/ws
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools

import aiohttp
import msgpack
from aiohttp import web
from multidict import CIMultiDictProxy

#: Framing headers: each side's aiohttp makes its own.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host"})


def _pairs(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _FRAMING]


async def _far(upstream: str) -> web.AppRunner:
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )
    tasks: set[asyncio.Task[None]] = set()

    async def answer(ws: web.WebSocketResponse, data: bytes) -> None:
        rid, method, target, headers, body = msgpack.unpackb(data)
        try:
            url = upstream + target
            async with http.request(method, url, headers=headers, data=body or None) as r:
                got = await r.read()
                doc = [rid, r.status, r.reason or "", _pairs(r.headers), got]
        except (aiohttp.ClientError, TimeoutError) as exc:
            doc = [rid, 502, "Bad Gateway", [], f"origin: {exc!r}\n".encode()]
        if not ws.closed:
            await ws.send_bytes(msgpack.packb(doc))

    async def hop(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                task = asyncio.create_task(answer(ws, msg.data))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        return ws

    app = web.Application()
    app.router.add_get("/ws", hop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def _near(target: str) -> web.AppRunner:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(target, max_msg_size=0)
    waiting: dict[int, asyncio.Future[list[object]]] = {}
    ids = itertools.count()

    async def read() -> None:
        async for msg in ws:
            doc = msgpack.unpackb(msg.data)
            fut = waiting.pop(doc[0], None)
            if fut is not None and not fut.done():
                fut.set_result(doc)
        for fut in waiting.values():  # the far side is gone: these get no answer
            if not fut.done():
                fut.set_exception(ConnectionError("the far side's WebSocket closed"))
        waiting.clear()

    reader = asyncio.create_task(read())

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        rid = next(ids)
        fut: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        waiting[rid] = fut
        try:
            if ws.closed:
                raise ConnectionError("the far side's WebSocket closed")
            await ws.send_bytes(
                msgpack.packb([rid, request.method, request.path_qs, _pairs(request.headers), body])
            )
            _, status, reason, headers, got = await fut
        except ConnectionError as exc:
            return web.Response(
                status=502, text=f"bare_tunnel near: the far side is gone ({exc})\n"
            )
        finally:
            waiting.pop(rid, None)  # answered, failed, or its client went away
        return web.Response(status=status, reason=reason, headers=headers, body=got)  # type: ignore[arg-type]

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: _close(reader, ws, http))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def _close(
    reader: asyncio.Task[None], ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession
) -> None:
    reader.cancel()
    await ws.close()
    await http.close()


async def serve_forever(runner: web.AppRunner, listen: int, label: str) -> None:
    """Serves ``runner`` on ``127.0.0.1:listen`` (0: any free port) until cancelled.

    Announces the port as the suite's children do (``listening on URL LABEL``).
    """
    await web.TCPSite(runner, "127.0.0.1", listen).start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port} {label}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _main(args: argparse.Namespace) -> None:
    runner = await (_far(args.upstream) if args.role == "far" else _near(args.target))
    await serve_forever(runner, args.listen, f"({args.role})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("near", "far"))
    parser.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--target", help="near: the far side's ws:// URL")
    parser.add_argument("--upstream", help="far: the origin's http:// URL")
    args = parser.parse_args()
    if (args.role == "near") != bool(args.target) or (args.role == "far") != bool(args.upstream):
        parser.error("near needs --target (and no --upstream); far needs --upstream")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
