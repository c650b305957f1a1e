"""Request targets (RFC 9112 section 3.2): one deliberate answer for each form.

Pure functions over strings and ``yarl`` URLs, no I/O, so every odd target
can be tested without a server.

A request line names its target in one of four forms, and which form it is
decides who may answer:

* origin-form ``/path?query``: a request for the upstream (or for this
  gateway's own ``/.hopgate/`` paths);
* absolute-form ``scheme://authority/path``: a request for a forward proxy
  (the scheme is case-insensitive, ``HTTP://`` is ``http://``); only
  ``http`` and ``https`` exist here;
* authority-form ``host:port``: ``CONNECT`` only;
* asterisk-form ``*``: ``OPTIONS *`` only, a question about the server
  itself.

Anything else (``m://x``, ``evil:80`` on a ``GET``, an empty target, control
characters) is refused with the reason.  The URL sent upstream is built from
components with ``URL.build`` (the upstream's scheme and authority, its base
path joined with the client's path, the client's query) and then checked to
still name the upstream's scheme, host and port, so no target, however
crafted, can move the request to another host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from yarl import URL

#: Whitespace, control characters, DEL and ``#`` (a fragment never belongs in a target).
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f#]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT = re.compile(r"[0-9]{1,5}")
#: A ``.`` or ``..`` path segment, also percent-encoded (``%2e``) or between
#: encoded slashes or backslashes, which some origins decode before resolving.
_DOT_SEGMENT = re.compile(r"(?:^|/|\\|%2f|%5c)(?:\.|%2e){1,2}(?=$|/|\\|%2f|%5c)", re.IGNORECASE)
#: Longest request target looked at; aiohttp's own line limit is 8190 bytes.
MAX_TARGET = 8190


class BadTarget(ValueError):
    """A request target no answer fits; the message says why (sent with a ``400``)."""


@dataclass(frozen=True, slots=True)
class OriginForm:
    """``/path?query`` exactly as the client encoded it."""

    path_qs: str


@dataclass(frozen=True, slots=True)
class AbsoluteForm:
    """``http(s)://authority/path?query``, scheme and host lower-cased, path as sent."""

    url: URL

    @property
    def origin(self) -> str:
        """``scheme://authority``: the key a forward proxy files this origin under."""
        return f"{self.url.scheme}://{self.url.raw_authority}"


@dataclass(frozen=True, slots=True)
class AuthorityForm:
    """``host:port`` of a ``CONNECT``."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AsteriskForm:
    """``OPTIONS *``."""


Target = OriginForm | AbsoluteForm | AuthorityForm | AsteriskForm


def parse_target(method: str, raw: str) -> Target:
    """The form of ``raw`` for a request with ``method``; ``BadTarget`` if none fits."""
    if not raw:
        raise BadTarget("empty request target")
    if len(raw) > MAX_TARGET:
        raise BadTarget(f"request target longer than {MAX_TARGET} characters")
    if _BAD_CHARS.search(raw):
        raise BadTarget("request target contains whitespace, control characters or '#'")
    if method == "CONNECT":
        host, port = parse_authority(raw)
        return AuthorityForm(host, port)
    if raw == "*":
        if method != "OPTIONS":
            raise BadTarget(f"'*' is a target for OPTIONS only, not {method[:20]}")
        return AsteriskForm()
    if raw.startswith("/"):
        return OriginForm(raw)
    return AbsoluteForm(parse_absolute(raw))


def parse_authority(raw: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` of a ``CONNECT`` request line."""
    example = "e.g. CONNECT example.com:443"
    host, sep, port_text = raw.rpartition(":")
    if "@" in raw or "/" in raw or (sep and not host):
        raise BadTarget(f"CONNECT target {raw[:100]!r} is not host:port ({example})")
    if not sep or raw.endswith("]"):
        raise BadTarget(f"CONNECT target {raw[:100]!r} has no port ({example})")
    port = parse_port(port_text)
    if port is None:
        raise BadTarget(f"CONNECT target {raw[:100]!r}: port must be 1-65535 ({example})")
    try:
        url = URL.build(scheme="http", host=_unbracket(host), port=port)
    except ValueError:
        raise BadTarget(f"CONNECT target {raw[:100]!r} is not host:port ({example})") from None
    if not url.raw_host:
        raise BadTarget(f"CONNECT target {raw[:100]!r} is not host:port ({example})")
    return url.raw_host, port


def parse_absolute(raw: str) -> URL:
    """An absolute-form target as a URL, scheme and host lower-cased."""
    match = _SCHEME.match(raw)
    if match is None:
        raise BadTarget(
            f"request target {raw[:100]!r} is neither origin-form (/path) "
            "nor absolute-form (http://host/path)"
        )
    scheme = match.group(1).lower()
    if scheme not in ("http", "https"):
        raise BadTarget(f"request target scheme {match.group(1)[:20]!r} is not http or https")
    rest = raw[match.end() :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path_qs = rest[:cut], rest[cut:]
    if not authority or "@" in authority:
        raise BadTarget(f"request target {raw[:100]!r} must name a host (and no user)")
    host, port = _split_authority(authority, raw)
    path, _, query = path_qs.partition("?")
    try:
        return URL.build(
            scheme=scheme,
            # ``encoded=True`` takes the host as written: an IPv6 one keeps its brackets.
            host=f"[{host.lower()}]" if ":" in host else host.lower(),
            port=port,
            path=path or "/",
            query_string=query,
            encoded=True,
        )
    except ValueError as exc:
        raise BadTarget(f"request target {raw[:100]!r} is not a valid URL: {exc}") from None


def _split_authority(authority: str, raw: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise BadTarget(f"request target {raw[:100]!r}: missing ']' in the host")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadTarget(f"request target {raw[:100]!r}: junk after the host")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if sep else None
    if not host:
        raise BadTarget(f"request target {raw[:100]!r} must name a host")
    if port_text is None or port_text == "":
        return host, None
    port = parse_port(port_text)
    if port is None:
        raise BadTarget(f"request target {raw[:100]!r}: port must be 1-65535")
    return host, port


def parse_port(text: str) -> int | None:
    """A TCP port from ASCII digits only (``str.isdigit`` also accepts ``²``), else None."""
    if not _PORT.fullmatch(text):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def join_upstream(upstream: URL, path_qs: str) -> URL:
    """The URL for origin-form ``path_qs`` under ``upstream``, percent-encoding kept as sent.

    The upstream's base path (``http://v/app`` -> ``/app``) prefixes the
    client's path, and a client's path under one has no dot-segments, plain
    or encoded, so an origin that resolves them cannot be led outside it.
    Built from components, never by pasting strings, and checked: whatever
    the path holds, the result names the upstream's own scheme, host and
    port or ``BadTarget`` is raised.
    """
    if not path_qs.startswith("/"):
        raise BadTarget(f"request target {path_qs[:100]!r} is not origin-form")
    path, _, query = path_qs.partition("?")
    base = upstream.raw_path.rstrip("/")
    if base and _DOT_SEGMENT.search(path):
        # An origin that resolves "/app/../admin" would serve what is outside the base.
        raise BadTarget(
            f"request target {path_qs[:100]!r} has a '.' or '..' segment, which could "
            f"leave the upstream's base path {base}"
        )
    try:
        url = URL.build(
            scheme=upstream.scheme,
            authority=upstream.raw_authority,
            path=base + path,
            query_string=query,
            encoded=True,
        )
    except ValueError as exc:
        raise BadTarget(f"request target {path_qs[:100]!r} is not a valid path: {exc}") from None
    if (url.scheme, url.raw_host, url.port) != (upstream.scheme, upstream.raw_host, upstream.port):
        raise BadTarget(f"request target {path_qs[:100]!r} would leave the upstream")
    return url


def names_this_listener(url: URL, *, tls: bool, local: tuple[str, int] | None) -> bool:
    """Whether absolute-form ``url`` names the address the client connected to.

    RFC 9112 3.2.2: a server must accept absolute-form addressed to itself.
    "Itself" is what we can know for sure, the socket's own address and port
    (``localhost`` for a loopback socket), not a ``Host`` the peer chose.
    """
    if local is None or url.scheme != ("https" if tls else "http") or url.port != local[1]:
        return False
    host = (url.raw_host or "").lower()
    address = local[0].lower()
    if address.startswith("::ffff:"):
        address = address[7:]
    loopback = address in ("127.0.0.1", "::1") or address.startswith("127.")
    return host == address or (host == "localhost" and loopback)
