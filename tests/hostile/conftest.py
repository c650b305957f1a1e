"""Fixtures of the hostile-peer suite: a recording origin, a forbidden host, error capture.

The origin itself is ``origin.py`` (shared with ``bench/attacks.py``).
The suite attacks running gateways the way issue 7 did (see
``bench/attacks.py`` for the same attacks at full scale, with figures):
``peer.py`` speaks the hop protocol by hand, raw sockets speak HTTP badly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.conftest import MakeOrigin
from tests.hostile.origin import Origin


@pytest.fixture
async def origin(make_origin: MakeOrigin) -> Origin:
    o = Origin("upstream")
    o.url = await make_origin(o.app())
    return o


@pytest.fixture
async def evil(make_origin: MakeOrigin) -> Origin:
    """A host no gateway may ever connect to."""
    o = Origin("evil")
    o.url = await make_origin(o.app())
    return o


class ErrorRecords(logging.Handler):
    """ERROR records of the gateway's loggers and aiohttp's server logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in self.records)


@pytest.fixture
def gateway_errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    names = ("hopgate", "aiohttp.server", "aiohttp.web", "asyncio")
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)
