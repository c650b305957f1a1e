"""Shared fixtures: real origins, in-process gateways, subprocess gateways, TLS.

Everything listens on ``127.0.0.1`` port 0 and is torn down by the fixture
that started it, so tests can run in any order and in parallel processes.

* ``make_origin(app)`` starts an aiohttp application (or a single handler)
  and returns its base URL.
* ``make_gateway(role, {...})`` builds a ``Config`` with ``build_config`` (the
  same path the CLI takes) and starts an in-process ``Gateway``.
* ``spawn_gateway(role, "--upstream", url, ...)`` runs ``python -m gateway``
  as a child process, discovers its port from the ``listening on`` log line
  and stops it at teardown; use it when the gateway's own process matters
  (memory, signals, exit codes).
* ``tls_ca`` / ``tls_files`` / ``client_tls`` / ``server_tls``: a throwaway
  CA (trustme) and a certificate for ``127.0.0.1`` and ``localhost``.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import trustme
from aiohttp import web

from gateway.config import Role, build_config
from gateway.server import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LISTENING = re.compile(r"listening on (https?://[^\s,]+)")
STARTUP_TIMEOUT = 20.0


# --------------------------------------------------------------------- origin


class MakeOrigin(Protocol):
    async def __call__(
        self, app: web.Application | Handler, *, ssl_context: ssl.SSLContext | None = None
    ) -> str: ...


@pytest.fixture
async def make_origin() -> AsyncIterator[MakeOrigin]:
    """Start a real aiohttp origin on 127.0.0.1:0; returns ``http(s)://127.0.0.1:PORT``.

    A bare handler is mounted as a catch-all for every method and path.
    """
    runners: list[web.AppRunner] = []

    async def start(
        app: web.Application | Handler, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        if not isinstance(app, web.Application):
            handler = app
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


# ------------------------------------------------------- in-process gateways


class MakeGateway(Protocol):
    async def __call__(self, role: Role, settings: dict[str, Any] | None = None) -> Gateway: ...


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Start an in-process ``Gateway`` from CLI-style settings; stopped at teardown.

    ``listen`` defaults to ``127.0.0.1:0``; read the address from ``gw.url``.
    """
    gateways: list[Gateway] = []

    async def start(role: Role, settings: dict[str, Any] | None = None) -> Gateway:
        config = build_config(role, {"listen": "127.0.0.1:0", **(settings or {})})
        gateway = Gateway(config)
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in reversed(gateways):
        await gateway.stop()


# ------------------------------------------------------- subprocess gateways


@dataclass
class GatewayProcess:
    """A ``hopgate`` child process; ``url`` is known once it has logged that it listens."""

    proc: subprocess.Popen[str]
    lines: list[str]
    ready: threading.Event
    url: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stderr_text(self) -> str:
        return "".join(self.lines)

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def peak_rss_kib(self) -> int:
        """``VmHWM`` (peak resident set size) of the process, in KiB."""
        return _proc_status_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int:
        return _proc_status_kib(self.pid, "VmRSS")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def gateway_command(*args: str) -> list[str]:
    """argv that runs the installed package, whichever interpreter runs the tests."""
    return [sys.executable, "-m", "gateway", *args]


def start_gateway_process(
    role: str,
    *args: str,
    listen: str = "127.0.0.1:0",
    timeout: float = STARTUP_TIMEOUT,
    wrapper: tuple[str, ...] = (),
) -> GatewayProcess:
    """Run ``hopgate ROLE --listen LISTEN ARGS...`` and wait for its ``listening on`` line.

    The port is read from that info-level line, so ``--log-level`` stays ``info``.
    ``wrapper`` runs the command under another, e.g. ``("prlimit", "--nofile=1024")``.
    """
    if "--log-level" in args:
        raise ValueError("the port is discovered from an info log line: keep --log-level info")
    command = [*wrapper, *gateway_command(role, "--listen", listen, "--log-level", "info", *args)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    gw = GatewayProcess(proc=proc, lines=[], ready=threading.Event())

    def drain() -> None:
        # Keep reading for the life of the process: access logs would
        # otherwise fill the pipe and block the gateway.
        assert proc.stderr is not None
        for line in proc.stderr:
            gw.lines.append(line)
            if not gw.ready.is_set() and (match := LISTENING.search(line)):
                gw.url = match.group(1)
                gw.ready.set()
        gw.ready.set()

    threading.Thread(target=drain, daemon=True, name=f"stderr-{proc.pid}").start()
    started = time.monotonic()
    if not gw.ready.wait(timeout) or not gw.url:
        waited = time.monotonic() - started
        gw.stop()
        raise RuntimeError(
            f"hopgate {role} did not report 'listening on' within {waited:.1f}s "
            f"(exit {proc.poll()}); stderr:\n{gw.stderr_text()}"
        )
    return gw


SpawnGateway = Callable[..., GatewayProcess]


@pytest.fixture
def spawn_gateway() -> Iterator[SpawnGateway]:
    """Factory: ``spawn_gateway("server", "--upstream", url)``; killed at teardown."""
    started: list[GatewayProcess] = []

    def spawn(role: str, *args: str, **kwargs: Any) -> GatewayProcess:
        gw = start_gateway_process(role, *args, **kwargs)
        started.append(gw)
        return gw

    yield spawn
    for gw in reversed(started):
        gw.stop()


# ------------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """PEM files: the CA, and a leaf for ``127.0.0.1``/``localhost`` with its key."""
    directory = tmp_path_factory.mktemp("tls")
    leaf = tls_ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(
        ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )
    tls_ca.cert_pem.write_to_path(str(files.ca))
    leaf.private_key_pem.write_to_path(str(files.key))
    with files.cert.open("wb") as fh:
        for blob in leaf.cert_chain_pems:
            fh.write(blob.bytes())
    return files


@pytest.fixture(scope="session")
def server_tls(tls_files: TLSFiles) -> ssl.SSLContext:
    """Server-side context presenting the trustme leaf (for TLS origins)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files.cert), str(tls_files.key))
    return context


@pytest.fixture(scope="session")
def client_tls(tls_files: TLSFiles) -> ssl.SSLContext:
    """Client-side context that trusts only the trustme CA."""
    return ssl.create_default_context(cafile=str(tls_files.ca))
