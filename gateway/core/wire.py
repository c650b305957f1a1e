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

import functools
from collections.abc import Iterator
from typing import Any, Final

import msgpack

#: Batches are fed in slices, so the unpacker's buffer never holds more than
#: one partial object plus one slice, however large the batch.
FEED_CHUNK: Final = 256 * 1024
#: Longest str anywhere in our frames (reasons, header names live in bin).
MAX_STR: Final = 1024
#: Initial Unpacker buffer (msgpack's default is 1 MiB).
READ_SIZE: Final = 16 * 1024
#: Batches up to this size go through the shared drained Unpacker (``BatchReader.one``,
#: ``whole``); ``one`` reads a larger one in place with ``unpackb``.
SINGLE_MAX: Final = 64 * 1024
#: ``BatchReader.one``: the batch is not one object.
NOT_ONE: Final = object()


class WireError(Exception):
    """The bytes are not a batch of whole, bounded msgpack objects."""


class BatchReader:
    """Yields the msgpack objects of successive batches.

    A batch must end on an object boundary: transports never split frames
    legitimately, so a cut object is an error rather than something to
    complete from the next batch.

    That rule also means an Unpacker holds nothing between batches, so a
    reader owns none: an ``Unpacker`` costs about 44 KiB (its parse stack
    is inline) plus its buffer, which at two readers per hop session made
    idle sessions cost ~100 KB each. Instead each batch borrows a drained
    Unpacker from a small pool shared by every reader with the same limits
    and gives it back only if it ended drained and clean; a reader that is
    never fed allocates nothing.
    """

    __slots__ = ("_key",)

    def __init__(self, *, max_bin: int, max_array: int, slack: int = 64) -> None:
        self._key = (max_bin, max_array, slack)

    def one(self, batch: bytes | bytearray | memoryview) -> object:
        """The batch's only object, or ``NOT_ONE`` (several objects, or bad: use ``objects``).

        For readers whose batches mostly hold one object (a tunnel message
        with one frame, the common case at one message per loop turn): one
        Unpacker per set of limits, shared by every reader and left drained,
        takes a small batch in ~0.2 us, where the pooled streaming Unpacker
        (borrow, feed, iterate, give back) took 2-3 and ``unpackb`` 0.27 (it
        parses its eight limit keywords per call) and 0.9 for a batch of
        several objects (ExtraData raised). A batch over ``SINGLE_MAX`` is
        read in place instead (``_large_one``). What it cannot take,
        ``objects`` decides, so errors and their laziness stay the same.
        """
        size = len(batch)
        if size > SINGLE_MAX:
            return self._large_one(batch)
        if not size:
            return NOT_ONE
        key = self._key
        unpacker = _single(key)
        start = unpacker.tell()
        try:
            unpacker.feed(batch)
            raw = unpacker.unpack()
        except Exception:  # bad or cut: it may hold part of an object, so it is dropped
            del _singles[key]
            return NOT_ONE
        rest = size - (unpacker.tell() - start)
        if rest:  # several objects: skip the others' bytes (drained again); objects() reads all
            unpacker.read_bytes(rest)
            return NOT_ONE
        return raw

    def whole(self, batch: bytes | bytearray | memoryview) -> list[object]:
        """Every object of ``batch``, or ``WireError``: ``list(objects(batch))``, cheaper.

        For callers that check a whole batch before any of it takes effect (the
        session's frames: an ACK and a DATA per batch at one message per loop
        turn). A small batch goes through ``one``'s shared drained Unpacker,
        ~0.5 us for two objects where the pooled streaming reader's borrow,
        feed, generator and give-back took ~4.5. Anything it cannot take whole
        (bad, cut, large) goes to ``objects``, so the errors are the same.
        """
        size = len(batch)
        if not 0 < size <= SINGLE_MAX:
            return list(self.objects(batch))
        key = self._key
        unpacker = _single(key)
        end = unpacker.tell() + size
        out: list[object] = []
        try:
            unpacker.feed(batch)
            while unpacker.tell() < end:
                out.append(unpacker.unpack())
        except Exception:  # bad or cut: it may hold part of an object, so it is dropped
            del _singles[key]
            return list(self.objects(batch))
        return out

    def _large_one(self, batch: bytes | bytearray | memoryview) -> object:
        """A large batch's only object, decoded in place; ``NOT_ONE`` if it is not exactly one.

        A large message (64 KiB and up) usually crosses as one frame. Fed to an
        Unpacker it is copied into the Unpacker's buffer before its bin is
        copied out; ``unpackb`` reads the batch where it lies (5.1 -> 1.7 us for
        64 KiB), under the same limits, and holds no buffer of its own. A batch
        of several objects (``ExtraData``) or a bad one is left to ``objects``,
        having cost one decode of its first object: ``whole`` does not try it,
        as a session batch that large often holds several frames (a long-poll
        body: its gateway's CPU per 64 KiB message rose 7% when it did).
        """
        max_bin, max_array, _ = self._key
        try:
            return msgpack.unpackb(batch, **_limits(max_bin, max_array))
        except Exception:  # ExtraData (several objects), or bad: objects() decides
            return NOT_ONE

    def objects(self, batch: bytes | bytearray | memoryview) -> Iterator[object]:
        """Each object of ``batch`` in order; ``WireError`` once it goes wrong.

        Lazy: objects before a bad one are yielded (and may take effect)
        exactly as if they had come in an earlier batch.
        """
        unpacker = _borrow(self._key)
        clean = False
        try:
            view = memoryview(batch)
            fed = end_of_last = unpacker.tell()
            for start in range(0, len(view), FEED_CHUNK):
                chunk = view[start : start + FEED_CHUNK]
                try:
                    unpacker.feed(chunk)
                except Exception as exc:  # BufferFull: a peer outgrowing our limits
                    raise WireError(f"undecodable msgpack ({type(exc).__name__})") from exc
                fed += len(chunk)
                while True:
                    try:
                        raw = next(unpacker)
                    except StopIteration:
                        break
                    except Exception as exc:  # msgpack's zoo: ValueError, StackError...
                        raise WireError(f"undecodable msgpack ({type(exc).__name__})") from exc
                    end_of_last = unpacker.tell()
                    yield raw
            if end_of_last != fed:
                raise WireError("ends inside a frame")
            clean = True
        finally:
            # A consumer that stopped early, or an error, leaves bytes inside:
            # that Unpacker is dropped, never reused.
            if clean:
                _give_back(self._key, unpacker)


#: Drained Unpackers kept per set of limits; more are simply freed.
_POOL_SIZE: Final = 2
_pool: dict[tuple[int, int, int], list[msgpack.Unpacker]] = {}


@functools.cache
def _limits(max_bin: int, max_array: int) -> dict[str, Any]:
    """The Unpacker's decoding limits, for ``unpackb`` too (the buffer limit does not apply).

    One dict per set of limits (cached), never changed: the readers share it.
    """
    return {
        "raw": False,
        "use_list": True,
        "strict_map_key": True,
        "max_bin_len": max_bin,
        "max_str_len": MAX_STR,
        "max_array_len": max_array,
        "max_map_len": 0,
        "max_ext_len": 0,
    }


#: ``BatchReader.one``'s and ``whole``'s Unpacker per set of limits, always drained
#: between calls; one that failed mid-batch is dropped (``del _singles[key]``).
_singles: dict[tuple[int, int, int], msgpack.Unpacker] = {}


def _single(key: tuple[int, int, int]) -> msgpack.Unpacker:
    unpacker = _singles.get(key)
    if unpacker is None:
        unpacker = _singles[key] = _new_unpacker(key)
    return unpacker


def _borrow(key: tuple[int, int, int]) -> msgpack.Unpacker:
    free = _pool.get(key)
    if free:
        return free.pop()
    return _new_unpacker(key)


def _new_unpacker(key: tuple[int, int, int]) -> msgpack.Unpacker:
    max_bin, max_array, slack = key
    return msgpack.Unpacker(
        # Grows on demand up to max_buffer_size; most batches are small.
        read_size=READ_SIZE,
        max_buffer_size=max_bin + FEED_CHUNK + slack,
        **_limits(max_bin, max_array),
    )


def _give_back(key: tuple[int, int, int], unpacker: msgpack.Unpacker) -> None:
    free = _pool.setdefault(key, [])
    if len(free) < _POOL_SIZE:
        free.append(unpacker)
