"""The session core is sans-I/O: no event loop, no sockets, no clock, no randomness."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gateway.session
import gateway.wire

PACKAGE = Path(gateway.session.__file__).parent
# Listed, not globbed: the aiohttp transports (ws.py, longpoll.py, registry.py,
# transport*.py) will live beside these modules and may import anything.
CORE_MODULES = [
    PACKAGE / name
    for name in ("__init__.py", "core.py", "errors.py", "events.py", "frames.py", "tokens.py")
]
PURE_MODULES = [p for p in CORE_MODULES if p.name != "tokens.py"]
# The bounded msgpack reader the core decodes with is held to the same rule.
PURE_MODULES.append(Path(gateway.wire.__file__))
BANNED = {"aiohttp", "asyncio", "socket", "time", "threading", "random", "secrets", "trio"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_exist() -> None:
    assert all(p.is_file() for p in CORE_MODULES)


def test_core_modules_import_nothing_that_does_io() -> None:
    offenders = {p.name: imported_roots(p) & BANNED for p in PURE_MODULES}
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_tokens_module_uses_only_secrets_and_hmac() -> None:
    assert imported_roots(PACKAGE / "tokens.py") <= {"__future__", "secrets", "hmac"}


def test_scanner_detects_a_banned_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom asyncio import sleep\nimport time as t\n")
    assert imported_roots(bad) & BANNED == {"asyncio", "time"}


def test_importing_the_package_pulls_no_event_loop() -> None:
    code = (
        "import sys, gateway.session, gateway.session.core, gateway.session.frames,"
        " gateway.session.events, gateway.session.errors, gateway.session.tokens\n"
        "print(','.join(sorted(m for m in ('aiohttp', 'asyncio') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent.parent,
    )
    assert out.stdout.strip() == ""
