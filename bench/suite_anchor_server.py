"""The server side of the message rows: raw aiohttp WebSocket and python-engineio, one process.

``/ws`` is a plain aiohttp WebSocket endpoint (the raw anchor, and the
endpoint a hop session's tunnelled WebSocket reaches through ``hopgate
server``); ``/engine.io/`` is a python-engineio ``AsyncServer`` on the same
aiohttp app (its WebSocket and polling transports, default options, as a
user would run it). Both speak the same little protocol, per connection:

* ``mode:echo``: every later message is sent back as it came;
* ``mode:count:N``: later messages are counted; after the Nth the server
  sends ``done`` (the client's clock stops there);
* ``mode:tick:R:N``: the server sends N messages ``t:<time.time()>`` at R per
  second (absolute schedule): the client's one-way delivery latency;

each mode message is answered ``ok``. ``/held`` counts open raw WebSockets
(the idle-memory anchor holds thousands of them).

Usage:  python bench/suite_anchor_server.py [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import engineio
from aiohttp import WSMsgType, web


@dataclass
class Conn:
    """Per-connection state: echo, or count down to ``done``."""

    echo: bool = False
    left: int = -1
    tick: tuple[float, int] | None = None

    def on(self, data: bytes | str) -> bytes | str | None:
        """What to send back for one message, if anything."""
        if isinstance(data, str) and data.startswith("mode:"):
            parts = data.split(":")
            self.echo = parts[1] == "echo"
            self.left = int(parts[2]) if parts[1] == "count" else -1
            self.tick = (float(parts[2]), int(parts[3])) if parts[1] == "tick" else None
            return "ok"
        if self.echo:
            return data
        if self.left > 0:
            self.left -= 1
            if self.left == 0:
                return "done"
        return None


TASKS: set[asyncio.Task[None]] = set()


def start_ticks(conn: Conn, send: Callable[[str], Awaitable[object]]) -> None:
    if conn.tick is None:
        return
    rate, count = conn.tick
    conn.tick = None

    async def ticks() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for _ in range(count):
            due += 1 / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            await send(f"t:{time.time()!r}")

    task = asyncio.create_task(ticks())
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)


async def raw_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
    await ws.prepare(request)
    conn = Conn()
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            break
        reply = conn.on(msg.data)
        if reply is None:
            continue
        if isinstance(reply, str):
            await ws.send_str(reply)
            start_ticks(conn, ws.send_str)
        else:
            await ws.send_bytes(reply)
    return ws


def engineio_server() -> engineio.AsyncServer:
    eio = engineio.AsyncServer(
        async_mode="aiohttp", max_http_buffer_size=16 * 1024 * 1024, cors_allowed_origins="*"
    )
    conns: dict[str, Conn] = {}

    @eio.on("connect")
    async def connect(sid: str, environ: object) -> None:
        conns[sid] = Conn()

    @eio.on("disconnect")
    async def disconnect(sid: str, *reason: object) -> None:
        conns.pop(sid, None)

    @eio.on("message")
    async def message(sid: str, data: bytes | str) -> None:
        conn = conns.setdefault(sid, Conn())
        reply = conn.on(data)
        if reply is not None:
            await eio.send(sid, reply)
            start_ticks(conn, lambda data: eio.send(sid, data))

    return eio


async def serve(port: int) -> None:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/ws", raw_ws)
    engineio_server().attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
