"""Header compaction: a per-session, per-direction table of header fields already sent.

A legacy long-poll client repeats the same head on every poll (a 400-byte
cookie, a user agent, accept headers): on a hop that carries one poll per
event, the heads are most of the bytes. Like HPACK's dynamic table (RFC 7541,
without Huffman or a static table), each direction of a tunnel keeps the
fields it sent recently; a field already in the table goes as a one-byte
reference.

Block format (the ``headers`` element of OPEN_HTTP_PACKED / RESPONSE_PACKED,
a msgpack array of at most ``2 * MAX_HEADER_FIELDS`` elements), read left to
right, each instruction one field:

* ``int i >= 0``: the field at relative index ``i`` of the table (0 = newest);
* ``int -1 - i`` then ``bin value``: the name of entry ``i``, a new value;
  the field is inserted;
* ``bin name`` then ``bin value``: a new field, inserted;
* ``nil`` then ``bin name`` then ``bin value``: a field sent as is, not
  inserted (too big to be worth a slot).

Both ends run the same :meth:`HeaderTable.insert`, so their tables stay
equal: entries are evicted oldest first to keep at most
:data:`TABLE_ENTRIES` entries and :data:`TABLE_BYTES` bytes (name + value +
32 per entry, as HPACK counts), and an entry that could never fit empties
the table. Those bounds are the protocol's, not a setting: a peer cannot
make this end hold more, whatever it inserts. Decoding is bounded too: a
block of references expands to at most the receiver's ``max_header_bytes``
and ``MAX_HEADER_FIELDS`` (:class:`HeadTooLarge` beyond); a reference to an
entry the table does not hold is :class:`BadReference`, which resets that
one stream. Anything structurally wrong is a malformed frame (the session's
error, as for every other frame).

The table changes as heads go on the wire, in wire order: the scheduler
encodes a packed head when it puts it in a batch, never when it is queued,
so a head that never leaves (a stream reset before its OPEN went) changes
nothing on either side.

Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import msgpack

from gateway.core.tunnel.frames import MAX_HEADER_FIELDS

__all__ = [
    "MAX_INSERT",
    "TABLE_BYTES",
    "TABLE_ENTRIES",
    "BadReference",
    "ControlQueue",
    "HeadTooLarge",
    "HeaderTable",
    "PendingHead",
    "decode_block",
    "encode_block",
    "packable",
]

TABLE_ENTRIES: Final = 64
TABLE_BYTES: Final = 4096
ENTRY_OVERHEAD: Final = 32
#: Largest field the encoder inserts: bigger ones go literally, so one huge
#: cookie does not flush every other entry.
MAX_INSERT: Final = TABLE_BYTES // 2

Block = list[int | bytes | None]


class BadReference(Exception):
    """A block names a table entry this end does not hold."""


class HeadTooLarge(Exception):
    """A block expands beyond the receiver's head limits."""


class HeaderTable:
    """One direction's table; the encoder's copy also indexes fields and names.

    Entries get a serial number as they are inserted; the relative index the
    wire carries is ``inserted - 1 - serial``, so nothing is renumbered on
    insert or eviction.

    ``repeat`` remembers the last head that inserted nothing (a poll's head
    is usually the previous poll's), with ``inserted`` at the time: while no
    insert happened since, the same head has the same block and the same
    block the same head, so either side skips the per-field work.
    """

    __slots__ = ("_by_field", "_by_name", "_entries", "inserted", "repeat", "size")

    def __init__(self, *, indexed: bool) -> None:
        self._entries: deque[tuple[bytes, bytes]] = deque()
        self.inserted = 0
        self.size = 0
        self._by_field: dict[tuple[bytes, bytes], int] | None = {} if indexed else None
        self._by_name: dict[bytes, int] | None = {} if indexed else None
        #: (inserted, flat, block, expanded size) of the last head that inserted nothing.
        self.repeat: tuple[int, list[bytes], list[Any], int] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, index: int) -> tuple[bytes, bytes]:
        """The entry at relative ``index``; BadReference if there is none."""
        entries = self._entries
        if not 0 <= index < len(entries):
            raise BadReference(f"header table has {len(entries)} entries, no entry {index}")
        return entries[len(entries) - 1 - index]

    def insert(self, name: bytes, value: bytes) -> None:
        """Add a field, evicting the oldest to stay within the bounds (both ends alike)."""
        cost = len(name) + len(value) + ENTRY_OVERHEAD
        entries = self._entries
        while entries and (len(entries) >= TABLE_ENTRIES or self.size + cost > TABLE_BYTES):
            self._evict()
        self.inserted += 1
        if cost > TABLE_BYTES:  # could never fit: the table is now empty, as in HPACK
            return
        entries.append((name, value))
        self.size += cost
        if self._by_field is not None and self._by_name is not None:
            serial = self.inserted - 1
            self._by_field[(name, value)] = serial
            self._by_name[name] = serial

    def _evict(self) -> None:
        name, value = self._entries.popleft()
        self.size -= len(name) + len(value) + ENTRY_OVERHEAD
        serial = self.inserted - len(self._entries) - 1
        if self._by_field is not None and self._by_name is not None:
            if self._by_field.get((name, value)) == serial:
                del self._by_field[(name, value)]
            if self._by_name.get(name) == serial:
                del self._by_name[name]

    def find(self, name: bytes, value: bytes) -> tuple[int | None, int | None]:
        """(relative index of the field, of an entry with that name); None where absent."""
        assert self._by_field is not None and self._by_name is not None
        newest = self.inserted - 1
        field = self._by_field.get((name, value))
        named = self._by_name.get(name)
        return (
            None if field is None else newest - field,
            None if named is None else newest - named,
        )


def packable(flat: list[bytes]) -> bool:
    """A head whose block stays within the array bound (3 elements per field at most)."""
    return 3 * (len(flat) // 2) <= 2 * MAX_HEADER_FIELDS


def encode_block(table: HeaderTable, flat: list[bytes]) -> Block:
    """The block for a flat header list, updating ``table`` (call only as it goes out)."""
    inserted = table.inserted
    repeat = table.repeat
    if repeat is not None and repeat[0] == inserted and repeat[1] == flat:
        return repeat[2]
    block = _encode_fields(table, flat)
    if table.inserted == inserted:
        table.repeat = (inserted, flat, block, 0)
    return block


def _encode_fields(table: HeaderTable, flat: list[bytes]) -> Block:
    block: Block = []
    add = block.append
    for i in range(0, len(flat), 2):
        name, value = flat[i], flat[i + 1]
        field, named = table.find(name, value)
        if field is not None:
            add(field)
            continue
        if len(name) + len(value) + ENTRY_OVERHEAD > MAX_INSERT:
            block += (None, name, value)
            continue
        if named is not None:
            block += (-1 - named, value)
        else:
            block += (name, value)
        table.insert(name, value)
    return block


def decode_block(table: HeaderTable, block: list[object], max_bytes: int) -> list[bytes]:
    """The flat header list of a received block, updating ``table``.

    ``max_bytes`` bounds the expanded names and values. Raises BadReference,
    HeadTooLarge (the stream's errors) or ValueError (a malformed block).
    """
    inserted = table.inserted
    repeat = table.repeat
    if repeat is not None and repeat[0] == inserted and repeat[2] == block:
        if repeat[3] > max_bytes:
            raise HeadTooLarge(f"head over {max_bytes} bytes")
        return repeat[1]
    flat = _decode_fields(table, block, max_bytes)
    if table.inserted == inserted:
        table.repeat = (inserted, flat, block, sum(map(len, flat)))
    return flat


def _decode_fields(table: HeaderTable, block: list[object], max_bytes: int) -> list[bytes]:
    flat: list[bytes] = []
    size = i = 0
    n = len(block)
    while i < n:
        item = block[i]
        if type(item) is int and item >= 0:
            name, value = table.get(item)
            i += 1
        elif type(item) is int:
            name = table.get(-1 - item)[0]
            value = _bin(block, i + 1)
            table.insert(name, value)
            i += 2
        elif type(item) is bytes:
            name, value = item, _bin(block, i + 1)
            table.insert(name, value)
            i += 2
        elif item is None:
            name, value = _bin(block, i + 1), _bin(block, i + 2)
            i += 3
        else:
            raise ValueError(f"header block element of type {type(item).__name__}")
        size += len(name) + len(value)
        if size > max_bytes or len(flat) >= 2 * MAX_HEADER_FIELDS:
            raise HeadTooLarge(f"head over {max_bytes} bytes or {MAX_HEADER_FIELDS} fields")
        flat += (name, value)
    return flat


def _bin(block: list[object], i: int) -> bytes:
    if i >= len(block) or type(block[i]) is not bytes:
        raise ValueError("header block: a name or value is missing")
    value = block[i]
    assert type(value) is bytes
    return value


class PendingHead:
    """A packed OPEN_HTTP, RESPONSE or whole answer waiting for its turn on the wire.

    ``fields`` are the frame's elements before the header block (type, stream
    id, window/status, method, target/reason), ``tail`` the one after it
    (``has_body``, or a whole answer's body); :meth:`encode` runs when the
    scheduler puts the frame in a batch, which is when the table changes.
    """

    __slots__ = ("bound", "fields", "flat", "tail")

    def __init__(
        self, fields: tuple[int | str | bytes, ...], flat: list[bytes], tail: bool | bytes
    ) -> None:
        self.fields = fields
        self.flat = flat
        self.tail = tail
        # Never smaller than the packed frame: each bin or str has at most a
        # 5-byte header, a nil marker is one byte, the ints fit in 9 bytes each.
        self.bound = (
            sum(map(len, flat))
            + 6 * len(flat)
            + 64
            + sum(len(f) for f in fields if not isinstance(f, int))
            + (len(tail) if type(tail) is bytes else 0)
        )

    def encode(self, packer: msgpack.Packer, table: HeaderTable) -> bytes:
        return packer.pack((*self.fields, encode_block(table, self.flat), self.tail))


#: A tunnel's control frames: encoded, or a packed head encoded as it leaves.
ControlQueue = deque[bytes | PendingHead]
