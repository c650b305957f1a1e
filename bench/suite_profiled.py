"""Runs ``python -m gateway ARGS`` under cProfile; SIGUSR2 writes the stats to a file.

Used by ``python -m bench --profile ROW`` (``bench/suite_procs.gateway``). The
stats are written on a signal, not at exit, because a stopping gateway may
drain for a while and be killed before it would reach the end of ``main``.

Usage:  python bench/suite_profiled.py OUT.prof ROLE [gateway flags...]
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys

out = sys.argv[1]
sys.argv = ["hopgate", *sys.argv[2:]]
profile = cProfile.Profile()


def dump(signum: int, frame: object) -> None:
    profile.disable()
    profile.dump_stats(out)
    print("profile written", out, flush=True)


signal.signal(signal.SIGUSR2, dump)
profile.enable()
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
