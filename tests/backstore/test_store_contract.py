"""Behaviour every local store shares: memory, a file on the test's file system, and a file
on tmpfs (which punches holes but has no FALLOC_FL_ZERO_RANGE, so exercises the fallback)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator

import pytest

from gluster_iscsi.backstore.base import BackingStore, BackingStoreError, Extent
from gluster_iscsi.backstore.file import FileStore
from gluster_iscsi.backstore.memory import MemoryStore

MiB = 1 << 20
SIZE = 4 * MiB


def _tmpfs_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(params=["memory", "file", "file-tmpfs"])
def make_store(request, tmp_path) -> Iterator[Callable[..., BackingStore]]:
    made: list[BackingStore] = []
    paths: list[str] = []

    def make(size: int = SIZE, read_only: bool = False) -> BackingStore:
        if request.param == "memory":
            store: BackingStore = MemoryStore(size, read_only=read_only)
        else:
            base = str(tmp_path)
            if request.param == "file-tmpfs":
                shm = _tmpfs_dir()
                if shm is None:
                    pytest.skip("no writable tmpfs at /dev/shm")
                base = shm
            path = os.path.join(base, f"store-{os.getpid()}-{len(paths)}.img")
            paths.append(path)
            FileStore(path, create_size=size).close()
            store = FileStore(path, read_only=read_only)
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def _mapped(extents: list[Extent], offset: int, length: int) -> bool | None:
    """True/False if the whole range has one state, None if mixed."""
    states = {
        e.mapped for e in extents if e.offset < offset + length and e.offset + e.length > offset
    }
    return states.pop() if len(states) == 1 else None


def _covers(extents: list[Extent], offset: int, length: int) -> None:
    pos = offset
    for e in extents:
        assert e.offset == pos and e.length > 0
        pos += e.length
    assert pos == offset + length


def test_round_trip_at_offsets(make_store):
    s = make_store()
    pattern = bytes(range(256)) * 64  # 16 KiB
    for offset in (0, 512, 4096 + 7, SIZE - len(pattern)):
        s.write(offset, pattern)
        assert s.read(offset, len(pattern)) == pattern


def test_read_into_fills_callers_buffer_in_place(make_store):
    s = make_store()
    s.write(8192, b"abcdefgh" * 512)
    target = bytearray(10000)
    view = memoryview(target)[100:4196]
    s.read_into(8192, view)
    assert target[100:4196] == b"abcdefgh" * 512
    assert target[:100] == bytes(100) and target[4196:] == bytes(10000 - 4196)


def test_write_accepts_bytes_bytearray_memoryview(make_store):
    s = make_store()
    s.write(0, b"one")
    s.write(3, bytearray(b"two"))
    s.write(6, memoryview(b"xxthreexx")[2:7])
    assert s.read(0, 11) == b"onetwothree"


def test_read_past_end_raises_instead_of_returning_short(make_store):
    s = make_store()
    with pytest.raises(BackingStoreError) as ei:
        s.read(SIZE - 100, 200)
    assert ei.value.errno == errno.EIO
    with pytest.raises(BackingStoreError):
        s.read(SIZE + 4096, 512)


def test_new_store_reads_zeroes_and_is_unmapped(make_store):
    s = make_store()
    assert s.read(0, 8192) == bytes(8192)
    if s.capabilities.extents:
        assert _mapped(s.extents(0, SIZE), 0, SIZE) is False


def test_punch_hole_deallocates_and_reads_zeroes(make_store):
    s = make_store()
    assert s.capabilities.discard and s.capabilities.discard_zeroes
    s.write(0, b"\xaa" * (3 * MiB))
    s.discard(MiB, MiB)
    assert s.read(MiB, MiB) == bytes(MiB)
    assert s.read(0, MiB) == b"\xaa" * MiB
    assert s.read(2 * MiB, MiB) == b"\xaa" * MiB
    ext = s.extents(0, SIZE)
    _covers(ext, 0, SIZE)
    assert _mapped(ext, 0, MiB) is True
    assert _mapped(ext, MiB, MiB) is False
    assert _mapped(ext, 2 * MiB, MiB) is True
    assert _mapped(ext, 3 * MiB, MiB) is False


def test_extents_cover_exactly_the_requested_window(make_store):
    s = make_store()
    s.write(MiB, b"\x01" * MiB)
    ext = s.extents(MiB // 2, MiB)
    _covers(ext, MiB // 2, MiB)
    assert ext == [Extent(MiB // 2, MiB // 2, False), Extent(MiB, MiB // 2, True)]


def test_extents_beyond_end_are_unmapped(make_store):
    s = make_store()
    s.write(SIZE - 4096, b"\x01" * 4096)
    ext = s.extents(SIZE - 4096, 8192)
    assert ext == [Extent(SIZE - 4096, 4096, True), Extent(SIZE, 4096, False)]


def test_write_zeroes_zeroes_the_range_only(make_store):
    s = make_store()
    assert s.capabilities.write_zeroes
    s.write(0, b"\x55" * (2 * MiB))
    s.write_zeroes(4096, MiB)
    assert s.read(4096, MiB) == bytes(MiB)
    assert s.read(0, 4096) == b"\x55" * 4096
    assert s.read(4096 + MiB, 4096) == b"\x55" * 4096
    assert s.size == SIZE


def test_resize_grows_with_zeroes(make_store):
    s = make_store()
    s.write(SIZE - 3, b"end")
    s.resize(2 * SIZE)
    assert s.size == 2 * SIZE
    assert s.read(SIZE - 3, 3) == b"end"
    assert s.read(SIZE, 4096) == bytes(4096)


def test_read_only_refuses_every_modification_with_erofs(make_store):
    s = make_store(read_only=True)
    assert s.read_only
    for call in (
        lambda: s.write(0, b"x"),
        lambda: s.discard(0, 4096),
        lambda: s.write_zeroes(0, 4096),
        lambda: s.resize(2 * SIZE),
    ):
        with pytest.raises(BackingStoreError) as ei:
            call()
        assert ei.value.errno == errno.EROFS
    assert s.read(0, 16) == bytes(16)


def test_negative_offset_is_einval(make_store):
    s = make_store()
    with pytest.raises(BackingStoreError) as ei:
        s.read(-1, 10)
    assert ei.value.errno == errno.EINVAL


def test_concurrent_writers_to_disjoint_ranges(make_store):
    s = make_store()
    chunk = 64 * 1024

    def worker(i: int) -> None:
        data = bytes([i]) * chunk
        for j in range(8):
            s.write((i * 8 + j) * chunk, data)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert s.read(i * 8 * chunk, 8 * chunk) == bytes([i]) * (8 * chunk)


def test_flush_succeeds_and_close_is_idempotent(make_store):
    s = make_store()
    s.write(0, b"durable")
    s.flush()
    s.close()
    s.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_agree_with_a_bytearray_model(make_store, seed):
    import random

    rnd = random.Random(seed)
    size = MiB
    s = make_store(size)
    model = bytearray(size)
    for _ in range(200):
        op = rnd.choice(["write", "write", "discard", "zeroes", "read"])
        # Block-ish alignment like the SCSI layer, with some odd sizes thrown in.
        unit = rnd.choice([512, 4096, 1])
        offset = rnd.randrange(size // unit) * unit
        length = min(rnd.randrange(1, 64) * unit, size - offset)
        if op == "write":
            data = rnd.randbytes(length)
            s.write(offset, data)
            model[offset : offset + length] = data
        elif op in ("discard", "zeroes"):
            (s.discard if op == "discard" else s.write_zeroes)(offset, length)
            model[offset : offset + length] = bytes(length)
        else:
            assert s.read(offset, length) == model[offset : offset + length]
    assert s.read(0, size) == model
    ext = s.extents(0, size)
    _covers(ext, 0, size)
    for e in ext:  # an unmapped run must read back as zeroes (discard_zeroes)
        if not e.mapped:
            assert model[e.offset : e.offset + e.length] == bytes(e.length)
