"""The folder tells the layer, and imports only point down.

Layers, top to bottom: the application wiring (``server``, ``link``,
``router``, ``cli``, ``demo``), ``edges``, ``glue``, ``transports``,
``core``. A module may import its own layer and any layer below it, plus the
shared leaves (``config``, ``status``, the package version). The cores import
nothing but other cores and nothing that does I/O; the tunnel core does not
see the session core (a session is just a pipe of messages to it). Modules
are found by walking ``gateway/``, so a new module is checked the day it is
added.

Every import is counted, wherever it sits: an import inside a function is
how a cycle hides, so a ``gateway`` import anywhere but module level fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway

PACKAGE = Path(gateway.__file__).parent
TOP = "app"
# Rank of each layer: a module may import modules of its rank or lower.
RANKS = {"core": 0, "transports": 1, "glue": 2, "edges": 3, TOP: 4}
LEAVES = {
    "gateway",
    "gateway.config",
    "gateway.config_sources",
    "gateway.config_values",
    "gateway.startup_checks",
    "gateway.status",
}
IO_MODULES = {
    "aiohttp",
    "anyio",
    "asyncio",
    "multiprocessing",
    "selectors",
    "socket",
    "ssl",
    "subprocess",
    "threading",
    "time",
    "trio",
    "uvloop",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    """The layer a ``gateway`` module belongs to; None for the shared leaves."""
    if module in LEAVES:
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANKS:
        return parts[1]
    return TOP


def imports(
    source: str, module: str, *, is_package: bool = False
) -> Iterator[tuple[str, int, bool]]:
    """Every absolute module name ``source`` imports: (name, line, at module level)."""
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # ``if TYPE_CHECKING:`` imports are module level too
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top_level.update(id(child) for child in node.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                package = module if is_package else module.rsplit(".", 1)[0]
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name, node.lineno, id(node) in top_level
            for alias in node.names:  # ``from gateway.core import discovery``
                yield f"{name}.{alias.name}", node.lineno, id(node) in top_level


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = sources()


def gateway_imports(module: str) -> Iterator[tuple[str, int, bool]]:
    path = MODULES[module]
    for name, line, top in imports(path.read_text(), module, is_package=path.name == "__init__.py"):
        if name in MODULES:
            yield name, line, top


def test_the_walk_finds_every_layer() -> None:
    found = {layer(m) for m in MODULES}
    assert found >= set(RANKS) | {None}
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    here = layer(module)
    # The shared leaves rank with the cores: they may read pure core types.
    rank = RANKS[here] if here else RANKS["core"]
    upward = []
    for name, line, _ in gateway_imports(module):
        there = layer(name)
        if there is None:
            if here == "core":
                upward.append(f"line {line}: {name} (cores import only cores)")
            continue
        if RANKS[there] > rank:
            upward.append(f"line {line}: {name} ({there} is above {here or 'a leaf'})")
    assert upward == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_hides_inside_a_function(module: str) -> None:
    hidden = [f"line {line}: {name}" for name, line, top in gateway_imports(module) if not top]
    assert hidden == []


def test_no_import_cycles() -> None:
    graph = {m: {n for n, _, _ in gateway_imports(m) if n != m} for m in MODULES}
    # A package's __init__ re-exporting its modules is not a cycle of design.
    for m in graph:
        graph[m] = {
            n for n in graph[m] if not (MODULES[n].name == "__init__.py" and m.startswith(n + "."))
        }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


CORE = sorted(m for m in MODULES if layer(m) == "core")


@pytest.mark.parametrize("module", CORE)
def test_cores_import_nothing_that_does_io(module: str) -> None:
    names = {name for name, _, _ in imports(MODULES[module].read_text(), module)}
    roots = {name.split(".")[0] for name in names}
    assert roots & IO_MODULES == set()


@pytest.mark.parametrize("module", [m for m in CORE if m.startswith("gateway.core.tunnel")])
def test_the_tunnel_core_does_not_see_the_session_core(module: str) -> None:
    names = {name for name, _, _ in gateway_imports(module)}
    assert not {n for n in names if n.startswith("gateway.core.session")}


@pytest.mark.parametrize(
    "source, caught",
    [
        ("import asyncio", {"asyncio"}),
        ("import time as clock", {"time"}),
        ("from aiohttp import web", {"aiohttp", "aiohttp.web"}),
        ("def f():\n    from socket import socket\n", {"socket", "socket.socket"}),
    ],
)
def test_the_scanner_sees_every_kind_of_import(source: str, caught: set[str]) -> None:
    assert {name for name, _, _ in imports(source, "gateway.core.x")} == caught


def test_the_checks_catch_an_upward_import() -> None:
    assert layer("gateway.edges.forward") == "edges"
    assert layer("gateway.server") == TOP
    assert layer("gateway.core.session.machine") == "core"
    assert RANKS["edges"] > RANKS["glue"] > RANKS["transports"] > RANKS["core"]
    found = [n for n, _, top in imports("from gateway.edges import forward", "gateway.core.x")]
    assert "gateway.edges.forward" in found


def test_importing_every_core_loads_no_io_module() -> None:
    # A diff: the interpreter itself preloads a few modules (time among them).
    code = (
        "import importlib, sys; before = set(sys.modules)\n"
        f"for m in {CORE!r}: importlib.import_module(m)\n"
        "new = set(sys.modules) - before\n"
        f"io = {sorted(IO_MODULES)!r}\n"
        "print(','.join(sorted(m for m in new if m.split('.')[0] in io)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert result.stdout.strip() == ""
