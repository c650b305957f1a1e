"""deploy/docker/Dockerfile, checked without a Docker engine (this machine has none).

The image itself is never built here.  Instead:

* the Dockerfile is parsed (``dockerfile-parse``) and read as an operator
  would: python slim base images, a numeric non-root ``USER``, ``EXPOSE
  8080``, a ``HEALTHCHECK`` on ``/.hopgate/ready``, ``ENTRYPOINT
  ["hopgate"]``, every ``HOPGATE_`` variable it sets a real setting;
* ``.dockerignore`` lets into the build context what the ``COPY`` lines take
  and keeps the rest (``.venv``, tests, node_modules) out;
* its steps are replayed on this machine, each stage's filesystem a
  temporary directory (``/src`` -> ``STAGE/src``), a fresh venv standing in
  for the image's Python: the build stage's ``RUN`` lines (``pip install
  build``, ``python -m build --wheel``), the ``COPY`` lines, the final
  stage's venv and ``pip install WHEEL`` (``WHEEL[fast]`` with the build
  argument ``EXTRAS=fast``).  ``useradd`` is not replayed (it needs root and
  changes this machine);
* ``ENTRYPOINT`` + ``CMD`` start the installed gateway with the image's
  ``ENV`` (``HOPGATE_LISTEN`` moved to ``127.0.0.1``: tests stay on
  loopback), and the ``HEALTHCHECK`` command, run exactly as written, passes
  while it serves and fails once it is gone.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from dockerfile_parse import DockerfileParser

from gateway.config import SETTINGS
from tests.conftest import MakeOrigin
from tests.packaged import ROOT, clean_env
from tests.processes import LISTENING, ChildProcess, free_port

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
#: Each replayed RUN line (a pip install resolves from the index; a build fetches setuptools).
STEP_TIMEOUT = 120.0
#: Container paths the Dockerfile writes to; a replay maps them under the stage's directory.
CONTAINER_PATHS = re.compile(r"(?<![\w.$}/-])/(?=(src|dist|opt|tmp)\b)")


@dataclass
class Stage:
    base: str
    name: str = ""
    #: (instruction, value) in order, FROM excluded.
    steps: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.steps if kind == instruction]


def parse() -> tuple[dict[str, str], list[Stage]]:
    """The Dockerfile's global ``ARG`` defaults and its stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        kind, value = item["instruction"], item["value"]
        if kind == "COMMENT":
            continue
        if kind == "FROM":
            base, _, name = value.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.strip())
            stages.append(Stage(base, name.strip()))
        elif kind == "ARG" and not stages:
            key, _, default = value.partition("=")
            args[key] = default
        else:
            stages[-1].steps.append((kind, value))
    return args, stages


def image_env(stage: Stage) -> dict[str, str]:
    """The ``ENV`` a stage sets (``${PATH}`` left for the caller to expand)."""
    env: dict[str, str] = {}
    for value in stage.values("ENV"):
        for word in shlex.split(value):
            key, _, text = word.partition("=")
            env[key] = text
    return env


def exec_form(value: str) -> list[str]:
    """``["a", "b"]`` (the exec form); the shell form would need a shell the checks avoid."""
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), value
    return argv


def healthcheck_argv(stage: Stage) -> list[str]:
    (value,) = stage.values("HEALTHCHECK")
    _, cmd, command = value.partition(" CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {value}"
    return exec_form(command.strip())


def setting_variables() -> set[str]:
    options = {setting.option for setting in SETTINGS} | {"--listen", "--upstream", "--config"}
    return {"HOPGATE_" + option[2:].upper().replace("-", "_") for option in options}


# ------------------------------------------------------------------ static


def test_the_image_runs_hopgate_as_a_non_root_user_with_a_readiness_healthcheck() -> None:
    args, stages = parse()
    assert [stage.name for stage in stages] == ["build", ""]
    assert all(re.fullmatch(r"python:3\.1[1-9]-slim", stage.base) for stage in stages), args
    final = stages[-1]
    (user,) = final.values("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), user
    assert f"--uid {uid}" in " ".join(final.values("RUN")), "USER is not the user useradd makes"
    assert final.values("EXPOSE") == ["8080"]
    assert exec_form(final.values("ENTRYPOINT")[0]) == ["hopgate"]
    assert exec_form(final.values("CMD")[0])[0] == "server"
    health = healthcheck_argv(final)
    assert health[0] == "python" and "/.hopgate/ready" in health[-1]
    env = image_env(final)
    assert env["HOPGATE_LISTEN"] == "0.0.0.0:8080"
    assert {key for key in env if key.startswith("HOPGATE_")} <= setting_variables()


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether `.dockerignore` excludes `path`: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            verdict = not negated
    return verdict


def dockerignore() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def context_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage's ``COPY`` lines take (not ``--from`` ones)."""
    sources: list[str] = []
    for value in stage.values("COPY"):
        words = value.split()
        if not any(word.startswith("--from=") for word in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def test_dockerignore_lets_in_what_copy_takes_and_keeps_the_rest_out() -> None:
    _, stages = parse()
    patterns = dockerignore()
    sources = [s.rstrip("/") for stage in stages for s in context_sources(stage)]
    assert sorted(sources) == ["README.md", "gateway", "pyproject.toml"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), source
    assert not ignored("gateway/core/session/frames.py", patterns)
    kept_out = (
        ".venv/bin/python",
        "tests/test_packaging.py",
        "client_js/node_modules/x",
        "gateway/__pycache__/cli.cpython-311.pyc",
        ".git/HEAD",
        "bench/attacks.py",
    )
    for path in kept_out:
        assert ignored(path, patterns), path


# ------------------------------------------------------------------ replay


class Replay:
    """One stage's filesystem under ``root``; its Python a fresh venv at ``root/usr/local``."""

    def __init__(
        self, root: Path, stage: Stage, stages: dict[str, Replay], build_args: dict[str, str]
    ) -> None:
        self.root = root
        self.stage = stage
        self.stages = stages
        self.build_args = build_args
        self.workdir = "/"
        self.env: dict[str, str] = {}
        #: The stage's ``ARG`` values: seen by its ``RUN`` lines, not in the image.
        self.args: dict[str, str] = {}
        python = root / "usr" / "local"
        run([sys.executable, "-m", "venv", str(python)], cwd=root, env=clean_env())
        self.path = f"{python / 'bin'}:{os.environ['PATH']}"

    def host(self, container_path: str) -> Path:
        joined = os.path.join(self.workdir, container_path)
        return self.root / os.path.normpath(joined).lstrip("/")

    def rewrite(self, text: str) -> str:
        return CONTAINER_PATHS.sub(f"{self.root}/", text)

    def environment(self) -> dict[str, str]:
        env = {**clean_env(), "PATH": self.path}
        for key, value in self.env.items():
            env[key] = self.rewrite(value).replace("${PATH}", self.path)
        return env

    def play(self) -> None:
        for kind, value in self.stage.steps:
            if kind == "WORKDIR":
                self.workdir = value
                self.host(".").mkdir(parents=True, exist_ok=True)
            elif kind == "COPY":
                self.copy(value.split())
            elif kind == "ARG":
                key, _, default = value.partition("=")
                self.args[key] = self.build_args.get(key, shlex.split(default or "''")[0])
            elif kind == "RUN" and not value.startswith(("useradd ", "groupadd ")):
                env = {**self.environment(), **self.args}
                run(["sh", "-c", self.rewrite(value)], cwd=self.host("."), env=env)
            elif kind == "ENV":
                self.env.update(image_env(Stage("", steps=[(kind, value)])))

    def copy(self, words: list[str]) -> None:
        origin = [w.removeprefix("--from=") for w in words if w.startswith("--from=")]
        *sources, dest = [w for w in words if not w.startswith("--")]
        target = self.host(dest)
        for source in sources:
            if origin:
                source_path = self.stages[origin[0]].root / source.lstrip("/")
            else:
                source_path = ROOT / source
            if source_path.is_dir():
                copy_context_dir(source_path, target, from_context=not origin)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source_path, target / source_path.name)


def copy_context_dir(source: Path, target: Path, *, from_context: bool) -> None:
    patterns = dockerignore() if from_context else []
    for path in source.rglob("*"):
        relative = path.relative_to(ROOT if from_context else source).as_posix()
        if path.is_file() and not (from_context and ignored(relative, patterns)):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def build_stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Replay]:
    """The stages before the last replayed (the wheel built), by name."""
    _, stages = parse()
    replays: dict[str, Replay] = {}
    for number, stage in enumerate(stages[:-1]):
        replays[stage.name or str(number)] = replay = Replay(
            tmp_path_factory.mktemp(f"stage{number}"), stage, replays, {}
        )
        replay.play()
    return replays


def final_stage(root: Path, build: dict[str, Replay], **build_args: str) -> Replay:
    _, stages = parse()
    replay = Replay(root, stages[-1], build, build_args)
    replay.play()
    return replay


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_stage: dict[str, Replay]) -> Replay:
    """The final stage replayed as ``docker build`` runs it: the wheel installed, no build args."""
    return final_stage(tmp_path_factory.mktemp("image"), build_stage)


def healthcheck(image: Replay, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        healthcheck_argv(image.stage),
        env={**image.environment(), **env},
        cwd=image.root,
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.timeout(300)
async def test_the_image_steps_install_a_gateway_its_healthcheck_passes_on(
    image: Replay, make_origin: MakeOrigin
) -> None:
    env = image.environment()
    entry = shutil.which("hopgate", path=env["PATH"])
    assert entry is not None and Path(entry).is_relative_to(image.host("/opt")), entry
    assert shutil.which("python", path=env["PATH"]) == str(Path(entry).parent / "python")

    async def legacy(request: web.Request) -> web.Response:
        return web.Response(text="legacy")

    origin = await make_origin(legacy)
    port = free_port()
    listen = {"HOPGATE_LISTEN": f"127.0.0.1:{port}", "HOPGATE_UPSTREAM": origin}
    argv = [entry, *exec_form(image.stage.values("CMD")[0])]
    gw = ChildProcess.start(argv, name="image hopgate", env={**env, **listen}, cwd=image.root,
                            announce=LISTENING)  # fmt: skip
    try:
        url = await asyncio.to_thread(gw.wait_announced)
        async with aiohttp.ClientSession() as session, session.get(f"{url}/") as resp:
            assert (resp.status, await resp.text()) == (200, "legacy")
        passed = await asyncio.to_thread(healthcheck, image, **listen)
        assert passed.returncode == 0, passed.stderr
    finally:
        await asyncio.to_thread(gw.stop)
    assert gw.count("event loop: asyncio") == 1, gw.output()  # no EXTRAS: no uvloop
    failed = await asyncio.to_thread(healthcheck, image, **listen)
    assert failed.returncode == 1 and "Connection refused" in failed.stderr


@pytest.mark.timeout(300)
async def test_the_healthcheck_asks_the_admin_listener_when_there_is_one(
    image: Replay, make_origin: MakeOrigin
) -> None:
    async def legacy(request: web.Request) -> web.Response:
        return web.Response(text="legacy")

    port, admin = free_port(), free_port()
    listen = {
        "HOPGATE_LISTEN": f"127.0.0.1:{port}",
        "HOPGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "HOPGATE_UPSTREAM": await make_origin(legacy),
    }
    entry = shutil.which("hopgate", path=image.environment()["PATH"])
    assert entry is not None
    argv = [entry, *exec_form(image.stage.values("CMD")[0])]
    gw = ChildProcess.start(argv, name="image hopgate", env={**image.environment(), **listen})
    try:
        await asyncio.to_thread(gw.wait_accepting, admin)
        passed = await asyncio.to_thread(healthcheck, image, **listen)
        assert passed.returncode == 0, passed.stderr
        elsewhere = {**listen, "HOPGATE_ADMIN_LISTEN": f"127.0.0.1:{free_port()}"}
        failed = await asyncio.to_thread(healthcheck, image, **elsewhere)
        assert failed.returncode == 1, "the healthcheck did not ask HOPGATE_ADMIN_LISTEN's port"
    finally:
        await asyncio.to_thread(gw.stop)


@pytest.mark.timeout(300)
def test_the_fast_build_arg_puts_uvloop_in(tmp_path: Path, build_stage: dict[str, Replay]) -> None:
    fast = final_stage(tmp_path, build_stage, EXTRAS="fast")
    hopgate = shutil.which("hopgate", path=fast.environment()["PATH"])
    assert hopgate is not None
    argv = [hopgate, *exec_form(fast.stage.values("CMD")[0]), "--listen", "127.0.0.1:0"]
    env = {**fast.environment(), "HOPGATE_UPSTREAM": "http://127.0.0.1:9"}
    gw = ChildProcess.start(argv, name="fast image", env=env, announce=LISTENING)
    try:
        gw.wait_announced()
    finally:
        gw.stop()
    assert gw.count("event loop: uvloop (--event-loop auto)") == 1, gw.output()
