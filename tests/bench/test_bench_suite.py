"""``python -m bench`` at its tiny scale, so the suite cannot rot unnoticed.

Each test runs one section in a child process, as ``make bench`` would, with
real servers, gateways and relays on loopback, and checks the figures are
there and plausible (not their size: the machine is shared). Each stays
under a minute on 2 busy cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str, timeout: float = 150) -> dict[str, Any]:
    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "tiny", "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_message_rows_beside_their_anchors(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "--only", "messages", "--no-write")
    msgs = doc["messages"]
    for kind in ("raw", "eio-ws", "hop-ws", "hop-lp"):
        assert msgs[kind]["burst"]["msg_s"] > 0, msgs[kind]
        assert msgs[kind]["rtt"]["p50_us"] > 0, msgs[kind]
        assert msgs[kind]["sizes"]["mb_s"]["65536"] > 0, msgs[kind]
    # The relay columns, raw aiohttp through one bare TCP relay and through one bare
    # WebSocket relay (where the hop columns have their gateway): bursts, round trips, sizes.
    for column in ("raw-relay", "raw-ws-relay"):
        relayed = msgs[column]
        assert relayed["burst"]["msg_s"] > 0, relayed
        assert relayed["rtt"]["p50_us"] > 0, relayed
        assert relayed["sizes"]["mb_s"]["65536"] > 0, relayed
    # Polling may not finish a burst in the tiny timeout: then it says so.
    assert "msg_s" in msgs["eio-poll"]["burst"] or "failed" in msgs["eio-poll"]["burst"]
    for kind in ("raw", "hop-ws", "hop-lp"):
        # The relay adds 25 ms each way: a one-way delivery cannot beat it.
        assert msgs["rtt"][kind]["p50_ms"] >= 24, msgs["rtt"][kind]


def test_legacy_app_rows_and_the_page(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "--only", "legacy", "--out", str(tmp_path))
    legacy = doc["legacy"]
    for kind in ("direct", "websocket", "long-poll"):
        row = legacy[kind]
        assert row["one"]["per_s"] > 0, row
        assert row["paced"]["p50_ms"] > 0, row
        assert row["bytes"]["bytes_per_event"] > 100, row  # a poll's headers at least
        assert row["rtt"]["p50_ms"] >= 24, row  # at least the one-way delay of the relay
    assert legacy["plain"]["one"]["per_s"] > 0
    # Plain forwarding's CPU per request at both loads: the tunnelled one is judged by it.
    assert legacy["plain"]["many"]["gateway_cpu_us"] > 0, legacy["plain"]
    assert legacy["websocket"]["many"]["gateway_cpu_us"] > 0, legacy["websocket"]
    # The floor column: two bare relays carry the same app, rates and latency only.
    assert legacy["relays"]["one"]["per_s"] > 0, legacy["relays"]
    assert legacy["relays"]["many"]["per_s"] > 0, legacy["relays"]
    assert legacy["relays"]["paced"]["p50_ms"] > 0, legacy["relays"]
    # One gateway and no hop: the HTTP edges alone, with its CPU per request.
    assert legacy["edges"]["one"]["gateway_cpu_us"] > 0, legacy["edges"]
    assert legacy["edges"]["many"]["per_s"] > 0, legacy["edges"]
    assert legacy["edges"]["paced"]["p50_ms"] > 0, legacy["edges"]
    # The bare WebSocket pair: what hopgate's own layers are measured against.
    assert legacy["bare-ws"]["one"]["gateway_cpu_us"] > 0, legacy["bare-ws"]
    assert legacy["bare-ws"]["many"]["gateway_cpu_us"] > 0, legacy["bare-ws"]
    assert legacy["bare-ws"]["paced"]["p50_ms"] > 0, legacy["bare-ws"]
    page = (tmp_path / "benchmarks.md").read_text()
    assert "two bare TCP relays" in page and "one gateway, no hop" in page
    assert "bare WebSocket pair" in page
    assert "## A legacy long-poll app end to end" in page
    assert "## Targets (issue 13)" in page
    assert "long-poll hop" in page


def test_memory_rows(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "--only", "memory", "--no-write")
    mem = doc["memory"]
    for key in ("idle_session", "raw_socket", "held_websocket", "held_long-poll"):
        assert "kb_per" in mem[key], mem[key]
    assert mem["idle_session"]["opened"] == 100
