"""The gateway process's allocator settings (``gateway/process.py``: ``tune_malloc``).

Checked in a child process: the settings last for the life of a process and
would change the memory figures of every later test in this one.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A gateway's loop turn, coarsely: a few message-sized buffers allocated,
#: then freed, again and again. Prints tune_malloc's answer and the minor page
#: faults of 300 such turns before and after it.
CHURN = textwrap.dedent(
    """
    from gateway.process import tune_malloc

    def faults():
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    def churn():
        before = faults()
        for i in range(300):
            held = [bytes([i % 251]) * 100_000 for _ in range(4)]
            del held
        return faults() - before

    untuned = churn()
    print(tune_malloc(), untuned, churn())
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_message_buffers_are_kept_for_the_next_turn_not_faulted_in_again() -> None:
    """At glibc's defaults each turn gives 400 KB back and faults it in again (~100 pages)."""
    done = subprocess.run(
        [sys.executable, "-c", CHURN], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    took, untuned, tuned = done.stdout.split()
    assert took == "True"
    assert int(untuned) > 300 * 50, done.stdout  # 16,107 here: every turn faulted
    assert int(tuned) < 300, done.stdout  # 41 here: the first turn's pages, kept
