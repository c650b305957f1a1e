"""Opening a session: what the connector raises when it cannot, and where it dials.

The connector's failures are classes (``gateway.transports.errors``) that the
upstream link matches, never their text: a legacy origin is ``NotAGateway``,
a gateway saying "not now" is ``SessionRefused``, a dead address is
``PeerUnreachable``, a refused WebSocket upgrade is ``HandshakeRefused``.
The servers here are real aiohttp servers on loopback.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
from aiohttp import web
from yarl import URL

from gateway.transports.errors import (
    HandshakeRefused,
    NotAGateway,
    PeerUnreachable,
    SessionRefused,
    SessionUnavailable,
)
from gateway.transports.handshake import SESSION_PATH
from tests.transports.conftest import (
    FAST,
    NO_REPROBE,
    Handler,
    Inbox,
    Kind,
    MakeConnector,
    StartRaw,
    StartServer,
    settings_for,
)

pytestmark = pytest.mark.timeout(30)

#: Where the relocated session endpoint below lives.
MOUNT = "/mounted/sessions"


def legacy_origin(status: int, log: list[str]) -> Handler:
    """A legacy origin: answers every request with ``status`` and a page of text."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        log.append(f"{request.method} {request.path}")
        await request.read()
        return web.Response(status=status, text="<html>hello from a legacy origin</html>")

    return handle


@pytest.mark.parametrize("status", [200, 404, 401, 500])
async def test_a_legacy_origin_answering_the_session_post_is_not_a_gateway(
    start_raw: StartRaw, make_connector: MakeConnector, status: int
) -> None:
    log: list[str] = []
    url = await start_raw(legacy_origin(status, log))
    connector = make_connector(url)
    with pytest.raises(NotAGateway) as caught:
        await connector.connect()
    message = str(caught.value)
    assert message.startswith(f"{url} is not a hopgate gateway: "), message
    if status == 200:
        assert "its 200 has no session id and token" in message
    else:
        assert f"POST {SESSION_PATH} answered {status}" in message
    assert caught.value.reason == message
    assert log == [f"POST {SESSION_PATH}"]  # nothing else is sent to a legacy origin
    assert connector.session is None


async def test_an_oversized_answer_is_not_a_gateway(
    start_raw: StartRaw, make_connector: MakeConnector
) -> None:
    async def huge(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"x" * (1024 * 1024))

    url = await start_raw(huge)
    with pytest.raises(NotAGateway, match=f"oversized answer to POST {SESSION_PATH}"):
        await make_connector(url).connect()


async def test_a_gateway_refusing_for_now_is_refused_not_legacy(
    start_server: StartServer, make_connector: MakeConnector
) -> None:
    handle = await start_server(replace(FAST, max_sessions_per_client=1))
    await make_connector(handle.url).connect()
    with pytest.raises(SessionRefused) as caught:
        await make_connector(handle.url).connect()
    refused = caught.value
    assert not isinstance(refused, NotAGateway)
    assert refused.status == 429 and refused.retry_after is not None
    assert refused.retry_after.isdigit(), refused.retry_after
    assert f"cannot open a session now (429, retry after {refused.retry_after} s)" in str(refused)


async def test_a_dead_address_is_unreachable(make_connector: MakeConnector) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more: the connection is refused.
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(PeerUnreachable, match=f"cannot reach {url}{SESSION_PATH}") as caught:
        await make_connector(url).connect()
    assert isinstance(caught.value, SessionUnavailable) and isinstance(caught.value, OSError)
    assert not isinstance(caught.value, NotAGateway | SessionRefused)


async def test_a_refused_upgrade_is_handshake_refused_and_long_poll_carries_on(
    start_server: StartServer, start_raw: StartRaw, make_connector: MakeConnector
) -> None:
    """A path that answers 403 to every upgrade: the session lives on long-poll."""
    handle = await start_server(replace(FAST, **NO_REPROBE))

    async def no_websockets(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return web.Response(status=403, text="no WebSockets through here")
        return await handle.server.handle(request)

    url = await start_raw(no_websockets)
    connector = make_connector(url, replace(FAST, **NO_REPROBE))
    hop = await connector.connect()
    assert hop.transport == "long-poll" and connector.fallbacks == 1
    failure = connector.last_websocket_failure
    assert isinstance(failure, HandshakeRefused), failure
    assert failure.status == 403 and str(failure).startswith("WebSocket upgrade refused (403")
    _server, inbox = await handle.next_session()
    hop.send("over long-poll")
    await inbox.wait_for(1)


# -- the session path a note names ------------------------------------------------------------


async def test_the_connector_dials_the_session_path_it_is_given(
    start_server: StartServer,
    start_raw: StartRaw,
    make_connector: MakeConnector,
    transport: Kind,
) -> None:
    log: list[str] = []
    settings = settings_for(transport)
    handle = await start_server(settings)

    async def relocated(request: web.BaseRequest) -> web.StreamResponse:
        log.append(f"{request.method} {request.path}")
        if request.path != MOUNT and not request.path.startswith(MOUNT + "/"):
            return web.Response(status=404, text="nothing here")
        inner = SESSION_PATH + request.rel_url.raw_path_qs[len(MOUNT) :]
        return await handle.server.handle(request.clone(rel_url=URL(inner, encoded=True)))

    url = await start_raw(relocated)
    connector = make_connector(url, settings, prefer=transport, session_path=MOUNT)
    hop = await connector.connect()
    assert hop.transport == transport
    server, server_inbox = await handle.next_session()
    client_inbox = Inbox()
    client_inbox.attach(hop)
    hop.send("up")
    server.send("down")
    await server_inbox.wait_for(1)
    await client_inbox.wait_for(1)
    assert server_inbox.messages == ["up"] and client_inbox.messages == ["down"]
    assert log[0] == f"POST {MOUNT}", log
    session_url = f"{MOUNT}/{hop.session_id}"
    assert all(line.split(" ", 1)[1] == session_url for line in log[1:]), log
    assert not any(SESSION_PATH in line for line in log), log


async def test_the_connector_dials_the_default_path_without_a_note(
    start_raw: StartRaw, make_connector: MakeConnector
) -> None:
    log: list[str] = []
    url = await start_raw(legacy_origin(404, log))
    with pytest.raises(NotAGateway):
        await make_connector(url).connect()
    with pytest.raises(NotAGateway, match=f"POST {MOUNT} answered 404"):
        await make_connector(url, session_path=MOUNT).connect()
    assert log == [f"POST {SESSION_PATH}", f"POST {MOUNT}"]
