"""The plots of docs/benchmarks.md: latency CDFs and throughput by message size (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.suite_report import LEGACY_COLUMNS, MSG_COLUMNS, get

Result = dict[str, Any]


def write_plots(res: Result, outdir: Path) -> list[str]:
    """PNG files in ``outdir`` (created); returns their names. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    outdir.mkdir(parents=True, exist_ok=True)
    names = [latency_cdf(res, outdir), throughput(res, outdir)]
    return [n for n in names if n]


def latency_cdf(res: Result, outdir: Path) -> str | None:
    import matplotlib.pyplot as plt

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
        return "latency-cdf.png"
    return None


def throughput(res: Result, outdir: Path) -> str | None:
    import matplotlib.pyplot as plt

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
    plt.close(fig)
    return "throughput-by-size.png" if drawn else None
