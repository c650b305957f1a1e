"""``hopgate demo``: a legacy Comet chat carried through two gateways, watched live.

Everything runs in this one process on 127.0.0.1 with free ports::

    legacy clients --http--> client gw ==hop==> sidecar --http--> comet server

The chat server (``gateway.demo.comet``) and the clients
(``gateway.demo.legacy_client``) know nothing of hopgate, so the demo is a
standing proof of the central promise: endpoints cannot tell the gateways are
there, and nothing is lost, duplicated or reordered on the way.

Theory of operation
-------------------
``run()`` starts the stack (``gateway.demo.stack``), then every client posts
a message every ``interval`` seconds (staggered, with jitter) and long-polls
for everyone's messages.  The ``Ledger`` (``gateway.demo.ledger``, pure
bookkeeping) matches receipts to sends and counts what the path lost,
duplicated or reordered.  At the end senders stop, the path gets
``DRAIN_TIMEOUT`` seconds to deliver what is in flight, and whatever is still
missing is lost.  Each hop's transport is re-read from the gateways' status
documents once a second; ``gateway.demo.report`` draws it all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp

from gateway.config import UpgradeMode
from gateway.demo import browser as demo_browser
from gateway.demo.ledger import Ledger, Totals
from gateway.demo.legacy_client import ChatError, ChatMessage, LegacyChatClient, MessageCallback
from gateway.demo.report import LiveScreen, LogLines, View, summary
from gateway.demo.stack import Path, Stack, read_path, start_stack

log = logging.getLogger("hopgate.demo")

#: After the last send, how long in-flight messages get to arrive.
DRAIN_TIMEOUT = 5.0
STATUS_EVERY = 1.0
LIVE_REFRESH = 0.25


@dataclass
class Demo:
    """The moving parts of one run, shared by its tasks."""

    stack: Stack
    ledger: Ledger
    view: View
    interval: float
    started: float = field(default_factory=time.monotonic)
    path: Path | None = None
    stop_sending: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def listener(self, receiver: str) -> MessageCallback:
        """The ``on_message`` callback for the client called ``receiver``."""
        return lambda message: self.on_message(receiver, message)

    def on_message(self, receiver: str, message: ChatMessage) -> None:
        done = self.ledger.received(receiver, message, time.monotonic())
        if done is not None:
            self.view.message_done(done, self.elapsed())
        if self.ledger.settled:
            self.settled.set()

    async def send_loop(self, client: LegacyChatClient, offset: float) -> None:
        """Post every ``interval`` (+-20 %) until told to stop; never cut a send short."""
        n = 0
        delay = offset
        while not await _wait(self.stop_sending, delay):
            n += 1
            await self.send_one(client, f"hello {n} from {client.name}")
            delay = self.interval * random.uniform(0.8, 1.2)

    async def send_one(self, client: LegacyChatClient, text: str) -> None:
        client_msg_id = f"{self.ledger.prefix}-{client.name}-{uuid.uuid4().hex[:8]}"
        record = self.ledger.sending(client.name, client_msg_id, text, time.monotonic())
        self.settled.clear()
        try:
            receipt = await client.send(text, client_msg_id=client_msg_id)
        except (aiohttp.ClientError, ChatError, TimeoutError) as exc:
            log.warning("%s: send failed: %s", client.name, exc)
            self.ledger.send_failed(record)
            return
        self.ledger.acked(record, receipt.id)

    async def watch_path(self, session: aiohttp.ClientSession) -> None:
        """Re-read each gateway's status so a transport change shows up."""
        while True:
            path = await read_path(session, self.stack)
            if path != self.path:
                self.path = path
                self.view.path_changed(path)
            await asyncio.sleep(STATUS_EVERY)

    async def refresh(self, every: float) -> None:
        while True:
            self.draw()
            await asyncio.sleep(every)

    def draw(self, *, final: bool = False) -> Totals:
        totals = self.ledger.totals(time.monotonic(), final=final)
        if self.path is not None:
            self.view.tick(totals, self.ledger, self.path, self.elapsed())
        return totals


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; ``True`` if it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


@dataclass(frozen=True)
class DemoResult:
    totals: Totals
    path: Path
    elapsed: float


async def run(
    *,
    clients: int = 3,
    duration: float | None = None,
    interval: float = 1.0,
    upgrade: UpgradeMode = "auto",
    plain: bool | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    hold: float = 25.0,
) -> DemoResult:
    """Run the demo until ``stop`` is set or ``duration`` passes; print a summary.

    ``plain=None`` picks the live screen when ``out`` is a terminal.
    """
    if clients < 2:
        raise ValueError("the demo needs at least 2 clients: one to send, one to receive")
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    live = not plain and (plain is not None or out.isatty())
    names = [f"user{i + 1}" for i in range(clients)]
    ledger = Ledger(names, prefix=f"demo-{uuid.uuid4().hex[:8]}")
    view: View = LiveScreen(out, clients) if live else LogLines(out, clients)
    try:
        async with start_stack(upgrade, hold) as stack:
            demo = Demo(stack=stack, ledger=ledger, view=view, interval=interval)
            if not live:
                print(f"hopgate demo: {clients} legacy chat clients, Ctrl-C to stop", file=out)
            await _run_clients(demo, names, stop, duration)
            totals = demo.draw(final=True)
            result = DemoResult(
                totals=totals,
                path=demo.path or await _read_path_once(stack),
                elapsed=demo.elapsed(),
            )
    finally:
        view.close()
    print("\n" + summary(result.totals, result.path, result.elapsed), file=out, flush=True)
    return result


async def _read_path_once(stack: Stack) -> Path:
    async with aiohttp.ClientSession() as session:
        return await read_path(session, stack)


async def _run_clients(
    demo: Demo, names: Sequence[str], stop: asyncio.Event, duration: float | None
) -> None:
    """Clients poll and send until ``stop``/``duration``, then drain and close."""
    url = demo.stack.client_gw.url
    chat = [LegacyChatClient(url, name, demo.listener(name)) for name in names]
    async with aiohttp.ClientSession() as status_session, contextlib.AsyncExitStack() as exits:
        for client in chat:
            await exits.enter_async_context(client)
            client.start()
        demo.path = await read_path(status_session, demo.stack)
        demo.view.path_changed(demo.path)
        background = [
            asyncio.create_task(demo.watch_path(status_session)),
            asyncio.create_task(demo.refresh(LIVE_REFRESH)),
        ]
        senders = [
            asyncio.create_task(demo.send_loop(c, i * demo.interval / len(chat)))
            for i, c in enumerate(chat)
        ]
        try:
            await _wait(stop, duration if duration is not None else float("inf"))
            await _finish(demo, senders)
        finally:
            for task in background + senders:
                task.cancel()
            await asyncio.gather(*background, *senders, return_exceptions=True)


async def _finish(demo: Demo, senders: list[asyncio.Task[None]]) -> None:
    """Let in-flight sends complete, then give deliveries ``DRAIN_TIMEOUT`` to land."""
    demo.stop_sending.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await asyncio.gather(*senders, return_exceptions=True)
    if not demo.ledger.settled:
        await _wait(demo.settled, DRAIN_TIMEOUT)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``hopgate demo`` flags to ``parser``."""
    parser.add_argument(
        "--clients", type=int, default=3, metavar="N", help="legacy chat clients to run (default 3)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="each client sends a message about this often (default 1)",
    )
    parser.add_argument(
        "--upgrade",
        choices=("auto", "never"),
        default="auto",
        help="passed to both gateways: auto (default) lets the gateway hop upgrade, "
        "never keeps it plain HTTP",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="print log lines instead of a live screen (the default when stdout is not a terminal)",
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="instead: serve a page using the browser shim (HopSocket) through a gateway, "
        "showing its transport live, with a switch to block WebSocket on its path "
        "(needs client_js/dist: make js)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="with --browser: where the page is served (default 127.0.0.1:8480; port 0 picks one)",
    )


def _check_args(args: argparse.Namespace) -> str | None:
    if args.clients < 2:
        return "--clients must be at least 2 (one sends, the others receive)"
    if args.interval <= 0:
        return "--interval must be a positive number of seconds"
    if args.duration is not None and args.duration <= 0:
        return "--duration must be a positive number of seconds"
    return None


async def _main(args: argparse.Namespace) -> DemoResult:
    """``run()`` with Ctrl-C/SIGTERM mapped to a clean stop; a second one forces exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            raise SystemExit(130)
        stop.set()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal)
            installed.append(signum)
    try:
        return await run(
            clients=args.clients,
            duration=args.duration,
            interval=args.interval,
            upgrade=args.upgrade,
            plain=True if args.plain else None,
            stop=stop,
        )
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def main(args: argparse.Namespace) -> int:
    """Run the demo; exit status 0 when nothing was lost, duplicated or reordered."""
    if args.browser:
        return demo_browser.main(args)
    problem = _check_args(args)
    if problem is not None:
        print(f"hopgate demo: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = asyncio.run(_main(args))
    except OSError as exc:
        print(f"hopgate demo: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0 if result.totals.ok else 1
