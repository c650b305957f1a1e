"""Checking what the I/O layer hands the tunnel (heads, codes, reasons); heads to wire form.

Heads cross the tunnel byte for byte: a target, reason or header given as
``str`` is encoded UTF-8 with surrogateescape, which undoes how aiohttp
decoded it. Everything here raises TunnelUsageError: a bad argument is a bug
of the caller, never something the peer did.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.core.tunnel.errors import TunnelUsageError
from gateway.core.tunnel.events import Headers
from gateway.core.tunnel.frames import (
    MAX_HEADER_FIELDS,
    MAX_METHOD_LENGTH,
    MAX_PROTOCOL_LENGTH,
    MAX_PROTOCOLS,
    MAX_REASON_BYTES,
)

__all__ = [
    "HeaderInput",
    "check_close_code",
    "check_method",
    "check_reset_code",
    "check_status",
    "check_subprotocol",
    "checked_protocols",
    "checked_reason",
    "encode_head",
    "header_pairs",
]

#: What the API accepts for headers: (name, value) pairs; str is encoded
#: UTF-8 with surrogateescape, which undoes how aiohttp decoded it.
HeaderInput = Iterable[tuple[bytes | str, bytes | str]]


def encode_head(
    first: bytes | str, headers: HeaderInput, max_header_bytes: int
) -> tuple[bytes, list[bytes]]:
    """A head's target/reason and flat header list in wire form, within our limits."""
    raw = _octets(first, "target/reason")
    flat: list[bytes] = []
    size = len(raw)
    try:
        for name, value in headers:
            # bytes (a head as it was read) and str (aiohttp's text) inline: no call per field
            if type(name) is bytes and type(value) is bytes:
                flat += (name, value)
            elif type(name) is str and type(value) is str:
                flat += (
                    name.encode("utf-8", "surrogateescape"),
                    value.encode("utf-8", "surrogateescape"),
                )
            else:
                flat += (_octets(name, "header name"), _octets(value, "header value"))
    except (TypeError, ValueError) as exc:
        raise TunnelUsageError("headers must be (name, value) pairs") from exc
    size += sum(map(len, flat))
    if size > max_header_bytes or len(flat) > 2 * MAX_HEADER_FIELDS:
        raise TunnelUsageError(f"head of {size} bytes/{len(flat) // 2} fields over the limit")
    return raw, flat


def _octets(value: object, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TunnelUsageError(f"{what} must be bytes or str, not {type(value).__name__}")


def header_pairs(flat: list[bytes]) -> Headers:
    """A received flat header list as the (name, value) pairs events carry.

    One iterator zipped with itself: no two slice copies per head (a third of the cost).
    """
    fields = iter(flat)
    return tuple(zip(fields, fields, strict=True))  # (odd length: ValueError, as before)


def check_method(method: object) -> None:
    if not isinstance(method, str) or not (
        0 < len(method) <= MAX_METHOD_LENGTH and method.isascii()
    ):
        raise TunnelUsageError(f"bad method {method!r:.40}")


def check_status(status: object) -> None:
    if type(status) is not int or not 100 <= status <= 999:
        raise TunnelUsageError(f"bad status {status!r:.20}")


def checked_protocols(protocols: Sequence[str]) -> list[str]:
    """The subprotocols a WebSocket OPEN offers, as the list the frame carries."""
    offered = list(protocols)
    if len(offered) > MAX_PROTOCOLS or not all(
        isinstance(p, str) and 0 < len(p) <= MAX_PROTOCOL_LENGTH for p in offered
    ):
        raise TunnelUsageError("bad subprotocol list")
    return offered


def check_subprotocol(protocol: str | None) -> None:
    if protocol is not None and not (
        isinstance(protocol, str) and 0 < len(protocol) <= MAX_PROTOCOL_LENGTH
    ):
        raise TunnelUsageError(f"bad subprotocol {protocol!r:.40}")


def check_close_code(code: object) -> None:
    if type(code) is not int or not 1000 <= code <= 4999:
        raise TunnelUsageError(f"bad close code {code!r:.20}")


def check_reset_code(code: object) -> None:
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise TunnelUsageError(f"bad reset code {code!r:.20}")


def checked_reason(reason: str) -> str:
    """A CLOSE/RESET reason within the frame's limit, made valid UTF-8."""
    if not isinstance(reason, str) or len(reason.encode("utf-8", "replace")) > MAX_REASON_BYTES:
        raise TunnelUsageError(f"reason must be a str of at most {MAX_REASON_BYTES} bytes")
    return reason.encode("utf-8", "replace").decode("utf-8")
