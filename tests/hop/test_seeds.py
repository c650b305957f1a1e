"""The seeds' failure cases, one test each, with whole gateways and legacy traffic flowing.

The session layer has its own versions of several of these
(``tests/transports/test_security.py``, ``test_switching.py``) and the link has
the cost of discovery (``tests/test_link.py``); here the same cases are
run end to end: legacy chat clients -> client gateway -> path -> server
gateway (or an impostor) -> legacy Comet origin, and judged by what the
chat clients saw, what the origin saw, the bytes on the wire and
``/.hopgate/status``.

* seed 004: a reverse proxy that passes upgraded bytes only after it has seen
  the 101 (real HAProxy) carries the hop's WebSocket;
* seed 001: a legacy origin that answers 200 to everything, or echoes the
  request headers, where a gateway would be, is never taken for one;
* seed 004: a path that completes the handshake and then swallows every
  frame is caught by the probe; the hop stays on long-poll;
* seed 004: a rejected upgrade leaves a reusable HTTP connection;
* seed 004: the hop's handshake is a body-less GET and nothing follows it
  before the 101.
"""

from __future__ import annotations

import asyncio
import base64
import re

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.core import discovery
from gateway.demo.comet import ROOM, make_app
from gateway.server import Gateway
from gateway.transports.handshake import SESSION_HEADER, SESSION_PATH, TOKEN_HEADER
from gateway.transports.ws import SUBPROTOCOL
from tests.conftest import MakeOrigin
from tests.e2e.harness import (
    HOLD,
    Chat,
    Gateways,
    TransportWatch,
    count_sends,
    gateways_fixture,  # noqa: F401  (the ``gateways`` fixture)
    hop_status,
    run_chat,
    transport,
    until,
)
from tests.proxies import Proxies, proxies  # noqa: F401  (proxies is a fixture)

pytestmark = pytest.mark.timeout(60)

CHAT = Chat(clients=3, messages=10)


async def comet_origin(make_origin: MakeOrigin) -> tuple[web.Application, list[int], str]:
    app = make_app(hold=HOLD)
    sends = count_sends(app)
    return app, sends, await make_origin(app)


async def chat_ok(base_url: str, app: web.Application, sends: list[int]) -> None:
    """Numbered chat through ``base_url``: each message exactly once, in order, everywhere."""
    assert app[ROOM].last_id == 0
    run = await run_chat(base_url, CHAT)
    assert run.problems(app[ROOM].last_id, sends[0]) == []


# -------------------------------------------- seed 004: a proxy that waits for the 101


async def test_haproxy_passes_upgraded_bytes_after_the_101_and_the_hop_is_a_websocket(
    make_origin: MakeOrigin,
    proxies: Proxies,  # noqa: F811  (set up before ``gateways``, so HAProxy outlives them)
    gateways: Gateways,
) -> None:
    """HAProxy forwards nothing of a new protocol before it has seen the 101 (seed 004).

    The hop's handshake needs no byte beyond its head to get its 101, so the
    session upgrades through HAProxy and every chat request rides it.
    """
    app, sends, origin = await comet_origin(make_origin)
    server = await gateways("server", {"upstream": origin})
    haproxy = proxies.haproxy(server.url)
    client = await gateways("client", {"upstream": haproxy.url})
    await until(lambda: transport(client) == "websocket", "a websocket hop through HAProxy")
    watch = TransportWatch(client)
    watch.start()
    plain_before = server.stats.requests_total
    await chat_ok(client.url, app, sends)
    await watch.stop()
    # Not one request reached the server gateway as HTTP: all rode the WebSocket.
    assert server.stats.requests_total == plain_before
    assert watch.seen == ["websocket"]
    status = await hop_status(client)
    assert (status["transport"], status["peer"]) == ("websocket", "gateway"), status
    assert (status["upgrades"], status["fallbacks"]) == (1, 0), status
    assert status["requests"] >= CHAT.total
    assert server.stats.active_sessions == 1
    # HAProxy was on the path: it logged the hello and the session's opening.
    # (It logs the upgraded request when that connection ends.)
    logged = haproxy.logs()
    assert f"GET {discovery.HELLO_PATH}?nonce=" in logged, logged
    assert f'"POST {SESSION_PATH} HTTP/1.1"' in logged, logged


# ----------------------------------- seed 001: a legacy origin where a gateway would be


@web.middleware
async def answer_200_to_everything(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The chat's own paths work; anything else is ``200 ok`` (no 404, no 405)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        await request.read()
        return web.Response(text="ok")


#: Not echoed: they frame the response itself.
_FRAMING = {"content-length", "transfer-encoding", "content-type", "host", "connection"}


@web.middleware
async def echo_request_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response carries the request's headers back (``Hopgate``, ``Upgrade``... too)."""
    response = await answer_200_to_everything(request, handler)
    for name, value in request.headers.items():
        if name.lower() not in _FRAMING:
            response.headers.add(name, value)
    return response


LEGACY_KINDS = {"200-to-everything": answer_200_to_everything, "echo-headers": echo_request_headers}


@pytest.mark.parametrize("kind", sorted(LEGACY_KINDS))
async def test_a_legacy_origin_where_a_gateway_would_be_is_never_taken_for_one(
    kind: str, make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """A client gateway's upstream is a legacy chat origin that says yes to anything.

    It stays ``plain`` with the peer ``legacy``: the hello's answer has no
    proof, so no session is ever attempted; the chat works through it.
    """
    seen: list[tuple[str, str, dict[str, str]]] = []

    @web.middleware
    async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append((request.method, request.path, dict(request.headers)))
        return await handler(request)

    app = make_app(hold=HOLD)
    app.middlewares.extend([log_requests, LEGACY_KINDS[kind]])
    sends = count_sends(app)
    client = await gateways("client", {"upstream": await make_origin(app)})
    await until(lambda: _peer(client) == "legacy", "the hello to be judged")
    await chat_ok(client.url, app, sends)
    await asyncio.sleep(0.5)  # room for a stray session attempt
    status = await hop_status(client)
    assert (status["transport"], status["peer"]) == ("plain", "legacy"), status
    assert (status["upgrades"], status["session"]) == (0, None), status
    assert client.stats.active_sessions == 0
    paths = [path for _, path, _ in seen]
    assert paths.count(discovery.HELLO_PATH) <= 1, paths
    assert not [p for p in paths if p.startswith(SESSION_PATH)], paths
    assert not [h for _, _, h in seen if "Upgrade" in h or "Sec-WebSocket-Key" in h]
    # The chat itself went through (and was marked, for free, as from a gateway).
    assert paths.count("/send") == CHAT.total
    assert all(discovery.MARK_HEADER in h for _, p, h in seen if p == "/send")


def _peer(gw: Gateway) -> str:
    [state] = gw.stats.upstreams.values()
    return state.peer


# -------------------------------------- seed 004: a handshake whose frames never arrive


async def test_a_websocket_black_holed_after_the_101_is_caught_and_the_hop_stays_long_poll(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """The path answers every upgrade with the real 101, then drops every frame.

    The probe never comes back, so no traffic is ever moved onto such a
    socket: the session runs on long-poll, re-probes fail the same way, and
    the chat loses nothing.
    """
    app, sends, origin = await comet_origin(make_origin)
    server = await gateways("server", {"upstream": origin})
    path = await gateways.proxy(server)
    path.blackhole_after_101 = True
    client = await gateways("client", {"upstream": path.url})
    await until(lambda: transport(client) == "long-poll", "a long-poll hop")
    watch = TransportWatch(client)
    watch.start()
    lines_before = len(path.request_lines())
    await chat_ok(client.url, app, sends)
    await watch.stop()
    assert watch.seen == ["long-poll"]
    status = await hop_status(client)
    assert (status["transport"], status["peer"]) == ("long-poll", "gateway"), status
    # It fell back from the WebSocket whose probe went into the hole, and says so.
    assert (status["upgrades"], status["fallbacks"]) == (1, 1), status
    assert status["transitions"][0]["reason"] == "upgrade_failed", status
    # Handshakes did complete (bytes followed a 101: the probes), the first
    # and at least one re-probe during the chat, and all went into the hole.
    swallowed = [r for r in path.records if r.after_101]
    assert len(swallowed) >= 2, [r.request_lines() for r in path.records]
    # The chat crossed the hop inside the session, never as plain requests.
    later = path.request_lines()[lines_before:]
    assert later and all(p.startswith(SESSION_PATH + "/") for _, p in later), later


# ------------------------------------------ seed 004: a rejected upgrade, then plain HTTP


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response, framed by ``Content-Length`` (required here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    assert "transfer-encoding" not in headers, headers
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def websocket_head(path: str, host: str, extra: dict[str, str]) -> bytes:
    key = base64.b64encode(b"0123456789abcdef").decode()
    fields = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
        **extra,
    }
    text = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (text + "\r\n").encode("latin-1")


async def open_session(gateway_url: str) -> tuple[str, str]:
    """A real hop session on the server gateway: (id, token), as a client gateway gets them."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway_url + SESSION_PATH, data=b"") as resp,
    ):
        assert resp.status == 200
        await resp.read()
        return resp.headers[SESSION_HEADER], resp.headers[TOKEN_HEADER]


#: name -> (path template, extra headers, expected status); ``{id}``/``{token}`` filled in.
REJECTED = {
    "unknown-session": ("/.hopgate/session/bogus0000?epoch=1", {"X-Hopgate-Token": "AAAA"}, 404),
    "forged-token": ("/.hopgate/session/{id}?epoch=1", {"X-Hopgate-Token": "A" * 22}, 403),
    "no-subprotocol": ("/.hopgate/session/{id}?epoch=1", {"X-Hopgate-Token": "{token}"}, 400),
    "wrong-subprotocol": (
        "/.hopgate/session/{id}?epoch=1",
        {"X-Hopgate-Token": "{token}", "Sec-WebSocket-Protocol": "chat, superchat"},
        400,
    ),
    "upgrade-to-open": ("/.hopgate/session", {"Sec-WebSocket-Protocol": SUBPROTOCOL}, 405),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_a_rejected_upgrade_leaves_the_http_connection_usable(
    case: str, make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """One TCP connection: an RFC 6455 upgrade the gateway refuses, then an ordinary poll."""
    app, _, origin = await comet_origin(make_origin)
    server = await gateways("server", {"upstream": origin})
    async with (  # one message, so the poll answers at once
        aiohttp.ClientSession() as http,
        http.post(origin + "/send", json={"from": "x", "text": "hi"}) as resp,
    ):
        assert resp.status == 200
    session_id, token = await open_session(server.url)
    template, extra, expected = REJECTED[case]
    path = template.format(id=session_id)
    extra = {k: v.format(token=token) for k, v in extra.items()}
    host = f"127.0.0.1:{server.port}"
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(websocket_head(path, host, extra))
            await writer.drain()
            status, headers, _ = await read_response(reader)
            assert status == expected, (status, headers)
            assert "upgrade" not in headers.get("connection", "").lower(), headers
            assert "close" not in headers.get("connection", "").lower(), headers
            writer.write(f"GET /poll?since=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            status, headers, body = await read_response(reader)
        finally:
            writer.close()
    assert status == 200, (status, headers, body)
    assert b'"text": "hi"' in body or b'"text":"hi"' in body, body
    assert app[ROOM].last_id == 1


# --------------------------------- seed 004: the handshake is HTTP, nothing before the 101


_HEAD_FIELD = re.compile(r"^([A-Za-z0-9-]+):\s*(.*)$")


async def test_the_hops_handshake_is_a_bodyless_get_and_nothing_precedes_the_101(
    make_origin: MakeOrigin, gateways: Gateways
) -> None:
    """Bytes the client gateway sent on the connection it upgraded, as a proxy sees them.

    The upgrade request is a complete HTTP message with no body (no
    ``Content-Length`` beyond 0, no ``Transfer-Encoding``), it is the last
    thing sent before the 101, and the session's own bytes come only after.
    """
    app, sends, origin = await comet_origin(make_origin)
    server = await gateways("server", {"upstream": origin})
    path = await gateways.proxy(server)
    client = await gateways("client", {"upstream": path.url})
    await until(lambda: transport(client) == "websocket", "a websocket hop")
    await chat_ok(client.url, app, sends)  # the hop carries traffic over that socket
    upgraded = [r for r in path.records if r.after_101]
    assert len(upgraded) == 1, [r.request_lines() for r in path.records]
    [record] = upgraded
    sent = bytes(record.http)
    # Everything sent before the 101 ends exactly with the upgrade request's head.
    assert sent.endswith(b"\r\n\r\n"), sent[-200:]
    start = sent.rfind(b"GET ", 0)
    head = sent[start:].decode("latin-1")
    assert head.count("\r\n\r\n") == 1 and head.endswith("\r\n\r\n"), head
    request_line, *lines = head[:-4].split("\r\n")
    method, target, version = request_line.split(" ")
    assert (method, version) == ("GET", "HTTP/1.1")
    assert target.startswith(SESSION_PATH + "/"), target
    fields: dict[str, str] = {}
    for line in lines:
        match = _HEAD_FIELD.match(line)
        assert match, f"not a header field: {line!r}"
        fields[match.group(1).lower()] = match.group(2)
    assert fields.get("content-length", "0") == "0", fields
    assert "transfer-encoding" not in fields, fields
    assert fields["upgrade"].lower() == "websocket", fields
    assert "upgrade" in fields["connection"].lower(), fields
    assert fields["sec-websocket-version"] == "13", fields
    assert len(base64.b64decode(fields["sec-websocket-key"])) == 16, fields
    assert SUBPROTOCOL in [p.strip() for p in fields["sec-websocket-protocol"].split(",")]
    # The probe and the chat went over the socket after its 101.
    assert record.after_101 > 100, record.after_101
