"""A hop learns the idle timeout of the path it crosses, through real HAProxy and nginx.

An operator's short idle timeout (HAProxy ``timeout tunnel 10s``, nginx
``proxy_read_timeout 15s``) kills an idle hop WebSocket before the 20 s
heartbeat: before learning, the hop flapped websocket -> long-poll -> websocket
every 10-16 s for as long as it was idle (7 switches in 60 s through HAProxy).
Two deaths after the same silence teach the client end a heartbeat below it
(``gateway.core.idle``), kept by the upstream's link for its later sessions;
status and metrics show it.

    hopgate client --> HAProxy | nginx (recipe, short timeout) --> hopgate server --> origin
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.admin import METRICS_PATH
from gateway.server import Gateway
from tests.helpers import upstream_json
from tests.hop.conftest import StartGateway
from tests.metrics.test_metrics import parse, value
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)

pytestmark = pytest.mark.timeout(150)

#: The issue's HAProxy: every idle timeout at 10 s.
HAPROXY_10S = (
    ("timeout client 660s", "timeout client 10s"),
    ("timeout server 660s", "timeout server 10s"),
    ("timeout tunnel 1h", "timeout tunnel 10s"),
)
#: nginx's WebSocket recipe with an idle upgraded connection closed after 15 s.
NGINX_15S = (("proxy_read_timeout 660s;", "proxy_read_timeout 15s;"),)
#: A short one for the quick test.
HAPROXY_3S = (("timeout tunnel 1h", "timeout tunnel 3s"),)


@pytest.fixture
async def origin(make_origin: Any) -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    yield await make_origin(hello)


async def wait_for(what: str, timeout: float, predicate: Any) -> None:
    """Poll ``predicate`` every 0.1 s; fail naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def through(
    start_gateway: StartGateway,
    proxies: Proxies,  # noqa: F811
    origin: str,
    proxy: str,
    changes: Sequence[tuple[str, str]],
    **client_settings: Any,
) -> Gateway:
    """origin <- server gateway <- proxy (recipe + changes) <- client gateway: the client."""
    server = await start_gateway("server", {"upstream": origin})
    if proxy == "haproxy":
        front = proxies.haproxy(server.url, changes)
    else:
        front = proxies.nginx(server.url, "hopgate-websocket.conf", changes)
    return await start_gateway("client", {"upstream": front.url, **client_settings})


async def learn_then_idle(client: Gateway, *, limit: float, idle: float) -> str:
    """Wait for the lesson (about ``limit``), then ``idle`` s on one WebSocket with no switch."""
    link = client.link()
    assert link is not None
    await wait_for("the idle limit to be learned", 4 * limit + 15, lambda: link.idle.learned)
    learned = upstream_json(client)["heartbeat_learned"]
    assert limit * 0.85 <= learned <= limit * 1.2, upstream_json(client)
    assert upstream_json(client)["heartbeat_s"] == pytest.approx(limit / 2, abs=0.5)

    # The rung says websocket while the session still redials the one the path cut; the
    # idle time starts once the session holds a WebSocket again (a loaded machine once
    # took longer than one poll here: the late attach then counted as a resume).
    def on_websocket() -> bool:
        doc = upstream_json(client)
        return doc["transport"] == doc["session_transport"] == "websocket"

    await wait_for("the WebSocket again", 15, on_websocket)
    hop = link.session
    assert hop is not None and hop.core.config.heartbeat_interval == link.idle.heartbeat
    moves, resumes = sum(link.ladder.switches.values()), hop.resumes
    await asyncio.sleep(idle)
    doc = upstream_json(client)
    switched = sum(link.ladder.switches.values()) - moves
    assert (doc["transport"], switched) == ("websocket", 0), doc
    assert link.session is hop and hop.resumes == resumes, "the idle WebSocket was cut again"
    return f"learned {learned} s, heartbeat {doc['heartbeat_s']} s, {idle:g} s idle, 0 switches"


async def test_haproxy_10s_and_nginx_15s_idle_timeouts_are_learned_then_no_switch(
    start_gateway: StartGateway,
    proxies: Proxies,  # noqa: F811
    origin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's two paths, side by side (about 90 s): a lesson, then 60 s idle, no switch."""
    caplog.set_level(logging.INFO, logger="hopgate.session")
    haproxy = await through(start_gateway, proxies, origin, "haproxy", HAPROXY_10S)
    nginx = await through(start_gateway, proxies, origin, "nginx", NGINX_15S)
    for client in (haproxy, nginx):
        assert upstream_json(client)["heartbeat_s"] == 20.0  # the default start
        assert upstream_json(client)["heartbeat_learned"] is None
    await asyncio.gather(
        learn_then_idle(haproxy, limit=10.0, idle=60.0),
        learn_then_idle(nginx, limit=15.0, idle=35.0),
    )
    lessons = [r.getMessage() for r in caplog.records if "closes idle WebSockets" in r.getMessage()]
    assert len(lessons) == 2, lessons  # once per hop
    assert any("after ~10 s; heartbeat now 5 s" in line for line in lessons), lessons
    assert any("after ~15 s; heartbeat now 7.5 s" in line for line in lessons), lessons
    # Still a working hop: a request goes through the tunnel.
    async with aiohttp.ClientSession() as http, http.get(haproxy.url + "/after-idle") as resp:
        assert (resp.status, await resp.text()) == (200, "hello")


async def test_the_lesson_is_kept_for_the_next_session_and_shown_in_metrics(
    start_gateway: StartGateway,
    proxies: Proxies,  # noqa: F811
    origin: str,
) -> None:
    """--heartbeat is the start; a 3 s idle limit teaches 2 s (the floor), kept by the link."""
    client = await through(start_gateway, proxies, origin, "haproxy", HAPROXY_3S, heartbeat=8)
    link = client.link()
    assert link is not None
    await wait_for("the first session", 10, lambda: link.session is not None)
    assert link.session is not None and link.session.core.config.heartbeat_interval == 8.0
    assert upstream_json(client)["heartbeat_s"] == 8.0
    await learn_then_idle(client, limit=3.0, idle=8.0)
    assert upstream_json(client)["heartbeat_s"] == 2.0
    async with aiohttp.ClientSession() as http, http.get(client.url + METRICS_PATH) as resp:
        _, samples = parse(await resp.text())
    assert value(samples, "hopgate_heartbeat_seconds", upstream=link.key) == 2.0
    # A new session to the same upstream starts from the lesson, not from --heartbeat.
    first = link.session
    assert first is not None
    first.abandon(1001, "test: start over")
    await wait_for("a new session", 15, lambda: link.session not in (None, first))
    assert link.session is not None and link.session.core.config.heartbeat_interval == 2.0
