"""TaskSet retrieves how its tasks ended: no "Task exception was never retrieved" per session."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from gateway.transports.tasks import TaskSet


async def ended(tasks: TaskSet, coro: Any) -> None:
    """Spawn ``coro`` and let it end without anyone awaiting it; then drop every reference."""
    task = tasks.spawn(coro, name="hop-ws-test")
    for _ in range(100):
        if task.done():
            break
        await asyncio.sleep(0.001)
    assert task.done() and len(tasks) == 0
    del task
    gc.collect()


async def test_a_connection_that_went_away_is_retrieved_and_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:

        async def write_after_close() -> None:
            raise ConnectionResetError("Cannot write to closing transport")

        with caplog.at_level(logging.DEBUG, logger="hopgate"):
            for _ in range(20):  # as many sessions as stop at once
                await ended(TaskSet(), write_after_close())
    finally:
        loop.set_exception_handler(previous)
    assert unretrieved == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_bug_in_a_task_is_still_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def bug() -> None:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR, logger="hopgate"):
        await ended(TaskSet(), bug())
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "hop-ws-test failed" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
