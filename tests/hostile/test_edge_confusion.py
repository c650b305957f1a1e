"""Issue 7 items 5-7: no host confusion at the edge, no 500 on bad numbers, no replay.

Every request here goes over a raw socket, as an attacker writes it.
"""

from __future__ import annotations

import socket

import aiohttp
import pytest

from gateway.transports.handshake import auth_header_value
from tests.conftest import MakeGateway
from tests.hostile import peer as hp
from tests.hostile.origin import Origin
from tests.status_page import warm_until_hop

pytestmark = pytest.mark.timeout(60)


async def send(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    return await hp.async_raw_exchange("127.0.0.1", port, request, timeout=timeout)


def odd_targets(evil: Origin) -> list[str]:
    p = evil.port
    return [
        f"m://127.0.0.1:{p}/leak",
        f"HTTP://127.0.0.1:{p}/leak",
        f"Http://127.0.0.1:{p}/leak",
        f"HTTPS://127.0.0.1:{p}/leak",
        f"t://127.0.0.1:{p}/leak",
        f"ws://127.0.0.1:{p}/leak",
        "HTTP://evil/.hopgate/status",
    ]


@pytest.mark.parametrize("explicit_port", [True, False], ids=["upstream-port", "no-port"])
async def test_odd_absolute_targets_at_a_sidecar_are_400_and_reach_nothing(
    make_gateway: MakeGateway, origin: Origin, evil: Origin, explicit_port: bool
) -> None:
    # Without a port the upstream is "http://127.0.0.1" (port 80): string
    # concatenation with "m://..." used to build another host out of it.
    upstream = origin.url if explicit_port else "http://127.0.0.1"
    gw = await make_gateway("server", {"upstream": upstream})
    for target in odd_targets(evil):
        answer = await send(gw.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert hp.status_of(answer) == 400, (target, answer[:300])
        assert b'"version"' not in answer, f"{target} was answered by the status page"
    assert evil.seen == []
    assert origin.seen == []


async def test_uppercase_scheme_status_request_is_not_the_status_page(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    answer = await send(gw.port, b"GET HTTP://evil/.hopgate/status HTTP/1.1\r\nHost: evil\r\n\r\n")
    assert hp.status_of(answer) == 400, answer[:300]
    assert b"upstreams" not in answer


@pytest.mark.parametrize("role", ["server", "client"])
async def test_options_asterisk_is_never_500_and_never_becomes_options_slash(
    make_gateway: MakeGateway, origin: Origin, role: str
) -> None:
    settings = {"upstream": origin.url}
    if role == "client":
        settings["upgrade"] = "never"
    gw = await make_gateway(role, settings)  # type: ignore[arg-type]
    answer = await send(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    status = hp.status_of(answer)
    assert status is not None and status < 500, answer[:300]
    assert ("OPTIONS", "/") not in [(e["method"], e["path"]) for e in origin.seen]


async def test_options_asterisk_over_a_hop_is_never_options_slash(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    server = await make_gateway("server", {"upstream": origin.url})
    client = await make_gateway("client", {"upstream": server.url})
    async with aiohttp.ClientSession() as http:
        await warm_until_hop(http, client.url, timeout=15)
    answer = await send(client.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    status = hp.status_of(answer)
    assert status is not None and status < 500, answer[:300]
    assert ("OPTIONS", "/") not in [(e["method"], e["path"]) for e in origin.seen]


@pytest.mark.parametrize(
    "headers",
    [{"X-Forwarded-For": "203.0.113.9"}, {"Via": "1.1 proxy"}, {"Forwarded": "for=203.0.113.9"}],
    ids=["x-forwarded-for", "via", "forwarded"],
)
async def test_status_details_are_refused_through_a_proxy(
    make_gateway: MakeGateway, origin: Origin, headers: dict[str, str]
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url})
    public = await make_gateway("server", {"upstream": origin.url, "public_status": True})
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + hp.STATUS_PATH) as resp:
            assert resp.status == 200  # direct from loopback: the details
        async with http.get(gw.url + hp.STATUS_PATH, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == 403, body
            assert origin.url.encode() not in body
        async with http.get(public.url + hp.STATUS_PATH, headers=headers) as resp:
            assert resp.status == 200


def non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = str(s.getsockname()[0])
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


async def test_status_details_are_refused_to_a_non_loopback_client(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    ip = non_loopback_ip()
    gw = await make_gateway("server", {"upstream": origin.url, "listen": "0.0.0.0:0"})
    # Without another interface, 127.0.0.2 with a forwarded header is the closest
    # stand-in; with one, a plain request from it must be refused.
    url = f"http://{ip}:{gw.port}" if ip else f"http://127.0.0.1:{gw.port}"
    headers = {} if ip else {"X-Forwarded-For": "203.0.113.9"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + hp.STATUS_PATH, headers=headers) as resp,
    ):
        assert resp.status == 403
        assert origin.url.encode() not in await resp.read()


# -------------------------------------------------------------- bad numbers


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("stamp", ["²", "9" * 5000, "\uff11\uff12\uff13", "-5", "1e9", ""])
async def test_bad_hop_secret_time_stamps_are_4xx(
    make_gateway: MakeGateway, origin: Origin, stamp: str, version: str
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "hop_secret": "s3cret-hop-secret"})
    nonce = " " + "0" * 32 if version == "v2" else ""
    request = (
        f"POST {hp.SESSION_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        f"{hp.AUTH_HEADER}: {version} {stamp}{nonce} {'0' * 64}\r\n\r\n"
    ).encode()
    status = hp.status_of(await send(gw.port, request))
    assert status is not None and 400 <= status < 500, status


@pytest.mark.parametrize(
    ("method", "query"),
    [
        ("GET", "last=0&epoch=%C2%B2"),
        ("GET", "last=%C2%B2&epoch=1"),
        ("POST", "epoch=%C2%B2"),
        ("GET", "last=0&epoch=" + "9" * 5000),
        ("GET", "last=" + "1" * 30 + "&epoch=1"),
        ("GET", "last=%EF%BC%91&epoch=1"),
        ("POST", "epoch=-1"),
        ("GET", "last=0&epoch=1&epoch=2"),
    ],
)
async def test_bad_numbers_in_hop_queries_are_4xx(
    make_gateway: MakeGateway, origin: Origin, method: str, query: str
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "hold_time": 1.0})
    async with aiohttp.ClientSession() as http:
        created = await hp.create_session(http, gw.url)
    request = (
        f"{method} {hp.SESSION_PATH}/{created.session_id}?{query} HTTP/1.1\r\nHost: x\r\n"
        f"{hp.TOKEN_HEADER}: {created.token}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    status = hp.status_of(await send(gw.port, request))
    assert status is not None and status < 500, status


async def test_a_captured_hop_secret_header_cannot_be_replayed(
    make_gateway: MakeGateway, origin: Origin
) -> None:
    gw = await make_gateway("server", {"upstream": origin.url, "hop_secret": "s3cret-hop-secret"})
    # Exactly what a client gateway of this version sends, captured once.
    header = {hp.AUTH_HEADER: auth_header_value("s3cret-hop-secret")}
    async with aiohttp.ClientSession() as http:
        first = await hp.create_session(http, gw.url, header)
        second = await hp.create_session(http, gw.url, header)
    assert first.status == 200, first
    assert second.status == 403, (first.status, second.status)
