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

from gateway.core.headers import HOP_BY_HOP, via_entry
from gateway.core.targets import BadTarget, join_upstream
from gateway.core.tunnel.events import Headers
from gateway.core.tunnel.frames import MAX_REASON_BYTES

__all__ = [
    "decode_headers",
    "decode_stripped",
    "downstream_fields",
    "pairs",
    "replay_pairs",
    "request_pairs",
    "response_pairs",
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
    drop = _dropped(raw)
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    host: str | None = None
    for name, value in raw:
        lower = _lower(name)
        if lower in drop:
            if host is None and lower == b"host":  # a Connection header named it
                host = text(value)
            continue
        decoded = value.decode("utf-8", "surrogateescape")
        if host is None and lower == b"host":
            host = decoded
        add(name.decode("utf-8", "surrogateescape"), decoded)
    return out, host


def replay_pairs(
    raw: Headers,
    *,
    via_name: str,
    client_ip: str | None,
    upstream_host: str | None,
    length: int | None,
) -> list[tuple[bytes, bytes]]:
    """A tunnelled request head as the answering side sends it to its origin, in bytes.

    ``decode_stripped``, ``replay_stripped`` and ``set_framing(length)`` without
    a decode: the lean origin client writes these pairs as they are, so a
    replayed request costs no ``CIMultiDict`` and no text. The peer's framing
    fields never pass; ``length`` is the one the stream was checked against.
    """
    out = request_pairs(
        raw,
        http_version=(1, 1),
        via_name=via_name,
        client_ip=client_ip,
        proto="http",
        upstream_host=upstream_host,
        framing=False,
    )
    if length is not None:
        out.append((b"Content-Length", b"%d" % length))
    return out


def response_pairs(
    raw: Iterable[tuple[bytes, bytes]], http_version: tuple[int, int], via_name: str
) -> list[tuple[bytes, bytes]]:
    """An origin's raw response head as this hop passes it on, without decoding it.

    ``response_headers_for_downstream`` on the bytes aiohttp read (hop-by-hop
    fields and those ``Connection`` names dropped, every ``Via`` merged into
    one at the end with ours): the answering side sends the head into the
    tunnel as bytes, so decoding it to text and encoding it back was waste.
    Names keep the origin's own case (aiohttp's text head spells known ones
    its way).
    """
    drop = _dropped(raw)
    out: list[tuple[bytes, bytes]] = []
    via: list[bytes] = []
    for name, value in raw:
        lower = _lower(name)
        if lower in drop:
            continue
        if lower == b"via":
            via.append(value)
        else:
            out.append((name, value))
    via.append(via_entry(http_version, via_name).encode("utf-8", "surrogateescape"))
    out.append((b"Via", b", ".join(via)))
    return out


def downstream_fields(
    raw: Headers, http_version: tuple[int, int], via_name: str, length: int | None
) -> list[tuple[str, str]]:
    """A tunnelled response head as the fields this hop answers its client with.

    ``decode_stripped``, ``append_via`` and ``set_framing(length)`` in one
    pass over the bytes, as the list ``CIMultiDict.extend`` takes: no
    intermediate multidict per answer. The peer's framing fields never pass.
    """
    drop = _dropped(raw) | _FRAMING
    out: list[tuple[str, str]] = []
    via: list[str] = []
    for name, value in raw:
        lower = _lower(name)
        if lower in drop:
            continue
        if lower == b"via":
            via.append(text(value))
        else:
            out.append((text(name), text(value)))
    via.append(via_entry(http_version, via_name))
    out.append(("Via", ", ".join(via)))
    if length is not None:
        out.append(("Content-Length", str(length)))
    return out


def request_pairs(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    http_version: tuple[int, int],
    via_name: str,
    client_ip: str | None,
    proto: str,
    upstream_host: str | None,
    framing: bool = True,
) -> list[tuple[bytes, bytes]]:
    """``request_headers_for_upstream`` on the bytes a request head was read as.

    The opening side sends a client's head into the tunnel as bytes: built
    from aiohttp's ``raw_headers`` in one pass, a request costs no decode to a
    ``CIMultiDict``, no copy of it and no encode back. Same fields, values
    and order as the text rules give; names keep the client's own case.
    ``framing`` False: without ``Content-Length``/``Transfer-Encoding`` too.
    """
    if framing:
        drop = _REQUEST_DROPPED if upstream_host is None else _REQUEST_DROPPED_HOST
    else:
        drop = _REPLAY_DROPPED if upstream_host is None else _REPLAY_DROPPED_HOST
    listed = _dropped(raw)
    if not listed <= drop:  # a Connection field names more than the hop-by-hop ones
        drop = drop | listed
    out: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    chain: list[bytes] = []
    via: list[bytes] = []
    chain_at: list[int] = []  # where the X-Forwarded-For fields are in ``out``
    has_proto = has_host = False
    lowered = _LOWERED.get
    for name, value in raw:
        lower = lowered(name) or _lower(name)  # (the cache inline: no call per known name)
        if host is None and lower == b"host":
            host = value
        if lower in drop:
            continue
        if lower == b"via":
            via.append(value)
            continue
        if lower == b"x-forwarded-for":
            chain_at.append(len(out))
            link = _strip(value)
            if link:
                chain.append(link)
        elif lower == b"x-forwarded-proto":
            has_proto = True
        elif lower == b"x-forwarded-host":
            has_host = True
        out.append((name, value))
    if upstream_host is not None:
        out.append((b"Host", _octets(upstream_host)))
    if client_ip:
        chain.append(_octets(client_ip))
    if chain:  # else blank X-Forwarded-For fields stay where they were, as the text rule keeps them
        for at in reversed(chain_at):  # (a replayed head has one: the opening side's)
            del out[at]
        out.append((b"X-Forwarded-For", b", ".join(chain)))
    if not has_proto:
        out.append((b"X-Forwarded-Proto", _octets(proto)))
    if host and not has_host:
        out.append((b"X-Forwarded-Host", host))
    via.append(_octets(via_entry(http_version, via_name)))
    out.append((b"Via", b", ".join(via)))
    return out


def _octets(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _strip(value: bytes) -> bytes:
    """``value`` stripped as ``str.strip()`` strips its text."""
    if value.isascii():
        return value.strip(_ASCII_SPACE)
    return _octets(text(value).strip())


#: What ``str.strip()`` strips of an ASCII string (``bytes.strip()`` stops at six of them).
_ASCII_SPACE: Final = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def _listed(value: bytes) -> frozenset[bytes]:
    """The field names a ``Connection`` value lists, lower-cased as the text rule does."""
    if value.isascii():
        tokens = {t.strip(_ASCII_SPACE).lower() for t in value.split(b",")}
    else:
        tokens = {
            t.strip().lower().encode("utf-8", "surrogateescape") for t in text(value).split(",")
        }
    return frozenset(tokens - {b""})


def _dropped(raw: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The lower-cased names a head's hop drops: hop-by-hop ones and those its Connection lists.

    Every tunnelled request has a ``Connection`` field (the poll-ahead mark's),
    nearly always the same value: the set it gives is kept per value
    (bounded as ``_lower``'s names), not split, stripped and joined again.
    """
    drop = _HOP_BY_HOP
    for name, value in raw:
        if name.lower() == b"connection":
            if drop is _HOP_BY_HOP:
                known = _DROPPED_BY.get(value)
                if known is None:
                    known = _HOP_BY_HOP | _listed(value)
                    if len(_DROPPED_BY) < _LOWERED_MAX:
                        _DROPPED_BY[value] = known
                drop = known
            else:
                drop = drop | _listed(value)
    return drop


_DROPPED_BY: dict[bytes, frozenset[bytes]] = {}


def _lower(name: bytes) -> bytes:
    """A field name lower-cased as the text rule does (``str.lower``), as bytes.

    The same few names come with every request, so each is lowered once:
    one dict lookup instead of ``isascii`` and ``lower`` per field. Bounded: past
    ``_LOWERED_MAX`` names (a peer inventing names) new ones are lowered each time.
    """
    lowered = _LOWERED.get(name)
    if lowered is None:
        if name.isascii():
            lowered = name.lower()
        else:
            lowered = text(name).lower().encode("utf-8", "surrogateescape")
        if len(_LOWERED) < _LOWERED_MAX:
            _LOWERED[name] = lowered
    return lowered


_LOWERED: dict[bytes, bytes] = {}
_LOWERED_MAX: Final = 512


#: ``HOP_BY_HOP`` as the bytes a tunnelled head carries.
_HOP_BY_HOP: Final = frozenset(name.encode() for name in HOP_BY_HOP)
#: What a request drops: hop-by-hop fields, ``Expect`` (the edge answered it), and
#: ``Host`` when it is rewritten.
_REQUEST_DROPPED: Final = _HOP_BY_HOP | {b"expect"}
_REQUEST_DROPPED_HOST: Final = _REQUEST_DROPPED | {b"host"}
#: What ``set_framing`` replaces with the checked length.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
#: What a replayed request drops: the request's and the peer's framing fields.
_REPLAY_DROPPED: Final = _REQUEST_DROPPED | _FRAMING
_REPLAY_DROPPED_HOST: Final = _REQUEST_DROPPED_HOST | _FRAMING


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
