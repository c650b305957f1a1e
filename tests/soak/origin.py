"""The soak's origin process: the demo Comet chat, plus what it saw, for the tests to read.

Run as ``python -m tests.soak.origin --port N [--hold S] [--history N]``;
it prints ``listening on http://127.0.0.1:N`` once it accepts. It is
``gateway.demo.comet`` unchanged (the origin must not know the gateways
are there) with every ``POST /send`` that reaches it counted by
``client_msg_id`` (the room's ``add`` is wrapped), and ``GET /soak/sends``: how many arrived, how
many were stored, and the ids that arrived more than once (``?ids=1``:
every id with its count), and ``GET /soak/hold?s=N``, answered after N
seconds. A send that
arrives twice is a duplicate the gateways made unless the legacy client
itself retried that id (the test keeps those counts); the chat's own
``client_msg_id`` dedup hides it from the pollers, so only this count shows
it. Run in its own process so the test can kill it (``kill -9``) and so its
CPU is not the test's.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from aiohttp import web

from gateway.demo.comet import ROOM, Message, make_app

ARRIVALS = web.AppKey("arrivals", Counter[str])


async def sends(request: web.Request) -> web.Response:
    arrivals = request.app[ARRIVALS]
    twice = {key: n for key, n in arrivals.items() if n > 1}
    doc = {
        "arrived": sum(arrivals.values()),
        "distinct": len(arrivals),
        "stored": request.app[ROOM].last_id,
        "more_than_once": twice,
    }
    if request.query.get("ids"):
        doc["arrivals"] = dict(arrivals)
    return web.json_response(doc)


async def held(request: web.Request) -> web.Response:
    """``GET/POST /soak/hold?s=N``: answered after N s (a request surely in flight at a fault)."""
    await request.read()
    await asyncio.sleep(float(request.query.get("s", "30")))
    return web.Response(text="held and answered")


def soak_app(hold: float, history: int) -> web.Application:
    app = make_app(hold, history)
    arrivals = app[ARRIVALS] = Counter()
    room = app[ROOM]
    add = room.add

    def counted_add(sender: str, text: str, client_msg_id: str | None) -> tuple[Message, bool]:
        arrivals[str(client_msg_id)] += 1
        return add(sender, text, client_msg_id)

    room.add = counted_add  # type: ignore[method-assign]
    app.router.add_get("/soak/sends", sends)
    app.router.add_get("/soak/hold", held)
    app.router.add_post("/soak/hold", held)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.origin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--history", type=int, default=50_000)
    args = parser.parse_args(argv)
    web.run_app(
        soak_app(args.hold, args.history),
        host="127.0.0.1",
        port=args.port,
        handler_cancellation=True,
        print=lambda _: print(f"listening on http://127.0.0.1:{args.port}", flush=True),
    )


if __name__ == "__main__":
    main()
