"""Real nginx, HAProxy and squid, started from the recipes in ``deploy/``.

The deployment recipes are tested by running them: each helper renders a
recipe (its ``{{TOKEN}}`` placeholders replaced, every one of them, nothing
else changed), starts the real proxy binary in the foreground as a child
process on a free ``127.0.0.1`` port, waits until that port accepts
connections and stops the process at teardown.  Each proxy lives in its own
temporary directory (config, pid file, logs, temp files), so nothing under
``/etc``, ``/run`` or ``/var`` is touched and several can run at once.

* nginx: ``nginx -p DIR -c DIR/nginx.conf -e stderr`` with ``daemon off``;
  the recipe is a ``conf.d`` file, included into a minimal main config that
  mirrors Debian's ``/etc/nginx/nginx.conf`` (``NGINX_MAIN``).
* HAProxy: ``haproxy -db -f DIR/haproxy.cfg`` (the recipe is a whole config).
* squid: ``squid -N -f DIR/squid.conf``; started as root it switches to the
  recipe's ``cache_effective_user proxy``, so its directory belongs to that
  user.  Memory cache only.

Use the ``proxies`` fixture (import it into the test module)::

    from tests.proxies import Proxies, proxies  # noqa: F401

    async def test_x(proxies: Proxies) -> None:
        nginx = proxies.nginx(upstream=server_gw.url, recipe="hopgate-websocket.conf")
        ... nginx.url ...

or the context managers ``running_nginx`` / ``running_haproxy`` /
``running_squid`` directly.  A missing binary skips the test, telling how
to install it (``make test`` does).  Starting and stopping block for at most
``START_TIMEOUT`` / ``STOP_TIMEOUT``; neither needs the event loop, because
nothing is forwarded until a test sends a request.

The proxies' own logs are printed at teardown; pytest shows them under
"Captured stdout teardown" when a test failed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from yarl import URL

from tests.processes import ChildProcess, free_port

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"

#: Longest wait for a proxy to accept connections on its port.
START_TIMEOUT = 10.0
#: Longest wait after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
#: squid always lingers for about ``shutdown_lifetime`` + 2 s after SIGTERM
#: (the recipe says 5 s); it holds nothing a test needs, so it is not waited for.
SQUID_STOP_TIMEOUT = 0.5
#: How many times a start is retried when another process took the free port.
PORT_RETRIES = 3

TOKEN = re.compile(r"\{\{([A-Z_]+)\}\}")

#: The main config an nginx recipe (a ``conf.d`` file) is included into:
#: Debian's ``/etc/nginx/nginx.conf`` reduced to what matters here, with every
#: path it writes moved into the proxy's own directory.
NGINX_MAIN = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 768;
}}

http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {dir}/access.log;
    gzip on;

    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    include {dir}/{recipe};
}}
"""


class RecipeError(ValueError):
    """A recipe's placeholders and the values given for them do not match."""


def changed(text: str, changes: Sequence[tuple[str, str]], where: str) -> str:
    """``text`` with each ``(old, new)`` line replaced; ``old`` must occur exactly once.

    How a test runs a recipe with an operator's own setting (a short
    ``timeout tunnel``) without a copy of the recipe that could drift.
    """
    for old, new in changes:
        if text.count(old) != 1:
            raise RecipeError(f"{where}: {old!r} occurs {text.count(old)} times, not once")
        text = text.replace(old, new)
    return text


def render(recipe: Path, **values: str) -> str:
    """The recipe's text with every ``{{TOKEN}}`` replaced by ``values[TOKEN]``.

    A token without a value, or a value for a token the recipe lacks, is an
    error: the test must fill in exactly what a human would.
    """
    text = recipe.read_text()
    found = set(TOKEN.findall(text))
    missing = found - values.keys()
    unused = values.keys() - found
    if missing or unused:
        raise RecipeError(
            f"{recipe}: tokens without a value: {sorted(missing)}; "
            f"values for tokens it does not have: {sorted(unused)}"
        )
    return TOKEN.sub(lambda m: values[m.group(1)], text)


def host_port(url: str) -> str:
    """``http://127.0.0.1:8080/x`` -> ``127.0.0.1:8080`` (what proxy configs want)."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.explicit_port or parsed.port}"


def find_binary(name: str) -> str:
    """Absolute path of ``name`` (also in ``/usr/sbin`` when not on PATH), else skip."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} not installed: run make test (installs it)")
    return path


class ProxyProcess(ChildProcess):
    """One running proxy (``tests.processes.ChildProcess``); ``url`` is ``http://127.0.0.1:PORT``."""

    port = 0
    workdir = Path()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """Everything the proxy wrote: its stdout/stderr, then its log files."""
        return f"--- {self.name} stdout/stderr\n{self.output()}"

    def log_text(self, filename: str) -> str:
        """One of the proxy's log files (e.g. squid's ``access.log``), or ``""``."""
        try:
            return (self.workdir / filename).read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _launch(
    name: str, argv: list[str], port: int, workdir: Path, log_files: tuple[Path, ...]
) -> ProxyProcess:
    # Its own process group: nginx workers and squid helpers are killed with it.
    proxy = ProxyProcess.start(argv, name=name, cwd=workdir, own_group=True, log_files=log_files)
    proxy.port, proxy.workdir = port, workdir
    return proxy


#: Writes the config for a port and returns the argv that starts the proxy.
Prepare = Callable[[int], list[str]]


def _start(name: str, workdir: Path, prepare: Prepare, log_files: tuple[str, ...]) -> ProxyProcess:
    """Write the config for a fresh free port, launch, wait; retry if the port was taken."""
    for attempt in range(PORT_RETRIES):
        port = free_port()
        argv = prepare(port)
        files = tuple(workdir / f for f in log_files)
        proxy = _launch(name, argv, port, workdir, files)
        try:
            proxy.wait_accepting(port, START_TIMEOUT)
        except RuntimeError:
            proxy.stop(STOP_TIMEOUT)
            if "in use" in proxy.logs() and attempt + 1 < PORT_RETRIES:
                continue
            raise
        return proxy
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _workdir(name: str, owner: str | None = None) -> Iterator[Path]:
    """A private directory the proxy (possibly running as ``owner``) can write."""
    path = Path(tempfile.mkdtemp(prefix=f"hopgate-{name}-"))
    try:
        path.chmod(0o755)  # nginx workers run as nobody and must reach their temp dirs
        if owner is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------- per proxy


NGINX_RECIPES = ("hopgate-default.conf", "hopgate-websocket.conf")


@contextlib.contextmanager
def running_nginx(
    upstream: str, recipe: str = "hopgate-default.conf", changes: Sequence[tuple[str, str]] = ()
) -> Iterator[ProxyProcess]:
    """nginx with ``deploy/nginx/<recipe>`` in front of ``upstream`` (a URL); see ``changed``."""
    if recipe not in NGINX_RECIPES:
        raise ValueError(f"unknown nginx recipe {recipe!r}; have {NGINX_RECIPES}")
    binary = find_binary("nginx")
    with _workdir("nginx") as workdir:

        def prepare(port: int) -> list[str]:
            text = render(
                DEPLOY_DIR / "nginx" / recipe,
                LISTEN=f"127.0.0.1:{port}",
                UPSTREAM=host_port(upstream),
            )
            (workdir / recipe).write_text(changed(text, changes, recipe))
            main = NGINX_MAIN.format(dir=workdir, recipe=recipe)
            (workdir / "nginx.conf").write_text(main)
            return [binary, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-e", "stderr"]

        proxy = _start(f"nginx[{recipe}]", workdir, prepare, ("error.log", "access.log"))
        try:
            yield proxy
        finally:
            proxy.stop(STOP_TIMEOUT)


@contextlib.contextmanager
def running_haproxy(
    upstream: str, changes: Sequence[tuple[str, str]] = ()
) -> Iterator[ProxyProcess]:
    """HAProxy with ``deploy/haproxy/hopgate.cfg`` in front of ``upstream``; see ``changed``."""
    binary = find_binary("haproxy")
    with _workdir("haproxy") as workdir:

        def prepare(port: int) -> list[str]:
            text = render(
                DEPLOY_DIR / "haproxy" / "hopgate.cfg",
                LISTEN=f"127.0.0.1:{port}",
                UPSTREAM=host_port(upstream),
            )
            (workdir / "haproxy.cfg").write_text(changed(text, changes, "hopgate.cfg"))
            return [binary, "-db", "-f", str(workdir / "haproxy.cfg")]

        proxy = _start("haproxy", workdir, prepare, ())
        try:
            yield proxy
        finally:
            proxy.stop(STOP_TIMEOUT)


#: HAProxy in front of two instances of one cluster: everything to ``one``
#: (session creation too), hop-session requests (``/.hopgate/session/ID``) to
#: ``{sessions}``: "second" makes instance two pass them on to their owner.
SPLIT_HAPROXY = """\
global
    maxconn 1024
defaults
    mode http
    # As deploy/haproxy/hopgate.cfg: streamed long-poll chunks pass at once, not ~200 ms later.
    option http-no-delay
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend hop
    bind 127.0.0.1:{port}
{deny}    use_backend {sessions} if {{ path_beg /.hopgate/session/ }}
    default_backend first
backend first
    server one 127.0.0.1:{one}
backend second
    server two 127.0.0.1:{two}
"""
#: HAProxy refuses WebSocket upgrades: the hop must run on long-poll.
DENY_UPGRADES = "    http-request deny deny_status 403 if { req.hdr(upgrade) -m found }\n"


@contextlib.contextmanager
def running_splitter(
    one: int, two: int, *, to_second: bool = True, long_poll: bool = False
) -> Iterator[ProxyProcess]:
    """HAProxy splitting a hop between the instances on ports ``one`` and ``two``."""
    binary = find_binary("haproxy")
    with _workdir("haproxy-split") as workdir:

        def prepare(port: int) -> list[str]:
            config = SPLIT_HAPROXY.format(
                port=port,
                one=one,
                two=two,
                deny=DENY_UPGRADES if long_poll else "",
                sessions="second" if to_second else "first",
            )
            (workdir / "haproxy.cfg").write_text(config)
            return [binary, "-db", "-f", str(workdir / "haproxy.cfg")]

        proxy = _start("haproxy-split", workdir, prepare, ())
        try:
            yield proxy
        finally:
            proxy.stop(10.0)


#: The recipe's CONNECT port list, which ``connect_ports`` extends as its comment says.
SQUID_SSL_PORTS = "acl SSL_ports port 443\n"


@contextlib.contextmanager
def running_squid(connect_ports: tuple[int, ...] = ()) -> Iterator[ProxyProcess]:
    """squid with ``deploy/squid/squid.conf``: an HTTP forward proxy, ``url`` is its address.

    ``connect_ports``: also allow ``CONNECT`` to these ports, with the line
    the recipe tells an operator to add (``acl SSL_ports port N``).
    """
    binary = find_binary("squid")
    with _workdir("squid", owner="proxy") as workdir:

        def prepare(port: int) -> list[str]:
            text = render(
                DEPLOY_DIR / "squid" / "squid.conf",
                LISTEN=f"127.0.0.1:{port}",
                LOG_DIR=str(workdir),
                STATE_DIR=str(workdir),
            )
            if connect_ports:
                if text.count(SQUID_SSL_PORTS) != 1:
                    raise RecipeError(f"squid.conf has no single {SQUID_SSL_PORTS.strip()!r} line")
                added = "".join(f"acl SSL_ports port {p}\n" for p in connect_ports)
                text = text.replace(SQUID_SSL_PORTS, SQUID_SSL_PORTS + added)
            (workdir / "squid.conf").write_text(text)
            return [binary, "-N", "-f", str(workdir / "squid.conf")]

        proxy = _start("squid", workdir, prepare, ("cache.log", "access.log"))
        try:
            yield proxy
        finally:
            proxy.stop(SQUID_STOP_TIMEOUT)


class Proxies:
    """Starts proxies for one test; all are stopped when the test ends."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self.started: list[ProxyProcess] = []

    def nginx(
        self,
        upstream: str,
        recipe: str = "hopgate-default.conf",
        changes: Sequence[tuple[str, str]] = (),
    ) -> ProxyProcess:
        return self._keep(running_nginx(upstream, recipe, changes))

    def haproxy(self, upstream: str, changes: Sequence[tuple[str, str]] = ()) -> ProxyProcess:
        return self._keep(running_haproxy(upstream, changes))

    def squid(self, connect_ports: tuple[int, ...] = ()) -> ProxyProcess:
        return self._keep(running_squid(connect_ports))

    def reverse(self, kind: str, upstream: str) -> ProxyProcess:
        """``kind`` is ``nginx`` (default recipe), ``nginx-ws`` or ``haproxy``."""
        if kind == "nginx":
            return self.nginx(upstream)
        if kind == "nginx-ws":
            return self.nginx(upstream, "hopgate-websocket.conf")
        if kind == "haproxy":
            return self.haproxy(upstream)
        raise ValueError(f"unknown reverse proxy {kind!r}")

    def _keep(self, manager: contextlib.AbstractContextManager[ProxyProcess]) -> ProxyProcess:
        proxy = self._stack.enter_context(manager)
        self.started.append(proxy)
        return proxy


@pytest.fixture
def proxies() -> Iterator[Proxies]:
    """Factory for real proxies, all stopped at teardown.

    Their logs are printed at teardown; pytest shows that output only when
    the test failed.
    """
    with contextlib.ExitStack() as stack:
        factory = Proxies(stack)
        yield factory
        for proxy in factory.started:
            print(proxy.logs())
