"""Stream heads as HTTP: decoded fields, our own framing, targets kept under the upstream.

Shared by both roles and the relay. A tunnelled head arrives as raw
``(name, value)`` byte pairs; it becomes a ``CIMultiDict`` once, is rewritten
by the same hop rules as a plain request, and leaves with framing fields the
receiving side set from what it checked (``framing.py``), never the peer's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict
from yarl import URL

from gateway.core.headers import HOP_BY_HOP
from gateway.core.targets import BadTarget, join_upstream
from gateway.core.tunnel.events import Headers
from gateway.core.tunnel.frames import MAX_REASON_BYTES

__all__ = [
    "decode_headers",
    "decode_stripped",
    "pairs",
    "set_framing",
    "short",
    "text",
    "under_upstream",
]


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def decode_headers(raw: Headers) -> CIMultiDict[str]:
    return CIMultiDict((text(name), text(value)) for name, value in raw)


def decode_stripped(raw: Headers) -> tuple[CIMultiDict[str], str | None]:
    """``raw`` decoded without its hop-by-hop fields, and the first ``Host`` it had.

    The fields of ``strip_hop_by_hop(decode_headers(raw))`` in the same order,
    built in one pass over the bytes (names compared as bytes where they are
    ASCII): a replayed head is rebuilt once per gateway, not twice.
    """
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    host: str | None = None
    listed: list[str] = []
    for name, value in raw:
        lower = name.lower() if name.isascii() else _unicode_lower(name)
        if lower in _HOP_BY_HOP:
            if lower == b"connection":
                listed.append(value.decode("utf-8", "surrogateescape"))
            continue
        decoded = value.decode("utf-8", "surrogateescape")
        if host is None and lower == b"host":
            host = decoded
        add(name.decode("utf-8", "surrogateescape"), decoded)
    for names in listed:  # the fields a Connection header names (a poll-ahead mark) go too
        for token in names.split(","):
            if token := token.strip():
                out.popall(token, None)  # case-insensitive as str.lower(), like the rule
    return out, host


def _unicode_lower(name: bytes) -> bytes:
    return text(name).lower().encode("utf-8", "surrogateescape")


#: ``HOP_BY_HOP`` as the bytes a tunnelled head carries.
_HOP_BY_HOP: Final = frozenset(name.encode() for name in HOP_BY_HOP)


def pairs(headers: CIMultiDict[str]) -> Iterable[tuple[str, str]]:
    return headers.items()


def short(reason: str) -> str:
    """``reason`` cut to what a RESET/CLOSE frame carries, on a character boundary."""
    data = reason.encode("utf-8", "replace")
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def set_framing(headers: CIMultiDict[str], length: int | None) -> None:
    """Replace whatever framing fields ``headers`` carry with our own checked ``length``.

    ``None``: no ``Content-Length``; aiohttp sends a streamed body chunked (or
    a ``Content-Length: 0`` for a body-less POST), a body-less GET as is.
    """
    headers.popall("Content-Length", None)
    headers.popall("Transfer-Encoding", None)
    if length is not None:
        headers["Content-Length"] = str(length)


def under_upstream(upstream: URL, target: bytes) -> URL | None:
    """``target`` below ``upstream``'s base path, or None if it would leave that origin."""
    try:
        return join_upstream(upstream, target.decode("utf-8", "surrogateescape"))
    except BadTarget:
        return None
