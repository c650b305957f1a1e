"""A seeded fuzzer of request lines, headers and hop-session requests on raw sockets.

300 cases (``HOPGATE_FUZZ_CASES``; seed ``HOPGATE_FUZZ_SEED``, printed on
failure) go to a running sidecar and to a client gateway in front of it.
Whatever comes in, a gateway must:

* never answer a 5xx of its own making: a 500 is always a bug (aiohttp's
  "500 Internal Server Error" for an unhandled exception); 502/504 are
  allowed only as the gateway's deliberate answer (``X-Hopgate-Error: 1``),
  503 only with ``Retry-After``;
* log no ERROR (unhandled exception) on the hopgate or aiohttp loggers;
* stay alive: its status page still answers afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web

from gateway.server import Gateway
from gateway.transports.handshake import auth_header_value
from tests.conftest import MakeGateway, MakeOrigin
from tests.hostile import peer as hp
from tests.hostile.conftest import ErrorRecords

pytestmark = pytest.mark.timeout(90)

CASES = int(os.environ.get("HOPGATE_FUZZ_CASES", "300"))
SEED = int(os.environ.get("HOPGATE_FUZZ_SEED", "7"))

# fmt: off
METHODS = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "GET", "POST", "OPTIONS"]
ODD_METHODS = ["CONNECT", "TRACE", "get", "G\u00c9T", "M-SEARCH", "PRI", "X" * 40, "", "GET /",
               "POST\t"]
SEGMENTS = ["a", "%2F", "%2e%2e", "..", "%00", "%C2%B2", "%", "%zz", "~", ".hopgate", "status",
            "session", "hello", "@", ";x", "%0d%0a", "a?b=%C2%B2", "%EF%BC%91", ""]
ODD_SEGMENTS = ["\u00b2", "\u2603", "\\", "%0d%0aX: 1", " ", "\t"]
# fmt: on
SCHEMES = [
    "http",
    "https",
    "HTTP",
    "Http",
    "HTTPS",
    "m",
    "t",
    "ws",
    "wss",
    "ftp",
    "h\u0442tp",
    "",
    "1http",
    "http+unix",
    "javascript",
]
HOSTS = [
    "127.0.0.1",
    "127.0.0.1:1",
    "evil",
    "v",
    "localhost:80",
    "[::1]:1",
    "\u0435vil",
    "a@b",
    "127.0.0.1:99999",
    "127.0.0.1:-1",
    "127.0.0.1:\u00b2",
    "",
]
VERSIONS = [
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/1.1",
    "HTTP/2.0",
    "HTTP/0.9",
    "HTTP/1.1 x",
    "http/1.1",
    "HTTP/1.\u00b9",
    "",
]
HEADER_NAMES = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Upgrade",
    "Expect",
    "X-Forwarded-For",
    "Via",
    "Forwarded",
    "Origin",
    hp.AUTH_HEADER,
    hp.TOKEN_HEADER,
    hp.SESSION_HEADER,
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "X-Hopgate-Hop",
    "Range",
    "Content-Type",
    "Cookie",
    "Bad Name",
    "X\u00e9",
    "",
    "X-\x01",
]
NUMBERS = [
    "0",
    "1",
    "60",
    "-1",
    "\u00b2",
    "\uff11\uff12",
    "9" * 40,
    "0x10",
    "1e3",
    " 5",
    "5 ",
    "5,5",
    "+5",
    "",
    "\u0665",
    "1" * 5000,
]


def percent_noise(rng: random.Random) -> str:
    pool = SEGMENTS if rng.random() < 0.9 else SEGMENTS + ODD_SEGMENTS
    return "/".join(rng.choice(pool) for _ in range(rng.randint(0, 5)))


def target(rng: random.Random, session_id: str) -> str:
    form = rng.randrange(9)
    if form == 0:
        return "/" + percent_noise(rng)
    if form == 1:
        return f"{rng.choice(SCHEMES)}://{rng.choice(HOSTS)}/{percent_noise(rng)}"
    if form == 2:
        return rng.choice(HOSTS)  # authority-form
    if form == 3:
        return "*"
    if form == 4:
        return rng.choice(
            [
                "/.hopgate/status",
                "/.hopgate/hello?nonce=" + percent_noise(rng),
                f"{rng.choice(SCHEMES)}://x/.hopgate/status",
            ]
        )
    if form == 5:
        sid = rng.choice([session_id, "A" * 22, "", "../x", "%00", "\u00b2" * 3, "x" * 300])
        query = "&".join(
            f"{rng.choice(['last', 'epoch', 'x', 'last', 'epoch'])}={rng.choice(NUMBERS)}"
            for _ in range(rng.randint(0, 3))
        )
        return f"{hp.SESSION_PATH}/{sid}?{query}"
    if form == 6:
        return hp.SESSION_PATH + rng.choice(["", "/", "//", "/?x=1"])
    if form == 7:
        if rng.random() < 0.3:
            return "/" + "".join(chr(rng.randrange(0x21, 0x2FFF)) for _ in range(rng.randint(1, 9)))
        return (
            "/"
            + percent_noise(rng)
            + "?"
            + "&".join(
                f"{rng.choice(['last', 'epoch', 'nonce', 'x'])}={rng.choice(NUMBERS)}"
                for _ in range(rng.randint(1, 3))
            )
        )
    return rng.choice(["", "//evil/x", "/a b", "/\t", "?x", "#frag", "/" + "a" * 9000])


def header_value(rng: random.Random, name: str) -> str:
    if name == "Content-Length":
        return rng.choice(NUMBERS)
    if name == "Transfer-Encoding":
        return rng.choice(
            ["chunked", "Chunked", "gzip, chunked", "xchunked", "chunked, x", "identity", "\u00b2"]
        )
    if name == hp.AUTH_HEADER:
        return f"v1 {rng.choice(NUMBERS)} {'ab' * rng.randint(0, 40)}"
    kind = rng.randrange(6)
    if kind == 0:
        return "x" * rng.choice([0, 1, 100, 5000, 9000])
    if kind == 1:
        return "".join(chr(rng.randrange(0, 0x80)) for _ in range(rng.randint(1, 20)))
    if kind == 2:
        return "".join(chr(rng.randrange(0x80, 0x3000)) for _ in range(rng.randint(1, 10)))
    if kind == 3:
        return rng.choice(
            [
                "websocket",
                "Upgrade",
                "close",
                "keep-alive, Upgrade",
                "100-continue",
                "hopgate.v1",
                "null",
                "http://evil",
                "bytes=0-\u00b2",
            ]
        )
    return rng.choice(NUMBERS)


def body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return b""
    if kind == 1:
        return rng.randbytes(rng.randint(1, 300))
    if kind == 2:  # garbage msgpack: valid msgpack, nonsense frames
        obj: Any = rng.choice(
            [
                [rng.randint(-5, 12), rng.randint(-1, 2**64 - 1), "x"],
                {"a": 1},
                [2, 1, 1, b"x" * rng.randint(0, 100)],
                [1, 1, "x" * 200, 0, None],
                [3, 2**64 - 1],
                [2, 0, 9, b""],
                [],
                [[[[]]]],
                1.5,
                None,
            ]
        )
        return bytes(msgpack.packb(obj, use_bin_type=True))
    if kind == 3:
        return hp.pack(hp.S_DATA, 1, hp.FIN, hp.open_http(1, "GET", percent_noise(rng)))
    return b"0\r\n\r\n" + rng.randbytes(rng.randint(0, 30))


def build_case(rng: random.Random, session_id: str, token: str) -> bytes:
    """Mostly well-formed requests with one or two odd parts: odd everywhere is just a 400."""
    method = rng.choice(METHODS) if rng.random() < 0.85 else rng.choice(ODD_METHODS)
    version = "HTTP/1.1" if rng.random() < 0.9 else rng.choice(VERSIONS)
    line = f"{method} {target(rng, session_id)} {version}"
    headers = []
    if rng.random() < 0.95:
        headers.append(("Host", "x" if rng.random() < 0.9 else rng.choice(["evil", "", "a b"])))
    if rng.random() < 0.6:
        headers.append((hp.TOKEN_HEADER, rng.choice([token, token, token, "x" * 43, "\u00b2"])))
    for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):
        name = rng.choice(HEADER_NAMES)
        headers.append((name, header_value(rng, name)))
    payload = body(rng) if rng.random() < 0.5 else b""
    if payload and rng.random() < 0.7:
        headers.append(("Content-Length", str(len(payload))))
    eol = "\r\n" if rng.random() < 0.98 else "\n"
    head = line + eol + "".join(f"{k}: {v}{eol}" for k, v in headers) + eol
    return head.encode("utf-8", "surrogateescape") + payload


@dataclass
class Verdict:
    status: int | None
    problem: str | None


def judge(answer: bytes) -> Verdict:
    status = hp.status_of(answer)
    if status is None or status < 500:
        return Verdict(status, None)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    if status == 500 or b"500 internal server error" in answer.lower():
        return Verdict(status, "500 of the gateway's own making")
    if status in (502, 504) and b"x-hopgate-error: 1" in head:
        return Verdict(status, None)  # a failing origin, answered deliberately
    if status == 503 and b"retry-after:" in head:
        return Verdict(status, None)
    return Verdict(status, f"unexplained {status}")


async def test_fuzzed_requests_get_no_5xx_of_our_making_and_crash_nothing(
    make_gateway: MakeGateway, make_origin: MakeOrigin, gateway_errors: ErrorRecords
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.path.startswith("/fail"):
            raise web.HTTPServiceUnavailable()
        return web.Response(text="origin")

    origin = await make_origin(handler)
    fast = {"hold_time": 0.3, "header_timeout": 2.0, "hop_secret": "s3cret-hop-secret"}
    server = await make_gateway("server", {"upstream": origin, **fast})
    client = await make_gateway("client", {"upstream": server.url, **fast})
    async with aiohttp.ClientSession() as http:
        created = await hp.create_session(
            http, server.url, {hp.AUTH_HEADER: auth_header_value("s3cret-hop-secret")}
        )
        assert created.status == 200
    rng = random.Random(SEED)
    cases = [
        (rng.choice([server, client]), build_case(rng, created.session_id, created.token))
        for _ in range(CASES)
    ]
    problems: list[str] = []
    statuses: dict[int | None, int] = {}
    gate = asyncio.Semaphore(24)
    started = time.monotonic()

    async def run(index: int, gw: Gateway, request: bytes) -> None:
        async with gate:
            try:
                answer = await hp.async_raw_exchange(
                    "127.0.0.1",
                    gw.port,
                    request,
                    timeout=1.5,
                )
            except OSError as exc:
                problems.append(f"case {index}: connection failed: {exc}")
                return
            verdict = judge(answer)
            statuses[verdict.status] = statuses.get(verdict.status, 0) + 1
            if verdict.problem:
                problems.append(
                    f"case {index} (seed {SEED}): {verdict.problem}: {request[:200]!r} -> "
                    f"{answer[:300]!r}"
                )

    async with asyncio.timeout(60):
        await asyncio.gather(*(run(i, gw, req) for i, (gw, req) in enumerate(cases)))
    elapsed = time.monotonic() - started
    print(f"fuzz: {CASES} cases in {elapsed:.1f} s, statuses {statuses}")
    async with aiohttp.ClientSession() as http:
        for gw in (server, client):
            async with http.get(gw.url + hp.STATUS_PATH) as resp:
                assert resp.status == 200, "the gateway stopped answering"
    assert not problems, "\n".join(problems[:10])
    assert not gateway_errors.records, gateway_errors.text()[:3000]
    assert elapsed < 30, f"{CASES} cases took {elapsed:.0f} s"
