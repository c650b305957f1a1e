"""Fixtures for the tests of joined gateways: gateways with a fast fallback ladder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from gateway.config import Role
from gateway.core.ladder import LadderSettings
from gateway.server import Gateway
from tests.helpers import FAST_LADDER, loopback_gateway


class StartGateway(Protocol):
    async def __call__(
        self, role: Role, settings: dict[str, Any] | None = None, *, ladder: LadderSettings = ...
    ) -> Gateway: ...


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Start in-process gateways on 127.0.0.1:0 with ``FAST_LADDER`` back-off; stop them after."""
    gateways: list[Gateway] = []

    async def start(
        role: Role, settings: dict[str, Any] | None = None, *, ladder: LadderSettings = FAST_LADDER
    ) -> Gateway:
        gateway = loopback_gateway(role, {"shutdown_grace": 2.0, **(settings or {})}, ladder=ladder)
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in reversed(gateways):
        async with asyncio.timeout(15):
            await gateway.stop()
