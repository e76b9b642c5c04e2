from __future__ import annotations

import errno

import pytest

from gluster_iscsi.backstore._util import RangeSet
from gluster_iscsi.backstore.base import BackingStoreError, Extent
from gluster_iscsi.backstore.memory import MemoryStore


def test_memory_store_never_blocks():
    assert MemoryStore.blocking is False


def test_write_beyond_end_is_enospc_and_changes_nothing():
    s = MemoryStore(4096)
    with pytest.raises(BackingStoreError) as ei:
        s.write(4000, b"x" * 200)
    assert ei.value.errno == errno.ENOSPC
    assert s.read(0, 4096) == bytes(4096)
    assert s.extents(0, 4096) == [Extent(0, 4096, False)]


def test_discard_is_byte_exact():
    s = MemoryStore(100)
    s.write(0, b"x" * 100)
    s.discard(10, 5)
    assert s.extents(0, 100) == [
        Extent(0, 10, True),
        Extent(10, 5, False),
        Extent(15, 85, True),
    ]
    assert s.read(8, 9) == b"xx\0\0\0\0\0xx"


def test_write_zeroes_keeps_range_mapped():
    s = MemoryStore(8192)
    s.write_zeroes(0, 4096)
    assert s.extents(0, 8192) == [Extent(0, 4096, True), Extent(4096, 4096, False)]


def test_shrink_then_grow_reads_zeroes():
    s = MemoryStore(8192)
    s.write(0, b"\xff" * 8192)
    s.resize(4096)
    s.resize(8192)
    assert s.read(4096, 4096) == bytes(4096)
    assert s.extents(0, 8192) == [Extent(0, 4096, True), Extent(4096, 4096, False)]


def test_resize_works_while_caller_holds_a_read_buffer():
    s = MemoryStore(4096)
    buf = s.read(0, 4096)
    view = memoryview(buf)
    s.resize(8192)
    assert len(view) == 4096


@pytest.mark.parametrize(
    "ops, expected",
    [
        ([("add", 0, 10)], [(0, 10)]),
        ([("add", 0, 10), ("add", 10, 20)], [(0, 20)]),
        ([("add", 0, 10), ("add", 20, 30), ("add", 5, 25)], [(0, 30)]),
        ([("add", 0, 30), ("remove", 10, 20)], [(0, 10), (20, 30)]),
        ([("add", 0, 10), ("add", 20, 30), ("remove", 5, 25)], [(0, 5), (25, 30)]),
        ([("add", 0, 10), ("remove", 0, 10)], []),
        ([("add", 10, 20), ("remove", 0, 5), ("remove", 25, 30)], [(10, 20)]),
        ([("add", 0, 10), ("add", 30, 40), ("add", 15, 20)], [(0, 10), (15, 20), (30, 40)]),
    ],
)
def test_rangeset_add_remove(ops, expected):
    rs = RangeSet()
    for op, a, b in ops:
        getattr(rs, op)(a, b)
    assert list(rs) == expected


def test_rangeset_matches_a_bitmap_model():
    import random

    rnd = random.Random(1234)
    rs = RangeSet()
    model = [False] * 200
    for _ in range(2000):
        a = rnd.randrange(200)
        b = rnd.randrange(a, 201)
        if rnd.random() < 0.5:
            rs.add(a, b)
            model[a:b] = [True] * (b - a)
        else:
            rs.remove(a, b)
            model[a:b] = [False] * (b - a)
        got = [False] * 200
        for s, e in rs:
            got[s:e] = [True] * (e - s)
        assert got == model
        ranges = list(rs)
        assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))
