"""Bounded waits for tests and benches: every wait here ends within its ``timeout``.

* ``eventually(predicate, timeout)`` polls a condition (a plain or an async
  callable) and says whether it came true in time: for a bench that reports
  what happened, or a test that asserts with its own message;
* ``woken_until(changed, predicate, timeout)`` does the same without
  polling, re-checking each time an ``asyncio.Event`` that the code under
  watch sets on every change;
* ``tests.helpers.until`` is ``eventually`` that fails the test, naming what
  it waited for.

Imports nothing from ``gateway``, like ``tests.processes``: the benches that
run another source tree's gateway use it too.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

#: A condition: ``lambda: x == 1``, or an ``async def`` that looks something up.
Predicate = Callable[[], bool | Awaitable[bool]]


async def holds(predicate: Predicate) -> bool:
    result = predicate()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def eventually(predicate: Predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` every ``interval`` s; False if it did not hold within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not await holds(predicate):
                await asyncio.sleep(interval)
    except TimeoutError:
        return False
    return True


async def woken_until(
    changed: asyncio.Event, predicate: Callable[[], bool], timeout: float
) -> bool:
    """Wait until ``predicate()``, re-checked whenever ``changed`` is set; False on timeout."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        return False
    return True
