"""Records: how streamed long-poll requests carry batches (``longpoll_stream``).

A record is a 4-byte big-endian length and that many bytes of one batch;
an empty record is a mark. Only whole records are ever fed to the session,
so a stream cut anywhere loses or duplicates nothing (the next transport
replays from the acks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import aiohttp

__all__ = ["MARK", "RecordError", "RecordReader", "record"]

#: The length prefix of a record.
_HEAD: Final = 4
#: An empty record.
MARK: Final = bytes(_HEAD)


def record(batch: bytes) -> bytes:
    """One batch as a record: its length, then the batch."""
    return len(batch).to_bytes(_HEAD, "big") + batch


class RecordError(ValueError):
    """A stream broke off inside a record, or announced one larger than allowed."""


class RecordReader:
    """Records parsed from what arrived: one read per arrival, not two per record.

    ``hold(n)`` is told the size of a record before the rest of it is
    awaited, ``hold(0)`` after. Besides that record, it holds at most what
    one read returned (the stream reader's own bounded buffer).
    """

    __slots__ = ("_buf", "_content", "_hold", "_limit", "_pos")

    def __init__(
        self,
        content: aiohttp.StreamReader,
        limit: int,
        hold: Callable[[int], None] | None = None,
    ) -> None:
        self._content = content
        self._limit = limit
        self._hold = hold
        self._buf = b""
        self._pos = 0

    async def next(self) -> bytes | None:
        """The next record's batch (b"" for a mark), or None at a clean end between records."""
        batch = self._take()
        return batch if batch is not None else await self._more()

    def _size(self, buf: bytes, at: int) -> int:
        size = int.from_bytes(buf[at : at + _HEAD], "big")
        if size > self._limit:
            raise RecordError(f"a record of {size} bytes is larger than {self._limit}")
        return size

    def _take(self) -> bytes | None:
        """A whole record from the buffer, or None when it holds none."""
        buf, pos = self._buf, self._pos
        start = pos + _HEAD
        if len(buf) < start:
            return None
        stop = start + self._size(buf, pos)
        if len(buf) < stop:
            return None
        self._pos = stop
        return buf[start:stop]

    async def _more(self) -> bytes | None:
        """Reads until the buffer's partial record is whole (None: the stream ended)."""
        pieces = [self._buf[self._pos :]] if self._pos < len(self._buf) else []
        have = len(pieces[0]) if pieces else 0
        self._buf, self._pos = b"", 0
        size: int | None = None
        held = False
        try:
            while size is None or have < _HEAD + size:
                if size is None and have >= _HEAD:
                    pieces = [b"".join(pieces)]
                    size = self._size(pieces[0], 0)
                    if size and self._hold is not None and have < _HEAD + size:
                        self._hold(size)
                        held = True
                    continue
                piece = await self._content.readany()
                if not piece:
                    if not have:
                        return None
                    where = "a record's length" if size is None else "a record"
                    raise RecordError(f"the stream ended inside {where}")
                pieces.append(piece)
                have += len(piece)
        finally:
            if held and self._hold is not None:
                self._hold(0)
        self._buf = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return self._take()
