"""A WebSocket relay on aiohttp's stock pieces: the reference under the hop message columns.

The message table's hop columns put one process, the server gateway, between
the client and the server: it ends the client's WebSocket (the hop session)
and opens its own to the server's ``/ws``. This is that process with nothing
of hopgate in it: each accepted WebSocket gets one WebSocket to ``--target``
(aiohttp's server and client, as the design fixes), and every message read
on one side is sent on the other with aiohttp's ``send_bytes`` /
``send_str``. No session (nothing acknowledged, resent or resumed), no
tunnel framing, no flow control beyond aiohttp's own drain.

So the raw client through it measures what any gateway made of aiohttp's
WebSocket costs, before anything hopgate does: the suite runs it beside the
hop columns for bursts, round trips and message sizes. Like the bare TCP
relay (``bare_relay.py``) it is a reference, not a strict floor: hopgate
writes frames with its own coalescing writer (``write_frames_now``), which
this does not use.

Closing is passed on with its code and reason; a target that cannot be
reached closes the client's WebSocket with 1011 and says so.

    python bench/bare_ws_relay.py --target http://127.0.0.1:8080 [--listen 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (run as a script too)

from bench.bare_tunnel import serve_forever

#: The relay's one HTTP client, for the app's lifetime.
_HTTP: Final = web.AppKey("http", aiohttp.ClientSession)
#: Close codes a peer may not send in a close frame (RFC 6455 7.4.1): passed on as 1011.
_RESERVED = frozenset({1004, 1005, 1006, 1015})


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """``source``'s messages to ``sink`` until ``source`` ends; then ``sink`` closes alike."""
    async for msg in source:
        if msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
    code = source.close_code or 1000
    await sink.close(code=1011 if code in _RESERVED else code, message=b"")


def relay_app(target: str) -> web.Application:
    async def relay(request: web.Request) -> web.WebSocketResponse:
        down = web.WebSocketResponse(max_msg_size=0)
        await down.prepare(request)
        try:
            up = await request.app[_HTTP].ws_connect(target + request.path_qs, max_msg_size=0)
        except (aiohttp.ClientError, OSError) as exc:
            await down.close(code=1011, message=f"bare_ws_relay: target {exc!r}"[:120].encode())
            return down
        async with up:
            await asyncio.gather(_pump(down, up), _pump(up, down), return_exceptions=True)
        return down

    async def client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            app[_HTTP] = http
            yield

    app = web.Application()
    app.router.add_get("/{tail:.*}", relay)
    app.cleanup_ctx.append(client)
    return app


async def _main(listen: int, target: str) -> None:
    runner = web.AppRunner(relay_app(target), access_log=None)
    await runner.setup()
    await serve_forever(runner, listen, f"-> {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--target", required=True, help="http:// URL to relay WebSockets to")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.listen, args.target.rstrip("/")))


if __name__ == "__main__":
    main()
