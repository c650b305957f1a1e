"""What the demo shows: the live screen or log lines, and the closing summary."""

from __future__ import annotations

from typing import Protocol, TextIO

from gateway.demo.ledger import RECENT, Ledger, Sent, Totals
from gateway.demo.stack import Path, bracket

__all__ = [
    "LiveScreen",
    "LogLines",
    "View",
    "latency_line",
    "message_line",
    "summary",
    "totals_line",
]

PLAIN_TOTALS_EVERY = 2.0


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
        f"client gw =={bracket(path.gw_hop)}==> sidecar =={bracket(path.origin_hop)}==> comet; "
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
