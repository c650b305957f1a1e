"""Three real ``hopgate server`` processes behind a real HAProxy, for the cluster tests.

::

    legacy client -> hopgate client -> HAProxy (deploy/haproxy/hopgate-cluster.cfg)
                                         -> hopgate server x 3 -> origin (tests.soak.origin)

Every piece is a child process (``tests.processes``), so SIGTERM, ``kill -9``
and a restart on the same port are the real thing. HAProxy runs the recipe
with its ``{{TOKENS}}`` filled in and nothing else changed, except the
``changes`` a test names (``FORCE_LONG_POLL`` refuses WebSocket upgrades,
the way a proxy that cannot pass them does). The instances form one cluster
(``--cluster-secret-file``, ``--advertise`` their own URL); ``clustered=False``
runs them without those flags, which is how a tree from before clusters
(``--tree``) is measured.

``direct=True`` leaves out the client gateway: the legacy client talks to
HAProxy itself, and the instances forward its requests as plain HTTP, the
baseline the crash test compares with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.processes import ChildProcess, GatewayProcess, free_port
from tests.proxies import (
    DEPLOY_DIR,
    NGINX_MAIN,
    ProxyProcess,
    _start,
    _workdir,
    changed,
    find_binary,
    render,
)
from tests.soak.chain import gateway, kill_hard, start_origin

RECIPE = DEPLOY_DIR / "haproxy" / "hopgate-cluster.cfg"
INSTANCES = 3
#: How a test makes HAProxy refuse WebSocket upgrades: the hop must run on long-poll.
FORCE_LONG_POLL = (
    (
        "    default_backend hopgate_cluster\n",
        "    http-request deny deny_status 403 if { req.hdr(upgrade) -m found }\n"
        "    default_backend hopgate_cluster\n",
    ),
)
#: The recipe without its owner routing: plain round robin for everything.
NO_OWNER_ROUTING = tuple(
    (f"    use-server hopgate{n} if owner_hopgate{n}\n", "") for n in range(1, INSTANCES + 1)
)
#: Source-address affinity instead of round robin: how a tree from before
#: clusters gets a hop session at all behind three instances (``measure --affinity``).
AFFINITY = (("    balance roundrobin\n", "    balance source\n"),)
#: The instances' --shutdown-grace: held polls last at most the origin's hold (2 s).
SHUTDOWN_GRACE = 5.0
#: Longest wait for a restarted instance to answer /.hopgate/ready 200.
READY_TIMEOUT = 20.0
#: After an instance is ready, time for HAProxy's checks (rise 2, inter 1 s) to take it back.
HAPROXY_RISE = 2.5
STOP_TIMEOUT = 15.0


def owner_prefix(advertise: str) -> str:
    """base64url (no padding) of ``scheme://host:port``: the owner field of a session id."""
    return base64.urlsafe_b64encode(advertise.encode()).rstrip(b"=").decode()


@contextlib.contextmanager
def running_cluster_haproxy(
    servers: Sequence[str], changes: Sequence[tuple[str, str]] = ()
) -> Iterator[ProxyProcess]:
    """HAProxy with ``hopgate-cluster.cfg`` in front of ``servers`` (``http://host:port``)."""
    if len(servers) != INSTANCES:
        raise ValueError(f"the recipe shows {INSTANCES} instances, got {len(servers)}")
    binary = find_binary("haproxy")
    values = {f"SERVER_{n}": url.split("://", 1)[1] for n, url in zip("ABC", servers, strict=True)}
    values |= {f"OWNER_{n}": owner_prefix(url) for n, url in zip("ABC", servers, strict=True)}
    with _workdir("haproxy-cluster") as workdir:

        def prepare(port: int) -> list[str]:
            text = render(RECIPE, LISTEN=f"127.0.0.1:{port}", **values)
            (workdir / "haproxy.cfg").write_text(changed(text, changes, RECIPE.name))
            return [binary, "-db", "-f", str(workdir / "haproxy.cfg")]

        proxy = _start("haproxy-cluster", workdir, prepare, ())
        try:
            yield proxy
        finally:
            proxy.stop(5.0)


NGINX_RECIPE = DEPLOY_DIR / "nginx" / "hopgate-cluster.conf"
#: How a test makes nginx drop WebSocket upgrades (as its default does): long-poll hop.
NGINX_NO_UPGRADE = (
    ("        proxy_set_header Upgrade $http_upgrade;\n", ""),
    ("proxy_set_header Connection $hopgate_cluster_connection;", 'proxy_set_header Connection "";'),
)


@contextlib.contextmanager
def running_cluster_nginx(
    servers: Sequence[str], changes: Sequence[tuple[str, str]] = ()
) -> Iterator[ProxyProcess]:
    """nginx with ``hopgate-cluster.conf`` in front of ``servers`` (``http://host:port``)."""
    binary = find_binary("nginx")
    values = {f"SERVER_{n}": url.split("://", 1)[1] for n, url in zip("ABC", servers, strict=True)}
    with _workdir("nginx-cluster") as workdir:

        def prepare(port: int) -> list[str]:
            text = render(NGINX_RECIPE, LISTEN=f"127.0.0.1:{port}", **values)
            (workdir / NGINX_RECIPE.name).write_text(changed(text, changes, NGINX_RECIPE.name))
            main = NGINX_MAIN.format(dir=workdir, recipe=NGINX_RECIPE.name)
            (workdir / "nginx.conf").write_text(main)
            return [binary, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-e", "stderr"]

        proxy = _start("nginx-cluster", workdir, prepare, ("error.log", "access.log"))
        try:
            yield proxy
        finally:
            proxy.stop(5.0)


@dataclass
class Instance:
    """One ``hopgate server`` on a port fixed for its life, restarts included."""

    number: int
    port: int
    proc: GatewayProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    origin: ChildProcess
    origin_port: int
    instances: list[Instance]
    server_args: tuple[str, ...]
    tree: Path | None
    haproxy: ProxyProcess | None = None
    client: GatewayProcess | None = None
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    @property
    def entry(self) -> str:
        """Where the legacy client sends: the client gateway, else HAProxy itself."""
        if self.client is not None:
            return self.client.url
        assert self.haproxy is not None
        return self.haproxy.url

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def start_instance(self, inst: Instance) -> None:
        args = self.server_args
        if "--advertise" in args:
            args = tuple(a if a != "{advertise}" else inst.url for a in args)
        inst.proc = gateway("server", self.origin_url, *args, port=inst.port, tree=self.tree)
        self.note(f"started {inst.number}")

    def stop_instance(self, inst: Instance) -> float:
        """SIGTERM, and wait until the process is gone; returns how long that took."""
        assert inst.proc is not None
        started = time.monotonic()
        self.note(f"SIGTERM {inst.number}")
        inst.proc.stop(STOP_TIMEOUT)
        self.note(f"gone {inst.number}")
        return time.monotonic() - started

    def kill_instance(self, inst: Instance) -> None:
        assert inst.proc is not None
        self.note(f"kill -9 {inst.number}")
        kill_hard(inst.proc)

    def children(self) -> list[ChildProcess]:
        procs: list[ChildProcess] = [self.client] if self.client else []
        procs += [i.proc for i in self.instances if i.proc is not None]
        return [*procs, self.origin]


async def wait_ready(url: str, timeout: float = READY_TIMEOUT) -> None:
    """Until ``url``'s /.hopgate/ready answers 200 (bounded)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url + "/.hopgate/ready", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url}/.hopgate/ready not 200 within {timeout} s")


def cluster_args(secret_file: Path, *extra: str) -> tuple[str, ...]:
    """The flags that make an instance a cluster member (``{advertise}``: its own URL)."""
    return ("--cluster-secret-file", str(secret_file), "--advertise", "{advertise}", *extra)


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    clustered: bool = True,
    direct: bool = False,
    changes: Sequence[tuple[str, str]] = (),
    tree: Path | None = None,
    hold: float = 2.0,
    extra_server_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = (),
    balancer: str = "haproxy",
) -> AsyncIterator[Cluster]:
    """origin, three instances, HAProxy (or nginx) and unless ``direct`` a client gateway.

    All are stopped at the end.
    """
    with tempfile.TemporaryDirectory(prefix="hopgate-cluster-") as tmp:
        secret = Path(tmp) / "cluster.secret"
        secret.write_text(secrets.token_urlsafe(32) + "\n")
        secret.chmod(0o600)
        base = ("--shutdown-grace", str(SHUTDOWN_GRACE), *extra_server_args)
        args = cluster_args(secret, *base) if clustered else base
        origin_port = free_port()
        cluster = Cluster(
            origin=start_origin(origin_port, hold=hold),
            origin_port=origin_port,
            instances=[Instance(n, free_port()) for n in range(1, INSTANCES + 1)],
            server_args=args,
            tree=tree,
        )
        try:
            await asyncio.gather(
                *(asyncio.to_thread(cluster.start_instance, i) for i in cluster.instances)
            )
            start = running_cluster_nginx if balancer == "nginx" else running_cluster_haproxy
            with start([i.url for i in cluster.instances], changes) as proxy:
                cluster.haproxy = proxy  # servers start up; the first checks confirm it
                if not direct:
                    cluster.client = gateway("client", proxy.url, *client_args, tree=tree)
                yield cluster
        finally:
            cluster.note("stopping")
            # SIGKILL: a draining instance would give its held requests
            # --shutdown-grace, which a test has no more use for.
            for child in cluster.children():
                if child.alive():
                    kill_hard(child)
            if cluster.haproxy is not None:
                print(cluster.haproxy.logs()[-4000:])
            if cluster.client is not None:  # its warnings say why a request failed
                warned = [line for line in cluster.client.lines if "WARNING" in line]
                print("--- client gateway warnings\n" + "".join(warned[-40:]))


async def status(url: str) -> dict[str, Any]:
    """A gateway's /.hopgate/status (loopback may read it); ``{}`` if it does not answer."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(5),
            http.get(url + "/.hopgate/status") as resp,
        ):
            doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


SESSION_LINE = re.compile(r"hopgate_cluster/hopgate(\d) .*/\.hopgate/session/([\w-]+)\.")


def session_routes(cluster: Cluster) -> Counter[tuple[int, int]]:
    """From HAProxy's log: ``(owner, server it went to)`` -> session requests."""
    assert cluster.haproxy is not None
    owners = {owner_prefix(i.url): i.number for i in cluster.instances}
    routes: Counter[tuple[int, int]] = Counter()
    for line in cluster.haproxy.lines:
        if match := SESSION_LINE.search(line):
            routes[owners.get(match.group(2), 0), int(match.group(1))] += 1
    return routes


async def forwarded(cluster: Cluster) -> int:
    """Requests the instances passed on to another instance (their status), all together."""
    docs = [await status(i.url) for i in cluster.instances if i.proc and i.proc.alive()]
    return sum(int(doc.get("cluster", {}).get("forwarded", 0)) for doc in docs)


async def hop(cluster: Cluster) -> dict[str, Any]:
    """The client gateway's one upstream entry (transport, session, transitions)."""
    assert cluster.client is not None
    upstreams = (await status(cluster.client.url)).get("upstreams") or [{}]
    entry: dict[str, Any] = upstreams[0]
    return entry


async def session_owner(cluster: Cluster) -> Instance | None:
    """The instance that holds the hop session now (its status lists one), if one does."""
    for inst in cluster.instances:
        if inst.proc is None or not inst.proc.alive():
            continue
        sessions = (await status(inst.url)).get("sessions") or {}
        if int(sessions.get("active", 0)) > 0:
            return inst
    return None
