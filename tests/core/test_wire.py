"""BatchReader: one object or a small batch the cheap way, anything else by the streaming reader."""

from __future__ import annotations

import msgpack
import pytest

from gateway.core.wire import NOT_ONE, SINGLE_MAX, BatchReader, WireError


def reader() -> BatchReader:
    return BatchReader(max_bin=1024, max_array=8)


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_one_returns_the_only_object() -> None:
    assert reader().one(pack([7, 1, 1, b"x"])) == [7, 1, 1, b"x"]
    assert reader().one(memoryview(pack([3, 5]))) == [3, 5]
    assert reader().one(pack(None)) is None  # nil is an object, not "not one"


@pytest.mark.parametrize(
    "batch",
    [
        b"",  # no object
        pack([1]) + pack([2]),  # several
        pack([3, 5])[:-1],  # cut
        b"\xc1",  # reserved byte
        pack([b"x" * 1025]),  # over max_bin
        pack(list(range(9))),  # over max_array
        pack({"a": 1}),  # maps are never allowed
        b"\x91" * 5000 + b"\x01",  # nesting bomb
    ],
)
def test_one_leaves_everything_else_to_objects(batch: bytes) -> None:
    r = reader()
    assert r.one(batch) is NOT_ONE
    try:
        objects = list(r.objects(batch))
    except WireError:
        return
    assert len(objects) != 1  # it was not one object after all


def test_a_large_batch_of_one_object_is_decoded_where_it_lies() -> None:
    big = BatchReader(max_bin=2 * SINGLE_MAX, max_array=8)
    batch = pack([5, 1, b"x" * SINGLE_MAX])
    assert big.one(batch) == [5, 1, b"x" * SINGLE_MAX]
    assert big.one(memoryview(batch)) == [5, 1, b"x" * SINGLE_MAX]
    assert list(big.objects(batch)) == [[5, 1, b"x" * SINGLE_MAX]]


@pytest.mark.parametrize(
    "batch",
    [
        pack([5, 1, b"x" * SINGLE_MAX]) + pack([3, 1]),  # several
        pack([3, 1]) + pack([5, 1, b"x" * SINGLE_MAX]),
        pack([5, 1, b"x" * SINGLE_MAX])[:-1],  # cut
        pack([5, 1, b"x" * (2 * SINGLE_MAX + 1)]),  # over max_bin
        pack([b"x" * 1025] + [b"y" * 1000] * 70),  # over max_array, and long
    ],
)
def test_a_large_batch_that_is_not_one_good_object_is_left_to_objects(batch: bytes) -> None:
    big = BatchReader(max_bin=2 * SINGLE_MAX, max_array=8)
    assert len(batch) > SINGLE_MAX
    assert big.one(batch) is NOT_ONE
    try:
        objects = list(big.objects(batch))
    except WireError:
        return
    assert len(objects) != 1
    assert big.one(pack([4])) == [4]  # and nothing of it stays for the next batch


@pytest.mark.parametrize(
    "before",
    [pack([1]) + pack([2]), pack([3, 5])[:-1], b"\xc1", pack([b"x" * 1025]), pack([1]) + b"\xc1"],
)
def test_one_is_left_clean_by_any_batch_it_declines(before: bytes) -> None:
    # The readers of a set of limits share one Unpacker: nothing of a declined
    # batch (a cut object, the other objects) may stay in it for the next one.
    r, other = reader(), reader()
    assert r.one(before) is NOT_ONE
    assert other.one(pack([7, 1, 1, b"y"])) == [7, 1, 1, b"y"]
    assert r.one(pack([4])) == [4]


@pytest.mark.parametrize(
    "batch",
    [
        b"",
        pack([3, 5]),
        pack([3, 5]) + pack([2, 6, 1, b"x" * 100]),
        pack(None) + pack(None),  # nil objects count
        pack([1]) * 300,
    ],
)
def test_whole_gives_what_objects_gives(batch: bytes) -> None:
    assert reader().whole(batch) == list(reader().objects(batch))
    assert reader().whole(memoryview(batch)) == list(reader().objects(batch))


@pytest.mark.parametrize(
    "batch",
    [
        pack([3, 5])[:-1],  # cut
        pack([1]) + pack([3, 5])[:-1],  # cut after a good object
        b"\xc1",  # reserved byte
        pack([1]) + b"\xc1",
        pack([b"x" * 1025]),  # over max_bin
        pack(list(range(9))),  # over max_array
        pack({"a": 1}),  # maps are never allowed
        b"\x91" * 5000 + b"\x01",  # nesting bomb
    ],
)
def test_whole_refuses_what_objects_refuses_and_stays_clean(batch: bytes) -> None:
    with pytest.raises(WireError) as streamed:
        list(reader().objects(batch))
    with pytest.raises(WireError) as whole:
        reader().whole(batch)
    assert str(whole.value) == str(streamed.value)
    # The shared Unpacker keeps nothing of the refused batch for the next one.
    assert reader().whole(pack([4]) + pack([5])) == [[4], [5]]
    assert reader().one(pack([6])) == [6]


def test_a_large_batch_is_never_decoded_whole_by_whole_either() -> None:
    big = BatchReader(max_bin=2 * SINGLE_MAX, max_array=8)
    batch = pack([5, 1, b"x" * SINGLE_MAX]) + pack([3, 1])
    assert big.whole(batch) == [[5, 1, b"x" * SINGLE_MAX], [3, 1]]
