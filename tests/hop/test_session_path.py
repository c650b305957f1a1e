"""A gateway opens its sessions where its peer says they live, not at a hard-coded path.

The peer here is a session endpoint published under another path (as a
reverse proxy mounting a gateway elsewhere would): its hello answer or its
discovery note names that path, and the upstream link's connector dials it.
"""

from __future__ import annotations

from typing import Literal

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.core import discovery
from gateway.transports.endpoint import SessionServer
from gateway.transports.handshake import SESSION_PATH
from gateway.transports.hopsession import HopSession
from tests.conftest import MakeOrigin
from tests.helpers import until
from tests.hop.conftest import StartGateway
from tests.transports.conftest import FAST

pytestmark = pytest.mark.timeout(60)

MOUNT = "/relocated/hop-sessions"


@pytest.mark.parametrize("learned_from", ["hello", "note"])
async def test_the_link_dials_the_session_path_its_peer_names(
    learned_from: Literal["hello", "note"],
    make_origin: MakeOrigin,
    start_gateway: StartGateway,
) -> None:
    log: list[str] = []
    sessions: list[HopSession] = []
    endpoint = SessionServer(FAST, on_session=sessions.append)

    async def peer(request: web.Request) -> web.StreamResponse:
        log.append(f"{request.method} {request.path}")
        if request.path == discovery.HELLO_PATH and learned_from == "hello":
            return web.json_response(discovery.hello_body(request.query["nonce"], MOUNT))
        if request.path.startswith(MOUNT):
            inner = SESSION_PATH + request.rel_url.raw_path_qs[len(MOUNT) :]
            return await endpoint.handle(request.clone(rel_url=URL(inner, encoded=True)))
        await request.read()
        response = web.Response(text="plain")
        if learned_from == "note" and discovery.has_mark(request.headers):
            discovery.add_note(response.headers, MOUNT)
        return response

    try:
        upstream = await make_origin(peer)
        # A client gateway asks its upstream's hello; a sidecar learns from a note.
        role = "client" if learned_from == "hello" else "server"
        gw = await start_gateway(role, {"upstream": upstream})
        if learned_from == "note":
            async with aiohttp.ClientSession() as http, http.get(gw.url + "/page") as resp:
                assert resp.status == 200 and await resp.text() == "plain"
        link = gw.link()
        assert link is not None
        await until(lambda: link.session is not None, "a session on the relocated path")
        assert len(sessions) == 1
        session_lines = [line for line in log if MOUNT in line]
        assert session_lines[0] == f"POST {MOUNT}", log
        assert not any(SESSION_PATH in line for line in log), log
    finally:
        await endpoint.close()
