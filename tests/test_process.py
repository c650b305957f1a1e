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

#: A gateway's loop turn, coarsely: message-sized buffers allocated, then
#: freed, again and again (4 MB a turn: more than any free space the imports
#: left, so each turn grows the heap's top). Prints tune_malloc's answer and
#: the minor page faults of 100 such turns before and after it.
CHURN = textwrap.dedent(
    """
    import ctypes

    from gateway.process import tune_malloc

    # glibc's defaults, set explicitly: left to itself glibc raises them the
    # first time a big block is freed, so what the imports happened to free
    # would decide the baseline (it did: one import more, 20 faults, not 16,000).
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    assert mallopt(-1, 128 * 1024) and mallopt(-3, 128 * 1024)  # M_TRIM_/M_MMAP_THRESHOLD

    def faults():
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    def churn():
        before = faults()
        for i in range(100):
            held = [bytes([i % 251]) * 100_000 for _ in range(40)]
            del held
        return faults() - before

    untuned = churn()
    print(tune_malloc(), untuned, churn())
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_message_buffers_are_kept_for_the_next_turn_not_faulted_in_again() -> None:
    """At glibc's defaults each turn gives 4 MB back and faults it in again (~900 pages)."""
    done = subprocess.run(
        [sys.executable, "-c", CHURN], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    took, untuned, tuned = done.stdout.split()
    assert took == "True"
    assert int(untuned) > 100 * 500, done.stdout  # 89,628-92,105 here: every turn faulted
    assert int(tuned) < 100 * 20, done.stdout  # 896-921 here: the first turn's pages, kept
