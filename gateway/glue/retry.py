"""Whether a tunnelled request may be sent another way, and the exceptions that say so.

:class:`NotSent`: the OPEN provably never left; the caller sends the
request another way (plain HTTP), its first and only delivery.

:class:`Retry`: it left, but may be sent once more on the next session.
Two cases (:func:`retryable`), both for body-less requests only, since a
body already read from the legacy client cannot be read again:

* the peer refused it unprocessed because it had said GOAWAY (it crossed
  the GOAWAY on the wire: ``docs/protocol.md`` section 6a), any method;
* its session died before any answer came (the instance crashed: the
  outcome is unknown), for the methods RFC 9110 section 9.2.2 lets an
  intermediary retry (idempotent ones).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from gateway.core.tunnel.errors import GOING_AWAY, ResetCode
from gateway.core.tunnel.events import StreamReset
from gateway.glue.driver import LINK_CLOSED

__all__ = ["IDEMPOTENT_METHODS", "NotSent", "Retry", "retryable"]

#: RFC 9110 section 9.2.2: an intermediary may retry these when the outcome is unknown.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class NotSent(Exception):
    """The request never left: the caller may send it another way (plain HTTP)."""


class Retry(NotSent):
    """It left, but may be sent once more on a new session (see the module docstring)."""


def retryable(request: web.BaseRequest, reset: StreamReset) -> str | None:
    """Why this reset request may be sent again on a new session, or None."""
    if request.body_exists:
        return None  # its body was (being) read: nothing left to send again
    if reset.remote and reset.code == ResetCode.REFUSED and reset.reason == GOING_AWAY:
        return "refused unprocessed after its GOAWAY"
    lost = reset.code == ResetCode.SESSION_LOST and not reset.remote and reset.reason != LINK_CLOSED
    if lost and request.method in IDEMPOTENT_METHODS:
        return "session lost before the answer (idempotent, no body)"
    return None
