"""Bad input and impostors: unknown/forged sessions, malformed batches, limits, legacy peers."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from gateway.core.session.frames import FrameDecoder, Hello
from gateway.transports.errors import (
    HandshakeRefused,
    NotAGateway,
    SessionRefused,
    TransportFailed,
)
from gateway.transports.handshake import (
    AUTH_HEADER,
    SESSION_HEADER,
    SESSION_PATH,
    TOKEN_HEADER,
    auth_header_value,
    check_auth,
    decode_token,
)
from gateway.transports.registry import ReplayCache
from gateway.transports.ws import SUBPROTOCOL
from tests.transports.conftest import (
    FAST,
    NO_REPROBE,
    Kind,
    MakeConnector,
    MakePair,
    StartRaw,
    StartServer,
    create_session,
)

WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    "Sec-WebSocket-Protocol": SUBPROTOCOL,
}


# -- unknown, expired, forged ------------------------------------------------------------


async def test_unknown_session_is_404_on_every_route(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server()
    _sid, token = await create_session(http, handle.url)
    bogus = handle.url + SESSION_PATH + "/AAAAAAAAAAAAAAAAAAAAAA"
    auth = {TOKEN_HEADER: token}
    async with http.get(bogus, params={"last": "0", "epoch": "1"}, headers=auth) as resp:
        assert resp.status == 404
        assert resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
    async with http.post(bogus, params={"epoch": "1"}, data=b"", headers=auth) as resp:
        assert resp.status == 404
        assert await resp.text() == text  # unknown and expired: one answer, learns nothing
    async with http.get(bogus, params={"epoch": "1"}, headers={**auth, **WS_HEADERS}) as resp:
        assert resp.status == 404  # refused before any 101
    assert "unknown or expired" in text


async def test_expired_session_answers_like_an_unknown_one(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, resume_grace=0.3))
    sid, token = await create_session(http, handle.url)
    _hop, inbox = await handle.next_session()
    assert (await inbox.wait_closed(5))[0] == 4000
    url = handle.url + SESSION_PATH + "/" + sid
    async with http.get(
        url, params={"last": "0", "epoch": "1"}, headers={TOKEN_HEADER: token}
    ) as r:
        assert r.status == 404


async def test_forged_token_is_403_and_the_session_is_undisturbed(
    make_pair: MakePair, http: aiohttp.ClientSession, transport: Kind
) -> None:
    pair = await make_pair(transport)
    url = pair.handle.url + SESSION_PATH + "/" + pair.server.session_id
    forged = {TOKEN_HEADER: base64.urlsafe_b64encode(b"x" * 32).decode().rstrip("=")}
    async with http.get(url, params={"last": "0", "epoch": "99"}, headers=forged) as resp:
        assert resp.status == 403
    async with http.post(url, params={"epoch": "99"}, data=b"\x91\x01", headers=forged) as resp:
        assert resp.status == 403
    async with http.get(url, params={"epoch": "99"}, headers={**forged, **WS_HEADERS}) as resp:
        assert resp.status == 403
    async with http.get(url, params={"last": "0", "epoch": "99"}) as resp:  # no token at all
        assert resp.status == 403
    # A WebSocket without the header must prove the token in its probe: a forged HELLO fails.
    ws = await http.ws_connect(url + "?epoch=99", protocols=(SUBPROTOCOL,))
    from gateway.core.session.frames import encode_hello, encode_ping, new_packer

    packer = new_packer()
    await ws.send_bytes(
        encode_hello(packer, 1, pair.server.session_id, 0, b"y" * 32) + encode_ping(packer, 1)
    )
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 4001
    await ws.close()
    # Still the same transport, still working.
    assert pair.server.transport == transport
    assert not pair.server.closed
    pair.client.send("still here")
    pair.server.send("me too")
    await pair.server_inbox.wait_for(1)
    await pair.client_inbox.wait_for(1)


# -- malformed input ------------------------------------------------------------------------


async def test_malformed_msgpack_closes_that_session_only(
    make_pair: MakePair, http: aiohttp.ClientSession, transport: Kind
) -> None:
    pair = await make_pair(transport)
    victim_sid, victim_token = await create_session(http, pair.handle.url)
    _victim, victim_inbox = await pair.handle.next_session(1)
    url = pair.handle.url + SESSION_PATH + "/" + victim_sid
    async with http.post(
        url, params={"epoch": "1"}, data=b"\xc1\xc1garbage", headers={TOKEN_HEADER: victim_token}
    ) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/octet-stream"
        body = await resp.read()
    (abort,) = FrameDecoder().decode(body)
    assert type(abort).__name__ == "Abort" and abort.code == 1002  # type: ignore[attr-defined]
    code, reason = await victim_inbox.wait_closed()
    assert code == 1002 and "msgpack" in reason
    assert pair.handle.server.registry.get(victim_sid) is None
    # The neighbour never noticed.
    for i in range(50):
        pair.client.send(f"c{i}")
        pair.server.send(f"s{i}")
    await pair.server_inbox.wait_for(50)
    await pair.client_inbox.wait_for(50)
    assert not pair.server.closed and not pair.client.closed


async def test_protocol_violation_from_a_peer_reaches_the_client(
    make_pair: MakePair, transport: Kind
) -> None:
    """The server end breaks the protocol (an ack of unsent data): the client closes 1002."""
    pair = await make_pair(transport)
    pair.client.send("x")
    await pair.server_inbox.wait_for(1)
    from gateway.core.session.frames import encode_ack, new_packer

    assert not pair.client.feed(encode_ack(new_packer(), 10**6))
    assert (await pair.client_inbox.wait_closed())[0] == 1002
    code, _ = await pair.server_inbox.wait_closed()
    assert code == 1002  # told by the ABORT


async def test_bad_query_and_oversized_post(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, batch_bytes=64 * 1024, max_batch_bytes=128 * 1024))
    sid, token = await create_session(http, handle.url)
    url = handle.url + SESSION_PATH + "/" + sid
    auth = {TOKEN_HEADER: token}
    async with http.get(url, params={"last": "-1", "epoch": "1"}, headers=auth) as resp:
        assert resp.status == 400
    async with http.get(url, params={"last": "0"}, headers=auth) as resp:
        assert resp.status == 400
    async with http.post(url, params={"epoch": "1"}, data=b"\x00" * 200_000, headers=auth) as resp:
        assert resp.status == 413
    async with http.put(url, params={"epoch": "1"}, headers=auth) as resp:
        assert resp.status == 405
    async with http.get(handle.url + SESSION_PATH) as resp:
        assert resp.status == 405
    hop, _ = await handle.next_session()
    assert not hop.closed  # a refused request does not disturb the session


# -- limits -----------------------------------------------------------------------------------


async def test_max_sessions_answers_503_with_retry_after(
    start_server: StartServer, http: aiohttp.ClientSession, make_connector: MakeConnector
) -> None:
    handle = await start_server(replace(FAST, max_sessions=2))
    await create_session(http, handle.url)
    await create_session(http, handle.url)
    async with http.post(handle.url + SESSION_PATH) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"].isdigit()
    with pytest.raises(SessionRefused, match="503") as refused:
        await make_connector(handle.url).connect()
    assert refused.value.status == 503 and (refused.value.retry_after or "").isdigit()


async def test_ids_and_tokens_are_long_and_random(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server()
    seen = set()
    for _ in range(5):
        sid, token = await create_session(http, handle.url)
        raw = decode_token(token)
        assert raw is not None and len(raw) >= 16
        assert len(sid) >= 22  # 128 bits of URL-safe base64
        seen.add((sid, token))
    assert len(seen) == 5


async def test_session_answers_are_not_cacheable_nor_sniffable(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    handle = await start_server(replace(FAST, hold_time=0.2))
    async with http.post(handle.url + SESSION_PATH) as resp:
        sid, token = resp.headers[SESSION_HEADER], resp.headers[TOKEN_HEADER]
        for r in (resp,):
            assert r.headers["Cache-Control"] == "no-store"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Content-Type"] == "application/octet-stream"
        (hello,) = FrameDecoder().decode(await resp.read())
        assert isinstance(hello, Hello) and hello.session_id == sid and hello.token is None
    assert token not in str(resp.url)
    url = handle.url + SESSION_PATH + "/" + sid
    async with http.get(
        url, params={"last": "0", "epoch": "1"}, headers={TOKEN_HEADER: token}
    ) as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Type"] == "application/octet-stream"


# -- the hop secret ---------------------------------------------------------------------------


async def test_hop_secret_required_to_open_a_session(
    start_server: StartServer, http: aiohttp.ClientSession, make_connector: MakeConnector
) -> None:
    handle = await start_server(hop_secret="s3cret")
    async with http.post(handle.url + SESSION_PATH) as resp:
        assert resp.status == 403
        assert "hop secret" in await resp.text()
    with pytest.raises(SessionRefused, match=r"403.*hop secret") as refused:
        await make_connector(handle.url).connect()
    assert refused.value.status == 403
    with pytest.raises(SessionRefused, match="wrong hop secret"):
        await make_connector(handle.url, hop_secret="guess").connect()
    hop = await make_connector(handle.url, hop_secret="s3cret").connect()
    assert hop.transport == "websocket"
    assert len(handle.server.registry) == 1


def test_hop_secret_proof_checks() -> None:
    value = auth_header_value("k", now=1_000_000)
    assert check_auth("k", value, now=1_000_010) is None
    assert check_auth("other", value, now=1_000_010) == (403, "wrong hop secret")
    assert "more than 60 s off" in str(check_auth("k", value, now=1_000_000 + 61))
    assert "more than 60 s off" in str(check_auth("k", value, now=1_000_000 - 61))
    assert check_auth("k", value, now=1_000_000 + 59) is None
    refused = check_auth("k", None)
    assert refused is not None and refused[0] == 403 and "no X-Hopgate-Auth" in refused[1]
    assert AUTH_HEADER == "X-Hopgate-Auth"
    version, stamp, nonce, mac = value.split()
    assert (version, stamp) == ("v2", "1000000")
    assert len(nonce) == 32 and int(nonce, 16) >= 0
    assert "k" not in mac  # the secret itself never travels
    assert auth_header_value("k", now=1_000_000).split()[2] != nonce  # a fresh nonce each time


def test_hop_secret_nonce_cannot_be_replayed() -> None:
    replays = ReplayCache(window=60, capacity=3)
    value = auth_header_value("k", now=1_000_000)
    assert check_auth("k", value, now=1_000_001, replays=replays) is None
    assert check_auth("k", value, now=1_000_002, replays=replays) == (
        403,
        "hop secret proof replayed (its nonce was used before)",
    )
    # Another nonce with the same time stamp is fine; a changed nonce breaks the MAC.
    assert check_auth("k", auth_header_value("k", now=1_000_000), 1_000_002, replays) is None
    version, stamp, _nonce, mac = value.split()
    forged = f"{version} {stamp} {'0' * 32} {mac}"
    assert check_auth("k", forged, now=1_000_002, replays=replays) == (403, "wrong hop secret")
    # Full: refuse a new proof (503) rather than forget a nonce still replayable.
    assert check_auth("k", auth_header_value("k", now=1_000_000), 1_000_003, replays) is None
    full = check_auth("k", auth_header_value("k", now=1_000_000), 1_000_004, replays)
    assert full is not None and full[0] == 503
    assert check_auth("k", value, now=1_000_004, replays=replays) is not None  # still refused
    # Two windows later the old nonces are gone: room again, and the replay is stale anyway.
    assert len(replays) == 3
    assert check_auth("k", auth_header_value("k", now=1_000_130), 1_000_130, replays) is None
    assert len(replays) == 1
    assert "off this gateway's clock" in str(check_auth("k", value, 1_000_130, replays))


@pytest.mark.parametrize(
    "value",
    [
        "v2 ² " + "0" * 32 + " " + "0" * 64,  # isdigit() says yes, int() says no
        "v2 " + "9" * 5000 + " " + "0" * 32 + " " + "0" * 64,
        "v2 ١٢٣ " + "0" * 32 + " " + "0" * 64,  # Arabic-Indic digits
        "v2 -5 " + "0" * 32 + " " + "0" * 64,
        "v2 123 " + "G" * 32 + " " + "0" * 64,
        "v2 123 abc " + "0" * 64,
        "v2 123",
        "v1 1000000 " + "0" * 64,  # the replayable format of older gateways
        "garbage",
        "v2 1000000 " + "0" * 32 + " é",
    ],
)
def test_malformed_hop_secret_header_is_400(value: str) -> None:
    refused = check_auth("k", value, now=1_000_000, replays=ReplayCache(window=60, capacity=8))
    assert refused is not None
    status, reason = refused
    assert status == (403 if value.endswith(" é") or value.startswith("v1") else 400), reason
    assert reason


# -- impostors: legacy servers are never taken for gateways ----------------------------------


async def _legacy_ok(request: web.BaseRequest) -> web.StreamResponse:
    await request.read()
    return web.Response(text="OK")


async def _legacy_echo(request: web.BaseRequest) -> web.StreamResponse:
    """Answers 200 with every request header echoed back (and the body)."""
    body = await request.read()
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in ("content-length", "host", "transfer-encoding", "connection")
    }
    return web.Response(body=body or b"\x91\x01", headers=headers)


async def _fake_101_no_hello(request: web.BaseRequest) -> web.StreamResponse:
    """A real RFC 6455 101 (right accept key, echoed subprotocol) that never says HELLO."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,))
        await ws.prepare(request)
        async for _ in ws:
            pass  # swallow the probe, answer nothing
        return ws
    return web.Response(text="")


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_legacy_ok, "not a hopgate gateway"),
        (_legacy_echo, "not a hopgate gateway"),
        (_fake_101_no_hello, "not a hopgate gateway"),
    ],
    ids=["legacy-200", "echo-headers", "101-without-hello"],
)
@pytest.mark.parametrize("prefer", ["websocket", "long-poll"])
async def test_legacy_servers_are_never_taken_for_gateways(
    start_raw: StartRaw, make_connector: MakeConnector, handler: object, reason: str, prefer: Kind
) -> None:
    url = await start_raw(handler)  # type: ignore[arg-type]
    connector = make_connector(url, prefer=prefer)
    with pytest.raises(NotAGateway, match=reason) as caught:
        await asyncio.wait_for(connector.connect(), timeout=10)
    assert connector.session is None and connector.upgrades == 0
    assert url in str(caught.value)


@pytest.mark.parametrize("subprotocol", [SUBPROTOCOL, None], ids=["no-hello", "no-subprotocol"])
async def test_a_101_without_hello_is_not_taken_even_from_a_gateway(
    start_server: StartServer,
    start_raw: StartRaw,
    make_connector: MakeConnector,
    subprotocol: str | None,
) -> None:
    """A gateway for HTTP whose WebSocket route is an impostor: the session stays on long-poll."""
    handle = await start_server()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(protocols=(subprotocol,) if subprotocol else ())
            await ws.prepare(request)
            async for _ in ws:
                pass
            return ws
        return await handle.server.handle(request)

    url = await start_raw(handler)
    connector = make_connector(url, replace(FAST, **NO_REPROBE))
    hop = await asyncio.wait_for(connector.connect(), timeout=10)
    assert hop.transport == "long-poll"
    assert connector.upgrades == 0 and connector.fallbacks == 1
    failure = connector.last_websocket_failure
    assert isinstance(failure, TransportFailed) and not isinstance(failure, HandshakeRefused)
    assert ("probe" in str(failure)) if subprotocol else ("subprotocol" in str(failure))
    _server, inbox = await handle.next_session()
    hop.send("over long-poll")
    await inbox.wait_for(1)
