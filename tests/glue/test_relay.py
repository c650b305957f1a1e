"""Relaying: ``client gw -> relay gw -> server gw``, the middle one with a session on each hop.

Uses the chain of ``chain.py`` with ``relay=True``: the middle gateway's
answering links relay every stream onto its own opener link, frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time

import aiohttp
import pytest
from aiohttp import WSMsgType
from yarl import URL

from gateway.glue.link import TunnelLink
from tests.conftest import MakeGateway, MakeOrigin
from tests.glue.chain import TRANSPORTS, BuildChain, MiB, Origin, headers_of
from tests.helpers import until

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_relay_carries_http_and_websockets_through_a_middle_gateway(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _o, url = origin
    chain = await build_chain(url, transport, relay=True)
    assert chain.middle is not None
    body = os.urandom(2 * MiB)
    async with chain.client.post(chain.url + "/echo", data=body) as resp:
        info = await resp.json()
        assert resp.headers.getall("Via") == ["1.1 hopgate, 1.1 hopgate, 1.1 hopgate"]
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    seen = headers_of(info)
    assert seen["via"] == ["1.1 hopgate, 1.1 hopgate, 1.1 hopgate"]
    assert seen["x-forwarded-for"] == ["127.0.0.1, 127.0.0.1, 127.0.0.1"]
    assert seen["host"] == [URL(url).raw_authority]
    # It went through the middle's tunnels, not plain HTTP.
    assert chain.middle.links and chain.middle.next_hop is not None
    assert chain.middle.stats.upstream(str(chain.middle.upstream)).requests == 0
    got = 0
    async with chain.client.get(chain.url + f"/download?n={8 * MiB}") as resp:
        async for chunk in resp.content.iter_chunked(MiB):
            got += len(chunk)
    assert got == 8 * MiB
    async with chain.client.ws_connect(chain.url + "/ws") as ws:
        await ws.send_str("via relay")
        assert (await ws.receive(timeout=5)).data == "echo via relay"
        await ws.send_str("close:4002")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == 4002
    await until(lambda: chain.middle is not None and chain.middle.stats.active_streams == 0)


@pytest.mark.parametrize("transport", ["websocket"])
async def test_relay_abort_reaches_the_origin(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport, relay=True)
    poll = asyncio.create_task(chain.client.get(chain.url + "/hold?s=30"))
    async with asyncio.timeout(5):
        await o.arrived.wait()
    poll.cancel()
    aborted = time.monotonic()
    with contextlib.suppress(asyncio.CancelledError):
        await poll
    async with asyncio.timeout(3):
        await o.cancelled.wait()
    assert o.cancelled_at - aborted < 1.0


@pytest.mark.parametrize("transport", ["websocket"])
async def test_relay_session_loss_downstream_of_the_origin_is_a_502(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport, relay=True)
    assert chain.middle is not None and chain.middle.next_hop is not None
    poll = asyncio.create_task(chain.client.get(chain.url + "/hold?s=30"))
    async with asyncio.timeout(5):
        await o.arrived.wait()
    chain.middle.next_hop.hop.abandon(1001, "middle to server killed")
    async with asyncio.timeout(5):
        resp = await poll
    assert resp.status == 502
    assert len(o.seen) == 1


# ------------------------------------------- in-process gateways (the real wiring)


async def test_client_relay_server_gateways_carry_streams_over_their_tunnels(
    make_gateway: MakeGateway, make_origin: MakeOrigin
) -> None:
    o = Origin()
    url = await make_origin(o.handle)
    server = await make_gateway("server", {"upstream": url})
    middle = await make_gateway("server", {"upstream": server.url})
    client = await make_gateway("client", {"upstream": middle.url})

    def tunnels() -> tuple[TunnelLink | None, TunnelLink | None]:
        links = (client.link(), middle.link())
        return tuple(link.tunnel() if link is not None else None for link in links)  # type: ignore[return-value]

    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(15):
            while None in tunnels():  # the first exchanges go plain while hops upgrade
                async with http.get(client.url + "/warmup") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.1)
        near, far = tunnels()
        assert near is not None and far is not None
        poll = asyncio.create_task(http.get(client.url + "/hold?s=1"))
        await until(lambda: near.tunnel.stream_count == 1 and far.tunnel.stream_count == 1)
        async with asyncio.timeout(5):
            resp = await poll
        assert await resp.text() == "held and answered"
        body = os.urandom(3 * MiB)
        async with http.post(client.url + "/echo", data=body) as resp:
            info = await resp.json()
            assert resp.headers.getall("Via") == ["1.1 hopgate, 1.1 hopgate, 1.1 hopgate"]
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert headers_of(info)["via"] == ["1.1 hopgate, 1.1 hopgate, 1.1 hopgate"]
        async with http.ws_connect(client.url + "/ws") as ws:
            await ws.send_bytes(b"through three gateways")
            assert (await ws.receive(timeout=5)).data == b"echo through three gateways"
        assert near.alive and far.alive
    await until(lambda: middle.stats.active_streams == 0 and client.stats.active_streams == 0)
