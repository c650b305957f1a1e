"""The answering side never becomes an open proxy: what a peer's stream may ask for.

``check_request`` on its own, then end to end on the chain of ``chain.py``: a
forbidden target is reset before anything is sent, and ``Host`` cannot move
the connection off the configured upstream.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.tunnel import ResetCode, ResponseReceived, StreamReset
from gateway.core.tunnel.config import WHOLE_BODY_MAX
from gateway.glue.answerer import check_request
from gateway.status import RequestRecord
from tests.glue.chain import TRANSPORTS, BuildChain, Origin, first_event
from tests.helpers import until

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    ("method", "target", "why"),
    [
        ("GET", b"http://evil.example/x", "not origin-form"),
        ("GET", b"https://evil.example:8443/", "not origin-form"),
        ("GET", b"//evil.example/x", "not origin-form"),
        ("CONNECT", b"evil.example:443", "method"),
        ("CONNECT", b"/x", "method"),
        ("OPTIONS", b"*", "not origin-form"),
        ("GET", b"/a b", "whitespace"),
        ("GET", b"/a\r\nHost: evil", "whitespace"),
    ],
)
def test_check_request_refuses_anything_but_origin_form(
    method: str, target: bytes, why: str
) -> None:
    problem = check_request(method, target, ())
    assert problem is not None and why in problem


def test_check_request_refuses_header_injection() -> None:
    assert check_request("GET", b"/", ((b"X-A", b"1\r\nHost: evil"),)) is not None
    assert check_request("GET", b"/", ((b"Bad Name", b"1"),)) is not None
    assert check_request("GET", b"/ok?q=%20", ((b"X-A", b"1"),)) is None
    # A line break inside a name must not pass as the joined check's separator.
    assert check_request("GET", b"/", ((b"X-A\nHost", b"1"),)) is not None
    assert check_request("GET", b"/", ((b"X-A", b"1"), (b"", b"2"))) is not None


_PIECES = st.sampled_from([b"a", b"X-Y", b" ", b"\n", b"\r", b"\x00", b":", b"\xff"])
_PART = st.lists(_PIECES, max_size=3).map(b"".join)


@given(st.lists(st.tuples(_PART, _PART), max_size=6))
@settings(max_examples=400, deadline=None)
def test_check_request_takes_a_head_exactly_when_every_field_passes(
    fields: list[tuple[bytes, bytes]],
) -> None:
    token = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
    each_ok = all(token.fullmatch(n) and not re.search(rb"[\x00\r\n]", v) for n, v in fields)
    assert (check_request("GET", b"/", tuple(fields)) is None) == each_ok


@given(st.binary(max_size=12))
@settings(max_examples=400, deadline=None)
def test_check_request_takes_a_target_exactly_when_it_has_no_whitespace_or_control(
    rest: bytes,
) -> None:
    ok = not re.search(rb"[\x00-\x20\x7f]", rest) and not rest.startswith(b"/")
    assert (check_request("GET", b"/" + rest, ()) is None) == ok


@pytest.mark.parametrize(
    ("method", "ok"),
    [("GET", True), ("PATCH", True), ("PROPFIND", True), ("get", True), ("G ET", False),
     ("GET\r\n", False), ("", False), ("CONNECT", False), ("M\u00e9", False)],
)  # fmt: skip
def test_check_request_takes_any_token_method_but_connect(method: str, ok: bool) -> None:
    assert (check_request(method, b"/", ()) is None) == ok


@pytest.mark.parametrize("transport", ["websocket"])
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "http://127.0.0.1:1/steal"),
        ("GET", "//127.0.0.1:1/steal"),
        ("CONNECT", "127.0.0.1:1"),
        ("GET", "*"),
    ],
)
async def test_forbidden_targets_are_reset_and_never_reach_anything(
    build_chain: BuildChain,
    origin: tuple[Origin, str],
    transport: str,
    method: str,
    target: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    link = chain.down
    event = await first_event(link, method, target, [("Host", "127.0.0.1:1")])
    assert isinstance(event, StreamReset)
    assert event.code == ResetCode.PROTOCOL and event.remote
    assert "refused stream" in caplog.text
    assert o.seen == []


@pytest.mark.parametrize("transport", ["websocket"])
async def test_host_header_cannot_steer_the_connection(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    o, url = origin
    chain = await build_chain(url, transport)
    link = chain.down
    head = await first_event(link, "GET", "/h", [("Host", "evil.example:1")])
    assert isinstance(head, ResponseReceived) and head.status == 200
    assert [s["path"] for s in o.seen] == ["/h"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_answers_around_the_whole_answer_bound_arrive_exact_and_recorded(
    build_chain: BuildChain, origin: tuple[Origin, str], transport: str
) -> None:
    """Small answers may cross as one RESPONSE_WHOLE frame, larger ones as frames: same bytes.

    The sizes straddle ``WHOLE_BODY_MAX`` (and the origin's 64 KiB writes); each
    arrives with its length and its bytes, and the answering gateway records its
    size once, whichever way it crossed.
    """
    _, url = origin
    chain = await build_chain(url, transport)
    assert chain.up.tunnel.answers_whole
    records: list[RequestRecord] = []
    chain.server.stats.observers.append(records.append)
    block = bytes(range(256)) * 256
    sizes = [0, 1, WHOLE_BODY_MAX - 1, WHOLE_BODY_MAX, WHOLE_BODY_MAX + 1, 70_000]
    for n in sizes:
        async with chain.client.get(f"{chain.url}/download?n={n}") as resp:
            assert resp.status == 200
            assert resp.content_length == n
            assert await resp.read() == (block * 2)[:n], n
    await until(lambda: len(records) == len(sizes), "a record per answer")
    assert [r.size for r in records] == sizes
