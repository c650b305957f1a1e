"""The next request of a poll, read from the answer to the previous one.

A prediction is only made from an answer that says how to continue: a 200
without ``Set-Cookie`` (a new cookie makes the client's next request
unpredictable), with a cursor where the rule says (generic rules), or an
Engine.IO payload that does not close the session (the ``engineio``
dialect, whose next poll is the same request: the cache-buster ``t`` is
ignored when matching). Anything unreadable means no prediction, which is
always safe: the client's next poll then travels as it does today.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote_plus

from gateway.core.pollahead.rules import Rule, split_target

__all__ = ["MAX_PARSED_BODY", "Answer", "engineio_closes", "next_target", "with_param"]

#: Largest answer body whose JSON is read for a cursor (a bigger one: no prediction).
MAX_PARSED_BODY: Final = 1024 * 1024
_EIO_CLOSE: Final = "1"
_EIO_RECORD_SEPARATOR: Final = "\x1e"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the origin answered a poll: status, headers (name, value), whole body."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: bytes


def next_target(rule: Rule, target: bytes, answer: Answer) -> bytes | None:
    """The target of the poll that follows ``target`` given ``answer``; None: do not predict."""
    if answer.status != 200:
        return None
    if any(name.lower() == "set-cookie" for name, _ in answer.headers):
        return None
    if rule.dialect == "engineio":
        version = dict(split_target(target)[1]).get("EIO", "4")
        return None if engineio_closes(answer.body, version) else target
    cursor = _cursor(rule, answer)
    if cursor is None or rule.param is None:
        return None
    return with_param(target, rule.param, cursor)


def _cursor(rule: Rule, answer: Answer) -> str | None:
    source = rule.source
    if source is None:
        return None
    if source.kind == "header":
        for name, given in answer.headers:
            if name.lower() == source.name.lower():
                return given or None
        return None
    if len(answer.body) > MAX_PARSED_BODY:
        return None
    try:
        value: object = json.loads(answer.body)
    except (ValueError, RecursionError):
        return None
    for part in source.path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None  # a float, list, null or bool is no cursor a client would send back as is


def with_param(target: bytes, param: str, value: str) -> bytes:
    """``target`` with query parameter ``param`` set to ``value`` (replaced in place or added)."""
    text = target.decode("latin-1")
    path, _, query = text.partition("?")
    encoded = f"{quote(param, safe='')}={quote(value, safe='')}"
    parts = [p for p in query.split("&") if p] if query else []
    out, done = [], False
    for part in parts:
        name = part.partition("=")[0]
        if unquote_plus(name) == param:
            if not done:
                out.append(encoded)
                done = True
            continue
        out.append(part)
    if not done:
        out.append(encoded)
    return (path + "?" + "&".join(out)).encode("latin-1")


def engineio_closes(body: bytes, version: str = "4") -> bool:
    """Whether an Engine.IO polling payload closes the session, or cannot be read (then True).

    v4: packets joined by U+001E; v3: ``<length>:<packet>`` records, or the
    binary form (a 0/1 type byte, length digits, 0xFF). A close packet is
    type ``1``. Unreadable counts as closing: no prediction is the safe side.
    """
    if version == "3" and body[:1] in (b"\x00", b"\x01"):
        return _binary_v3_closes(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    if not text:
        return True
    if version == "3":
        packets = _v3_packets(text)
        if packets is None:
            return True
    else:
        packets = text.split(_EIO_RECORD_SEPARATOR)
    return any(p[:1] == _EIO_CLOSE or not p for p in packets)


def _v3_packets(text: str) -> list[str] | None:
    packets, i = [], 0
    while i < len(text):
        colon = text.find(":", i)
        if colon < 0 or not text[i:colon].isdigit():
            return None
        n = int(text[i:colon])
        packet = text[colon + 1 : colon + 1 + n]
        if len(packet) != n:
            return None
        packets.append(packet)
        i = colon + 1 + n
    return packets


def _binary_v3_closes(body: bytes) -> bool:
    i = 0
    while i < len(body):
        kind = body[i]
        end = body.find(b"\xff", i + 1)
        digits = body[i + 1 : end]
        if kind not in (0, 1) or end < 0 or not digits or any(d > 9 for d in digits):
            return True
        n = int("".join(str(d) for d in digits))
        packet = body[end + 1 : end + 1 + n]
        if len(packet) != n:
            return True
        if kind == 0 and packet[:1] == b"1":
            return True
        i = end + 1 + n
    return False
