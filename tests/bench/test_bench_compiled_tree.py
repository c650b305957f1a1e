"""bench/compiled_tree.py: a copy of the tree with its hop path compiled by mypyc."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bench.compiled_tree import HOP_PATH, LEFT_OUT, hop_modules
from bench.suite_procs import ROOT

SCRIPT = ROOT / "bench" / "compiled_tree.py"
#: mypyc compiles C: `make test` installs gcc and Python's headers (python3-dev).
NEEDS_A_BUILD = pytest.mark.skipif(
    shutil.which("cc") is None
    or not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists(),
    reason="no C compiler (gcc) or no Python headers (python3-dev)",
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_the_hop_path_is_every_module_a_request_runs_through_less_what_mypyc_refuses() -> None:
    modules = hop_modules(ROOT)
    for entry in HOP_PATH:  # (a module moved or renamed would silently drop out)
        assert (ROOT / entry).exists(), entry
    for left in LEFT_OUT:
        assert (ROOT / left).is_file() and left not in modules, left
    assert "gateway/core/session/machine.py" in modules
    assert "gateway/glue/opener.py" in modules
    assert "gateway/transports/ws.py" in modules
    assert all(module.endswith(".py") for module in modules)


@NEEDS_A_BUILD
def test_a_compiled_module_runs_from_the_copy_as_its_source_does(tmp_path: Path) -> None:
    out = tmp_path / "compiled"
    done = _run("--out", str(out), "--module", "gateway/core/backoff.py")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "compiled 1 modules" in done.stdout
    assert not (out / "build").exists()  # the C sources and objects are not kept
    probe = (
        "import gateway.core.backoff as b\n"
        "tripled = b.Backoff(0.5, 4.0).doubled().doubled().doubled()\n"
        "print(b.__file__.endswith('.so'), tripled.delay)\n"
        "try:\n    b.Backoff(2.0, 1.0)\nexcept ValueError as exc:\n    print(exc)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60, cwd=out, env={"PYTHONPATH": str(out)},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    first, refusal = ran.stdout.splitlines()
    assert first == "True 4.0"  # from the extension, capped at the ceiling as the source does
    assert refusal.startswith("back-off needs 0 < initial <= ceiling")


@NEEDS_A_BUILD
def test_a_copy_that_compiles_but_does_not_import_is_reported_not_measured(tmp_path: Path) -> None:
    # (it subclasses an aiohttp class and declares __slots__, which compiled classes may not)
    done = _run("--out", str(tmp_path / "c"), "--module", "gateway/transports/aiohttp_internals.py")
    assert done.returncode == 1, done.stdout
    assert "the compiled copy does not import" in done.stderr
    assert "next:" not in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--out", "{tmp}", "--tree", "/nonexistent"], "no gateway package there"),
        (["--out", "{tmp}", "--module", "gateway/nope.py"], "no such file in"),
        (["--out", "{full}"], "is not empty: give a new directory"),
    ],
)
def test_bad_arguments_say_what_to_do(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").touch()
    paths = {"tmp": str(tmp_path / "new"), "full": str(tmp_path / "full")}
    done = _run(*(arg.format(**paths) for arg in args))
    assert done.returncode == 2 and says in done.stderr, done.stderr
