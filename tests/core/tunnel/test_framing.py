"""Framing rules of tunnelled HTTP heads (``gateway.core.tunnel.framing``), without I/O.

Which bodies a head may announce, which lengths are honest, and how a body
is counted against its declared length. The same rules seen from the wire,
against a real gateway and a hostile peer, are in ``tests/glue/test_framing.py``.
"""

from __future__ import annotations

import pytest

from gateway.core.tunnel.framing import (
    BodyCounter,
    Framing,
    FramingError,
    request_framing,
    response_framing,
)


def h(*pairs: tuple[str, str | bytes]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(
        (name.encode(), value if isinstance(value, bytes) else value.encode())
        for name, value in pairs
    )


@pytest.mark.parametrize(
    ("headers", "has_body", "expected"),
    [
        ((), False, Framing(None, counted=False)),
        ((), True, Framing(None, counted=True)),
        ((("Content-Length", "0"),), False, Framing(0, counted=False)),
        ((("Content-Length", "12"),), True, Framing(12, counted=True)),
        ((("content-length", " 12 "),), True, Framing(12, counted=True)),
        ((("Content-Length", "5"), ("Content-Length", "5")), True, Framing(5, counted=True)),
        ((("Transfer-Encoding", "chunked"),), True, Framing(None, counted=True)),
        ((("Transfer-Encoding", "Chunked"),), True, Framing(None, counted=True)),
    ],
)
def test_request_framing_accepts_honest_heads(
    headers: tuple[tuple[str, str], ...], has_body: bool, expected: Framing
) -> None:
    assert request_framing(h(*headers), has_body=has_body) == expected


@pytest.mark.parametrize(
    ("headers", "has_body", "why"),
    [
        ((("Content-Length", "60"),), False, "has none"),
        ((("Transfer-Encoding", "chunked"),), False, "has none"),
        ((("Content-Length", "5"), ("Content-Length", "6")), True, "conflicting"),
        ((("Content-Length", "5, 5"),), True, "invalid"),
        ((("Content-Length", "6a"),), True, "invalid"),
        ((("Content-Length", "+5"),), True, "invalid"),
        ((("Content-Length", "-1"),), True, "invalid"),
        ((("Content-Length", "0x10"),), True, "invalid"),
        ((("Content-Length", ""),), True, "invalid"),
        ((("Content-Length", "²"),), True, "invalid"),
        ((("Content-Length", "\u0665"),), True, "invalid"),  # ARABIC-INDIC DIGIT FIVE
        ((("Content-Length", "1" * 16),), True, "invalid"),
        ((("Content-Length", "9" * 5000),), True, "invalid"),
        ((("Transfer-Encoding", "chunked"), ("Content-Length", "5")), True, "both"),
        ((("Transfer-Encoding", "gzip, chunked"),), True, "unsupported"),
        ((("Transfer-Encoding", "chunked, chunked"),), True, "unsupported"),
        ((("Transfer-Encoding", "identity"),), True, "unsupported"),
    ],
)
def test_request_framing_refuses_lying_or_invalid_heads(
    headers: tuple[tuple[str, str], ...], has_body: bool, why: str
) -> None:
    with pytest.raises(FramingError, match=why):
        request_framing(h(*headers), has_body=has_body)


def test_response_framing_by_method_and_status() -> None:
    cl60 = h(("Content-Length", "60"))
    # The length of what a GET would get: no body, not counted.
    assert response_framing(cl60, has_body=False, method="HEAD", status=200) == Framing(60, False)
    assert response_framing(cl60, has_body=False, method="GET", status=304) == Framing(60, False)
    assert response_framing((), has_body=False, method="GET", status=204) == Framing(None, False)
    assert response_framing(cl60, has_body=True, method="GET", status=200) == Framing(60, True)
    with pytest.raises(FramingError, match="has none"):
        response_framing(cl60, has_body=False, method="GET", status=200)
    with pytest.raises(FramingError, match="204"):
        response_framing(cl60, has_body=False, method="GET", status=204)
    with pytest.raises(FramingError, match="interim"):
        response_framing((), has_body=False, method="GET", status=101)
    with pytest.raises(FramingError, match="invalid"):
        response_framing(h(("Content-Length", "x")), has_body=False, method="HEAD", status=200)


def test_body_counter() -> None:
    counter = BodyCounter(10)
    assert counter.data(4) is None and counter.data(6) is None and counter.ended() is None
    short = BodyCounter(10)
    assert short.data(9) is None
    assert "9 of" in (short.ended() or "")
    assert "longer" in (BodyCounter(10).data(11) or "")
