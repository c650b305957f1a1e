"""A legacy long-poll chat client for ``gateway.demo.comet``, usable from code.

Like the Comet server, it is deliberately unaware of hopgate: point
``base_url`` at the chat server or at a client gateway and it behaves the
same, which is what the demo sets out to show.  It does what a typical legacy
client does and nothing cleverer: poll with the last id it has, hand each
message to a callback, back off and retry on errors.  It does *not* filter
duplicates or reorderings, so whoever watches the callback sees exactly what
the path delivered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

log = logging.getLogger("hopgate.demo.client")

#: Longest a single poll may take; longer than any sane server hold.
POLL_TIMEOUT = 90.0
SEND_TIMEOUT = 10.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0


class ChatError(Exception):
    """The chat server answered something other than a valid chat response."""


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    """A message as received from ``/poll`` (``sender`` is the JSON ``from``)."""

    id: int
    sender: str
    text: str
    ts: float
    client_msg_id: str | None = None

    @classmethod
    def from_json(cls, doc: Any) -> ChatMessage:
        try:
            return cls(
                id=int(doc["id"]),
                sender=str(doc["from"]),
                text=str(doc["text"]),
                ts=float(doc["ts"]),
                client_msg_id=doc.get("client_msg_id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChatError(f"malformed message {doc!r}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class SendReceipt:
    """The server's answer to ``/send``."""

    id: int
    ts: float
    client_msg_id: str | None
    duplicate: bool


MessageCallback = Callable[[ChatMessage], None]


class LegacyChatClient:
    """One chat participant: ``send()`` posts, ``start()`` runs the poll loop.

    ``on_message`` is called once per message in the order the server's
    answers arrive, including the client's own messages (the server echoes
    everything to everyone, as Comet chats do).
    """

    def __init__(
        self,
        base_url: str,
        name: str,
        on_message: MessageCallback | None = None,
        *,
        since: int = 0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.on_message = on_message
        self.since = since
        self.polls = 0
        self.errors = 0
        self._own_session = session is None
        self._session = session
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._prefix = f"{name}-{uuid.uuid4().hex[:8]}"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def next_client_msg_id(self) -> str:
        """A fresh id for ``send``; unique per client instance."""
        return f"{self._prefix}-{next(self._ids)}"

    async def send(self, text: str, *, client_msg_id: str | None = None) -> SendReceipt:
        """Post one message; raises ``ChatError`` or ``aiohttp.ClientError`` on failure."""
        client_msg_id = client_msg_id or self.next_client_msg_id()
        body = {"from": self.name, "text": text, "client_msg_id": client_msg_id}
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
        async with self.session.post(f"{self.base_url}/send", json=body, timeout=timeout) as resp:
            doc = await _json_or_raise(resp)
        try:
            return SendReceipt(
                id=int(doc["id"]),
                ts=float(doc["ts"]),
                client_msg_id=doc.get("client_msg_id"),
                duplicate=bool(doc.get("duplicate", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChatError(f"malformed /send answer {doc!r}: {exc}") from None

    async def poll_once(self) -> list[ChatMessage]:
        """One long-poll: returns the messages after ``since`` and advances it."""
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT)
        url = f"{self.base_url}/poll"
        async with self.session.get(url, params={"since": self.since}, timeout=timeout) as resp:
            doc = await _json_or_raise(resp)
        self.polls += 1
        try:
            messages = [ChatMessage.from_json(m) for m in doc["messages"]]
            self.since = int(doc["next"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ChatError(f"malformed /poll answer: {exc}") from None
        return messages

    async def poll_forever(self) -> None:
        """Poll until cancelled, delivering each message to ``on_message``."""
        backoff = BACKOFF_FIRST
        while True:
            try:
                messages = await self.poll_once()
            except (aiohttp.ClientError, ChatError, TimeoutError) as exc:
                self.errors += 1
                log.warning("%s: poll failed (%s); retrying in %.1fs", self.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            for message in messages:
                if self.on_message is not None:
                    self.on_message(message)

    def start(self) -> None:
        """Run ``poll_forever`` in the background until ``close()``."""
        if self._task is None:
            self._task = asyncio.create_task(self.poll_forever(), name=f"poll {self.name}")

    async def close(self) -> None:
        """Stop polling and close the session if this client made it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> LegacyChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _json_or_raise(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object in a 200 answer; anything else becomes a ``ChatError``."""
    if resp.status != 200:
        text = (await resp.text(errors="replace"))[:200].strip()
        raise ChatError(f"HTTP {resp.status} from {resp.url.path}: {text}")
    try:
        doc = await resp.json(content_type=None)
    except ValueError as exc:
        raise ChatError(f"invalid JSON from {resp.url.path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ChatError(f"expected a JSON object from {resp.url.path}")
    return doc
