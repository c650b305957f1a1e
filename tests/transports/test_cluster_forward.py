"""Two real ``hopgate server`` instances of one cluster: a session's requests reach either.

::

    legacy client -> hopgate client -> HAProxy -> POST /.hopgate/session, hello, plain: instance 1
                                                \\-> /.hopgate/session/{id}...:           instance 2

Instance 2 owns none of the sessions, so everything it gets for one is
passed on to instance 1 (the owner named in the id). HAProxy (a real one,
with a config written here) is only the router that splits the requests;
the deploy recipes are tested in ``tests/cluster/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import aiohttp
import pytest
from aiohttp import web

from gateway.core.cluster import CLUSTER_HEADER, ClusterIds
from gateway.core.session.tokens import new_session_id
from gateway.server import Gateway
from gateway.transports.handshake import SESSION_HEADER, SESSION_PATH, TOKEN_HEADER
from tests.helpers import FAST_LADDER, FAST_SESSION, NO_REPROBE, loopback_gateway, until
from tests.processes import free_port
from tests.proxies import ProxyProcess, running_splitter

SECRET = "test-cluster-secret-of-32-bytes!"
FOREIGN = "another-cluster-secret-32-bytes!"


@dataclass
class Cluster:
    one: Gateway
    two: Gateway
    origin: str
    router: ProxyProcess | None = None


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=f"{request.method} {request.path_qs} {body.decode()}")


def instance(origin: str, port: int, **extra: object) -> Gateway:
    settings = {
        "upstream": origin,
        "listen": f"127.0.0.1:{port}",
        "cluster_secret": SECRET,
        "advertise": f"http://127.0.0.1:{port}",
        "shutdown_grace": 1.0,
        **extra,
    }
    return loopback_gateway("server", settings, session=FAST_SESSION)


@pytest.fixture
async def cluster(make_origin: object) -> AsyncIterator[Cluster]:
    origin = await make_origin(echo)  # type: ignore[operator]
    one, two = instance(origin, free_port()), instance(origin, free_port())
    await one.start()
    await two.start()
    try:
        yield Cluster(one, two, origin)
    finally:
        await two.stop()
        await one.stop()


@pytest.fixture
def splitting_router() -> Iterator[object]:
    """Starts HAProxy splitting requests between the two instances (see the module doc)."""
    with contextlib.ExitStack() as stack:

        def start(cluster: Cluster, *, long_poll: bool) -> ProxyProcess:
            router = running_splitter(cluster.one.port, cluster.two.port, long_poll=long_poll)
            return stack.enter_context(router)

        yield start


def upstream_transport(client: Gateway) -> str:
    [state] = client.stats.upstreams.values()
    return state.transport


async def legacy_traffic(client: Gateway, count: int) -> None:
    """Numbered GETs and POSTs through the client gateway; each answer checked."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        for i in range(count):
            async with http.get(f"{client.url}/echo?n={i}") as answer:
                assert (answer.status, await answer.text()) == (200, f"GET /echo?n={i} ")
            async with http.post(f"{client.url}/post", data=f"body {i}") as answer:
                assert (answer.status, await answer.text()) == (200, f"POST /post body {i}")
        big = "x" * (1024 * 1024)  # batches larger than WHOLE_BODY stream through instance 2
        async with http.post(f"{client.url}/big", data=big) as answer:
            assert (answer.status, await answer.text()) == (200, f"POST /big {big}")


async def status_of(gw: Gateway) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/.hopgate/status") as answer:
        assert answer.status == 200
        document: dict[str, object] = await answer.json()
        return document


@pytest.mark.parametrize("transport", ["long-poll", "websocket"])
async def test_a_session_keeps_working_through_the_instance_that_does_not_own_it(
    cluster: Cluster, splitting_router: object, transport: str
) -> None:
    router = splitting_router(cluster, long_poll=transport == "long-poll")  # type: ignore[operator]
    client = loopback_gateway(
        "client",
        {"upstream": router.url, "shutdown_grace": 1.0},
        ladder=FAST_LADDER,
        session=replace(FAST_SESSION, **NO_REPROBE) if transport == "long-poll" else FAST_SESSION,
    )
    async with client:
        await until(lambda: upstream_transport(client) == transport, f"a {transport} hop")
        await legacy_traffic(client, 20)
        # Past a few held polls (hold time 2 s): the session stays where it is.
        await asyncio.sleep(2.5)
        await legacy_traffic(client, 5)
        assert upstream_transport(client) == transport
        owner, other = await status_of(cluster.one), await status_of(cluster.two)
        assert owner["sessions"]["by_transport"][transport] == 1, owner  # type: ignore[index]
        assert other["sessions"]["active"] == 0, other  # type: ignore[index]
        # Status tells sessions apart by their nonce: every id starts with the owner's URL.
        [peer] = owner["sessions"]["peers"]  # type: ignore[index]
        hop = (await status_of(client))["upstreams"][0]  # type: ignore[index]
        assert peer["session"] == hop["session"] != "aHR0cD", (peer, hop)
        forwarded = other["cluster"]  # the non-owner passed the session's requests on
        assert forwarded["advertise"] == f"http://127.0.0.1:{cluster.two.port}"  # type: ignore[index]
        # One attach; the long-poll hop streams (the splitter sets http-no-delay): a streamed
        # poll and a streamed POST at least, each ending after the hold time.
        expected_least = 1 if transport == "websocket" else 2
        assert forwarded["forwarded"] >= expected_least, forwarded  # type: ignore[index]
        assert forwarded["forged"] == forwarded["forward_errors"] == 0, forwarded  # type: ignore[index]
    # The client closed its session: the close crossed instance 2 (the WebSocket's close
    # frames both ways, the long-poll's last requests), the owner ended the session and
    # nothing stays open in between.
    forwarder = cluster.two.sessions.cluster  # type: ignore[union-attr]
    assert forwarder is not None
    await until(lambda: forwarder.active == 0, "instance 2's forwards to end", timeout=10)
    await until(lambda: cluster.one.stats.active_sessions == 0, "the owner to end it", 10)


# -- ids that must go nowhere ----------------------------------------------------------


class Listener:
    """A listening socket that counts the connections made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.connects = 0
        self.server: asyncio.Server | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connects += 1
            self.held.append(writer)

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for writer in self.held:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    listening = Listener()
    yield listening
    await listening.stop()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def session_request(
    gw: Gateway, session_id: str, *, websocket: bool = False, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    url = f"{gw.url}{SESSION_PATH}/{session_id}?last=0&epoch=1"
    sent = {TOKEN_HEADER: b64(b"t" * 32), **(headers or {})}
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        if websocket:
            try:
                async with http.ws_connect(url, headers=sent, protocols=("hopgate.v1",)):
                    return 101, ""
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, exc.message
        async with http.get(url, headers=sent) as answer:
            return answer.status, (await answer.read()).decode(errors="replace")


async def test_forged_and_foreign_ids_are_refused_and_dial_nothing(
    cluster: Cluster, listener: Listener
) -> None:
    port = await listener.start()
    target = f"http://127.0.0.1:{port}"
    nonce = new_session_id()
    owner = b64(target.encode())
    forged = f"{owner}.{nonce}.{b64(b'x' * 16)}"
    foreign = ClusterIds(FOREIGN, target).session_id(nonce)
    not_a_url = ClusterIds(SECRET, "http://127.0.0.1:1").session_id(nonce)
    not_a_url = b64(b"gopher://x") + not_a_url[not_a_url.index(".") :]
    for session_id in (forged, foreign, not_a_url):
        for websocket in (False, True):
            status, text = await session_request(cluster.two, session_id, websocket=websocket)
            assert status == 404, (session_id, websocket, status, text)
    # A real owner URL in a well-formed id: only the secret could have made it.
    valid_for_listener = ClusterIds(SECRET, target).session_id(nonce)
    proof = ClusterIds(SECRET, "http://127.0.0.1:1").internal_proof(
        time.time(), "192.0.2.1", "GET", f"{SESSION_PATH}/{valid_for_listener}"
    )
    # ... but sent with an instance's proof, it is served where it arrived: 404, no loop.
    status, _ = await session_request(
        cluster.two, valid_for_listener, headers={CLUSTER_HEADER: proof}
    )
    assert status == 404
    await asyncio.sleep(0.3)
    assert listener.connects == 0
    stats = cluster.two.stats.cluster
    assert stats is not None
    assert (stats.forged, stats.forwarded, stats.gone) == (6, 0, 0)
    document = await status_of(cluster.two)
    assert document["cluster"]["forged"] == 6  # type: ignore[index]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{cluster.two.url}/.hopgate/metrics") as answer,
    ):
        metrics = await answer.text()
    assert 'hopgate_cluster_forwards_total{result="forged"} 6.0' in metrics


async def test_an_outside_proof_header_does_not_stop_forwarding(
    cluster: Cluster, listener: Listener
) -> None:
    """A peer cannot claim to be an instance: its header is dropped, the request goes on."""
    nonce = new_session_id()
    owned_by_one = ClusterIds(SECRET, f"http://127.0.0.1:{cluster.one.port}").session_id(nonce)
    status, text = await session_request(
        cluster.two, owned_by_one, headers={CLUSTER_HEADER: "v1 1 192.0.2.1 0000"}
    )
    # Instance 1 answered: it knows no such session (a 404 from the owner, not a refusal here).
    assert (status, text) == (404, "hopgate: no such hop session (unknown or expired)\n")
    assert cluster.two.stats.cluster is not None
    assert cluster.two.stats.cluster.forwarded == 1


# -- the owner is gone, or silent -------------------------------------------------------


async def open_session(gw: Gateway) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http, http.post(f"{gw.url}{SESSION_PATH}") as answer:
        assert answer.status == 200
        return answer.headers[SESSION_HEADER], answer.headers[TOKEN_HEADER]


async def test_the_owners_refusal_reaches_the_peer_with_its_status(cluster: Cluster) -> None:
    """A WebSocket is accepted only once the owner answered 101: a 403 there is a 403 here."""
    session_id, _ = await open_session(cluster.one)
    wrong = {TOKEN_HEADER: b64(b"w" * 32)}
    for websocket in (False, True):
        status, _ = await session_request(
            cluster.two, session_id, websocket=websocket, headers=wrong
        )
        assert status == 403
    stats = cluster.two.stats.cluster
    assert stats is not None
    assert (stats.forwarded, stats.gone, stats.forged) == (2, 0, 0)


async def test_an_owner_that_is_gone_answers_404(cluster: Cluster) -> None:
    session_id, token = await open_session(cluster.one)
    headers = {TOKEN_HEADER: token}
    status, _ = await session_request(cluster.two, session_id, headers=headers)
    assert status == 200  # a held poll, answered by the owner after its hold time
    await cluster.one.stop()
    for websocket in (False, True):
        status, text = await session_request(
            cluster.two, session_id, websocket=websocket, headers=headers
        )
        assert status == 404, text
        if not websocket:
            gone = f"session's owner http://127.0.0.1:{cluster.one.port} is gone"
            assert gone in text
    stats = cluster.two.stats.cluster
    assert stats is not None
    assert (stats.forwarded, stats.gone) == (1, 2)


async def test_a_silent_owner_answers_504(make_origin: object, listener: Listener) -> None:
    """An owner that accepts and never answers: 504 after the hold time and connect timeout."""
    origin = await make_origin(echo)  # type: ignore[operator]
    port = await listener.start()
    silent_owner = ClusterIds(SECRET, f"http://127.0.0.1:{port}").session_id(new_session_id())
    async with instance(origin, free_port(), hold_time=0.5, connect_timeout=1.0) as gw:
        started = asyncio.get_running_loop().time()
        status, text = await session_request(gw, silent_owner)
        waited = asyncio.get_running_loop().time() - started
    assert status == 504, text
    assert 1.0 <= waited < 6.0
    assert listener.connects == 1


async def test_forwards_in_flight_are_capped(make_origin: object, listener: Listener) -> None:
    """2 x --max-sessions forwards at once; one more gets 503 at once, counted as busy."""
    origin = await make_origin(echo)  # type: ignore[operator]
    port = await listener.start()
    silent_owner = ClusterIds(SECRET, f"http://127.0.0.1:{port}")
    settings = {"max_sessions": 1, "hold_time": 1.0, "connect_timeout": 1.0}
    async with instance(origin, free_port(), **settings) as gw:
        held = [
            asyncio.ensure_future(session_request(gw, silent_owner.session_id(new_session_id())))
            for _ in range(2)
        ]
        await until(lambda: listener.connects == 2, "two forwards held by the silent owner")
        status, text = await session_request(gw, silent_owner.session_id(new_session_id()))
        assert status == 503, text
        assert [status for status, _ in await asyncio.gather(*held)] == [504, 504]
        stats = gw.stats.cluster
        assert stats is not None
        assert (stats.busy, stats.timeouts, stats.forwarded) == (1, 2, 0)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{gw.url}/.hopgate/metrics") as answer,
        ):
            metrics = await answer.text()
        for result, count in (("busy", 1), ("timeout", 2), ("ok", 0), ("gone", 0)):
            assert f'hopgate_cluster_forwards_total{{result="{result}"}} {count}.0' in metrics


async def test_a_broken_handshake_is_refused_before_the_owner_is_asked(
    cluster: Cluster, listener: Listener
) -> None:
    """A WebSocket request the non-owner could not accept is 400 there; nothing is dialled."""
    port = await listener.start()
    owned_elsewhere = ClusterIds(SECRET, f"http://127.0.0.1:{port}").session_id(new_session_id())
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.two.port)
    writer.write(
        f"GET {SESSION_PATH}/{owned_elsewhere}?epoch=1 HTTP/1.1\r\nHost: x\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: hopgate.v1\r\n\r\n".encode()  # no Sec-WebSocket-Key
    )
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 400 "), status_line
    await asyncio.sleep(0.2)
    assert listener.connects == 0
