"""The hopgate wheel and sdist, built once per test run, and clean venvs it is installed in.

``tests/test_packaging.py`` and ``tests/deploy/test_docker.py`` both need
them; building them once (``python -m build``: the sdist, then the wheel from
the unpacked sdist, as a release does) and installing each extras set once
keeps both files to one build (~5 s) and one venv per extras set (~10 s).

The venvs are made the way a user (and the Dockerfile) makes them: ``python
-m venv`` and that venv's own ``pip install WHEEL``, resolving the declared
dependencies from the package index, nothing borrowed from the test venv.
That is the point: a dependency missing from ``pyproject.toml`` fails here.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Bounds: an isolated build fetches setuptools; pip resolves ~12 wheels from the index.
BUILD_TIMEOUT = 120.0
INSTALL_TIMEOUT = 120.0


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="hopgate-packaging-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would import the checkout or configure a gateway."""
    skip = ("PYTHON", "VIRTUAL_ENV", "HOPGATE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    return {**env, "PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(
    argv: list[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` from the work dir (not the checkout); raise with its output if it fails."""
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=_workdir(),
        env=env if env is not None else clean_env(),
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}"
        )
    return done


@functools.cache
def built() -> Dists:
    """``python -m build`` of the checkout: sdist, then the wheel built from that sdist."""
    out = _workdir() / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=BUILD_TIMEOUT)
    (sdist,) = out.glob("hopgate-*.tar.gz")
    (wheel,) = out.glob("hopgate-*.whl")
    return Dists(sdist, wheel)


@functools.cache
def installed(extras: str = "") -> Path:
    """A fresh venv with the built wheel (``[extras]`` if given) installed; its ``bin``."""
    venv = _workdir() / f"venv-{extras or 'plain'}"
    run([sys.executable, "-m", "venv", str(venv)], timeout=INSTALL_TIMEOUT)
    wheel = built().wheel
    target = f"{wheel}[{extras}]" if extras else str(wheel)
    run([str(venv / "bin" / "pip"), "install", "--quiet", target], timeout=INSTALL_TIMEOUT)
    return venv / "bin"
