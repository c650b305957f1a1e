"""Hop session messages: latency at a real round trip, and the cost of one message per loop turn.

Two processes on loopback: this one runs the client end (``SessionConnector``,
what a client gateway uses), a child runs the server end (the
``SessionServer`` that ``hopgate server`` mounts under ``/.hopgate/session``)
with a small application on each session instead of the tunnel, so the
figures are the session layer's own:

``latency``   messages of 100 bytes at ``--rate`` a second for ``--seconds``
              through a ``DelayRelay`` adding ``--rtt-ms``, on one transport
              (``websocket`` or ``long-poll``). The server echoes each one,
              stamping when it arrived; both processes read the same
              ``CLOCK_MONOTONIC``, so one echo gives three figures: up (client
              -> server, one way), down (server -> client, one way, the echo)
              and the round trip. ``push`` is the server sending at the rate
              on its own (event delivery): down, one way.
``per-turn``  ``--turn-messages`` messages client -> server, one ``send`` per
              event-loop turn (``await asyncio.sleep(0)`` between), no delay:
              messages a second and CPU microseconds per message (both
              processes together), beside python-engineio over its WebSocket
              doing the same in the same run.
``burst``     the same messages sent at once (batching), beside raw aiohttp.

Usage:  .venv/bin/python bench/hop_messages.py [--rtt-ms 50] [--rate 100] [--seconds 5]
        [--tree PATH]   # another source tree's gateway package, both ends (/work/before)

``run(...)`` returns the same figures as a dict for ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_STAMP = struct.Struct("!d")
_SIZE = 100
#: Microseconds a clock tick of /proc/PID/stat is worth.
_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def _use_tree(tree: str | None) -> None:
    """Import ``gateway`` from ``tree`` (default: this checkout)."""
    root = str(Path(tree).resolve() if tree else HERE.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def _relay_module() -> Any:
    spec = importlib.util.spec_from_file_location("_hop_relay", HERE / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_us(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_US


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_pct(values, 0.50) * 1000, 1),
        "p99_ms": round(_pct(values, 0.99) * 1000, 1),
        "n": len(values),
    }


# -- the server child ------------------------------------------------------------------


def _serve_app(hop: Any) -> None:
    """One session's application: echo (``e``), count (``c``), push at a rate (``p``)."""
    state = {"count": 0}

    def on_message(data: bytes | str) -> None:
        assert isinstance(data, bytes)
        kind = data[:1]
        if kind == b"e":
            hop.send(b"E" + _STAMP.pack(time.monotonic()) + data[1:])
        elif kind == b"c":
            state["count"] += 1
        elif kind == b"n":  # how many counted so far
            hop.send(b"N" + str(state["count"]).encode())
        elif kind == b"p":
            rate, count = (float(x) for x in data[1:].split(b","))
            hop.spawn(_push(hop, rate, int(count)))

    hop.set_handlers(on_message=on_message)


async def _push(hop: Any, rate: float, count: int) -> None:
    start = time.monotonic()
    pad = b"x" * (_SIZE - 1 - _STAMP.size)
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        if hop.closed:
            return
        hop.send(b"P" + _STAMP.pack(time.monotonic()) + pad)


async def _serve_hop() -> None:
    from aiohttp import web

    from gateway.transports.endpoint import SessionServer
    from gateway.transports.session_settings import SessionSettings

    settings = SessionSettings(max_sessions_per_client=0, session_create_rate=1e6)
    server = SessionServer(settings, on_session=_serve_app)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await server.handle(request)

    await _serve_forever(lambda app: app.router.add_route("*", "/{tail:.*}", handle))


async def _serve_engineio() -> None:
    import engineio

    eio = engineio.AsyncServer(async_mode="aiohttp", max_http_buffer_size=1 << 20)
    counts: dict[str, int] = {}

    @eio.on("message")  # type: ignore[misc]
    async def message(sid: str, data: Any) -> None:
        if data == b"n":
            await eio.send(sid, str(counts.get(sid, 0)).encode())
        else:
            counts[sid] = counts.get(sid, 0) + 1

    await _serve_forever(eio.attach)


async def _serve_raw() -> None:
    from aiohttp import WSMsgType, web

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        count = 0
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                if msg.data == b"n":
                    await ws.send_bytes(str(count).encode())
                else:
                    count += 1
        return ws

    await _serve_forever(lambda app: app.router.add_get("/ws", handle))


async def _serve_forever(mount: Callable[[Any], Any]) -> None:
    from aiohttp import web

    app = web.Application()
    mount(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


# -- the client ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _child(kind: str, tree: str | None) -> AsyncIterator[tuple[str, int]]:
    """A server child (``hop``, ``engineio`` or ``raw``): (its URL, its pid)."""
    if str(HERE.parent) not in sys.path:
        sys.path.append(str(HERE.parent))
    from tests.processes import LISTENING, ChildProcess

    argv = [sys.executable, str(HERE / "hop_messages.py"), "--serve", kind]
    if tree:
        argv += ["--tree", tree]
    child = ChildProcess.start(
        argv, name=f"hop-messages-{kind}", cwd=tree or HERE.parent, announce=LISTENING
    )
    try:
        url = child.wait_announced()
        yield url, child.pid
    finally:
        child.stop()


@contextlib.asynccontextmanager
async def _session(url: str, prefer: str) -> AsyncIterator[Any]:
    import aiohttp
    from yarl import URL

    from gateway.transports.connector import SessionConnector
    from gateway.transports.session_settings import SessionSettings

    settings = SessionSettings(reprobe_initial=1e6, reprobe_max=1e6)
    async with aiohttp.ClientSession() as http:
        connector = SessionConnector(URL(url), http, settings, prefer=prefer)  # type: ignore[arg-type]
        hop = await connector.connect()
        assert hop.transport == prefer, f"wanted {prefer}, got {hop.transport}"
        try:
            yield hop
        finally:
            await connector.close()


async def _latency(url: str, prefer: str, rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    up: list[float] = []
    down: list[float] = []
    rtt: list[float] = []
    pushed: list[float] = []
    done = asyncio.Event()
    pushing = False

    def on_message(data: bytes | str) -> None:
        now = time.monotonic()
        assert isinstance(data, bytes)
        if data[:1] == b"E" and len(rtt) < count:
            (arrived,) = _STAMP.unpack_from(data, 1)
            (sent,) = _STAMP.unpack_from(data, 1 + _STAMP.size)
            up.append(arrived - sent)
            down.append(now - arrived)
            rtt.append(now - sent)
        elif data[:1] == b"P":
            pushed.append(now - _STAMP.unpack_from(data, 1)[0])
        if len(rtt) >= count and (not pushing or len(pushed) >= count):
            done.set()

    async with _session(url, prefer) as hop:
        hop.set_handlers(on_message=on_message)
        await asyncio.sleep(0.5)  # the transport settles (held GETs in place)
        pad = b"x" * (_SIZE - 1 - _STAMP.size)
        start = time.monotonic()
        for i in range(count):  # echo: the client sends at the rate
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            hop.send(b"e" + _STAMP.pack(time.monotonic()) + pad)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
        done.clear()
        pushing = True
        hop.send(f"p{rate},{count}".encode())  # push: the server sends at the rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), seconds + 10)
    return {"up": _ms(up), "down": _ms(down), "round_trip": _ms(rtt), "push": _ms(pushed)}


async def _await_count(ask: Callable[[], Any], answers: asyncio.Queue[bytes], count: int) -> None:
    for _ in range(2000):
        await ask()
        got = int(await asyncio.wait_for(answers.get(), 10))
        if got >= count:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the server never counted every message")


async def _hop_turns(url: str, pid: int, count: int, burst: bool) -> dict[str, float]:
    answers: asyncio.Queue[bytes] = asyncio.Queue()
    async with _session(url, "websocket") as hop:

        def on_message(data: bytes | str) -> None:
            assert isinstance(data, bytes)
            answers.put_nowait(data[1:])

        hop.set_handlers(on_message=on_message)

        async def ask() -> None:
            hop.send(b"n")

        return await _timed(pid, count, burst, hop.send, hop.drain, ask, answers)


async def _timed(
    pid: int,
    count: int,
    burst: bool,
    send: Callable[[bytes], Any],
    drain: Callable[[], Any] | None,
    ask: Callable[[], Any],
    answers: asyncio.Queue[bytes],
) -> dict[str, float]:
    payload = b"c" + b"x" * (_SIZE - 1)
    await asyncio.sleep(0.2)
    cpu0, own0, t0 = _cpu_us(pid), time.process_time(), time.perf_counter()
    for i in range(count):
        result = send(payload)
        if asyncio.iscoroutine(result):
            await result
        elif result is False and drain is not None:
            await drain()
            send(payload)
        if not burst or i % 1000 == 999:
            await asyncio.sleep(0)
    await _await_count(ask, answers, count)
    took = time.perf_counter() - t0
    cpu = _cpu_us(pid) - cpu0 + (time.process_time() - own0) * 1e6
    return {"msg_per_s": round(count / took), "cpu_us_per_msg": round(cpu / count, 1)}


async def _engineio_turns(url: str, pid: int, count: int, burst: bool) -> dict[str, float]:
    import engineio

    answers: asyncio.Queue[bytes] = asyncio.Queue()
    client = engineio.AsyncClient()

    @client.on("message")  # type: ignore[misc]
    async def message(data: Any) -> None:
        answers.put_nowait(data)

    await client.connect(url, transports=["websocket"])
    try:

        async def ask() -> None:
            await client.send(b"n")

        return await _timed(pid, count, burst, client.send, None, ask, answers)
    finally:
        await client.disconnect()


async def _raw_turns(url: str, pid: int, count: int, burst: bool) -> dict[str, float]:
    import aiohttp

    answers: asyncio.Queue[bytes] = asyncio.Queue()
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws") as ws:

        async def reader() -> None:
            async for msg in ws:
                answers.put_nowait(msg.data)

        task = asyncio.create_task(reader())
        try:

            async def ask() -> None:
                await ws.send_bytes(b"n")

            return await _timed(pid, count, burst, ws.send_bytes, None, ask, answers)
        finally:
            task.cancel()


async def run(
    *,
    rtt_ms: float = 50.0,
    rate: float = 100.0,
    seconds: float = 5.0,
    turn_messages: int = 20000,
    tree: str | None = None,
    parts: tuple[str, ...] = ("latency", "per-turn", "burst"),
) -> dict[str, Any]:
    """Every figure of this bench: {"latency": {transport: ...}, "per_turn": ..., "burst": ...}."""
    _use_tree(tree)
    results: dict[str, Any] = {"rtt_ms": rtt_ms, "rate": rate}
    async with _child("hop", tree) as (url, pid):
        if "latency" in parts:
            relay_cls = _relay_module().DelayRelay
            target = url.removeprefix("http://")
            results["latency"] = {}
            for prefer in ("websocket", "long-poll"):
                async with relay_cls(0, target, rtt_ms / 1000) as relay:
                    got = await _latency(relay.url, prefer, rate, seconds)
                results["latency"][prefer] = got
        for part, burst in (("per-turn", False), ("burst", True)):
            if part in parts:
                results[part.replace("-", "_")] = {
                    "hop_websocket": await _hop_turns(url, pid, turn_messages, burst)
                }
    for part, burst in (("per-turn", False), ("burst", True)):
        if part not in parts:
            continue
        key = part.replace("-", "_")
        async with _child("engineio", None) as (url, pid):
            results[key]["engineio_websocket"] = await _engineio_turns(
                url, pid, turn_messages, burst
            )
        async with _child("raw", None) as (url, pid):
            results[key]["raw_aiohttp"] = await _raw_turns(url, pid, turn_messages, burst)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"RTT {results['rtt_ms']:g} ms, {results['rate']:g} messages/s, 100-byte messages")
    for prefer, got in results.get("latency", {}).items():
        cells = "  ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in got.items())
        print(f"  {prefer:10} p50/p99 ms: {cells}")
    for key in ("per_turn", "burst"):
        for who, got in results.get(key, {}).items():
            print(f"  {key:8} {who:20} {got['msg_per_s']:>8} msg/s  {got['cpu_us_per_msg']} us CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=("hop", "engineio", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help="source tree whose gateway package runs (both ends)")
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--turn-messages", type=int, default=20000)
    parser.add_argument("--parts", default="latency,per-turn,burst")
    args = parser.parse_args()
    if args.serve:
        _use_tree(args.tree)
        serve = {"hop": _serve_hop, "engineio": _serve_engineio, "raw": _serve_raw}[args.serve]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
        return
    results = asyncio.run(
        run(
            rtt_ms=args.rtt_ms,
            rate=args.rate,
            seconds=args.seconds,
            turn_messages=args.turn_messages,
            tree=args.tree,
            parts=tuple(args.parts.split(",")),
        )
    )
    _print(results)


if __name__ == "__main__":
    main()
