"""Message framing of tunnelled HTTP: what a head declares against what the stream carries.

A tunnel stream delimits a body itself (DATA frames, then END), so a head's
``Content-Length`` / ``Transfer-Encoding`` are only claims by the peer. They
matter the moment the message leaves the tunnel as HTTP/1.1: a gateway that
passed a peer's ``Content-Length: 60`` on with no body would make the origin
read the next request on that pooled connection as the body (request
smuggling), and a response whose length lies would desynchronise the
client's connection the same way.

So every gateway that turns a stream back into HTTP/1.1 (the answering side
for requests, the opening side for responses, a relay for both) checks the
claim here, rebuilds the framing itself and counts the body:

* a head must declare at most one length (repeated fields only if
  identical), ASCII digits only, at most :data:`MAX_LENGTH_DIGITS`; a
  ``Transfer-Encoding`` may only be ``chunked`` and never beside a length;
* a stream without body may declare no body (length 0 at most), except a
  response that has none by definition (to HEAD, 304), whose length
  describes the representation;
* a declared length must equal the DATA bytes: :class:`BodyCounter` says
  when a chunk would pass it or the END comes short, and the caller resets
  the stream (and drops the connection that carried the partial message).

Pure: no I/O, used by the glue (``gateway/glue/``: driver, opener, answerer, relay).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.core.tunnel.events import Headers

__all__ = [
    "MAX_LENGTH_DIGITS",
    "BodyCounter",
    "Framing",
    "FramingError",
    "request_framing",
    "response_framing",
]

#: Up to 10**15 - 1 bytes (about a petabyte): more digits are an attack, not a body.
MAX_LENGTH_DIGITS: Final = 15

_LENGTH: Final = re.compile(rb"[0-9]{1,%d}" % MAX_LENGTH_DIGITS)
_OWS: Final = b" \t"


class FramingError(ValueError):
    """The head's framing is invalid or contradicts the stream; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Framing:
    """How the message is framed once it leaves the tunnel.

    ``length``: the declared and checked ``Content-Length`` to send (None:
    none; the HTTP writer chunks or closes). ``counted``: whether the body's
    bytes must add up to ``length`` (False for a response that has no body by
    definition).
    """

    length: int | None
    counted: bool


def _declared(headers: Headers) -> tuple[int | None, bool]:
    """(declared length or None, chunked?) of ``headers``; FramingError if invalid."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.add(value.strip(_OWS))
        elif lowered == b"transfer-encoding":
            codings += [c.strip(_OWS).lower() for c in value.split(b",")]
    length = None
    if lengths:
        if len(lengths) > 1:
            raise FramingError("conflicting Content-Length fields")
        [raw] = lengths
        if not _LENGTH.fullmatch(raw):
            raise FramingError(f"invalid Content-Length {raw[:20]!r}")
        length = int(raw)
    chunked = bool(codings)
    if chunked and codings != [b"chunked"]:
        raise FramingError(f"unsupported Transfer-Encoding {b', '.join(codings)[:40]!r}")
    if chunked and length is not None:
        raise FramingError("both Content-Length and Transfer-Encoding")
    return length, chunked


def request_framing(headers: Headers, *, has_body: bool) -> Framing:
    """The framing of a tunnelled request; FramingError if its head lies about the stream."""
    length, chunked = _declared(headers)
    if not has_body and (chunked or length):
        declared = "chunked" if chunked else f"Content-Length {length}"
        raise FramingError(f"request declares a body ({declared}) but its stream has none")
    return Framing(length, counted=has_body)


def response_framing(headers: Headers, *, has_body: bool, method: str, status: int) -> Framing:
    """The framing of a tunnelled response to ``method``; FramingError if its head lies."""
    if status < 200:
        raise FramingError(f"interim status {status} as a final response")
    length, chunked = _declared(headers)
    if method == "HEAD" or status == 304:
        return Framing(length, counted=False)  # the length of what a GET would get
    if status == 204:
        if length or chunked or has_body:
            raise FramingError("204 response with a body")
        return Framing(None, counted=False)
    if not has_body and (chunked or length):
        declared = "chunked" if chunked else f"Content-Length {length}"
        raise FramingError(f"response declares a body ({declared}) but its stream has none")
    return Framing(length, counted=has_body)


class BodyCounter:
    """Counts a body's bytes against its declared length."""

    __slots__ = ("declared", "received")

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.received = 0

    def data(self, n: int) -> str | None:
        """Count a chunk of ``n`` bytes; a reason to reset if it passes the length."""
        self.received += n
        if self.received > self.declared:
            return f"body longer than its Content-Length {self.declared}"
        return None

    def ended(self) -> str | None:
        """The body ended; a reason to reset if it is short of the length."""
        if self.received < self.declared:
            return f"body ended after {self.received} of its Content-Length {self.declared} bytes"
        return None
