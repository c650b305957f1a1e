"""Shared fixtures: real origins, in-process gateways, subprocess gateways, TLS.

Everything listens on ``127.0.0.1`` port 0 and is torn down by the fixture
that started it, so tests can run in any order and in parallel processes.

* ``make_origin(app)`` starts an aiohttp application (or a single handler)
  and returns its base URL.
* ``make_gateway(role, {...})`` builds a ``Config`` with ``build_config`` (the
  same path the CLI takes) and starts an in-process ``Gateway``.
* ``spawn_gateway(role, "--upstream", url, ...)`` runs ``python -m gateway``
  as a child process (``tests.processes.start_gateway``: its port is read
  from the ``listening on`` log line) and stops it at teardown; use it when
  the gateway's own process matters (memory, signals, exit codes).
* ``tls_ca`` / ``tls_files`` / ``client_tls`` / ``server_tls``: a throwaway
  CA (trustme) and a certificate for ``127.0.0.1`` and ``localhost``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import trustme
from aiohttp import web

from gateway.config import Role
from gateway.server import Gateway
from tests.helpers import loopback_gateway
from tests.processes import GatewayProcess, SpawnGateway, start_gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: A ``hopgate client`` sends through the proxy these name (``gateway.transports.proxy``).
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ``http_proxy`` must not carry the loopback traffic under test.

    Client gateways, in-process or spawned, read these variables; a test
    that wants a proxy sets its own (``tests/e2e/test_client_proxy.py``).
    """
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


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
        gateway = loopback_gateway(role, settings)
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in reversed(gateways):
        await gateway.stop()


# ------------------------------------------------------- subprocess gateways


@pytest.fixture
def spawn_gateway() -> Iterator[SpawnGateway]:
    """Factory: ``spawn_gateway("server", "--upstream", url)``; killed at teardown."""
    started: list[GatewayProcess] = []

    def spawn(role: str, *args: str, **kwargs: Any) -> GatewayProcess:
        gw = start_gateway(role, *args, **kwargs)
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
