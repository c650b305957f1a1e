"""Probing a candidate transport: HELLO+PING out, HELLO+PONG back, outside the session's stream.

A probe proves that a new transport reaches the same peer (its HELLO is
checked like any other) and measures its round trip, before the session
moves its traffic there. A probe's frames are not sequenced: a lost one is
simply never answered, and only the last few probes are remembered.
"""

from __future__ import annotations

from typing import Final

import msgpack

from gateway.core.session.errors import RemoteProtocolError
from gateway.core.session.events import ProbeAnswered
from gateway.core.session.frames import FrameDecoder, Hello, Ping, Pong, encode_ping, encode_pong
from gateway.core.session.handshake import Credentials
from gateway.core.session.liveness import Liveness
from gateway.core.session.outbox import Outbox

__all__ = ["Probes", "parse_probe"]

_MAX_PROBES: Final = 8


class Probes:
    """The probes sent and not answered yet (nonce -> when it left), and the probe batches."""

    __slots__ = ("_credentials", "_live", "_outbox", "_packer", "_sent")

    def __init__(
        self, credentials: Credentials, outbox: Outbox, live: Liveness, packer: msgpack.Packer
    ) -> None:
        self._credentials = credentials
        self._outbox = outbox  # builds our HELLO
        self._live = live  # hands out nonces
        self._packer = packer
        self._sent: dict[int, float] = {}

    def request(self, now: float) -> tuple[int, bytes]:
        """HELLO+PING for a candidate transport; returns (nonce, batch)."""
        nonce = self._live.new_nonce()
        sent = self._sent
        if len(sent) >= _MAX_PROBES:
            del sent[next(iter(sent))]
        sent[nonce] = now
        return nonce, self._outbox.hello() + encode_ping(self._packer, nonce)

    def reply(self, batch: bytes | bytearray | memoryview) -> bytes:
        """HELLO+PONG answering a probe batch (whose HELLO must be for this session)."""
        hello, pings = parse_probe(batch, Ping, self._credentials)
        if hello is None or not pings:
            raise RemoteProtocolError("a probe needs a HELLO and a PING")
        return self._outbox.hello() + b"".join(encode_pong(self._packer, n) for n in pings)

    def check(self, batch: bytes | bytearray | memoryview, now: float) -> ProbeAnswered | None:
        """The answer a probe reply batch gives; None if it answers no live probe."""
        hello, pongs = parse_probe(batch, Pong, self._credentials)
        if hello is None:
            raise RemoteProtocolError("a probe reply needs a HELLO")
        for nonce in pongs:
            answered = self.answer(nonce, now)
            if answered is not None:
                return answered
        return None

    def answer(self, nonce: int, now: float) -> ProbeAnswered | None:
        """The answer a PONG gives, if it answers a live probe (which it then ends)."""
        sent_at = self._sent.pop(nonce, None)
        if sent_at is None:
            return None
        self._live.rtt.sample(now - sent_at)  # the candidate's round trip: the path's
        return ProbeAnswered(nonce=nonce, rtt=now - sent_at)

    def clear(self) -> None:
        self._sent.clear()


def parse_probe(
    batch: bytes | bytearray | memoryview,
    kind: type[Ping] | type[Pong],
    credentials: Credentials,
) -> tuple[Hello | None, list[int]]:
    """The checked HELLO and the PING (or PONG) nonces of a probe batch."""
    # A separate decoder: garbage on a candidate must not desync the session's.
    hello: Hello | None = None
    nonces: list[int] = []
    for frame in FrameDecoder().decode(batch):
        if isinstance(frame, Hello):
            credentials.check_hello(frame)
            hello = frame
        elif isinstance(frame, kind):
            nonces.append(frame.nonce)
        else:
            raise RemoteProtocolError(f"unexpected {type(frame).__name__} in a probe")
    return hello, nonces
