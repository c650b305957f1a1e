"""Small helpers shared by test modules (fixtures live in conftest.py).

Child processes (gateways, proxies) and free ports are in ``tests.processes``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config import build_config
from gateway.server import Gateway


@contextlib.asynccontextmanager
async def running_gateway(role: str = "client", **settings: object) -> AsyncIterator[Gateway]:
    """An in-process gateway on 127.0.0.1:0 for the body of an ``async with``.

    Shutdown grace defaults to 1 s so a test's teardown never waits long.
    """
    settings = {"listen": "127.0.0.1:0", "shutdown_grace": 1.0, **settings}
    config = build_config(role, settings)  # type: ignore[arg-type]
    async with Gateway(config) as gateway:
        yield gateway


async def until(
    predicate: Callable[[], bool], what: str = "the condition", timeout: float = 15.0
) -> None:
    """Poll until ``predicate()`` holds; fail the test naming ``what`` if it never does."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")
