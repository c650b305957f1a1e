"""SIGTERM drains an instance: held requests finish on it, new ones move to another instance.

Real ``hopgate server`` processes (the signal matters) behind a round-robin
balancer with no affinity (tests/hop/balancer.py); the origin holds a poll
for ``HOLD`` s. Before this, SIGTERM answered such a poll 502 at the end of
the grace and closed the listener at once (``/.hopgate/ready`` refused).
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
from aiohttp import web

from tests.conftest import MakeOrigin
from tests.helpers import until
from tests.hop.cluster_rig import HOLD, cluster
from tests.hop.conftest import StartGateway
from tests.processes import SpawnGateway

GRACE = 8.0


async def test_sigterm_lets_a_held_poll_finish_and_moves_new_requests_to_another_instance(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    async with cluster(make_origin, spawn_gateway, grace=GRACE) as rig:
        first = await rig.upgraded()
        draining, staying = await rig.owner()
        held = asyncio.ensure_future(rig.http.get(rig.client.url + "/hold/poll"))
        async with asyncio.timeout(5):
            await rig.origin.arrived.wait()
        draining.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Ready says 503 at once, on the main listener, which stays open.
        async def not_ready() -> bool:
            async with rig.http.get(draining.url + "/.hopgate/ready") as resp:
                return resp.status == 503

        await until(not_ready, "ready 503 on the draining instance", timeout=2.0)

        # A new request during the drain is answered; once the peer moved, over
        # a new session on the other instance.
        async with rig.http.get(rig.client.url + "/during") as resp:
            assert resp.status == 200
        second = await rig.upgraded(other_than=first)
        assert (await rig.status(staying))["sessions"]["active"] == 1
        async with rig.http.get(rig.client.url + "/after-move") as resp:
            assert resp.status == 200
            assert await resp.text() == "answered /after-move (0 bytes)"
        moved = 'hop "GET /after-move" 200'
        await until(lambda: staying.count(moved) == 1, "the request on the new session")

        # The held poll was answered by the origin within the grace, never 502.
        resp = await held
        assert resp.status == 200, await resp.text()
        assert await resp.text() == "answered /hold/poll (0 bytes)"
        assert time.monotonic() - signalled < GRACE
        assert rig.origin.count("GET /hold/poll") == 1  # nothing sent twice

        # The instance stops once its peer closed the old session, within the grace.
        code = await asyncio.to_thread(draining.wait, GRACE + 5)
        assert code == 0
        assert time.monotonic() - signalled < GRACE
        hop = await rig.hop()
        assert hop["goaways"] == {"sent": 0, "received": 1}
        # Still the new session; its WebSocket may have been spliced through the
        # instance that stopped (round robin), in which case it resumed on long-poll.
        assert hop["session"] == second and hop["transport"] != "plain"
        assert [t["reason"] for t in hop["transitions"]].count("goaway") == 1
        assert draining.count("peer said GOAWAY") == 0  # the client logs it, not the server
        assert rig.client.count("the peer said GOAWAY") >= 1


async def test_every_held_poll_is_answered_and_the_goaway_counted(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    """The README's promise: held requests get the grace; status and metrics count the GOAWAY."""
    async with cluster(make_origin, spawn_gateway, grace=GRACE) as rig:
        await rig.upgraded()
        draining, _ = await rig.owner()
        held = [asyncio.ensure_future(rig.http.get(f"{rig.client.url}/hold/{n}")) for n in range(3)]
        await until(lambda: len(rig.origin.seen) >= 3, "three held polls at the origin")
        draining.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await until(lambda: draining.count("SIGTERM received") == 1, "the signal seen")
        status = await rig.status(draining)  # still serving: the polls are held
        assert status["hop"]["goaways"]["sent"] == 1
        async with rig.http.get(draining.url + "/.hopgate/metrics") as resp:
            metrics = await resp.text()
        assert 'hopgate_goaways_total{direction="sent"} 1.0' in metrics
        assert "hopgate_ready 0.0" in metrics
        answers = [await poll for poll in held]
        assert [a.status for a in answers] == [200, 200, 200]
        assert sorted(rig.origin.seen) == [f"GET /hold/{n}" for n in range(3)]  # once each
        assert time.monotonic() - signalled < HOLD + 1.5


async def test_a_request_that_crosses_the_goaway_is_refused_unprocessed_and_sent_again(
    make_origin: MakeOrigin, start_gateway: StartGateway
) -> None:
    """A stream above the final GOAWAY's last stream id (a peer that has not heard it, made
    certain: ``Tunnel.go_away`` alone, no frame) is refused unprocessed and sent again."""
    seen: list[str] = []

    async def origin(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(text="ok")

    server = await start_gateway("server", {"upstream": await make_origin(origin)})
    # No new session will come: the request sent again goes plain after this wait.
    client = await start_gateway("client", {"upstream": server.url, "connect_timeout": 1.0})
    await until(lambda: server.sessions is not None and len(server._accepted) == 1, "a session")
    (accepted,) = server._accepted
    promised = accepted.tunnel.go_away()
    async with aiohttp.ClientSession() as http:
        for path in ("/crossed", "/crossed-too"):
            async with http.get(client.url + path) as resp:
                assert resp.status == 200 and await resp.text() == "ok"
        async with http.post(client.url + "/with-body", data=b"x") as resp:
            assert resp.status == 503  # refused unprocessed; its body cannot be sent again
            assert resp.headers["Retry-After"] == "1"
    assert promised == 0
    assert seen == ["GET /crossed", "GET /crossed-too"]  # each once, plain, after the refusal
    assert client.stats.retried_requests == 2
