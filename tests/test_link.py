"""The upstream link: discovery cost, session up, fall back to plain, climb again.

Real gateways and origins on loopback.  Each test reads what a user reads:
the origin's request log and ``/.hopgate/status``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway import link as link_module
from gateway.core import discovery
from gateway.core import ladder as reasons
from gateway.core.ladder import LadderSettings
from gateway.link import LinkTable, UpstreamLink
from gateway.server import Gateway
from gateway.status import MAX_UPSTREAMS, STATUS_PATH, no_link
from gateway.transports.handshake import SESSION_PATH
from gateway.transports.session_settings import SessionSettings
from tests.helpers import until, upstream_json
from tests.hop.conftest import StartGateway
from tests.hop.conftest import start_gateway as start_gateway  # the fixture, shared
from tests.processes import free_port
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)
from tests.status_page import upstream_entry

pytestmark = pytest.mark.timeout(60)

# ----------------------------------------------------------------- helpers


class Recorder:
    """A legacy origin: logs every request line, answers with ``answer``."""

    def __init__(self, answer: Callable[[web.Request], web.Response] | None = None) -> None:
        self.lines: list[str] = []
        self._answer = answer or (lambda _r: web.Response(text="ok"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.lines.append(f"{request.method} {request.path}")
        await request.read()
        return self._answer(request)

    def count(self, prefix: str) -> int:
        return sum(1 for line in self.lines if line.split(" ", 1)[1].startswith(prefix))


def link_on(gw: Gateway, key: str, *, check_hello: bool = True) -> UpstreamLink:
    """An UpstreamLink to ``key`` on ``gw``'s own client and forwarder; the test starts it."""
    assert gw._client is not None and gw._forwarder is not None
    return UpstreamLink(
        URL(key),
        key=key,
        http=gw._client,
        forwarder=gw._forwarder,
        stats=gw.stats,
        session_settings=SessionSettings(),
        check_hello=check_hello,
    )


def answer_200_text(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def answer_fake_hello(_request: web.Request) -> web.Response:
    """Looks like a hello answer, without a proof computed from the nonce."""
    body = {"hopgate": 1, "proof": "0" * 64, "session": "/.hopgate/session"}
    return web.json_response(body)


def answer_echo(request: web.Request) -> web.Response:
    """Echoes request headers back (as headers and as JSON), query included."""
    skip = {"content-length", "transfer-encoding", "connection", "host", "content-type"}
    headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
    body = {"headers": dict(request.headers), "query": dict(request.query)}
    return web.json_response(body, headers=headers)


LEGACY_ORIGINS = {
    "200-to-everything": answer_200_text,
    "fake-hello-json": answer_fake_hello,
    "echo": answer_echo,
}


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", sorted(LEGACY_ORIGINS))
async def test_legacy_upstream_stays_plain_and_pays_one_hello(
    kind: str, make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = Recorder(LEGACY_ORIGINS[kind])
    gw = await start_gateway("client", {"upstream": await make_origin(origin.handle)})
    link = gw.link()
    assert link is not None
    await until(lambda: upstream_json(gw)["peer"] == "legacy", "the hello to be judged")
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            async with http.get(f"{gw.url}/poll?since={i}") as resp:
                assert resp.status == 200
                await resp.read()
        await asyncio.sleep(0.5)  # room for any stray background request
        status = await upstream_entry(http, gw.url)
    assert origin.count(discovery.HELLO_PATH) == 1, origin.lines
    assert origin.count("/poll") == 30
    # An echoed mark is not a note (a note names the session path), so no
    # session is ever attempted against a legacy origin.
    assert origin.count(SESSION_PATH) == 0, origin.lines
    assert len(origin.lines) == 31
    assert status["transport"] == "plain"
    assert status["upgrades"] == 0
    assert status["session"] is None
    assert gw.stats.active_sessions == 0
    assert link.tunnel() is None


async def test_a_sidecar_costs_its_legacy_origin_nothing(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    """The server role's upstream is the legacy origin: no hello, ever; only the mark."""
    origin = Recorder()
    gw = await start_gateway("server", {"upstream": await make_origin(origin.handle)})
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            async with http.get(f"{gw.url}/poll?since={i}") as resp:
                assert resp.status == 200
        await asyncio.sleep(0.5)  # room for any stray background request
    assert origin.lines == ["GET /poll"] * 5
    assert upstream_json(gw)["transport"] == "plain"


async def test_unreachable_upstream_is_not_called_legacy(
    start_gateway: StartGateway,
) -> None:
    """A refused connection says nothing about the peer: the hello is retried."""
    gw = await start_gateway("client", {"upstream": "http://127.0.0.1:9"})
    await until(lambda: "hello" in upstream_json(gw)["last_error"], "the failed hello")
    assert upstream_json(gw)["peer"] == "unknown"
    assert upstream_json(gw)["transport"] == "plain"


async def test_gateway_upstream_upgrades_to_a_websocket_session(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = Recorder()
    server = await start_gateway("server", {"upstream": await make_origin(origin.handle)})
    client = await start_gateway("client", {"upstream": server.url})
    await until(lambda: upstream_json(client)["transport"] == "websocket", "the websocket session")
    async with aiohttp.ClientSession() as http:
        status = await upstream_entry(http, client.url)
        before = server.stats.requests_total
        for i in range(10):
            async with http.post(f"{client.url}/send", data=f"m{i}".encode()) as resp:
                assert resp.status == 200
                assert await resp.text() == "ok"
        served_by_dispatch = server.stats.requests_total - before
    assert status["peer"] == "gateway"
    assert status["upgrades"] == 1
    assert status["fallbacks"] == 0
    assert status["session"] and len(status["session"]) == 6
    assert client.stats.active_sessions == 1
    assert server.stats.active_sessions == 1
    # Over the WebSocket, no request reached the server gateway's HTTP side.
    assert served_by_dispatch == 0
    assert origin.count("/send") == 10
    # The client's hello was answered by the server gateway, never forwarded,
    # and a sidecar never asks its (legacy) origin for one.
    assert origin.count("/.hopgate") == 0


async def test_session_loss_falls_back_to_plain_then_climbs_again(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = Recorder()
    server = await start_gateway("server", {"upstream": await make_origin(origin.handle)})
    # A back-off long enough to see the plain rung, short enough for a test.
    ladder = LadderSettings(retry_initial=1.5, retry_max=3.0, legacy_recheck=600.0)
    client = await start_gateway("client", {"upstream": server.url}, ladder=ladder)
    await until(lambda: upstream_json(client)["transport"] == "websocket", "the first session")
    assert server.sessions is not None
    [hop] = list(server.sessions.registry)
    first = upstream_json(client)["session"]
    # As if the server gateway forgot it: its resume is answered 404, which is
    # "session lost", not "unreachable": the next session opens at once.
    hop.abandon(1011, "killed by the test")

    await until(lambda: upstream_json(client)["session"] not in (None, first), "the failover")
    status = upstream_json(client)
    assert status["fallbacks"] >= 1
    assert [t["to"] for t in status["transitions"]][-2:] == ["plain", "websocket"]
    assert client.stats.failovers == 1
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{client.url}/during-backoff") as resp:
            assert resp.status == 200
        await until(lambda: upstream_json(client)["transport"] == "websocket", "the re-upgrade")
        async with http.get(f"{client.url}/after") as resp:
            assert resp.status == 200
    status = upstream_json(client)
    # websocket, (long-poll while the session tried to resume,) plain, websocket
    assert status["upgrades"] >= 2
    assert status["fallbacks"] >= 1
    assert client.stats.active_sessions == 1
    assert origin.count("/during-backoff") == 1
    assert origin.count("/after") == 1


async def test_upgrade_never_sends_no_hello_and_accepts_no_session(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = Recorder()
    gw = await start_gateway(
        "server", {"upstream": await make_origin(origin.handle), "upgrade": "never"}
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{gw.url}/x") as resp:
                assert resp.status == 200
        # Its own paths are not answered: a `never` gateway is a plain proxy.
        async with http.get(f"{gw.url}{discovery.HELLO_PATH}?nonce=abc") as resp:
            assert await resp.text() == "ok"
        async with http.post(f"{gw.url}{SESSION_PATH}") as resp:
            assert await resp.text() == "ok"
        await asyncio.sleep(0.3)
        status = await upstream_entry(http, gw.url)
    assert origin.lines == [
        "GET /x",
        "GET /x",
        "GET /x",
        f"GET {discovery.HELLO_PATH}",
        f"POST {SESSION_PATH}",
    ]
    assert gw.link() is None and gw.sessions is None
    assert status["transport"] == "plain" and status["peer"] == "unknown"


async def test_hello_answer_is_served_by_the_gateway_itself(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    origin = Recorder()
    gw = await start_gateway("client", {"upstream": await make_origin(origin.handle)})
    await until(lambda: upstream_json(gw)["peer"] == "legacy", "its own hello to be judged")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}{discovery.HELLO_PATH}", params={"nonce": "n1"}) as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
            body = json.loads(await resp.text())
        async with http.get(f"{gw.url}{discovery.HELLO_PATH}") as resp:
            assert resp.status == 400
        async with http.post(f"{gw.url}{discovery.HELLO_PATH}?nonce=n") as resp:
            assert resp.status == 405
    assert discovery.check_hello(body, "n1") is not None
    assert discovery.check_hello(body, "n2") is None
    assert origin.count(discovery.HELLO_PATH) == 1  # only the gateway's own


async def test_link_table_evicts_the_least_recently_used(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    gw = await start_gateway("client", {"upstream": await make_origin(Recorder().handle)})
    made: list[UpstreamLink] = []

    def make(key: str) -> UpstreamLink:
        link = link_on(gw, key, check_hello=False)
        made.append(link)
        return link

    table = LinkTable(make, limit=2)
    a, b = table.ensure("http://a:1"), table.ensure("http://b:1")
    assert table.get("http://a:1") is a  # a is now the most recently used
    table.ensure("http://c:1")
    assert len(table) == 2
    assert table.get("http://b:1") is None
    assert table.get("http://a:1") is a
    await until(lambda: gw.stats.upstreams["http://b:1"].report is no_link, "b let go")
    # the evicted link is no longer reachable from the status: its entry can be forgotten
    assert gw.stats.upstreams["http://a:1"].report == a.report
    await table.close()
    assert len(table) == 0
    assert Counter(link.key for link in made) == Counter(["http://a:1", "http://b:1", "http://c:1"])
    assert b is made[1]


async def test_a_forward_proxy_keeps_figures_for_a_bounded_number_of_origins(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway("client", {})  # a forward proxy: any origin a client names
    ports: list[int] = []
    while len(ports) < MAX_UPSTREAMS + 20:  # distinct ports nothing listens on
        port = free_port()
        if port not in ports:
            ports.append(port)
    async with aiohttp.ClientSession() as http:
        for port in ports:
            async with http.get(f"http://127.0.0.1:{port}/x", proxy=gw.url) as resp:
                assert resp.status == 502
        assert len(gw.stats.upstreams) == MAX_UPSTREAMS
        # the newest are kept, the oldest forgotten
        assert f"http://127.0.0.1:{ports[-1]}" in gw.stats.upstreams
        assert f"http://127.0.0.1:{ports[19]}" not in gw.stats.upstreams
        async with http.get(gw.url + STATUS_PATH) as resp:
            assert len((await resp.json())["upstreams"]) == MAX_UPSTREAMS


async def test_an_unexpected_error_in_a_links_work_is_logged_and_the_link_goes_on(
    make_origin: Any,
    start_gateway: StartGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_gateway("server", {"upstream": await make_origin(Recorder().handle)})
    gw = await start_gateway("client", {"upstream": await make_origin(Recorder().handle)})
    monkeypatch.setattr(link_module, "RECOVER_AFTER", 0.1)
    key = server.url
    link = link_on(gw, key)
    real, calls = link._fetch_hello, 0

    async def broken_once(url: URL) -> tuple[int, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the hello")
        return await real(url)

    link._fetch_hello = broken_once  # type: ignore[method-assign]
    link.start()
    try:
        await until(lambda: link.tunnel() is not None, "the session after the error")
    finally:
        await link.close()
    assert "hop link to " + key + ": unexpected error; going on in 0.1 s" in caplog.text
    assert "RuntimeError: a bug in the hello" in caplog.text  # with its traceback


async def test_status_reads_the_links_ladder_when_served(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    """The ladder is the one place a hop's counters live: each move shows at once."""
    gw = await start_gateway("client", {"upstream": await make_origin(Recorder().handle)})
    key = "http://peer.example:1"
    link = link_on(gw, key, check_hello=False)  # never started: only the test moves its ladder
    state = gw.stats.upstream(key)
    assert (state.transport, state.peer, state.upgrades) == ("plain", "unknown", 0)
    link.ladder.peer_is_gateway()
    now = asyncio.get_running_loop().time()
    link.ladder.session_up(now, "long-poll", reasons.UPGRADE_FAILED, "WebSocket probe timed out")
    assert state.last_error == "WebSocket probe timed out"
    link.ladder.transport_changed(now, "websocket", reasons.PROBE_SUCCEEDED)
    doc = state.as_json()
    moves = doc.pop("transitions")
    assert doc == {
        "url": key,
        "transport": "websocket",
        "upgrades": 2,
        "fallbacks": 1,
        "requests": 0,
        "errors": 0,
        "peer": "gateway",
        "session": None,
        "session_transport": None,
        "session_resumes": None,
        "last_error": "",
        "heartbeat_s": 20.0,
        "heartbeat_learned": None,
    }
    assert [(m["from"], m["to"], m["reason"]) for m in moves] == [
        ("plain", "long-poll", "upgrade_failed"),
        ("long-poll", "websocket", "probe_succeeded"),
    ]
    # Loop time became wall-clock time: the moves happened just now.
    at = datetime.fromisoformat(moves[0]["at"])
    assert abs((datetime.now(UTC) - at).total_seconds()) < 5
    link.ladder.session_lost(now + 1, reasons.PEER_CLOSED, "session closed (1001 going away)")
    assert (state.transport, state.fallbacks) == ("plain", 2)
    assert state.last_error == "session closed (1001 going away)"
    assert link.report().switches == {
        ("plain", "long-poll", "upgrade_failed"): 1,
        ("long-poll", "websocket", "probe_succeeded"): 1,
        ("websocket", "plain", "peer_closed"): 1,
    }
    await link.close()


async def test_forward_proxy_learns_a_gateway_origin_from_its_note(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    """No hello in forward-proxy mode: the note on an ordinary response is enough."""
    origin = Recorder()
    server = await start_gateway("server", {"upstream": await make_origin(origin.handle)})
    proxy = await start_gateway("client")  # no upstream: forward proxy
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/first", proxy=proxy.url) as resp:
            assert resp.status == 200
        link = proxy.link(server.url)
        assert link is not None, "the note on the first response creates a link"
        await until(lambda: link.ladder.rung == "websocket", "the session to the origin's gateway")
        before = server.stats.requests_total
        async with http.get(f"{server.url}/second", proxy=proxy.url) as resp:
            assert resp.status == 200
        assert server.stats.requests_total == before  # it went over the session
    assert origin.count("/first") == 1 and origin.count("/second") == 1
    assert origin.count(discovery.HELLO_PATH) == 0  # a sidecar never asks its origin


# ------------------------------------------------------- why a hop moved


async def test_a_hop_behind_a_proxy_that_strips_upgrade_says_why_it_is_on_long_poll(
    make_origin: Any,
    start_gateway: StartGateway,
    proxies: Proxies,  # noqa: F811
) -> None:
    """nginx's default recipe drops ``Upgrade``: status names the refusal, not just the rung."""
    server = await start_gateway("server", {"upstream": await make_origin(Recorder().handle)})
    nginx = proxies.nginx(server.url)  # the default recipe: no WebSocket
    client = await start_gateway("client", {"upstream": nginx.url})
    [state] = client.stats.upstreams.values()
    await until(lambda: state.transport == "long-poll", "the long-poll hop behind nginx")
    async with aiohttp.ClientSession() as http:
        hop = await upstream_entry(http, client.url)
        async with http.get(server.url + STATUS_PATH) as resp:
            sidecar = (await resp.json())["sessions"]
    assert hop["transport"] == "long-poll"
    assert hop["last_error"].startswith("WebSocket upgrade refused (400")
    assert (hop["upgrades"], hop["fallbacks"]) == (1, 1)
    first = hop["transitions"][0]
    assert (first["from"], first["to"], first["reason"]) == (
        "plain",
        "long-poll",
        "upgrade_refused",
    )
    assert first["detail"] == hop["last_error"]
    assert datetime.fromisoformat(first["at"]).tzinfo is not None
    link = client.link()
    assert link is not None
    assert link.report().switches == {("plain", "long-poll", "upgrade_refused"): 1}
    # The sidecar sees the session as nginx opened it: long-poll, from loopback.
    assert sidecar["by_transport"] == {"websocket": 0, "long-poll": 1}
    [peer] = sidecar["peers"]
    assert (peer["transport"], peer["session"]) == ("long-poll", hop["session"])
    assert peer["peer"].startswith("127.0.0.1:")


async def test_a_demoted_websocket_hop_shows_the_move_and_its_reason(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    server = await start_gateway("server", {"upstream": await make_origin(Recorder().handle)})
    client = await start_gateway("client", {"upstream": server.url})
    link = client.link()
    assert link is not None
    await until(lambda: link.ladder.rung == "websocket", "the websocket hop")
    connector = link._connector
    assert connector is not None
    await connector.demote()
    async with aiohttp.ClientSession() as http:
        hop = await upstream_entry(http, client.url)
    assert hop["transport"] == "long-poll"
    assert [(m["from"], m["to"], m["reason"]) for m in hop["transitions"]] == [
        ("plain", "websocket", "session_opened"),
        ("websocket", "long-poll", "demoted"),
    ]
    assert hop["fallbacks"] == 1
    assert hop["last_error"] == "WebSocket demoted (asked to)"


async def test_a_websocket_closed_right_after_its_probe_resumes_on_long_poll_and_says_so(
    make_origin: Any, start_gateway: StartGateway
) -> None:
    """The server drops the hop's socket (as a proxy killing upgraded connections would)."""
    server = await start_gateway("server", {"upstream": await make_origin(Recorder().handle)})
    client = await start_gateway("client", {"upstream": server.url})
    link = client.link()
    assert link is not None and server.sessions is not None
    await until(lambda: link.ladder.rung == "websocket", "the websocket hop")
    [served] = list(server.sessions.registry)
    socket = served.current
    assert socket is not None and socket.kind == "websocket"
    served.detach(socket, "dropped by the test")
    await until(lambda: link.ladder.rung == "long-poll", "the resume on long-poll")
    move = link.report().transitions[-1]
    assert (move.from_rung, move.to_rung, move.reason) == (
        "websocket",
        "long-poll",
        "websocket_closed",
    )
    assert move.detail.startswith("websocket lost: ")
    assert link.ladder.last_error == move.detail
    # The re-probe brings it back, and says so.
    await until(lambda: link.ladder.rung == "websocket", "the re-probe", timeout=20)
    assert link.report().transitions[-1].reason == "probe_succeeded"
    assert link.ladder.last_error == ""
