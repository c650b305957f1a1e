"""Discovery: how a gateway learns that its next hop is a gateway too.

Theory of operation
-------------------
Two signals, both free for a legacy peer:

1. **The opt-in note** (seed 000).  A gateway forwarding ordinary HTTP adds a
   ``Hopgate`` request header and names it in ``Connection``, which makes it
   hop-by-hop: a compliant intermediary drops it, a legacy origin ignores
   it.  A gateway that receives the mark answers with its own hop-by-hop
   ``Hopgate`` response header saying "I can upgrade, sessions live here".
   No extra round trip; nothing the legacy peer sees changes except one
   header it ignores.

2. **The well-known path**.  A compliant reverse proxy (nginx, a cloud load
   balancer) in front of the sidecar drops both notes, so a client gateway
   configured with ``--upstream`` also asks ``GET /.hopgate/hello?nonce=N``
   once when it starts (and again after a long back-off).  An end-to-end
   path survives any proxy.  The answer must contain a proof computed from
   the nonce, so a legacy origin that answers ``200`` to everything, or one
   that echoes the request back, is never taken for a gateway (seed 001).

Neither signal is trusted on its own: a note can leak past a non-compliant
intermediary and a proof only shows *something* computed it.  What decides
is the session handshake that follows (subprotocol echo plus session
HELLO, see ``gateway.core.session``); discovery only says where to try.

This module is pure (no I/O) so both edges and the tests share one
definition of the wire format.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

PROTOCOL_VERSION = 1
MARK_HEADER = "Hopgate"
HELLO_PATH = "/.hopgate/hello"
DEFAULT_SESSION_PATH = "/.hopgate/session"
_PROOF_LABEL = b"hopgate-hello-v1:"
_MAX_NOTE = 512

HeadersIn = CIMultiDict[str] | CIMultiDictProxy[str]

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


@dataclass(frozen=True, kw_only=True)
class Note:
    """What a gateway says about itself: protocol version and where sessions live."""

    version: int
    session_path: str


def add_mark(headers: CIMultiDict[str]) -> None:
    """Mark a request we forward as coming from a gateway (hop-by-hop)."""
    headers[MARK_HEADER] = f"v={PROTOCOL_VERSION}"
    _list_in_connection(headers)


def has_mark(headers: HeadersIn) -> bool:
    """Did the previous hop say it is a gateway?"""
    return MARK_HEADER in headers


def add_note(headers: CIMultiDict[str], session_path: str = DEFAULT_SESSION_PATH) -> None:
    """Answer a marked request: "I am a gateway, open sessions at this path"."""
    headers[MARK_HEADER] = format_note(Note(version=PROTOCOL_VERSION, session_path=session_path))
    _list_in_connection(headers)


def format_note(note: Note) -> str:
    return f'v={note.version}; session="{note.session_path}"'


def note_from(headers: HeadersIn) -> Note | None:
    """The note in ``headers``, or ``None`` if absent, malformed or not for us."""
    value = headers.get(MARK_HEADER)
    return parse_note(value) if value is not None else None


def parse_note(value: str) -> Note | None:
    """Parse ``v=1; session="/path"``; anything odd yields ``None``, never an error.

    Header values come from the network, so an unusable note is treated as
    no note at all: the worst a bad one can do is cost a failed upgrade
    attempt, which the verified handshake catches.
    """
    if len(value) > _MAX_NOTE:
        return None
    params: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        match = _PARAM.fullmatch(part)
        if match is None:
            return None
        key, raw = match.group(1).lower(), match.group(2)
        params[key] = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
    if params.get("v") != str(PROTOCOL_VERSION):  # compared as text: ASCII digits only
        return None
    # The mark is ``v=1`` alone; only a note names the session path.  Insisting
    # on it means an origin that echoes request headers back never looks like
    # a gateway's note.
    path = params.get("session")
    if path is None:
        return None
    if not path.startswith("/") or path.startswith("//") or any(c in path for c in "?#\\ \t"):
        return None
    return Note(version=PROTOCOL_VERSION, session_path=path)


def hello_proof(nonce: str) -> str:
    """What a gateway answers to ``GET /.hopgate/hello?nonce=...``.

    Not a secret: it only shows the answer was computed by something that
    knows the protocol, which an echoing or catch-all legacy server is not.
    """
    return hashlib.sha256(_PROOF_LABEL + nonce.encode()).hexdigest()


def hello_body(nonce: str, session_path: str = DEFAULT_SESSION_PATH) -> dict[str, object]:
    return {
        "hopgate": PROTOCOL_VERSION,
        "proof": hello_proof(nonce),
        "session": session_path,
    }


def check_hello(body: object, nonce: str) -> Note | None:
    """A ``Note`` if ``body`` (decoded JSON) is a valid answer to ``nonce``."""
    if not isinstance(body, dict):
        return None
    if body.get("hopgate") != PROTOCOL_VERSION or body.get("proof") != hello_proof(nonce):
        return None
    path = body.get("session", DEFAULT_SESSION_PATH)
    if not isinstance(path, str):
        return None
    return parse_note(format_note(Note(version=PROTOCOL_VERSION, session_path=path)))


def _list_in_connection(headers: CIMultiDict[str]) -> None:
    tokens = [
        t.strip()
        for value in headers.getall("Connection", ())
        for t in value.split(",")
        if t.strip()
    ]
    if MARK_HEADER.lower() not in {t.lower() for t in tokens}:
        tokens.append(MARK_HEADER)
    headers.popall("Connection", None)
    headers["Connection"] = ", ".join(tokens)
