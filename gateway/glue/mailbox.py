"""Where a link routes the events of one stream: a sink, or the mailbox a task awaits.

The link feeds each tunnel message to the core and routes the resulting
events synchronously, from its session callback, to one sink per stream: a
relay half (``relay.py``) passes them on at once, a :class:`Mailbox` holds
them for the task that runs the stream (an exchange with the origin, a
client's request, a WebSocket bridge). No task per message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from gateway.core.tunnel import Tunnel
from gateway.core.tunnel.events import Event, StreamReset, StreamWritable

__all__ = ["EndpointDone", "Mailbox", "Sink"]


class Sink(Protocol):
    """Where a link routes the events of one stream."""

    def deliver(self, event: Event) -> None: ...


class EndpointDone:
    """Posted by a WebSocket reader when its endpoint closed (or vanished)."""

    __slots__ = ("closed",)

    def __init__(self, *, closed: bool) -> None:
        self.closed = closed


class Mailbox:
    """Events of one stream for the task that runs it; a reset may cancel that task."""

    # One per stream and request: a future only while its task waits, no asyncio.Event
    # (two per mailbox were a measurable part of a small request's cost).
    __slots__ = ("_waiter", "_writable", "events", "reset", "task")

    def __init__(self) -> None:
        self.events: deque[Event | EndpointDone] = deque()
        self.reset: StreamReset | None = None
        self.task: asyncio.Task[Any] | None = None
        #: What the one task in :meth:`next_event` awaits, while it does.
        self._waiter: asyncio.Future[None] | None = None
        #: Made by the first :meth:`wait_writable` (most streams never wait for credit).
        self._writable: asyncio.Event | None = None

    def deliver(self, event: Event) -> None:
        if type(event) is StreamWritable:
            if self._writable is not None:
                self._writable.set()
            return
        if type(event) is StreamReset:
            if self.reset is not None:
                return
            self.reset = event
            if self._writable is not None:
                self._writable.set()
            task = self.task
            if task is not None and task is not asyncio.current_task():
                task.cancel()  # the origin request goes at once (a held poll, an upload)
        self.events.append(event)
        self.wake()

    @property
    def backlog(self) -> int:
        """Events delivered and not taken yet."""
        return len(self.events)

    def post(self, item: EndpointDone) -> None:
        self.events.append(item)
        self.wake()

    def wake(self) -> None:
        """Wake the task in :meth:`next_event` (also for what was put in ``events`` directly)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_event(self) -> Event | EndpointDone:
        """The next event; one task at a time awaits a stream's events."""
        while not self.events:
            if self._waiter is not None:
                raise RuntimeError("a second task awaits the events of one stream")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.events.popleft()

    async def wait_writable(self, tunnel: Tunnel, sid: int) -> bool:
        """True once ``sid`` takes more data; False if the stream was reset."""
        while not tunnel.is_writable(sid):
            if self.reset is not None or tunnel.closed:
                return False
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            await self._writable.wait()
        return True
