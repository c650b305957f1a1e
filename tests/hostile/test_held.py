"""What held in issue 7, and must keep holding.

Forged, replayed and expired session ids and tokens refused; malformed
msgpack closes only its session at once; a 16 MiB + 1 message closes with
1009; edge smuggling is a 400 with nothing at the origin; tunnel OPENs
naming another host reach nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import aiohttp
import pytest

from tests.conftest import MakeGateway
from tests.hostile import payloads
from tests.hostile import peer as hp
from tests.hostile.origin import MiB, Origin

pytestmark = pytest.mark.timeout(60)


async def test_forged_replayed_and_expired_ids_are_refused(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "resume_grace": 1.0})
    base = f"{gw.url}{hp.SESSION_PATH}/"
    query = {"last": "0", "epoch": "1"}
    async with aiohttp.ClientSession() as http:
        created = await hp.create_session(http, gw.url)
        good = {hp.TOKEN_HEADER: created.token}
        async with http.get(base + "A" * 22, params=query, headers=good) as resp:
            assert resp.status == 404
        async with http.get(
            base + created.session_id, params=query, headers={hp.TOKEN_HEADER: "x" * 43}
        ) as resp:
            assert resp.status == 403
        async with http.get(base + created.session_id, params=query) as resp:
            assert resp.status == 403
        await asyncio.sleep(3.5)  # no transport: expired
        async with http.get(base + created.session_id, params=query, headers=good) as resp:
            assert resp.status == 404
        async with http.post(
            base + created.session_id, params={"epoch": "1"}, data=b"", headers=good
        ) as resp:
            assert resp.status == 404  # replaying the id of a finished session


async def test_malformed_msgpack_closes_only_its_session_at_once(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    delays = []
    async with hp.HostilePeer(gw.url) as neighbour:
        for bad in payloads.MALFORMED:
            async with hp.HostilePeer(gw.url) as victim:
                t0 = time.monotonic()
                await victim.send_session_raw(bad)
                assert await victim.until(lambda v=victim: v.closed is not None, 2.0), bad
                delays.append(time.monotonic() - t0)
            sid = neighbour.sid()
            await neighbour.send(hp.open_http(sid, "GET", "/still", [("Host", "x")]))
            stream = await neighbour.complete(sid, 5)
            assert stream.head is not None and stream.head[2] == 200
        assert neighbour.closed is None
    assert statistics.median(delays) <= 0.02, delays
    assert max(delays) <= 0.25, delays


async def test_a_message_of_16_mib_plus_one_closes_with_1009(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    async with hp.HostilePeer(gw.url, timeout=20) as peer:
        # The gateway may close before the last byte (a lower per-message cap).
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await peer.send(b"\x00" * (16 * MiB + 1))
        assert await peer.until(lambda: peer.closed is not None, 15)
        assert peer.closed is not None and peer.closed[0] == 1009, peer.closed


@pytest.mark.parametrize("name", list(payloads.EDGE_SMUGGLING))
async def test_edge_smuggling_is_400_with_nothing_at_the_origin(
    make_gateway: MakeGateway, origin: Origin, name: str
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    answer = await hp.async_raw_exchange(
        "127.0.0.1", gw.port, payloads.EDGE_SMUGGLING[name], timeout=3
    )
    assert hp.status_of(answer) == 400, answer[:300]
    await asyncio.sleep(0.2)
    assert origin.seen == []


async def test_tunnel_opens_naming_another_host_reach_nothing(
    make_gateway: MakeGateway, origin: Origin, evil: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    variants = payloads.open_variants(evil.port)
    assert len(variants) == 23
    async with hp.HostilePeer(gw.url) as peer:
        answers = []
        for method, target, headers in variants:
            sid = peer.sid()
            await peer.send(hp.open_http(sid, method, target, headers))
            answers.append((method, target, await peer.answer(sid, 5)))
        ws = peer.sid()
        await peer.send(hp.open_ws(ws, f"http://127.0.0.1:{evil.port}/ws", [("Host", "x")]))
        ws_answer = await peer.answer(ws, 5)
        assert peer.closed is None, "a refused stream must not cost the session"
    assert evil.seen == []
    assert ws_answer.reset is not None or (ws_answer.head and ws_answer.head[0] == hp.RESPONSE)
    for method, target, stream in answers:
        assert stream.head is not None or stream.reset is not None, (method, target)
        if stream.reset is None:
            assert stream.head is not None
            # Only origin-form paths may be answered, and only by the upstream.
            assert target.startswith(b"/"), (method, target, stream.head)
    reached = [e["path"] for e in origin.seen]
    assert all(p.startswith("/") and not p.startswith("//") for p in reached), reached
