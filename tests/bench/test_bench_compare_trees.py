"""bench/compare_trees.py: several trees' gateway CPU per request, in turn in one run."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from bench.compare_trees import compare, compare_large
from bench.suite_procs import ROOT


async def test_every_path_is_measured_in_every_round_beside_plain_and_the_bare_pair() -> None:
    result = await asyncio.to_thread(
        lambda: asyncio.run(compare([ROOT, ROOT], plain=True, bare=True, rounds=2, seconds=0.4))
    )
    # (the same tree twice, an A/A run: two paths of their own, told apart by the key)
    assert list(result) == [
        f"websocket {ROOT}", f"websocket {ROOT} #2", f"plain {ROOT}", "bare-ws pair"
    ]  # fmt: skip
    for name, figures in result.items():
        assert figures["blocks"] == 2, name
        assert figures["per_s"] > 10, name
        assert 0 < figures["client_gw_cpu_us"] < 100_000, name
        assert 0 < figures["server_gw_cpu_us"] < 100_000, name
        assert figures["cpu_us"] >= max(figures["client_gw_cpu_us"], figures["server_gw_cpu_us"])
    assert result[f"websocket {ROOT}"]["x_first"] == 1.0
    assert 0.2 < result[f"plain {ROOT}"]["x_first"] < 5
    assert 0.2 < result["bare-ws pair"]["x_first"] < 5


@pytest.mark.parametrize("kind", ["websocket", "long-poll"])
async def test_the_large_row_sends_64_kib_messages_through_each_trees_gateway(kind: str) -> None:
    result = await asyncio.to_thread(compare_large, [ROOT, ROOT], kind=kind, rounds=2, mib=4)
    assert list(result) == [f"{kind} {ROOT}", f"{kind} {ROOT} #2"]
    for name, figures in result.items():
        assert figures["blocks"] == 2, name
        assert figures["mb_s"] > 1, name
        assert 0 < figures["server_gw_cpu_s_per_gib"] < 100, name  # the gateway did the work
    assert 0.1 < result[f"{kind} {ROOT} #2"]["x_first"] < 10


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tree", "/nonexistent"], "no gateway package there"),
        (["--tree", ".", "--rounds", "0"], "--rounds, --clients and --mib must be at least 1"),
        (["--tree", ".", "--row", "large", "--kind", "plain"], "runs over a hop"),
        (["--tree", ".", "--row", "large", "--bare"], "no --plain/--bare"),
    ],
)
def test_bad_arguments_say_what_to_do(args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare_trees.py"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and says in done.stderr, done.stderr
