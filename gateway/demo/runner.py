"""``hopgate demo``: a legacy Comet chat carried through two gateways, watched live.

Everything runs in this one process on 127.0.0.1 with free ports::

    legacy clients --http--> client gw ==hop==> sidecar --http--> comet server

The chat server (``gateway.demo.comet``) and the clients
(``gateway.demo.legacy_client``) know nothing of hopgate, so the demo is a
standing proof of the central promise: endpoints cannot tell the gateways are
there, and nothing is lost, duplicated or reordered on the way.

Theory of operation
-------------------
``run()`` starts the stack, then every client posts a message every
``interval`` seconds (staggered, with jitter) and long-polls for everyone's
messages.  The ``Ledger`` (pure bookkeeping, no I/O) records each send by the
``client_msg_id`` the runner chose, so a receipt can be matched to its send
even when the poll answer beats the ``POST`` answer.  Per receiver it checks
server ids: an id seen before is a duplicate, an id below the highest seen is
out of order.  A message is *delivered* once per *other* client (the sender's
own echo is checked for order but not counted), so with ``n`` clients the
expected deliveries are ``sent * (n - 1)``.  Live, a receipt missing for more
than ``OVERDUE_AFTER`` seconds is shown as lost; at the end senders stop, the
path gets ``DRAIN_TIMEOUT`` seconds to deliver what is in flight, and whatever
is still missing is lost.

Each hop's transport is read from the gateways' own ``/.hopgate/status``
documents once a second rather than assumed, so the path line shows whatever
the gateways actually negotiated (``plain`` today, ``long-poll`` or
``websocket`` once hop sessions exist).
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
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import aiohttp
from aiohttp import web

from gateway.config import Config, Role, UpgradeMode, build_config
from gateway.demo.comet import make_app
from gateway.demo.legacy_client import ChatError, ChatMessage, LegacyChatClient, MessageCallback
from gateway.server import Gateway
from gateway.status import STATUS_PATH

log = logging.getLogger("hopgate.demo")

#: A receipt missing this long is shown as lost while the demo runs.
OVERDUE_AFTER = 5.0
#: After the last send, how long in-flight messages get to arrive.
DRAIN_TIMEOUT = 5.0
#: Gateways and the chat server give held requests this long on shutdown.
SHUTDOWN_GRACE = 2.0
STATUS_EVERY = 1.0
LIVE_REFRESH = 0.25
PLAIN_TOTALS_EVERY = 2.0
LATENCY_WINDOW = 10_000
#: Per receiver, how many recent ids are remembered for the duplicate check.
ID_WINDOW = 10_000
RECENT = 8


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Sent:
    """One message a demo client sent, and who has received it so far."""

    client_msg_id: str
    sender: str
    text: str
    sent_at: float
    msg_id: int | None = None
    receivers: set[str] = field(default_factory=set)
    worst_latency: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Totals:
    """A snapshot of the ledger; ``final`` ones count every missing receipt as lost."""

    clients: int
    sent: int
    delivered: int
    in_flight: int
    lost: int
    duplicated: int
    reordered: int
    send_errors: int
    latency_last: float | None
    latency_avg: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_n: int

    @property
    def expected(self) -> int:
        return self.sent * max(self.clients - 1, 0)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.reordered == 0


def percentile(samples: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


class Ledger:
    """Matches sends to receipts and counts what the path did to them.

    Pure bookkeeping: callers pass the clock in, so it can be tested without
    an event loop.
    """

    def __init__(self, clients: Sequence[str], prefix: str) -> None:
        self.clients = tuple(clients)
        self.prefix = prefix
        self.pending: dict[str, Sent] = {}
        self.recent: deque[Sent] = deque(maxlen=RECENT)
        self.sent = self.delivered = self.duplicated = self.reordered = 0
        self.send_errors = self.foreign = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_sum = 0.0
        self.latency_n = 0
        self._seen: dict[str, set[int]] = {name: set() for name in self.clients}
        self._highest: dict[str, int] = dict.fromkeys(self.clients, 0)

    def sending(self, sender: str, client_msg_id: str, text: str, now: float) -> Sent:
        """Record a send *before* the ``POST`` goes out (its receipt may come first)."""
        record = Sent(client_msg_id=client_msg_id, sender=sender, text=text, sent_at=now)
        self.pending[client_msg_id] = record
        self.recent.append(record)
        self.sent += 1
        return record

    def acked(self, record: Sent, msg_id: int) -> None:
        record.msg_id = msg_id

    def send_failed(self, record: Sent) -> None:
        """The ``POST`` failed; the message may still arrive, else it ends up lost."""
        self.send_errors += 1

    def received(self, receiver: str, message: ChatMessage, now: float) -> Sent | None:
        """Account for one receipt; returns the record if it is now complete."""
        if not self._in_order(receiver, message.id):
            return None
        record = self.pending.get(message.client_msg_id or "")
        if record is None:
            mine = (message.client_msg_id or "").startswith(self.prefix)
            self.foreign += 0 if mine else 1
            return None
        record.msg_id = message.id
        if receiver == record.sender:
            return None
        self._deliver(record, receiver, now - record.sent_at)
        if len(record.receivers) < len(self.clients) - 1:
            return None
        del self.pending[record.client_msg_id]
        return record

    def _deliver(self, record: Sent, receiver: str, latency: float) -> None:
        record.receivers.add(receiver)
        record.worst_latency = max(record.worst_latency, latency)
        self.delivered += 1
        self.latencies.append(latency)
        self.latency_sum += latency
        self.latency_n += 1

    def _in_order(self, receiver: str, msg_id: int) -> bool:
        """Check one receiver's ids: ``False`` for a duplicate, counts reorderings."""
        seen = self._seen.setdefault(receiver, set())
        if msg_id in seen or msg_id <= self._highest.get(receiver, 0) - ID_WINDOW:
            self.duplicated += 1
            return False
        highest = self._highest.get(receiver, 0)
        if msg_id < highest:
            self.reordered += 1
        seen.add(msg_id)
        self._highest[receiver] = max(highest, msg_id)
        if len(seen) > 2 * ID_WINDOW:
            floor = self._highest[receiver] - ID_WINDOW
            self._seen[receiver] = {i for i in seen if i > floor}
        return True

    def missing(self, older_than: float | None = None) -> int:
        """Receipts still outstanding, optionally only for sends before ``older_than``."""
        others = len(self.clients) - 1
        return sum(
            others - len(r.receivers)
            for r in self.pending.values()
            if older_than is None or r.sent_at < older_than
        )

    @property
    def settled(self) -> bool:
        return not self.pending

    def totals(self, now: float, *, final: bool = False) -> Totals:
        lost = self.missing() if final else self.missing(older_than=now - OVERDUE_AFTER)
        samples = list(self.latencies)
        return Totals(
            clients=len(self.clients),
            sent=self.sent,
            delivered=self.delivered,
            in_flight=self.missing() - lost,
            lost=lost,
            duplicated=self.duplicated,
            reordered=self.reordered,
            send_errors=self.send_errors,
            latency_last=samples[-1] if samples else None,
            latency_avg=self.latency_sum / self.latency_n if self.latency_n else None,
            latency_p50=percentile(samples, 0.50),
            latency_p95=percentile(samples, 0.95),
            latency_n=self.latency_n,
        )


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The running servers: chat origin, sidecar gateway, client gateway."""

    comet_url: str
    sidecar: Gateway
    client_gw: Gateway


@contextlib.asynccontextmanager
async def start_stack(upgrade: UpgradeMode, hold: float) -> AsyncIterator[Stack]:
    """Start comet server, sidecar and client gateway; stop them in reverse order."""
    runner = web.AppRunner(
        make_app(hold=hold), handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        comet_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with (
            Gateway(_gateway_config("server", comet_url, upgrade)) as sidecar,
            Gateway(_gateway_config("client", sidecar.url, upgrade)) as client_gw,
        ):
            yield Stack(comet_url=comet_url, sidecar=sidecar, client_gw=client_gw)
    finally:
        await runner.cleanup()


def _gateway_config(role: Role, upstream: str, upgrade: UpgradeMode) -> Config:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstream": upstream,
        "upgrade": upgrade,
        "shutdown_grace": SHUTDOWN_GRACE,
    }
    return build_config(role, settings)


@dataclass(frozen=True)
class Path:
    """The path as the gateways report it; a transport is ``"?"`` until known."""

    client_gw: str
    sidecar: str
    comet: str
    gw_hop: str = "?"
    origin_hop: str = "?"

    def render(self, clients: int) -> str:
        return (
            f"{clients} legacy clients --[http]--> client gw {self.client_gw} "
            f"=={_bracket(self.gw_hop)}==> sidecar {self.sidecar} "
            f"=={_bracket(self.origin_hop)}==> comet {self.comet}"
        )


def _bracket(transport: str) -> str:
    return f"[{transport}]"


def hop_transport(status: dict[str, Any], upstream: str) -> str:
    """The transport a gateway's status reports for ``upstream`` (its first, failing that)."""
    upstreams = [u for u in status.get("upstreams", []) if isinstance(u, dict)]
    for entry in upstreams:
        if str(entry.get("url", "")).rstrip("/") == upstream.rstrip("/"):
            return str(entry.get("transport", "?"))
    return str(upstreams[0].get("transport", "?")) if upstreams else "?"


async def fetch_status(session: aiohttp.ClientSession, gateway_url: str) -> dict[str, Any]:
    """One gateway's ``/.hopgate/status``; ``{}`` if it cannot be read right now."""
    try:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with session.get(gateway_url + STATUS_PATH, timeout=timeout) as resp:
            doc = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


async def read_path(session: aiohttp.ClientSession, stack: Stack) -> Path:
    client_status = await fetch_status(session, stack.client_gw.url)
    sidecar_status = await fetch_status(session, stack.sidecar.url)
    return Path(
        client_gw=_hostport(stack.client_gw.url),
        sidecar=_hostport(stack.sidecar.url),
        comet=_hostport(stack.comet_url),
        gw_hop=hop_transport(client_status, stack.sidecar.url),
        origin_hop=hop_transport(sidecar_status, stack.comet_url),
    )


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1]


# --------------------------------------------------------------------------- display


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def totals_line(t: Totals) -> str:
    return (
        f"sent {t.sent}, delivered {t.delivered}/{t.expected}, in flight {t.in_flight}, "
        f"lost {t.lost}, duplicated {t.duplicated}, out of order {t.reordered}"
        + (f", send errors {t.send_errors}" if t.send_errors else "")
    )


def latency_line(t: Totals) -> str:
    return (
        f"latency last {_ms(t.latency_last)}, avg {_ms(t.latency_avg)}, "
        f"p95 {_ms(t.latency_p95)} (n={t.latency_n})"
    )


def message_line(record: Sent, clients: int) -> str:
    ident = f"#{record.msg_id}" if record.msg_id is not None else "#?"
    return (
        f"{ident:>5} {record.sender}: {record.text!r}  -> {len(record.receivers)}/{clients - 1}"
        f"  slowest {_ms(record.worst_latency if record.receivers else None)}"
    )


def summary(t: Totals, path: Path, elapsed: float) -> str:
    """The closing paragraph: what was sent, what arrived, how fast."""
    verdict = "nothing lost, duplicated or reordered" if t.ok else "delivery was NOT clean"
    return (
        f"Summary: {t.clients} legacy clients sent {t.sent} messages in {elapsed:.1f} s through "
        f"client gw =={_bracket(path.gw_hop)}==> sidecar =={_bracket(path.origin_hop)}==> comet; "
        f"{t.delivered} of {t.expected} expected deliveries arrived (each message to each other "
        f"client), {t.lost} lost, {t.duplicated} duplicated, {t.reordered} out of order"
        + (f", {t.send_errors} sends failed" if t.send_errors else "")
        + f"; end-to-end latency p50 {_ms(t.latency_p50)}, p95 {_ms(t.latency_p95)}: {verdict}."
    )


class View(Protocol):
    def path_changed(self, path: Path) -> None: ...
    def message_done(self, record: Sent, elapsed: float) -> None: ...
    def tick(self, totals: Totals, ledger: Ledger, path: Path, elapsed: float) -> None: ...
    def close(self) -> None: ...


class LogLines:
    """Plain output for pipes and logs: one line per event, totals every few seconds."""

    def __init__(self, out: TextIO, clients: int) -> None:
        self.out = out
        self.clients = clients
        self._last_totals = 0.0

    def _print(self, elapsed: float, text: str) -> None:
        print(f"{elapsed:7.1f}s  {text}", file=self.out, flush=True)

    def path_changed(self, path: Path) -> None:
        print(f"   path  {path.render(self.clients)}", file=self.out, flush=True)

    def message_done(self, record: Sent, elapsed: float) -> None:
        self._print(elapsed, message_line(record, self.clients))

    def tick(self, totals: Totals, ledger: Ledger, path: Path, elapsed: float) -> None:
        if elapsed - self._last_totals >= PLAIN_TOTALS_EVERY:
            self._last_totals = elapsed
            self._print(elapsed, f"totals: {totals_line(totals)} | {latency_line(totals)}")

    def close(self) -> None:
        pass


class LiveScreen:
    """A frame redrawn in place with plain ANSI escapes (no curses)."""

    HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
    HIDE_CURSOR, SHOW_CURSOR, CLEAR_SCREEN = "\x1b[?25l", "\x1b[?25h", "\x1b[2J"

    def __init__(self, out: TextIO, clients: int) -> None:
        self.out = out
        self.clients = clients
        out.write(self.HIDE_CURSOR + self.CLEAR_SCREEN)

    def path_changed(self, path: Path) -> None:
        pass

    def message_done(self, record: Sent, elapsed: float) -> None:
        pass

    def tick(self, totals: Totals, ledger: Ledger, path: Path, elapsed: float) -> None:
        lines = [
            f"hopgate demo  {elapsed:6.1f} s   (Ctrl-C to stop)",
            "",
            "path: " + path.render(self.clients),
            "",
            "recent messages:",
            *(f"  {message_line(r, self.clients)}" for r in reversed(ledger.recent)),
            *([""] * (RECENT - len(ledger.recent))),
            "",
            latency_line(totals),
            totals_line(totals),
        ]
        frame = "".join(line + self.CLEAR_LINE + "\n" for line in lines)
        self.out.write(self.HOME + frame + self.CLEAR_BELOW)
        self.out.flush()

    def close(self) -> None:
        self.out.write(self.SHOW_CURSOR)
        self.out.flush()


# --------------------------------------------------------------------------- running


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
