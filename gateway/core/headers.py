"""Header rules for forwarding HTTP one hop (RFC 9110 section 7.6).

Pure functions over multidicts, no I/O: both edges (the server facing legacy
clients and the client facing legacy servers) and the tunnel replay use them,
so the rules live in one place.

Hop-by-hop headers describe *this* connection and must not travel further:
the fixed list below plus every header the ``Connection`` header names.  A
gateway then says it was there (``Via``) and what the origin can no longer
see for itself (``X-Forwarded-For/-Proto/-Host``).
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HeadersIn = CIMultiDict[str] | CIMultiDictProxy[str]

#: Always hop-by-hop (RFC 9110 7.6.1, plus the de-facto ``Proxy-Connection``).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "Proxy-Connection",
    )
)


def connection_tokens(headers: HeadersIn) -> set[str]:
    """Lower-cased field names listed in every ``Connection`` header."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }


def strip_hop_by_hop(headers: HeadersIn, *, keep: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy of ``headers`` without anything that belongs to this hop only.

    ``keep`` names hop-by-hop headers the caller re-creates for the next hop
    itself (never needed by the plain forwarder; the WebSocket pass-through
    lets its client library write ``Upgrade``/``Connection`` anew).
    """
    keep_lower = {k.lower() for k in keep}
    drop = (HOP_BY_HOP | connection_tokens(headers)) - keep_lower
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def via_entry(http_version: tuple[int, int], via_name: str) -> str:
    """``Via`` element for a message received with ``http_version``."""
    major, minor = http_version
    version = f"{major}.{minor}" if major == 1 else str(major)
    return f"{version} {via_name}"


def append_via(headers: CIMultiDict[str], http_version: tuple[int, int], via_name: str) -> None:
    entry = via_entry(http_version, via_name)
    existing = headers.getall("Via", ())
    if existing:
        del headers["Via"]
        headers["Via"] = ", ".join([*existing, entry])
    else:
        headers["Via"] = entry


def add_forwarded_for(
    headers: CIMultiDict[str], *, client_ip: str | None, proto: str, host: str | None
) -> None:
    """Record what the origin cannot see because we stand between.

    ``X-Forwarded-For`` grows by one address per hop.  ``-Proto`` and
    ``-Host`` keep the value set by the first proxy on the path, because that
    is the one that saw the user's request; later hops only fill them in.
    """
    chain = [v.strip() for v in headers.getall("X-Forwarded-For", ()) if v.strip()]
    if client_ip:
        chain.append(client_ip)
    if chain:
        headers.popall("X-Forwarded-For", None)
        headers["X-Forwarded-For"] = ", ".join(chain)
    if "X-Forwarded-Proto" not in headers:
        headers["X-Forwarded-Proto"] = proto
    if host and "X-Forwarded-Host" not in headers:
        headers["X-Forwarded-Host"] = host


def request_headers_for_upstream(
    incoming: HeadersIn,
    *,
    http_version: tuple[int, int],
    via_name: str,
    client_ip: str | None,
    proto: str,
    upstream_host: str | None,
) -> CIMultiDict[str]:
    """Headers to send upstream for a request that arrived with ``incoming``.

    ``upstream_host`` replaces ``Host`` (``None`` keeps the client's, as
    ``--preserve-host`` asks).  ``Expect`` is dropped: the server edge has
    already answered ``100 Continue`` itself, and the body is streamed.
    """
    original_host = incoming.get("Host")
    out = strip_hop_by_hop(incoming)
    rewrite_for_upstream(
        out,
        original_host=original_host,
        http_version=http_version,
        via_name=via_name,
        client_ip=client_ip,
        proto=proto,
        upstream_host=upstream_host,
    )
    return out


def rewrite_for_upstream(
    out: CIMultiDict[str],
    *,
    original_host: str | None,
    http_version: tuple[int, int],
    via_name: str,
    client_ip: str | None,
    proto: str,
    upstream_host: str | None,
) -> None:
    """The rest of :func:`request_headers_for_upstream`, in place, on a copy already stripped.

    ``original_host`` is the first ``Host`` the request came with (read
    before stripping). For a caller that decoded and stripped in one pass.
    """
    out.popall("Expect", None)
    if upstream_host is not None:
        out.popall("Host", None)
        out["Host"] = upstream_host
    add_forwarded_for(out, client_ip=client_ip, proto=proto, host=original_host)
    append_via(out, http_version, via_name)


def response_headers_for_downstream(
    incoming: HeadersIn, *, http_version: tuple[int, int], via_name: str
) -> CIMultiDict[str]:
    """Headers to send back to the client for an upstream response.

    ``Content-Length`` survives so a sized body stays sized; the framing of
    unsized bodies (chunked) is redone by our own HTTP server.
    """
    out = strip_hop_by_hop(incoming)
    append_via(out, http_version, via_name)
    return out
