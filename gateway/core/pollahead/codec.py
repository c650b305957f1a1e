"""The payloads of PUSH tunnel frames: what the two gateways say about predictions.

A PUSH frame is ``[11, id, op, payload]`` (``core/tunnel/frames.py``); the
tunnel core checks its shape and reports it, this module owns ``payload``.
Server gateway -> client gateway:

* ``ANNOUNCE`` (id: the stream whose answer is being sent): "after this
  answer I can issue the poll ``Descriptor``"; nothing is issued before the
  client gateway's ``ACCEPT``.
* ``ANSWER`` (id: push id): the origin's answer to a predicted poll, maybe
  with the next ``Descriptor`` of the chain (already committed: it will be
  issued or ``VOID``-ed); a body over one frame continues in ``PART``.
* ``VOID`` (id: push id): an accepted prediction that was never issued.

Client gateway -> server gateway: ``ACCEPT`` (go ahead), ``USED`` (an answer
reached its client: the chain may run one further), ``STOP`` (end the chain).

Decoding is for hostile input: every field is type-checked and anything else
is ``None`` (the glue ignores the frame, the session is not harmed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import msgpack

__all__ = [
    "MAX_PART",
    "AnswerHead",
    "Descriptor",
    "Op",
    "decode_answer",
    "decode_descriptor",
    "decode_part",
    "encode_answer",
    "encode_descriptor",
    "encode_part",
]

#: Body bytes one ANSWER or PART frame carries (the frame's payload stays under 1 MiB).
MAX_PART: Final = 512 * 1024
_MAX_PARAMS: Final = 16
_MAX_TEXT: Final = 8 * 1024


class Op(IntEnum):
    ANNOUNCE = 1
    ANSWER = 2
    PART = 3
    VOID = 4
    ACCEPT = 5
    USED = 6
    STOP = 7


#: Ops the server gateway sends and the client gateway sends.
DOWN_OPS: Final = frozenset({Op.ANNOUNCE, Op.ANSWER, Op.PART, Op.VOID})
UP_OPS: Final = frozenset({Op.ACCEPT, Op.USED, Op.STOP})


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A predicted poll as the client gateway matches it: which request, and for how long."""

    push_id: int
    method: str
    target: bytes
    ignored: tuple[str, ...]
    param: str | None
    hold: float


@dataclass(frozen=True, slots=True)
class AnswerHead:
    push_id: int
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    more: bool
    next: Descriptor | None


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, max_bin_len=1 << 20, max_str_len=_MAX_TEXT, max_array_len=1024
        )
    except Exception:  # msgpack raises a handful of types on bad input: all mean "ignore it"
        return None


def _descriptor_fields(d: Descriptor) -> list[Any]:
    return [d.push_id, d.method, d.target, list(d.ignored), d.param, d.hold]


def encode_descriptor(d: Descriptor) -> bytes:
    return _pack(_descriptor_fields(d))


def _descriptor(raw: Any) -> Descriptor | None:
    if type(raw) is not list or len(raw) != 6:
        return None
    push_id, method, target, ignored, param, hold = raw
    ok = (
        type(push_id) is int
        and 0 < push_id < 2**62
        and type(method) is str
        and 0 < len(method) <= 32
        and type(target) is bytes
        and target.startswith(b"/")
        and type(ignored) is list
        and len(ignored) <= _MAX_PARAMS
        and all(type(p) is str for p in ignored)
        and (param is None or type(param) is str)
        and type(hold) is float
        and 0 < hold <= 3600
    )
    if not ok:
        return None
    return Descriptor(push_id, method, target, tuple(ignored), param, hold)


def decode_descriptor(data: bytes) -> Descriptor | None:
    return _descriptor(_unpack(data))


def encode_answer(head: AnswerHead) -> bytes:
    flat = [x for pair in head.headers for x in pair]
    nxt = _descriptor_fields(head.next) if head.next is not None else None
    return _pack([head.status, head.reason, flat, head.body, head.more, nxt])


def decode_answer(push_id: int, data: bytes) -> AnswerHead | None:
    raw = _unpack(data)
    if type(raw) is not list or len(raw) != 6:
        return None
    status, reason, flat, body, more, nxt = raw
    ok = (
        type(status) is int
        and 100 <= status <= 999
        and type(reason) is str
        and type(flat) is list
        and len(flat) % 2 == 0
        and all(type(x) is bytes for x in flat)
        and type(body) is bytes
        and type(more) is bool
    )
    following = _descriptor(nxt) if nxt is not None else None
    if not ok or (nxt is not None and following is None):
        return None
    headers = tuple(zip(flat[::2], flat[1::2], strict=True))
    return AnswerHead(push_id, status, reason, headers, body, more, following)


def encode_part(chunk: bytes, more: bool) -> bytes:
    return _pack([chunk, more])


def decode_part(data: bytes) -> tuple[bytes, bool] | None:
    raw = _unpack(data)
    if type(raw) is list and len(raw) == 2 and type(raw[0]) is bytes and type(raw[1]) is bool:
        return raw[0], raw[1]
    return None
