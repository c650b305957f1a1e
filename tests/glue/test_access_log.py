"""The answering gateway records each request that came over the hop, once.

A sidecar's listener never sees a tunnelled request (it arrives as a stream
of the hop session), so the answerer hands a ``RequestRecord`` to
``GatewayStats.record`` itself: the access log and the metrics observe it.
Checked on the chain of ``chain.py`` for both transports: an answer, a
body's size, an origin that cannot be reached (502), a WebSocket (101) and
a refused one (403), one record each, marked "tunnel" and from "hop".
"""

from __future__ import annotations

import aiohttp
import pytest

from gateway.status import RequestRecord
from tests.glue.chain import TRANSPORTS, BuildChain, Origin
from tests.helpers import until
from tests.processes import free_port

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_tunnelled_request_is_recorded_once_at_the_answering_gateway(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    records: list[RequestRecord] = []
    chain.server.stats.observers.append(records.append)
    async with chain.client.get(f"{chain.url}/download?n=70000") as resp:
        assert resp.status == 200
        assert len(await resp.read()) == 70000
    async with chain.client.post(f"{chain.url}/echo?x=1", data=b"hello") as resp:
        assert resp.status == 200
    async with chain.client.get(f"{chain.url}/limited") as resp:
        assert resp.status == 413
    await until(lambda: len(records) == 3, "three records")
    assert [(r.method, r.target, r.status) for r in records] == [
        ("GET", "/download?n=70000", 200),
        ("POST", "/echo?x=1", 200),
        ("GET", "/limited", 413),
    ]
    assert all(r.route == "tunnel" and r.peer == "hop" for r in records)
    assert records[0].size == 70000 and records[2].size == len("too big for me")
    assert all(0 < r.duration < 30 for r in records)
    assert chain.entry.not_sent == []


@pytest.mark.parametrize("transport", ["websocket"])
async def test_websockets_and_their_refusals_are_recorded_when_they_end(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport)
    records: list[RequestRecord] = []
    chain.server.stats.observers.append(records.append)
    async with chain.client.ws_connect(f"{chain.url}/ws", protocols=("chat.v2",)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "echo hi"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await chain.client.ws_connect(f"{chain.url}/refuse-ws")
    assert refused.value.status == 403
    await until(lambda: len(records) == 2, "a record for each WebSocket")
    assert sorted((r.target, r.status) for r in records) == [("/refuse-ws", 403), ("/ws", 101)]
    assert all(r.route == "tunnel" and r.method == "GET" for r in records)


@pytest.mark.parametrize("transport", ["long-poll"])
async def test_an_unreachable_origin_is_recorded_as_the_502_the_client_gets(
    build_chain: BuildChain, transport: str
) -> None:
    chain = await build_chain(f"http://127.0.0.1:{free_port()}", transport)
    records: list[RequestRecord] = []
    chain.server.stats.observers.append(records.append)
    async with chain.client.get(f"{chain.url}/nobody-home") as resp:
        assert resp.status == 502
    await until(lambda: len(records) == 1, "the record of the failed request")
    [rec] = records
    assert (rec.route, rec.target, rec.status, rec.size) == ("tunnel", "/nobody-home", 502, 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_middle_gateway_records_each_relayed_request_once_too(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    _, url = origin
    chain = await build_chain(url, transport, relay=True)
    assert chain.middle is not None
    middle: list[RequestRecord] = []
    server: list[RequestRecord] = []
    chain.middle.stats.observers.append(middle.append)
    chain.server.stats.observers.append(server.append)
    async with chain.client.get(f"{chain.url}/download?n=5000") as resp:
        assert len(await resp.read()) == 5000
    async with chain.client.ws_connect(f"{chain.url}/ws", protocols=("chat.v2",)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "echo hi"
    await until(lambda: len(middle) == len(server) == 2, "a record at each gateway")
    for records in (middle, server):
        assert [(r.target, r.status, r.route, r.peer) for r in records] == [
            ("/download?n=5000", 200, "tunnel", "hop"),
            ("/ws", 101, "tunnel", "hop"),
        ]
    assert middle[0].size == server[0].size == 5000
