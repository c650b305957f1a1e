"""A copy of a tree with its hop path compiled to C by mypyc: what hopgate's own Python costs.

Issue 13 asks that a tunnelled request cost a gateway no more CPU than a
plain forwarded one. At 1 client it costs ~1.2x, spread over some 200 small
functions of the session, tunnel and glue layers. This separates the two
questions that leaves open: how much of that is the interpreter running
hopgate's code (which a leaner rewrite of that code could win back), and how
much is the work itself plus what it drives in asyncio and aiohttp (which it
could not)? It copies ``--tree``'s ``gateway/`` to ``--out`` and compiles
the modules a tunnelled request runs through (``HOP_PATH``) with mypyc, the
compiler that ships with mypy, which the code's strict typing allows. Then
``compare_trees.py`` measures both copies in one run:

    .venv/bin/python bench/compiled_tree.py --out /tmp/compiled
    .venv/bin/python bench/compare_trees.py --tree . --tree /tmp/compiled --plain
    .venv/bin/python bench/compare_trees.py --tree /tmp/compiled --plain   # compiled plain too

A measuring instrument, not a build of hopgate: tests that patch classes do
not run against the copy, and modules mypyc refuses as written stay
interpreted (``LEFT_OUT`` says why). It needs a C compiler and Python's
headers, as any mypyc build does; the whole hop path takes ~2 minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["HOP_PATH", "LEFT_OUT", "compile_tree", "hop_modules", "main"]

#: What a tunnelled request runs through in hopgate's code, in both gateways.
HOP_PATH: Final = (
    "gateway/core",
    "gateway/glue",
    "gateway/transports/hopsession.py",
    "gateway/transports/ws.py",
    "gateway/edges/forward.py",
    "gateway/link.py",
)
#: Modules of ``HOP_PATH`` that mypyc does not compile as they are written.
LEFT_OUT: Final = {
    "gateway/glue/answerer.py": "an async generator (mypyc: not implemented)",
    "gateway/core/session/events.py": "sets a frozen dataclass's slots through their descriptors",
    "gateway/core/tunnel/events.py": "sets a frozen dataclass's slots through their descriptors",
    "gateway/core/wire.py": "msgpack's stubs type Unpacker.read_bytes as bytearray; it gives "
    "bytes, which compiled code refuses",
}


def hop_modules(tree: Path) -> list[str]:
    """The files of ``HOP_PATH`` in ``tree`` (relative to it), less ``LEFT_OUT``."""
    found: list[str] = []
    for entry in HOP_PATH:
        path = tree / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        found += [str(f.relative_to(tree)) for f in files]
    return [module for module in found if module not in LEFT_OUT]


def compile_tree(tree: Path, out: Path, modules: list[str]) -> float:
    """Copy ``tree``'s package to ``out`` and compile ``modules`` there; seconds it took.

    The copy holds ``gateway/`` only: mypyc's setuptools run would read the
    checkout's ``pyproject.toml`` and is not the package's build. Raises
    ``RuntimeError`` with mypyc's last words if it fails.
    """
    started = time.monotonic()
    shutil.copytree(
        tree / "gateway", out / "gateway", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    done = _python_in(out, "-m", "mypyc", *modules)
    (out / "mypyc.log").write_text(done.stdout + done.stderr)
    shutil.rmtree(out / "build", ignore_errors=True)  # the C sources and objects: ~100 MB
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"mypyc failed (whole log: {out / 'mypyc.log'}):\n{tail}")
    return time.monotonic() - started


def _python_in(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This Python run in ``out`` with ``out`` first on its path: the copy, not the checkout."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=out,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(out)},
        check=False,
    )


def not_compiled(out: Path, modules: list[str]) -> list[str]:
    """Those of ``modules`` that do not import from a compiled extension in ``out``.

    Raises ``RuntimeError`` with the traceback's end when one does not import
    at all (a compiled class that breaks a rule only checked at import).
    """
    names = [m.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for m in modules]
    probe = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    if not importlib.import_module(name).__file__.endswith('.so'): print(name)\n"
    )
    done = _python_in(out, "-c", probe, *names)
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"the compiled copy does not import:\n{tail}")
    return done.stdout.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Copy a tree's gateway package and compile its hop path with mypyc, so "
        "that compare_trees.py can measure what hopgate's interpreted code costs a request.",
    )
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the copy")
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="the checkout to copy (default: this one)"
    )
    parser.add_argument(
        "--module", action="append", dest="modules", metavar="PATH",
        help="compile only this file of the package (repeat; default: the hop path)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    tree, out = args.tree.resolve(), args.out.resolve()
    if not (tree / "gateway" / "__main__.py").exists():
        parser.error(f"--tree {tree}: no gateway package there (a hopgate checkout?)")
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty: give a new directory")
    modules = args.modules or hop_modules(tree)
    for module in modules:
        if not module.startswith("gateway/") or not (tree / module).is_file():
            parser.error(f"--module {module}: no such file in {tree} (say gateway/core/wire.py)")
    print(f"compiling {len(modules)} modules of {tree} into {out} with mypyc ...", flush=True)
    try:
        seconds = compile_tree(tree, out, modules)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        missed = not_compiled(out, modules)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    if missed:
        print(f"mypyc left these interpreted: {', '.join(missed)}", file=sys.stderr)
        return 1
    print(f"compiled {len(modules)} modules in {seconds:.0f} s")
    if not args.modules:
        print("left interpreted:")
        for module, why in LEFT_OUT.items():
            print(f"  {module}: {why}")
    print(f"next: {sys.executable} bench/compare_trees.py --tree {tree} --tree {out} --plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
