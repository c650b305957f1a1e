"""The docs cannot rot: their examples run, their links resolve, their flags exist.

Conventions (also in docs/index.md, "Writing these pages"):

* A fenced block whose info string is ``console`` is a shell session: lines
  starting with ``$ `` are commands (a trailing ``\\`` continues one, a
  here-document's lines up to its delimiter belong to it), the other lines
  are the output expected from the command above them.  ``...``
  alone on a line stands for any number of lines, and ``...`` inside a line
  for any text, so figures that change (times, ids) can be left out.
* Every ``console`` block in ``docs/`` runs here, in page order, in one
  temporary directory per page (with ``deploy`` and ``client_js`` linked in,
  as a reader in the checkout sees them), against real processes on loopback.  The
  words after ``console`` change how:  ``background`` starts each command as
  a long-running process and waits until its ``--listen``/``--port`` accepts
  connections (``listens=N`` names the port when the command has no such
  flag, e.g. HAProxy's own config); ``wait`` retries a command (up to 20 s,
  or N s with ``wait=N``) until its output matches, for state that settles
  a moment after start-up; ``norun`` marks a
  block that cannot run on loopback (nginx in front, Kubernetes, a real
  corporate proxy): it is not run, but its flags are still checked.
* Ports written as ``127.0.0.1:N``, ``localhost:N`` or ``--port N`` are
  replaced by free ports (the same N by the same port throughout a page), in
  commands and in expected output alike, so the documented 8080/8000/9000
  can be what a reader types.

Besides: every relative link (and ``#anchor``) in docs/ and the READMEs
resolves; every flag a page gives to ``hopgate <role>`` appears in ``hopgate
<role> --help``; every key of a ``toml`` block is a config key; every
``HOPGATE_*`` name is one the gateway reads; and the generated reference
pages (docs/gen_reference.py) equal what is committed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
PAGES = sorted(DOCS.rglob("*.md"))
READMES = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "client_js" / "README.md"]
ALL_PAGES = PAGES + READMES
ROLES = ("server", "client", "demo", "doctor")
#: Where Debian puts nginx and haproxy (not on a non-root user's PATH).
SBIN = ("/usr/sbin", "/sbin")
#: System programs pages run, and the Debian package each comes from.
SYSTEM_TOOLS = {"nginx": "nginx", "haproxy": "haproxy", "openssl": "openssl", "curl": "curl"}

#: Flags in inline code that belong to other programs (curl, docker, kubectl, the benches...).
_FOREIGN = """--help --version --sessions --grace --sources --keep-limits --tree --scale --requests
    --concurrency --markdown --check --max-time --proxy --noproxy --cacert --analyze --test
    --clients --duration --interval --plain --bare --idle-test --json --dry-run --strict --port
    --build-arg --from-file --rm --platform --tag --network --publish --env-file --read-only
    --user --cap-drop --security-opt"""
FOREIGN_FLAGS = frozenset(_FOREIGN.split())

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
PORT = re.compile(r"(?:(?<=127\.0\.0\.1:)|(?<=localhost:)|(?<=--port )|(?<=--port=))(\d{2,5})\b")
LISTEN_PORT = re.compile(r"--(?:listen|admin-listen|port)[ =](?:\S*:)?(\d{2,5})\b")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_FLAG = re.compile(r"`(--[a-z][a-z0-9-]*)[^`]*`")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
HOPGATE_COMMAND = re.compile(r"(?:^|[\s;&|(/])hopgate (server|client|demo|doctor)\b([^|;&#]*)")
ENV_NAME = re.compile(r"\bHOPGATE_[A-Z0-9_]+\b")


# -- reading the pages ------------------------------------------------------------


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    page: Path
    lang: str
    words: tuple[str, ...]
    body: str

    def commands(self) -> list[Command]:
        """``$ `` lines (with ``\\`` continuations) and the output under each."""
        commands: list[Command] = []
        lines = iter(self.body.splitlines())
        for line in lines:
            if line.startswith("$ "):
                text = line[2:]
                while text.endswith("\\"):
                    text = text[:-1] + " " + next(lines, "").strip()
                heredoc = HEREDOC.search(text)
                if heredoc:  # the document's lines are part of the command
                    for body in lines:
                        text += "\n" + body
                        if body.strip() == heredoc.group(1):
                            break
                commands.append(Command(text))
            elif commands:
                commands[-1].expected.append(line)
        return commands


def blocks(page: Path) -> list[Block]:
    found = []
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        words = tuple(match.group(1).split())
        lang = words[0] if words else ""
        found.append(Block(page, lang, words[1:], match.group(2)))
    return found


def wait_seconds(block: Block) -> float:
    """``wait`` retries for 20 s, ``wait=N`` for N; otherwise a command runs once."""
    for word in block.words:
        if word == "wait":
            return 20.0
        if word.startswith("wait="):
            return float(word.removeprefix("wait="))
    return 0.0


def runnable_pages() -> list[Path]:
    return [
        page
        for page in PAGES
        if any(b.lang == "console" and "norun" not in b.words for b in blocks(page))
    ]


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- matching output ------------------------------------------------------------


def line_pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(part) for part in expected.rstrip().split("...")]
    return re.compile(".*".join(parts) + r"\s*$")


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` matches ``actual`` line by line; ``...`` lines match any number."""
    if not expected:
        return True
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(output_matches(rest, actual[i:]) for i in range(len(actual) + 1))
    return (
        bool(actual)
        and bool(line_pattern(head).match(actual[0].rstrip()))
        and (output_matches(rest, actual[1:]))
    )


def test_output_matching_is_strict_where_it_should_be() -> None:
    assert output_matches(
        ["{", "...", '  "transport": "websocket",', "..."],
        ["{", '  "role": "client",', '  "transport": "websocket",', "}"],
    )
    assert not output_matches(['"transport": "websocket"'], ['"transport": "long-poll"'])
    assert output_matches(['{"id": 1, ...}'], ['{"id": 1, "ts": 2.5}'])
    assert not output_matches(["a", "b"], ["a"])


# -- running a page ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def clean_env(cwd: Path) -> dict[str, str]:
    """The reader's shell: hopgate and python from this venv; no proxy or HOPGATE_ settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("HOPGATE_")
    }
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", ""), *SBIN])
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(cwd)
    return env


class PageRun:
    """One page's console blocks against real processes, in one temporary directory."""

    def __init__(self, page: Path, cwd: Path) -> None:
        self.page = page
        self.cwd = cwd
        self.env = clean_env(cwd)
        self.ports: dict[str, str] = {}
        self.background: list[subprocess.Popen[bytes]] = []
        for name in ("deploy", "client_js"):  # pages name recipes as a reader in the checkout does
            (cwd / name).symlink_to(ROOT / name)

    def local_port(self, documented: str) -> str:
        if documented not in self.ports:
            self.ports[documented] = str(free_port())
        return self.ports[documented]

    def local(self, text: str) -> str:
        return PORT.sub(lambda match: self.local_port(match.group(1)), text)

    def where(self, block: Block, command: Command) -> str:
        return f"{rel(self.page)}: `$ {command.line}`"

    def run_block(self, block: Block) -> None:
        for command in block.commands():
            if "background" in block.words:
                self.start(block, command)
            else:
                self.run(block, command, retry=wait_seconds(block))

    def start(self, block: Block, command: Command) -> None:
        line = self.local(command.line)
        log = (self.cwd / f"bg{len(self.background)}.log").open("wb")
        proc = subprocess.Popen(
            line,
            shell=True,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            executable="/bin/bash",
        )
        self.background.append(proc)
        ports = [int(p) for p in LISTEN_PORT.findall(line)]
        named = [w.split("=", 1)[1] for w in block.words if w.startswith("listens=")]
        ports += [int(self.local_port(p)) for p in named]
        assert ports, f"{self.where(block, command)}: a background command needs --listen/--port"
        deadline = time.monotonic() + 20
        while not all(listening(p) for p in ports):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = Path(log.name).read_text(errors="replace")
                pytest.fail(f"{self.where(block, command)} did not start listening:\n{output}")
            time.sleep(0.1)

    def run(self, block: Block, command: Command, *, retry: float) -> None:
        line = self.local(command.line)
        expected = [self.local(e) for e in command.expected]
        deadline = time.monotonic() + retry
        while True:
            done = subprocess.run(
                line,
                shell=True,
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                timeout=60,
                executable="/bin/bash",
            )
            actual = (done.stdout + done.stderr).decode(errors="replace").splitlines()
            ok = done.returncode == 0 and output_matches(expected, actual)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ok, (
            f"{self.where(block, command)} (run as `{line}`) exited {done.returncode}:\n"
            + "\n".join(actual)
            + "\n--- expected ---\n"
            + "\n".join(expected)
        )

    def stop(self) -> None:
        """SIGTERM, and a second one (hopgate: "signal again to stop now"), then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, 2), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            for proc in self.background:
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            for proc in self.background:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def missing_tools(page: Path) -> list[str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    text = "\n".join(
        c.line
        for b in blocks(page)
        if b.lang == "console" and "norun" not in b.words
        for c in b.commands()
    )
    return [
        package
        for tool, package in SYSTEM_TOOLS.items()
        if re.search(rf"(^|[|;&]\s*){tool}\b", text, re.M) and shutil.which(tool, path=path) is None
    ]


@pytest.mark.parametrize("page", runnable_pages(), ids=rel)
def test_console_examples_run(page: Path, tmp_path: Path) -> None:
    missing = missing_tools(page)
    if missing:  # the one accepted excuse: a system package is not installed
        pytest.skip(f"needs the Debian package(s) {', '.join(missing)} (make test installs them)")
    run = PageRun(page, tmp_path)
    try:
        for block in blocks(page):
            if block.lang == "console" and "norun" not in block.words:
                run.run_block(block)
    finally:
        run.stop()


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_no_placeholder_left(page: Path) -> None:
    """A figure still to be measured or a note to self must not be published."""
    left = re.findall(r"\bMEASURED_[A-Z_]+|\bTODO\b|\bTBD\b|\bFIXME\b", page.read_text())
    assert not left, f"{rel(page)}: {left}"


def test_the_tutorial_is_run() -> None:
    """The five-minute tutorial is the page that most needs to work as written."""
    assert DOCS / "tutorial.md" in runnable_pages()


# -- links ------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(page: Path) -> Iterator[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    yield from LINK.findall(text)


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            shown = dest.relative_to(ROOT) if ROOT in dest.parents else dest
            broken.append(f"{target} (no {shown})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{rel(page)}: broken links: {broken}"


def test_readme_keeps_its_two_commands_and_links_the_docs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    assert "docs/index.md" in set(links(ROOT / "README.md"))


def test_docs_index_links_every_page() -> None:
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in links(DOCS / "index.md")}
    missing = [rel(p) for p in PAGES if p not in linked and p.name != "index.md"]
    assert not missing, f"docs/index.md does not link: {missing}"


# -- flags, keys, environment -------------------------------------------------------------


@pytest.fixture(scope="module")
def help_flags() -> dict[str, set[str]]:
    """Each role's flags as ``hopgate <role> --help`` prints them."""
    flags: dict[str, set[str]] = {}
    for role in ROLES:
        done = subprocess.run(
            [str(BIN / "hopgate"), role, "--help"], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0:
            flags[role] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))
    assert {"server", "client"} <= set(flags)
    return flags


def hopgate_commands(page: Path) -> Iterator[tuple[str, list[str]]]:
    """(role, flags) of every ``hopgate ROLE ...`` command line in a code block."""
    for block in blocks(page):
        text = block.body.replace("\\\n", " ")
        for line in text.splitlines():
            for match in HOPGATE_COMMAND.finditer(line):
                try:
                    words = shlex.split(match.group(2))
                except ValueError:
                    words = match.group(2).split()
                yield match.group(1), [w.split("=")[0] for w in words if w.startswith("--")]


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_flags_named_exist(page: Path, help_flags: dict[str, set[str]]) -> None:
    unknown = set()
    for role, flags in hopgate_commands(page):
        assert role in help_flags, f"{rel(page)}: `hopgate {role}` has no --help"
        unknown |= {f"hopgate {role} {f}" for f in flags if f not in help_flags[role]}
    known = set().union(*help_flags.values())
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    unknown |= {f for f in INLINE_FLAG.findall(text) if f not in known and f not in FOREIGN_FLAGS}
    assert not unknown, f"{rel(page)} names flags hopgate does not have: {sorted(unknown)}"


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_toml_keys_exist(page: Path) -> None:
    keys = {key for key, _ in generator().config_keys()}
    found = set()
    for block in blocks(page):
        if block.lang == "toml":
            found |= set(re.findall(r"^\s*([A-Za-z][\w-]*)\s*=", block.body, re.M))
    assert found <= keys, f"{rel(page)}: unknown config keys {sorted(found - keys)}"


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_environment_names_exist(page: Path) -> None:
    names = set(ENV_NAME.findall(page.read_text(encoding="utf-8")))
    known = {name for name, _ in generator().environment_names()}
    assert names <= known, f"{rel(page)}: unknown variables {sorted(names - known)}"


# -- the generated reference -----------------------------------------------------------


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_is_committed() -> None:
    """Regenerate with ``.venv/bin/python docs/gen_reference.py``."""
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generator().pages().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"out of date, run `python docs/gen_reference.py`: {stale}"
