"""Packaging (issue 10): pyproject declares what the code imports, and the built wheel works alone.

The issue found ``uvloop`` declared and imported nowhere, and ``yarl`` and
``multidict`` imported and declared nowhere: the test venv had them (aiohttp
pulls them in), so nothing noticed.  Here an AST walk over ``gateway/``
finds every third-party import and compares it with the dependencies; the
sdist and wheel are built (``tests.packaged``), the wheel is installed into
a fresh venv resolving its dependencies from the package index, and the
installed ``hopgate`` is run: ``--version``, ``--help``, a missing-uvloop
error, and a real server forwarding to an origin and answering its own
``/.hopgate/`` pages, on asyncio's loop, then again on uvloop once the
``fast`` extra is added.  It needs the package index (pip resolves the
dependencies); about 30 s, bounded by the timeouts below.
"""

from __future__ import annotations

import ast
import asyncio
import configparser
import importlib.metadata
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway import __version__
from gateway.config import ConfigError, EventLoop
from gateway.process import event_loop_factory
from tests.conftest import MakeOrigin
from tests.packaged import ROOT, built, clean_env, installed, run
from tests.processes import LISTENING, ChildProcess

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
#: Extras for the people running hopgate (not the ``test`` extra).
#: Extras a user installs to run the gateway; `test` and `bench` serve tests/ and bench/.
RUNTIME_EXTRAS = {
    k: v for k, v in PROJECT["optional-dependencies"].items() if k not in ("test", "bench")
}
_GUARDS = {"ImportError", "ModuleNotFoundError"}


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(name, ast.Name) and name.id in _GUARDS for name in caught):
            return True
    return False


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def third_party_imports(*roots: Path) -> tuple[set[str], set[str]]:
    """Top-level third-party modules imported under ``roots``: (required, optional-only).

    Optional: imported only inside ``try: ... except ImportError`` (uvloop for
    ``--event-loop auto``).  The roots themselves (``gateway``) and the
    scripts at their top (a bench script importing its sibling) are local.
    """
    local = {root.name for root in roots} | {p.stem for r in roots for p in r.glob("*.py")}
    required: set[str] = set()
    optional: set[str] = set()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            guarded = {
                id(inner)
                for node in ast.walk(tree)
                if isinstance(node, ast.Try) and _catches_import_error(node)
                for statement in node.body
                for inner in ast.walk(statement)
            }
            for node in ast.walk(tree):
                for name in _imported_names(node):
                    top = name.partition(".")[0]
                    if top in sys.stdlib_module_names or top in local:
                        continue
                    (optional if id(node) in guarded else required).add(top)
    return required, optional - required


def distributions(modules: set[str]) -> set[str]:
    """The distributions providing ``modules`` (``yarl`` -> ``yarl``, ...).

    Read from what is installed; an optional module that is not (uvloop: the
    ``fast`` extra is not in ``test``) must be named like its distribution.
    """
    provided = importlib.metadata.packages_distributions()
    found = {canonicalize_name(provided[m][0]) for m in modules if m in provided}
    absent = {canonicalize_name(m) for m in modules if m not in provided}
    in_extras = set().union(*(names(reqs) for reqs in RUNTIME_EXTRAS.values()))
    assert absent <= in_extras, f"no installed distribution provides {sorted(absent)}"
    return found | absent


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


# ----------------------------------------------------------- declared = imported


def test_the_walk_tells_required_from_optional_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("import os\nimport yarl.abc\nfrom . import sub\n")
    (package / "sub" / "__init__.py").write_text(
        "from multidict import CIMultiDict\nfrom pkg.sub import x\n"
        "def f():\n    try:\n        import uvloop\n    except ImportError:\n        pass\n"
        "try:\n    import msgpack\nexcept KeyError:\n    pass\n"
    )
    assert third_party_imports(package) == ({"yarl", "multidict", "msgpack"}, {"uvloop"})


def test_dependencies_are_exactly_what_gateway_imports() -> None:
    required, _ = third_party_imports(ROOT / "gateway")
    imported = distributions(required)
    declared = names(PROJECT["dependencies"])
    assert imported == declared, (
        f"imported but not declared: {sorted(imported - declared)}; "
        f"declared but not imported: {sorted(declared - imported)}"
    )


def test_each_runtime_extra_is_an_optional_import_and_back() -> None:
    _, optional = third_party_imports(ROOT / "gateway")
    in_extras = set().union(*(names(reqs) for reqs in RUNTIME_EXTRAS.values()))
    assert distributions(optional) == in_extras
    assert RUNTIME_EXTRAS["fast"] == ["uvloop>=0.19"]


def test_tests_and_benches_import_only_what_the_test_extra_installs() -> None:
    required, optional = third_party_imports(ROOT / "tests", ROOT / "bench", ROOT / "gateway")
    available = names(PROJECT["dependencies"]) | names(PROJECT["optional-dependencies"]["test"])
    assert distributions(required) - available == set()
    # Optional imports (gateway's uvloop) may also come from a runtime extra.
    in_extras = set().union(*(names(reqs) for reqs in RUNTIME_EXTRAS.values()))
    assert distributions(optional) - available - in_extras == set()


# ------------------------------------------------------------ what gets built


def source_files() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "gateway").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.timeout(150)
def test_the_wheel_holds_the_package_its_metadata_and_the_command() -> None:
    with zipfile.ZipFile(built().wheel) as wheel:
        listed = set(wheel.namelist())
        metadata = Parser().parsestr(
            wheel.read(f"hopgate-{__version__}.dist-info/METADATA").decode()
        )
        entry_points = wheel.read(f"hopgate-{__version__}.dist-info/entry_points.txt").decode()
    assert {name for name in listed if name.startswith("gateway/")} == source_files()
    assert "gateway/py.typed" in listed
    assert {name.partition("/")[0] for name in listed} == {
        "gateway",
        f"hopgate-{__version__}.dist-info",
    }
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {"hopgate": "gateway.cli:main"}
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "MIT"
    plain = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert names(plain) == names(PROJECT["dependencies"])
    assert set(metadata.get_all("Provides-Extra")) == set(PROJECT["optional-dependencies"])
    assert "Typing :: Typed" in metadata.get_all("Classifier")


@pytest.mark.timeout(150)
def test_the_sdist_holds_what_the_wheel_is_built_from() -> None:
    prefix = f"hopgate-{__version__}/"
    with tarfile.open(built().sdist) as sdist:
        listed = {name.removeprefix(prefix) for name in sdist.getnames()}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= listed
    assert source_files() <= listed


# --------------------------------------------------------- installed, then run


def hopgate(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "hopgate"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        cwd=bin_dir,
    )


@pytest.mark.timeout(240)
async def test_the_wheel_installed_in_a_clean_venv_runs(make_origin: MakeOrigin) -> None:
    bin_dir = await asyncio.to_thread(installed)
    where = run(
        [str(bin_dir / "python"), "-c", "import gateway; print(gateway.__file__)"], timeout=30
    )
    assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent), "imported the checkout"
    await asyncio.to_thread(run, [str(bin_dir / "pip"), "check"], timeout=60)

    version = await asyncio.to_thread(hopgate, bin_dir, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"hopgate {__version__}")
    usage = await asyncio.to_thread(hopgate, bin_dir, "server", "--help")
    assert usage.returncode == 0 and "--upstream" in usage.stdout and "--event-loop" in usage.stdout
    # No [fast] extra here: asking for uvloop says how to get it.
    no_uvloop = await asyncio.to_thread(
        hopgate, bin_dir, "server", "--upstream", "http://127.0.0.1:9", "--event-loop", "uvloop"
    )
    assert no_uvloop.returncode == 2
    assert "pip install 'hopgate[fast]'" in no_uvloop.stderr

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"origin saw {request.path}")

    origin = await make_origin(hello)
    output = await serve_once(bin_dir, origin)
    assert output.count("event loop: asyncio") == 1, output
    # The `fast` extra: the same venv gets uvloop, and `auto` (the default) takes it.
    wheel = built().wheel
    await asyncio.to_thread(run, [str(bin_dir / "pip"), "install", f"{wheel}[fast]"], timeout=120)
    output = await serve_once(bin_dir, origin)
    assert output.count("event loop: uvloop (--event-loop auto)") == 1, output


async def serve_once(bin_dir: Path, origin: str) -> str:
    """Run the installed ``hopgate server``, forward one request, ask its pages, stop it."""
    argv = [str(bin_dir / "hopgate"), "server", "--listen", "127.0.0.1:0", "--upstream", origin]
    gw = ChildProcess.start(
        argv, name="installed hopgate", env=clean_env(), cwd=bin_dir, announce=LISTENING
    )
    try:
        url = await asyncio.to_thread(gw.wait_announced)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{url}/hello") as resp:
                assert (resp.status, await resp.text()) == (200, "origin saw /hello")
            async with session.get(f"{url}/.hopgate/status") as resp:
                page = await resp.json()
                assert (resp.status, page["role"], page["version"]) == (200, "server", __version__)
            async with session.get(f"{url}/.hopgate/ready") as resp:
                assert resp.status == 200, await resp.text()
    finally:
        status = await asyncio.to_thread(gw.stop)
    assert status == 0, gw.output()
    return gw.output()


# ------------------------------------------------------------ --event-loop


def test_event_loop_asyncio_or_auto_without_uvloop_and_uvloop_missing_says_how(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop itself runs in the installed-wheel test above (``hopgate[fast]``)."""

    def made_by(choice: EventLoop) -> type[asyncio.AbstractEventLoop]:
        loop = event_loop_factory(choice)()
        loop.close()
        return type(loop)

    assert issubclass(made_by("asyncio"), asyncio.SelectorEventLoop)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert issubclass(made_by("auto"), asyncio.SelectorEventLoop)
    with pytest.raises(ConfigError, match=r"pip install 'hopgate\[fast\]'"):
        event_loop_factory("uvloop")
