"""The client gateway's poll-ahead holder (``glue/pollahead.py``) against a peer that lies.

A server gateway pushes predicted answers; a hostile or broken one can push
answers for polls nobody predicted, or answers bigger than we hold. Each is
refused at the door: nothing is held for it, and the client's next poll
travels as usual. The peer here is a real hop session spoken by hand
(``rawpeers.RawAnswerer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.config import Config
from gateway.core.pollahead.codec import (
    MAX_PART,
    AnswerHead,
    Descriptor,
    Op,
    encode_answer,
    encode_descriptor,
    encode_part,
)
from gateway.core.tunnel import RequestReceived
from gateway.core.tunnel.events import PushReceived
from gateway.glue import pollahead
from gateway.glue.link import TunnelLink
from gateway.glue.pollahead import AheadClient
from gateway.status import GatewayStats
from gateway.transports.connector import SessionConnector
from gateway.transports.endpoint import SessionServer
from gateway.transports.hopsession import HopSession
from gateway.transports.session_settings import SessionSettings
from tests.glue.chain import forwarder_for, serve
from tests.glue.rawpeers import RawAnswerer, Scripted
from tests.helpers import until

pytestmark = pytest.mark.timeout(60)

PREDICTED = 7
ANSWER = Scripted(headers=(("Content-Length", "6"),), body=(b"plain\n",))


class Predictor(RawAnswerer):
    """Answers every poll; with the first, announces the next one (push ``PREDICTED``)."""

    def __init__(self, hop: HopSession) -> None:
        super().__init__(hop, {})
        self.accepted: list[int] = []
        self.stopped: list[int] = []

    def _on_message(self, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.tunnel.receive_message(data)
        for event in self.tunnel.events_received():
            if isinstance(event, RequestReceived):
                self.targets.append(event.target)
                if event.target == b"/poll?c=1":
                    d = Descriptor(PREDICTED, "GET", b"/poll?c=2", (), None, 5.0)
                    self.tunnel.push(event.stream_id, Op.ANNOUNCE, encode_descriptor(d))
                self._answer(event.stream_id, ANSWER)
            elif isinstance(event, PushReceived):
                if event.op == Op.ACCEPT:
                    self.accepted.append(event.stream_id)
                elif event.op == Op.STOP:
                    self.stopped.append(event.stream_id)
        self.flush()

    def push_answer(self, push_id: int, body: bytes, parts: list[bytes]) -> None:
        """An ANSWER for ``push_id`` carrying ``body``, continued by ``parts``."""
        self.push_head(push_id, body, more=bool(parts))
        for i, chunk in enumerate(parts):
            self.push_part(push_id, chunk, more=i < len(parts) - 1)

    def push_head(self, push_id: int, body: bytes, *, more: bool) -> None:
        head = AnswerHead(push_id, 200, "OK", (), body, more, None)
        self.tunnel.push(push_id, Op.ANSWER, encode_answer(head))
        self.flush()

    def push_part(self, push_id: int, chunk: bytes, *, more: bool) -> None:
        self.tunnel.push(push_id, Op.PART, encode_part(chunk, more))
        self.flush()


@dataclass
class Path:
    url: str
    peer: Predictor
    ahead: AheadClient
    stats: GatewayStats


@pytest.fixture
async def path() -> AsyncIterator[Path]:
    """client -> an opening link (holds predictions) -> a Predictor, over a real hop session."""
    settings = SessionSettings(reprobe_initial=3600, reprobe_max=3600, close_timeout=2)
    peers: list[Predictor] = []
    server = SessionServer(settings, on_session=lambda hop: peers.append(Predictor(hop)))
    peer_runner, peer_url = await serve(server.handle)
    stats = GatewayStats(role="client", mode="sidecar")
    forwarder = forwarder_for(Config(role="client", upstream=URL(peer_url)), stats)
    http = aiohttp.ClientSession()
    connector = SessionConnector(URL(peer_url), http, settings)
    link = TunnelLink(
        await connector.connect(), opener=True, forwarder=forwarder, upstream=URL(peer_url)
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await link.forward(request, request.raw_path, origin_key="peer")

    runner, url = await serve(handle)
    await until(lambda: bool(peers), "the peer's session")
    on_push = link.driver.on_push
    assert on_push is not None
    ahead = on_push.__self__  # type: ignore[attr-defined]
    assert isinstance(ahead, AheadClient)
    try:
        yield Path(url, peers[0], ahead, stats)
    finally:
        for close in (runner.cleanup, link.close, connector.close, http.close):
            await close()
        await forwarder.client.close()
        await peer_runner.cleanup()
        await server.close()


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, resp.status
        return await resp.read()


async def _predicted(path: Path) -> None:
    """The first poll is answered and the next one announced and accepted."""
    assert await _get(f"{path.url}/poll?c=1") == b"plain\n"
    await until(lambda: path.peer.accepted == [PREDICTED], "the client gateway's ACCEPT")


async def _held_answer_used(path: Path, body: bytes, parts: list[bytes]) -> bool:
    """Push the predicted answer; whether the client's next poll got it (not the peer)."""
    path.peer.push_answer(PREDICTED, body, parts)
    await asyncio.sleep(0.2)
    got = await _get(f"{path.url}/poll?c=2")
    served_here = b"/poll?c=2" not in path.peer.targets
    assert got == (body + b"".join(parts) if served_here else b"plain\n")
    return served_here


async def test_an_answer_in_parts_within_the_bounds_is_held_and_served(path: Path) -> None:
    await _predicted(path)
    chunk = b"x" * MAX_PART
    assert await _held_answer_used(path, chunk, [chunk, b"end"])
    assert path.stats.poll_ahead.used == 1
    assert path.stats.poll_ahead.held_bytes == 0


async def test_an_answer_over_the_held_bytes_is_refused_and_the_poll_travels(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pollahead, "MAX_HELD_BYTES", MAX_PART + 1000)
    await _predicted(path)
    chunk = b"x" * MAX_PART
    assert not await _held_answer_used(path, chunk, [chunk, b"end"])
    assert path.ahead._parts == {} and path.ahead._partial == 0
    assert path.stats.poll_ahead.held_bytes == 0
    assert path.stats.poll_ahead.used == 0


async def test_answers_in_parts_for_nothing_predicted_hold_nothing(path: Path) -> None:
    chunk = b"x" * MAX_PART
    for i in range(64):  # 64 answers x 1.5 MiB nobody asked for: the old holder kept each
        path.peer.push_answer(1000 + i, chunk, [chunk, chunk])
    await until(lambda: path.stats.poll_ahead.dropped == 64, "64 answers counted dropped")
    assert path.ahead._parts == {} and path.ahead._partial == 0
    assert await _get(f"{path.url}/poll?c=9") == b"plain\n"  # the link still works


async def test_a_second_head_for_one_answer_is_ignored(path: Path) -> None:
    await _predicted(path)
    peer, chunk = path.peer, b"x" * MAX_PART
    peer.push_head(PREDICTED, b"first", more=True)
    peer.push_head(PREDICTED, chunk, more=True)  # a second head while the first continues
    peer.push_part(PREDICTED, b"-continued", more=False)
    peer.push_head(PREDICTED, chunk, more=True)  # and one once it is whole
    peer.push_part(PREDICTED, chunk, more=False)
    await asyncio.sleep(0.2)
    assert path.ahead._parts == {} and path.ahead._partial == 0
    assert await _get(f"{path.url}/poll?c=2") == b"first-continued"
    assert b"/poll?c=2" not in peer.targets
