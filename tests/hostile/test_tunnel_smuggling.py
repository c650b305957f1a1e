"""Issue 7 item 1: a tunnel OPEN cannot smuggle a request to the origin.

The answering gateway frames every tunnelled request itself: a declared
``Content-Length`` must equal the DATA bytes, else the stream is reset and
nothing mismatched reaches the origin; the following requests of other
users are answered normally.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import MakeGateway
from tests.hostile import payloads
from tests.hostile import peer as hp
from tests.hostile.origin import Origin

pytestmark = pytest.mark.timeout(60)


def refused(stream: hp.Stream) -> bool:
    return stream.reset is not None or (stream.head is not None and stream.head[2] >= 400)


async def test_forged_content_length_is_reset_and_the_next_users_are_served(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    async with hp.HostilePeer(gw.url) as peer, aiohttp.ClientSession() as http:
        for i in range(5):
            sid = peer.sid()
            await peer.send(
                hp.open_http(sid, "GET", f"/forged{i}", [("Host", "x"), ("Content-Length", "60")])
            )
            stream = await peer.complete(sid, 5)
            assert stream.reset is not None, f"a lying Content-Length was answered: {stream.head}"
            async with http.get(gw.url + f"/legit{i}") as resp:
                assert resp.status == 200, f"legit request {i} after a forged OPEN"
        assert peer.closed is None, "a reset stream must not cost the session"
    lying = [e for e in origin.seen if e["cl"] not in (None, "0") and e["body"] is None]
    assert lying == [], f"the origin saw a declared length with no body: {lying}"
    assert [p for p in origin.paths() if p.startswith("/legit")] == [f"/legit{i}" for i in range(5)]


async def test_a_request_of_the_attackers_choosing_never_reaches_the_origin(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    async with hp.HostilePeer(gw.url) as peer:
        probe = await payloads.send_carrier(peer)
        assert probe.head is not None and probe.head[2] == 200  # an honest body passes
        head_len = origin.seen[-1]["head_len"]
        for _ in range(3):
            sid = peer.sid()
            await peer.send(
                hp.open_http(sid, "GET", "/a", [("Host", "x"), ("Content-Length", str(head_len))])
            )
            assert refused(await peer.complete(sid, 5))
            await payloads.send_carrier(peer)
    assert "/smuggled" not in origin.paths()
    assert all(e["via"] for e in origin.seen), "every request at the origin came through us"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([("Content-Length", "100")], b"0123456789"),  # declared more than sent
        ([("Content-Length", "3")], b"0123456789"),  # declared less than sent
        ([("Transfer-Encoding", "chunked")], b"0\r\n\r\n" + payloads.SMUGGLED),
        (
            [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n" + payloads.SMUGGLED,
        ),
        ([("Content-Length", "10"), ("Content-Length", "10")], b"0123456789"),
    ],
    ids=["cl-over", "cl-under", "te-chunked-smuggle", "cl-and-te", "two-cl"],
)
async def test_declared_framing_must_match_the_data(
    make_gateway: MakeGateway, origin: Origin, headers: list[tuple[str, str]], body: bytes
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    async with hp.HostilePeer(gw.url) as peer, aiohttp.ClientSession() as http:
        sid = peer.sid()
        await peer.send(
            hp.open_http(sid, "POST", "/framed", [("Host", "x"), *headers], has_body=True),
            hp.data(sid, body),
            hp.end(sid),
        )
        stream = await peer.complete(sid, 5)
        for i in range(3):
            async with http.get(gw.url + f"/after{i}") as resp:
                assert resp.status == 200
    assert "/smuggled" not in origin.paths()
    framed = [e for e in origin.seen if e["path"] == "/framed"]
    # Either refused, or re-framed by the gateway from the bytes it really got.
    for e in framed:
        assert e["body"] == len(body), f"origin read {e['body']} of {len(body)} bytes"
    if not framed:
        assert refused(stream)
    elif headers[0][0] == "Content-Length" and len(headers) == 1:
        pytest.fail(f"a Content-Length of {headers[0][1]} with {len(body)} bytes was forwarded")
