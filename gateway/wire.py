"""Bounded msgpack reading shared by the session and tunnel cores.

Both cores receive *batches*: one transport message (a WebSocket message, an
HTTP body, a session message) holding whole msgpack objects back to back.
Both must refuse to let a peer make them allocate much, and both must turn
msgpack's zoo of exceptions into one error they can report as the peer's
fault.  This module does that once; each core maps ``WireError`` onto its own
``RemoteProtocolError`` and validates the objects against its own layouts.

Pure: imports msgpack only, like the cores that use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import msgpack

#: Batches are fed in slices, so the unpacker's buffer never holds more than
#: one partial object plus one slice, however large the batch.
FEED_CHUNK: Final = 256 * 1024
#: Longest str anywhere in our frames (reasons, header names live in bin).
MAX_STR: Final = 1024


class WireError(Exception):
    """The bytes are not a batch of whole, bounded msgpack objects."""


class BatchReader:
    """Yields the msgpack objects of successive batches; reuses one Unpacker.

    A batch must end on an object boundary: transports never split frames
    legitimately, so a cut object is an error rather than something to
    complete from the next batch.
    """

    __slots__ = ("_fed", "_unpacker")

    def __init__(self, *, max_bin: int, max_array: int, slack: int = 64) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_buffer_size=max_bin + FEED_CHUNK + slack,
            max_bin_len=max_bin,
            max_str_len=MAX_STR,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
        self._fed = 0

    def objects(self, batch: bytes | bytearray | memoryview) -> Iterator[object]:
        """Each object of ``batch`` in order; ``WireError`` once it goes wrong.

        Lazy: objects before a bad one are yielded (and may take effect)
        exactly as if they had come in an earlier batch.
        """
        unpacker = self._unpacker
        view = memoryview(batch)
        end_of_last = self._fed
        for start in range(0, len(view), FEED_CHUNK):
            chunk = view[start : start + FEED_CHUNK]
            try:
                unpacker.feed(chunk)
            except Exception as exc:  # BufferFull: a peer outgrowing our limits
                raise WireError(f"undecodable msgpack ({type(exc).__name__})") from exc
            self._fed += len(chunk)
            while True:
                try:
                    raw = next(unpacker)
                except StopIteration:
                    break
                except Exception as exc:  # msgpack's zoo: ValueError, StackError...
                    raise WireError(f"undecodable msgpack ({type(exc).__name__})") from exc
                end_of_last = unpacker.tell()
                yield raw
        if end_of_last != self._fed:
            raise WireError("ends inside a frame")
