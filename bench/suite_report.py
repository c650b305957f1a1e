"""docs/benchmarks.md and its plots from one run of ``python -m bench``.

The tables follow issue 13's: absolute figures, each with its ratio to the
anchor in the same run (ratios are what a shared, noisy machine keeps
stable), then every target of the issue marked met or missed. A missed
target names its profiled cause: ``CAUSES`` below, written from ``python -m
bench --profile ROW`` runs (cProfile in the gateway processes), keyed by
target; update it when a profile says something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

Result = dict[str, Any]
MSG_COLUMNS = {
    "raw": "raw aiohttp WebSocket",
    "eio-ws": "python-engineio WebSocket",
    "eio-poll": "python-engineio polling",
    "hop-ws": "hop session over WebSocket",
    "hop-lp": "hop session over long-poll",
}
LEGACY_COLUMNS = {"direct": "direct", "websocket": "WebSocket hop", "long-poll": "long-poll hop"}

#: Why a target is missed, as the profiles of ``--profile ROW`` showed it (see the module doc).
CAUSES: dict[str, str] = {}


def get(doc: Any, *keys: str) -> Any:
    """``doc[k1][k2]...`` or None when any step is missing or failed."""
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def cell(value: Any, fmt: str = "{:,.0f}") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "—"
    return fmt.format(value)


def failure(doc: Any, *keys: str) -> str | None:
    """The ``failed`` reason on the way to ``keys``, if any."""
    for key in (None, *keys):
        if key is not None:
            doc = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(doc, dict) and "failed" in doc:
            return str(doc["failed"])
    return None


def fig(doc: Any, keys: tuple[str, ...], fmt: str = "{:,.0f}", base: Any = None) -> str:
    """A figure with its ratio to ``base`` (``x0.87``), or why it failed."""
    why = failure(doc, *keys)
    if why is not None:
        return "did not finish" if "did not finish" in why else f"failed ({why[:60]})"
    value = get(doc, *keys)
    text = cell(value, fmt)
    if base is not None and value and isinstance(base, int | float) and base:
        text += f" (x{value / base:.2f})"
    return text


def message_table(msgs: Result, rtt_ms: float) -> list[str]:
    raw = msgs.get("raw", {})
    rows = [
        "| figure | " + " | ".join(MSG_COLUMNS.values()) + " |",
        "|---" * (len(MSG_COLUMNS) + 1) + "|",
    ]

    def row(label: str, render: Callable[[str, Result], str]) -> None:
        rows.append(
            f"| {label} | " + " | ".join(render(k, msgs.get(k, {})) for k in MSG_COLUMNS) + " |"
        )

    base_burst = get(raw, "burst", "msg_s")
    row("burst, client -> server, msg/s", lambda k, d: fig(d, ("burst", "msg_s"), base=base_burst))
    base_turns = get(msgs, "eio-ws", "turns", "msg_s")

    def turns(k: str, d: Result) -> str:
        text = fig(d, ("turns", "msg_s"), base=base_turns)
        cpu = get(d, "turns", "cpu_us")
        return text + (f", {cpu:.0f} us CPU" if cpu is not None else "")

    row(
        "one message per loop turn, msg/s (x python-engineio WS), server-side CPU per message",
        turns,
    )

    def rtt(k: str, d: Result) -> str:
        why = failure(d, "rtt")
        if why:
            return "did not finish" if "did not finish" in why else "failed"
        return f"{cell(get(d, 'rtt', 'p50_us'))} / {cell(get(d, 'rtt', 'p99_us'))}"

    row("round trip p50 / p99, us", rtt)
    base_large = get(raw, "sizes", "mb_s", "65536")
    row("64 KiB messages, MB/s", lambda k, d: fig(d, ("sizes", "mb_s", "65536"), base=base_large))

    def ticks(k: str, d: Result) -> str:
        t = get(msgs, "rtt", k)
        if failure(msgs, "rtt", k) or t is None:
            return "failed"
        return f"{t['p50_ms']:.1f} / {t['p99_ms']:.1f}"

    row(f"{rtt_ms:.0f} ms RTT, 100 msg/s server -> client, one-way p50 / p99 ms", ticks)
    return rows


def legacy_table(leg: Result, scale: Any) -> list[str]:
    direct = leg.get("direct", {})
    rows = ["| case | " + " | ".join(LEGACY_COLUMNS.values()) + " |", "|---|---|---|---|"]

    def row(label: str, render: Callable[[Result], str]) -> None:
        rows.append(
            f"| {label} | " + " | ".join(render(leg.get(k, {})) for k in LEGACY_COLUMNS) + " |"
        )

    def latency(key: str) -> Callable[[Result], str]:
        def render(d: Result) -> str:
            why = failure(d, key)
            if why:
                return f"failed ({why[:60]})"
            p50, p99 = get(d, key, "p50_ms"), get(d, key, "p99_ms")
            return f"{cell(p50, '{:.1f}')} / {cell(p99, '{:.1f}')}"

        return render

    row(
        "1 client, as fast as it can, events/s",
        lambda d: fig(d, ("one", "per_s"), base=get(direct, "one", "per_s")),
    )
    row(
        f"{scale.many} clients, as fast as they can, deliveries/s",
        lambda d: fig(d, ("many", "per_s"), base=get(direct, "many", "per_s")),
    )
    row(f"{scale.many} clients x {scale.rate:.0f} events/s, latency p50 / p99 ms", latency("paced"))
    row(
        f"{scale.rtt_s * 1e3:.0f} ms round trip on the path, 1 client, "
        f"{scale.rate:.0f} events/s, p50 / p99 ms",
        latency("rtt"),
    )
    row(
        "bytes on the wire per delivered event (hop vs direct link)",
        lambda d: fig(
            d, ("bytes", "bytes_per_event"), base=get(direct, "bytes", "bytes_per_event")
        ),
    )
    row(
        "gateway CPU per event, 1 client, us (both gateways)",
        lambda d: fig(d, ("one", "gateway_cpu_us"), "{:,.0f}"),
    )
    return rows


def targets(res: Result) -> list[tuple[str, str, str, bool | None]]:
    """(item, target, measured, met) for every target of issue 13."""
    m, leg, mem = res.get("messages", {}), res.get("legacy", {}), res.get("memory", {})
    rtt_ms = res["scale"]["rtt_s"] * 1e3
    out: list[tuple[str, str, str, bool | None]] = []

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    def add(
        item: str, text: str, value: float | None, ok: Callable[[float], bool], shown: str
    ) -> None:
        out.append(
            (
                item,
                text,
                shown if value is not None else "not measured",
                None if value is None else ok(value),
            )
        )

    for q in ("p50_ms", "p99_ms"):
        r = ratio(get(leg, "long-poll", "rtt", q), get(leg, "direct", "rtt", q))
        add(
            "1",
            f"legacy app, long-poll hop at {rtt_ms:.0f} ms RTT, {q[:3]} within 10% of direct",
            r,
            lambda v: v <= 1.10,
            f"x{r or 0:.2f}",
        )
    lp99 = get(m, "rtt", "hop-lp", "p99_ms")
    add(
        "1",
        f"hop session over long-poll, {rtt_ms:.0f} ms RTT, 100 msg/s: p99 <= RTT + 10 ms",
        lp99,
        lambda v: v <= rtt_ms + 10,
        f"{lp99 or 0:.1f} ms",
    )
    ws99 = get(m, "rtt", "hop-ws", "p99_ms")
    add(
        "1",
        "hop session over WebSocket, same: p99 <= RTT/2 + 5 ms",
        ws99,
        lambda v: v <= rtt_ms / 2 + 5,
        f"{ws99 or 0:.1f} ms",
    )
    r = ratio(get(m, "hop-ws", "turns", "msg_s"), get(m, "eio-ws", "turns", "msg_s"))
    add(
        "2",
        "one message per loop turn, WebSocket hop >= 2x python-engineio WebSocket",
        r,
        lambda v: v >= 2,
        f"x{r or 0:.2f}",
    )
    cpu = get(m, "hop-ws", "turns", "cpu_us")
    add(
        "2",
        "about <= 10 us CPU per message (server gateway)",
        cpu,
        lambda v: v <= 10,
        f"{cpu or 0:.0f} us",
    )
    r = ratio(get(m, "hop-ws", "burst", "msg_s"), get(m, "raw", "burst", "msg_s"))
    add(
        "2",
        "bursts over a WebSocket hop >= 0.9x raw aiohttp",
        r,
        lambda v: v >= 0.9,
        f"x{r or 0:.2f}",
    )
    for kind, name in (("hop-ws", "WebSocket"), ("hop-lp", "long-poll")):
        big = get(m, kind, "sizes", "mb_s", "65536")
        r = ratio(big, get(m, "eio-ws", "sizes", "mb_s", "65536"))
        add(
            "3",
            f"64 KiB over a {name} hop >= 1.0x python-engineio WebSocket",
            r,
            lambda v: v >= 1.0,
            f"x{r or 0:.2f}",
        )
        r = ratio(big, get(m, "raw", "sizes", "mb_s", "65536"))
        add(
            "3",
            f"64 KiB over a {name} hop >= 0.6x raw aiohttp",
            r,
            lambda v: v >= 0.6,
            f"x{r or 0:.2f}",
        )
    direct = leg.get("direct", {})
    for kind in ("websocket", "long-poll"):
        d = leg.get(kind, {})
        r = ratio(get(d, "bytes", "bytes_per_event"), get(direct, "bytes", "bytes_per_event"))
        add(
            "4",
            f"{kind} hop bytes per delivered event <= 0.3x direct",
            r,
            lambda v: v <= 0.3,
            f"x{r or 0:.2f}",
        )
        r = ratio(get(d, "one", "per_s"), get(direct, "one", "per_s"))
        add(
            "5",
            f"legacy app through a {kind} hop, 1 client >= 0.35x direct",
            r,
            lambda v: v >= 0.35,
            f"x{r or 0:.2f}",
        )
        r = ratio(get(d, "many", "per_s"), get(direct, "many", "per_s"))
        add(
            "5",
            f"legacy app through a {kind} hop, {res['scale']['many']} clients >= 0.6x direct",
            r,
            lambda v: v >= 0.6,
            f"x{r or 0:.2f}",
        )
        r = ratio(get(d, "paced", "p50_ms"), get(direct, "paced", "p50_ms"))
        add(
            "5",
            f"legacy app through a {kind} hop, paced p50 <= 2x direct",
            r,
            lambda v: v <= 2,
            f"x{r or 0:.2f}",
        )
        r = ratio(get(d, "one", "gateway_cpu_us"), get(leg, "plain", "one", "gateway_cpu_us"))
        add(
            "5",
            f"gateway CPU per request through a {kind} hop <= plain forwarding",
            r,
            lambda v: v <= 1.0,
            f"x{r or 0:.2f}",
        )
    kb = get(mem, "idle_session", "kb_per")
    n = res["scale"]["idle_sessions"]
    add(
        "6",
        f"RSS per idle hop session at {n:,} sessions <= 16 KB",
        kb,
        lambda v: v <= 16,
        f"{kb or 0:.1f} KB",
    )
    return out


def memory_lines(mem: Result, scale: Any) -> list[str]:
    def kb(key: str) -> str:
        why = failure(mem, key)
        return f"failed ({why[:80]})" if why else f"{cell(get(mem, key, 'kb_per'), '{:.1f}')} KB"

    return [
        "| idle cost | RSS each |",
        "|---|---|",
        f"| hop session in `hopgate server`, {scale['idle_sessions']:,} idle "
        f"| {kb('idle_session')} |",
        f"| raw aiohttp WebSocket, {scale['raw_sockets']:,} idle | {kb('raw_socket')} |",
        f"| held legacy long-poll through both gateways, WebSocket hop, "
        f"{scale['held_polls']:,} held | {kb('held_websocket')} |",
        f"| held legacy long-poll through both gateways, long-poll hop, "
        f"{scale['held_polls']:,} held | {kb('held_long-poll')} |",
    ]


def render(res: Result, plots: list[str]) -> str:
    """The whole page."""
    scale = res["scale"]
    env = res["environment"]
    rtt_ms = scale["rtt_s"] * 1e3

    class S:  # attribute access for the table helpers
        many, rate, rtt_s = scale["many"], scale["rate"], scale["rtt_s"]

    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (`make bench`); do not edit by hand, rerun it. "
        "Every figure comes from one run on one machine, each beside its anchor in the same run: "
        "(xN) is the ratio to the first column (message table: raw aiohttp; per-loop-turn: "
        "python-engineio WebSocket; legacy table: the direct connection). On a shared machine the "
        "absolute figures move from run to run; the ratios are what to compare. "
        "How each row is measured: "
        "[bench/README.md](../bench/README.md#the-suite-python--m-bench).",
        "",
        f"Run: {res['started']} UTC, scale `{res['scale_name']}`, {res['took_s']:.0f} s. "
        f"Gateways from `{env['tree']}` at {env['commit']}.",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}. "
        f"Python {env['python']}, aiohttp {env['aiohttp']}, python-engineio {env['engineio']}.",
        "",
        "## Messages: hop sessions beside the anchors",
        "",
        "Two processes (client, server) on loopback, 100-byte messages unless "
        "said; for the hop kinds a `hopgate server` sits in front of the same server and "
        "the client is a Python hop-session client speaking what the browser shim speaks. "
        "The long-poll hop goes through a path that refuses WebSocket upgrades.",
        "",
        *message_table(res.get("messages", {}), rtt_ms),
        "",
        "## A legacy long-poll app end to end",
        "",
        "Its client -> `hopgate client` -> hop -> `hopgate server` -> its origin "
        "(`bench/legacy_app.py`), against the same app direct. Polls carry a browser's headers "
        "(a 400-byte cookie, user agent, accept headers). The RTT row and the bytes row put "
        "`bench/relay.py` on the link (client-origin direct, gateway-gateway for the hops); "
        "bytes are counted there, both directions.",
        "",
        *legacy_table(res.get("legacy", {}), S),
        "",
        "## Idle cost",
        "",
        *memory_lines(res.get("memory", {}), scale),
        "",
    ]
    lines += poll_ahead_lines(res.get("poll_ahead"))
    lines += ["## Targets (issue 13)", "", "| item | target | measured | |", "|---|---|---|---|"]
    missed = []
    for item, text, measured, met in targets(res):
        mark = "not measured" if met is None else ("met" if met else "**missed**")
        lines.append(f"| {item} | {text} | {measured} | {mark} |")
        if met is False:
            missed.append((item, text))
    lines.append("")
    if missed:
        lines += ["### Why the missed targets are missed", ""]
        for _item, text in missed:
            cause = next((c for key, c in CAUSES.items() if key in text), None)
            lines.append(
                f"* {text}: {cause or 'not profiled yet: run `python -m bench --profile ROW`.'}"
            )
        lines.append("")
    if res.get("profile"):
        lines += ["### Profile", "", "```", *res["profile"], "```", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}](benchmarks/{p})" for p in plots] + [""]
    return "\n".join(lines)


def poll_ahead_lines(section: Any) -> list[str]:
    if section is None:
        return []
    lines = ["## Poll-ahead (issue 14)", ""]
    if isinstance(section, dict) and "failed" in section:
        return [*lines, f"failed: {section['failed']}", ""]
    if isinstance(section, dict) and isinstance(section.get("markdown"), str):
        return [*lines, section["markdown"], ""]
    shown = (
        {k: v for k, v in section.items() if "samples" not in k}
        if isinstance(section, dict)
        else section
    )
    return [*lines, "```", str(shown)[:3000], "```", ""]


def write_plots(res: Result, outdir: Path) -> list[str]:
    """PNG files in ``outdir`` (created); returns their names. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    names = []
    leg = res.get("legacy", {})
    series: list[tuple[str, list[float]]] = []
    for kind, label in LEGACY_COLUMNS.items():
        for key, what in (("paced", "paced"), ("rtt", f"{res['scale']['rtt_s'] * 1e3:.0f} ms RTT")):
            samples = get(leg, kind, key, "samples_ms")
            if samples:
                series.append((f"{label}, {what}", samples))
    pa = res.get("poll_ahead")
    if isinstance(pa, dict):
        for label, samples in (pa.get("samples_ms") or {}).items():
            series.append((f"poll-ahead: {label}", list(samples)))
    if series:
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, samples in series:
            ordered = sorted(samples)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("event delivery latency, ms (log)")
        ax.set_ylabel("fraction of events")
        ax.set_title("Legacy app: latency CDF, direct vs hops")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "latency-cdf.png", dpi=100)
        plt.close(fig)
        names.append("latency-cdf.png")
    msgs = res.get("messages", {})
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for kind, label in MSG_COLUMNS.items():
        rates = get(msgs, kind, "sizes", "mb_s")
        if rates:
            sizes = sorted(int(s) for s in rates)
            ax.plot(sizes, [rates[str(s)] for s in sizes], marker="o", label=label)
            drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size, bytes (log)")
        ax.set_ylabel("MB/s, client -> server burst")
        ax.set_title("Throughput vs message size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "throughput-by-size.png", dpi=100)
        names.append("throughput-by-size.png")
    plt.close(fig)
    return names
