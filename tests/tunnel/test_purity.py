"""The tunnel core is sans-I/O: no event loop, sockets, clocks or threads, and no session internals.

Checked twice: statically (an AST scan of every import in the core modules;
the asyncio glue, bridge.py and relay.py, lives beside them and may import
anything, as the session package's transports do)
and dynamically (importing the package in a fresh interpreter pulls in none
of the forbidden modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.tunnel

PACKAGE = Path(gateway.tunnel.__file__).parent
CORE = ("__init__.py", "errors.py", "events.py", "frames.py", "streams.py")
FORBIDDEN = {
    "aiohttp",
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "threading",
    "time",
    "trio",
    "anyio",
    "wsproto",
    "gateway.session",  # the session is just a pipe of messages to us
    "gateway.edge",
}


def forbidden_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            in {"__import__", "import_module"}
        ):
            names = [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
        else:
            continue
        for name in names:
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                found.append(name)
    return found


def test_the_package_has_modules_to_scan() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} >= {"__init__.py", "frames.py", "streams.py"}


@pytest.mark.parametrize("path", [PACKAGE / name for name in CORE], ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    assert forbidden_imports(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import time as clock",
        "from aiohttp import web",
        "from socket import socket",
        "import os, threading",
        "from gateway.session.core import Session",
        "importlib.import_module('asyncio')",
        "__import__('time')",
    ],
)
def test_the_scanner_catches_io_imports(source: str) -> None:
    assert forbidden_imports(source)


def test_importing_the_package_loads_no_io_module() -> None:
    # A diff: the interpreter itself preloads a few modules (time among them).
    code = (
        "import sys; before = set(sys.modules); import gateway.tunnel; "
        "new = set(sys.modules) - before; "
        f"forbidden = {sorted(FORBIDDEN)!r}; "
        "bad = sorted(m for m in new if any(m == f or m.startswith(f + '.') for f in forbidden)); "
        "print(','.join(bad)); print('gateway.tunnel.streams' in new)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parents[1],
    )
    assert result.stdout.split("\n")[:2] == ["", "True"]
