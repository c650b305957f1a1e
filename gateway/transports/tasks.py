"""Background tasks that an owner starts, keeps alive and stops together.

asyncio keeps only a weak reference to a running task, so a task nobody
holds can be collected half-way through; and an owner that closes must
stop (or wait for) what it started, or the loop ends with pending tasks.
Sessions, tunnel links, the WebSocket pass-through and the link table all
need exactly this, so they share one small holder instead of each keeping a
set and a ``discard`` callback of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp

__all__ = ["TaskSet"]

log = logging.getLogger("hopgate")

#: How a background task ends when its connection goes: expected, not a bug.
_CONNECTION_ENDS = (ConnectionError, aiohttp.ClientError, TimeoutError)

_T = TypeVar("_T")


class TaskSet:
    """Tasks started through ``spawn`` and not yet done.

    The set itself is made on the first ``spawn``: an idle hop session holds
    a ``TaskSet`` and should cost no more than the ``None`` it replaced.
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] | None = None

    def spawn(self, coro: Coroutine[Any, Any, _T], *, name: str | None = None) -> asyncio.Task[_T]:
        """Run ``coro`` in its own task, held here until it is done."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        """Forget the task and retrieve how it ended (else asyncio logs a traceback on collection).

        Thousands of sessions' tasks end at once when a gateway stops; a
        connection that went away is one debug line, anything else a bug
        worth its traceback.
        """
        if self._tasks is not None:
            self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, _CONNECTION_ENDS):
            log.debug("= task %s ended: %r", task.get_name(), exc)
        else:
            log.error("= task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks or ())

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        """The tasks running now (a copy: tasks end while the caller iterates)."""
        return iter(list(self._tasks or ()))

    async def wait(self) -> None:
        """Wait for every task to end, except the one calling (a task may close its owner).

        A task's exception is not raised here: each task handles and logs its
        own failures (``_finished`` retrieves what escaped), and one failure
        must not hide the others' ends.
        """
        current = asyncio.current_task()
        pending = [task for task in self if task is not current]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def cancel_all(self) -> None:
        """Cancel every task (but the calling one), then wait until they all ended."""
        current = asyncio.current_task()
        for task in self:
            if task is not current:
                task.cancel()
        await self.wait()
