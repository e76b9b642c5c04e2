"""The read cache (backstore/cache.py): never older than the last acknowledged write.

A model-based test (hypothesis stateful), also with the admission rule active (a thrashing
cache skips most misses), runs reads (random, sequential with readahead,
straddling units and chunks), overlapping partial writes and writevs (WRITE, SANITIZE
OVERWRITE, XCOPY targets), discards (UNMAP, SANITIZE BLOCK ERASE), write_zeroes (WRITE SAME)
and resizes, with units (what a random miss reads) smaller than chunks, against a reference bytearray,
in front of a memory store here and of the real gfapi store in test_cache_gluster.py; a
deterministic interleaving pins the fill race, and worker threads race reads with writes.
"""

from __future__ import annotations

import errno
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gluster_iscsi.backstore.base import BackingStore, BackingStoreError
from gluster_iscsi.backstore.cache import (
    ADMIT_SAMPLE,
    ADMIT_WINDOW,
    AUTO,
    CachedStore,
    CacheLedger,
    parse_capacity,
    rebalance,
    shrink_to,
)
from gluster_iscsi.backstore.memory import MemoryStore

CHUNK = 4096
KiB = 1024


def _cached(inner: BackingStore, capacity: int = 64 * KiB, **kw) -> CachedStore:
    return CachedStore(inner, capacity, chunk=CHUNK, ledger_=CacheLedger(1 << 30), **kw)


class CacheModel(RuleBasedStateMachine):
    """Every operation a LUN's commands end in, checked against a bytearray."""

    max_size = 40 * KiB

    def make_store(self, size: int) -> BackingStore:
        return MemoryStore(size)

    @initialize(size=st.integers(1, 40 * KiB),
                capacity=st.sampled_from([0, CHUNK, 3 * CHUNK, 64 * KiB, AUTO]),
                unit=st.sampled_from([512, 1024, CHUNK]), ttl=st.sampled_from([None, 40.0]),
                admit=st.sampled_from([(ADMIT_WINDOW, ADMIT_SAMPLE), (1, 2), (2, 1 << 20),
                                       (1 << 40, 2), (1 << 40, 1 << 20)]))
    def setup(self, size: int, capacity: int, unit: int, ttl: float | None,
              admit: tuple[int, int]) -> None:
        self._setup(size, capacity, unit, ttl, admit)

    def _setup(self, size: int, capacity: int, unit: int, ttl: float | None,
               admit: tuple[int, int]) -> None:
        self.inner = self.make_store(size)
        self.now = 0.0
        # admit: (window, sample) of the admission rule; with a window of 1 or 2 reads a cache
        # smaller than the LUN thrashes within a few steps and skips (most) misses after; with
        # a window that never ends the ``thrash`` rule sets what the rule decided
        self.store = _cached(self.inner, capacity, unit=unit, readahead=2 * CHUNK,
                             clock=lambda: self.now, admit_window=admit[0],
                             admit_sample=admit[1])
        self.store.ttl = ttl  # as with upcalls: regions trusted for a while (``tick``)
        self.ref = bytearray(size)
        self.pending: list = []  # fills begun whose read ended, not yet ended at the cache

    def _range(self, data: st.DataObject) -> tuple[int, int]:
        size = len(self.ref)
        offset = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(1, min(size - offset, 3 * CHUNK + 17)))
        return offset, length

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        offset, length = self._range(data)
        buf = bytearray(length)
        self.store.read_into(offset, memoryview(buf))
        assert buf == self.ref[offset : offset + length], (offset, length)

    @rule(data=st.data())
    def read_hit(self, data: st.DataObject) -> None:
        """What the runner tries on the loop first: the bytes, or False with none copied."""
        offset, length = self._range(data)
        buf = bytearray(b"\xee") * length
        if self.store.read_hit(offset, memoryview(buf)):
            assert buf == self.ref[offset : offset + length], (offset, length)
        else:
            assert buf == bytearray(b"\xee") * length

    @rule(data=st.data())
    def begin_fill(self, data: st.DataObject) -> None:
        """The runner's asynchronous miss: ``begin_fill``, the store read now, and
        ``end_fill`` only later (``end_fill`` rule), after whatever changes come between."""
        offset, length = self._range(data)
        buf = bytearray(length)
        fill = self.store.begin_fill(offset, memoryview(buf))
        if fill is None:
            return
        self.inner.read_into(fill.lo, fill.view)
        self.pending.append((fill, buf, bytes(self.ref[offset : offset + length])))

    @rule()
    def end_fill(self) -> None:
        if self.pending:
            fill, buf, expected = self.pending.pop(0)
            self.store.end_fill(fill, True)
            assert buf == expected  # what the store held when it was read
            self.read_hit_at(fill.offset, len(buf))  # (what it inserted, if anything)

    @rule(data=st.data(), fill=st.integers(1, 255))
    def race_fill(self, data: st.DataObject, fill: int) -> None:
        """A write or a discard of what the oldest fill in flight read, before it ends (the
        race the generations guard)."""
        if not self.pending:
            return
        offset, length = self.pending[0][0].offset, len(self.pending[0][1])
        length = min(length, len(self.ref) - offset)
        if length <= 0:
            return
        if data.draw(st.booleans()):
            self.store.write(offset, bytes([fill]) * length)
            self.ref[offset : offset + length] = bytes([fill]) * length
        else:
            self.store.discard(offset, length)
            self.ref[offset : offset + length] = bytes(length)

    def read_hit_at(self, offset: int, length: int) -> None:
        """Every unit of [offset, +length) that hits holds the reference's bytes."""
        unit = self.store.unit
        end = min(offset + length, len(self.ref))
        for u in range(offset // unit, (end + unit - 1) // unit):
            a, b = max(offset, u * unit), min(end, (u + 1) * unit)
            if b <= a:
                continue
            buf = bytearray(b - a)
            if self.store.read_hit(a, memoryview(buf)):
                assert buf == self.ref[a:b], (a, b)

    @rule(on=st.booleans())
    def thrash(self, on: bool) -> None:
        """The admission rule's verdict, pinned (a window that never ends: never judged)."""
        if self.store._window >= 1 << 40:
            self.store.thrashing = on

    @rule(seconds=st.sampled_from([1.0, 15.0, 25.0, 50.0]))
    def tick(self, seconds: float) -> None:
        """Time passes (with a ttl: past ttl/2 a region is not fresh, past ttl it expires)."""
        self.now += seconds

    @rule(length=st.integers(1, 2 * CHUNK))
    def read_next(self, length: int) -> None:
        """Where the last read ended: sequential streams (readahead)."""
        offset = self.store._next if 0 <= self.store._next < len(self.ref) else 0
        length = min(length, len(self.ref) - offset)
        buf = bytearray(length)
        self.store.read_into(offset, memoryview(buf))
        assert buf == self.ref[offset : offset + length], (offset, length)

    @rule(data=st.data(), fill=st.integers(1, 255))
    def write(self, data: st.DataObject, fill: int) -> None:
        offset, length = self._range(data)
        payload = bytes([fill]) * length
        self.store.write(offset, payload)
        self.ref[offset : offset + length] = payload

    @rule(data=st.data(), a=st.integers(1, 255), b=st.integers(1, 255))
    def writev(self, data: st.DataObject, a: int, b: int) -> None:
        offset, length = self._range(data)
        cut = data.draw(st.integers(0, length))
        parts = [bytes([a]) * cut, bytearray([b]) * (length - cut)]
        self.store.writev(offset, parts)
        self.ref[offset : offset + length] = b"".join(parts)

    @rule(data=st.data())
    def unmap(self, data: st.DataObject) -> None:
        offset, length = self._range(data)
        self.store.discard(offset, length)  # UNMAP, SANITIZE BLOCK ERASE: reads back zeroes
        self.ref[offset : offset + length] = bytes(length)

    @rule(data=st.data())
    def write_same_zeroes(self, data: st.DataObject) -> None:
        offset, length = self._range(data)
        self.store.write_zeroes(offset, length)
        self.ref[offset : offset + length] = bytes(length)

    @rule(new_size=st.integers(1, 40 * KiB))
    def resize(self, new_size: int) -> None:
        old = len(self.ref)
        if isinstance(self.inner, MemoryStore):
            self.store.resize(new_size)
        else:
            self.store.resize(new_size, force=True)
        if new_size < old:
            del self.ref[new_size:]
        else:
            self.ref.extend(bytes(new_size - old))

    @rule(data=st.data())
    def memory_target(self, data: st.DataObject) -> None:
        """The daemon's memory target moves (server/memory.py): the ledger's limit changes and
        the caches shrink to it, evicting LRU chunks, with fills in flight."""
        limit = data.draw(st.integers(0, 16 * CHUNK))
        self.store._ledger.limit = limit
        shrink_to(limit, [self.store])
        assert self.store.bytes <= limit

    @rule(n=st.integers(1, 8 * CHUNK))
    def shrink_by(self, n: int) -> None:
        self.store.shrink_by(n)

    @invariant()
    def bounded(self) -> None:
        if hasattr(self, "store"):
            store = self.store
            assert store.bytes <= store.capacity
            assert store.bytes <= store._ledger.limit or store._ledger.limit >= 1 << 30
            assert store._ledger.used == store.bytes
            if store.auto:
                assert store.capacity == len(self.ref)
            assert store.bytes == sum(len(c.data) for c in store._chunks.values())
            assert all(c.valid for c in store._chunks.values())

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()


TestCacheModel = CacheModel.TestCase
TestCacheModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class ThrashingCacheModel(CacheModel):
    """The model with the admission rule sampling from the start (and toggled by ``thrash``):
    a LUN of many chunks behind a cache of one or two, so most misses, synchronous and
    asynchronous, are skipped while writes, discards, resizes and fills in flight go on."""

    @initialize(size=st.integers(6 * CHUNK, 40 * KiB), capacity=st.sampled_from([CHUNK, 2 * CHUNK]),
                unit=st.sampled_from([512, CHUNK]), ttl=st.sampled_from([None, 40.0]),
                sample=st.sampled_from([2, 1 << 20]))
    def setup(self, size: int, capacity: int, unit: int, ttl: float | None,  # type: ignore[override]
              sample: int) -> None:
        self._setup(size, capacity, unit, ttl, (1 << 40, sample))
        self.store.thrashing = True


TestThrashingCacheModel = ThrashingCacheModel.TestCase
TestThrashingCacheModel.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


class _PausingStore(MemoryStore):
    """A memory store whose next read_into stops after reading, until released."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.pause_next = False
        self.read_done = threading.Event()
        self.release = threading.Event()

    def read_into(self, offset: int, buf: memoryview) -> None:
        super().read_into(offset, buf)
        if self.pause_next:
            self.pause_next = False
            self.read_done.set()
            assert self.release.wait(10)


@pytest.mark.parametrize("change", ["write", "discard", "write_zeroes", "resize"])
def test_a_fill_that_read_before_a_write_completed_is_not_inserted(change):
    inner = _PausingStore(4 * CHUNK)
    inner.write(0, b"\1" * (4 * CHUNK))
    store = _cached(inner)
    inner.pause_next = True
    got = bytearray(100)
    reader = threading.Thread(target=store.read_into, args=(CHUNK + 10, memoryview(got)))
    reader.start()
    assert inner.read_done.wait(10)  # the reader holds the old bytes, not inserted yet
    if change == "write":
        store.write(CHUNK, b"\2" * CHUNK)
    elif change == "discard":
        store.discard(CHUNK, CHUNK)
    elif change == "write_zeroes":
        store.write_zeroes(0, 4 * CHUNK)
    else:
        store.resize(8 * CHUNK)
        inner.write(CHUNK, b"\2" * CHUNK)  # (the new contents, as far as this test goes)
    inner.release.set()
    reader.join(10)
    assert got == b"\1" * 100  # it started before the change: the old bytes are an answer
    after = store.read(CHUNK + 10, 100)
    expected = {"write": b"\2", "discard": b"\0", "write_zeroes": b"\0", "resize": b"\2"}[change]
    assert after == expected * 100


def test_a_write_drops_the_range_before_it_returns_even_when_it_fails():
    class Failing(MemoryStore):
        fail = False

        def write(self, offset, data):  # type: ignore[override]
            super().write(offset, data)  # half-done, say: the bytes changed, then an error
            if self.fail:
                raise BackingStoreError(5, "EIO after the fact")

    inner = Failing(2 * CHUNK)
    store = _cached(inner)
    assert store.read(0, 10) == bytes(10)  # cached now
    inner.fail = True
    with pytest.raises(BackingStoreError):
        store.write(0, b"x" * 10)
    assert store.read(0, 10) == b"x" * 10


def test_hits_come_from_the_cache_and_writes_invalidate():
    inner = MemoryStore(8 * CHUNK)
    store = _cached(inner)
    store.read(0, 100)
    store.read(50, 100)
    assert (store.hits, store.misses) == (1, 1)
    inner.write(0, b"z" * 10)  # behind the cache's back: a hit still answers from the cache
    assert store.read(0, 10) == bytes(10)
    store.write(0, b"y" * 10)
    assert store.read(0, 10) == b"y" * 10


def test_capacity_and_the_ledger_bound_the_cache_and_it_yields_to_commands():
    class Budget:
        limit = 10 * CHUNK
        used = 0

    budget = Budget()
    led = CacheLedger(6 * CHUNK, budget)
    a = CachedStore(MemoryStore(16 * CHUNK), 4 * CHUNK, chunk=CHUNK, ledger_=led)
    b = CachedStore(MemoryStore(16 * CHUNK), 4 * CHUNK, chunk=CHUNK, ledger_=led)
    a.read(0, 8 * CHUNK)
    assert a.bytes == 4 * CHUNK and led.used == 4 * CHUNK  # its own cap, LRU kept the tail
    b.read(0, 8 * CHUNK)
    assert b.bytes <= 2 * CHUNK and led.used <= 6 * CHUNK  # the daemon-wide limit
    a.shrink_by(4 * CHUNK)
    budget.used = 7 * CHUNK  # commands hold under 3/4 of the budget: the cache still takes
    b.read(12 * CHUNK, CHUNK)
    assert led.used == b.bytes and led.yielded == 0
    budget.used = 8 * CHUNK  # past 3/4: the cache takes nothing more, room or not,
    before, held, squeezed = led.used, b.bytes, b.squeezed
    b.read(8 * CHUNK, CHUNK)
    b.write(0, b"w" * CHUNK)  # (a whole-chunk write would insert a chunk)
    # and keeps what it holds: evicting its own chunks would not make room
    assert led.used == before and b.bytes == held and led.yielded == 2
    assert b.squeezed == squeezed  # (not a refusal by the target: no rebalance for it)
    assert b.read(0, CHUNK) == b"w" * CHUNK
    a.close()
    b.close()
    assert led.used == 0


def _patterned_store(n: int, seed: int) -> MemoryStore:
    import random

    inner = MemoryStore(n)
    inner.write(0, random.Random(seed).randbytes(n))
    return inner


def test_the_memory_target_shrinks_the_largest_caches_first_and_nothing_stale_stays():
    """Three LUNs' caches on one ledger: the target drops, the largest come down to one level
    (water-filling), the smallest keeps all, and every read after matches the store, also where
    writes changed bytes before and after the shrink."""
    led = CacheLedger(1 << 30)
    inners = [_patterned_store(32 * CHUNK, i) for i in range(3)]
    caches = [CachedStore(inner, AUTO, chunk=CHUNK, ledger_=led) for inner in inners]
    for c, chunks in zip(caches, (24, 12, 3), strict=True):
        c.read(0, chunks * CHUNK)
    assert [c.bytes // CHUNK for c in caches] == [24, 12, 3] and led.used == 39 * CHUNK
    caches[1].write(CHUNK, b"w" * 100)  # a write patches a cached chunk
    freed = shrink_to(21 * CHUNK, caches)
    assert freed == 18 * CHUNK and led.used == 21 * CHUNK
    assert [c.bytes // CHUNK for c in caches] == [9, 9, 3]  # 24 and 12 down to one level
    # LRU: the largest kept its most recent chunks (the tail it read last)
    assert sorted(caches[0]._chunks) == list(range(15, 24))
    caches[0].write(20 * CHUNK, b"x" * CHUNK)  # after the shrink
    for c, inner in zip(caches, inners, strict=True):
        for off in range(0, 32 * CHUNK, 3 * CHUNK // 2):
            assert c.read(off, 2000) == inner.read(off, 2000), off
    assert shrink_to(1 << 30, caches) == 0  # nothing to do above what is held
    for c in caches:
        c.close()
    assert led.used == 0


def test_a_cache_refused_room_gets_some_from_the_largest_at_the_next_rebalance():
    led = CacheLedger(16 * CHUNK)
    big = CachedStore(_patterned_store(64 * CHUNK, 1), AUTO, chunk=CHUNK, ledger_=led)
    small = CachedStore(_patterned_store(64 * CHUNK, 2), AUTO, chunk=CHUNK, ledger_=led)
    big.read(0, 32 * CHUNK)
    assert big.bytes == 16 * CHUNK  # the whole target (its own cap is its size: auto)
    assert rebalance([big, small]) == 0  # nobody was refused
    small.read(0, CHUNK)
    assert small.bytes == 0 and small.squeezed == 1  # refused: the target is full
    assert rebalance([big, small]) == CHUNK  # 1/16 of the largest
    assert rebalance([big, small]) == 0  # (once per refusal seen)
    for i in range(20):  # misses keep coming: the small one grows, tick by tick
        small.read((4 * i) % 60 * CHUNK, 4 * CHUNK)
        rebalance([big, small])
    assert big.bytes <= 11 * CHUNK and small.bytes >= 4 * CHUNK, (big.bytes, small.bytes)
    for _ in range(20):  # and it stops where the two are about even
        small.read(0, 64 * CHUNK)
        rebalance([big, small])
    assert abs(big.bytes - small.bytes) <= 3 * CHUNK, (big.bytes, small.bytes)
    assert led.used <= led.limit
    big.close()
    small.close()


def test_auto_capacity_is_the_lun_size_and_follows_a_resize():
    inner = MemoryStore(10 * CHUNK)
    c = CachedStore(inner, AUTO, chunk=CHUNK, ledger_=CacheLedger(1 << 30))
    assert c.auto and c.capacity == 10 * CHUNK
    c.resize(20 * CHUNK)
    assert c.capacity == 20 * CHUNK
    assert parse_capacity("auto") == AUTO and parse_capacity("AUTO") == AUTO
    fixed = CachedStore(MemoryStore(10 * CHUNK), 4 * CHUNK, chunk=CHUNK, ledger_=CacheLedger(1 << 30))
    fixed.resize(20 * CHUNK)
    assert not fixed.auto and fixed.capacity == 4 * CHUNK
    c.close()
    fixed.close()


def test_not_sole_writer_turns_the_cache_off_and_empties_it():
    inner = MemoryStore(4 * CHUNK)
    store = _cached(inner)
    store.read(0, 10)
    assert store.bytes
    store.set_sole_writer(False)
    assert store.bytes == 0 and not store.enabled
    inner.write(0, b"q" * 10)  # another gateway writes
    assert store.read(0, 10) == b"q" * 10
    assert store.cache_status()["coherence"] == "off"


def test_without_upcalls_status_says_single_writer_only():
    store = _cached(MemoryStore(CHUNK))
    assert store.cache_status()["single_writer_only"] is True
    assert store.cache_status()["coherence"] == "single-writer"


def test_a_store_that_watches_invalidations_is_coherent_and_an_upcall_empties_it():
    class Watched(MemoryStore):
        callback = None

        def watch_invalidations(self, cb, on_range=None):
            self.callback = cb
            return 30.0

        def unwatch_invalidations(self, cb):
            self.callback = None

    inner = Watched(4 * CHUNK)
    now = [0.0]
    store = _cached(inner, clock=lambda: now[0])
    assert store.cache_status()["coherence"] == "upcall" and store.ttl == 30.0
    store.read(0, 10)
    inner.write(0, b"o" * 10)  # another client
    inner.callback()  # its upcall
    assert store.read(0, 10) == b"o" * 10
    inner.write(0, b"p" * 10)
    now[0] = 31.0  # older than the invalidation timeout: not trusted any more
    assert store.read(0, 10) == b"p" * 10
    store.close()
    assert inner.callback is None


@pytest.mark.parametrize("unit", [CHUNK, 512])
def test_worker_threads_never_read_older_than_the_last_acknowledged_write(unit):
    """Readers race a writer that stamps chunks with rising versions; a read must see at least
    the version acknowledged before it started (whole-chunk fills, and unit fills)."""
    nblocks = 8
    inner = MemoryStore(nblocks * CHUNK)
    store = _cached(inner, capacity=4 * CHUNK, unit=unit)  # smaller than the data: eviction too
    acked = [0] * nblocks
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        import random

        rnd = random.Random(1)
        for v in range(1, 1500):
            blk = rnd.randrange(nblocks)
            op = rnd.randrange(4)
            stamp = v.to_bytes(4, "big") * (CHUNK // 4)
            if op == 3:
                store.writev(blk * CHUNK, [stamp[:100], stamp[100:]])
            else:
                store.write(blk * CHUNK, stamp)
            acked[blk] = v
        stop.set()

    def reader(seed: int) -> None:
        import random

        rnd = random.Random(seed)
        while not stop.is_set():
            blk = rnd.randrange(nblocks)
            floor = acked[blk]
            off = blk * CHUNK + 4 * rnd.randrange(CHUNK // 4 - 1)
            got = store.read(off - off % 4, 4)
            if int.from_bytes(got, "big") < floor:
                errors.append(f"block {blk}: read {int.from_bytes(got, 'big')} after {floor}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    writer()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert store.hits  # the cache did serve some of it


def test_parse_capacity():
    assert parse_capacity("64MiB") == 64 << 20
    assert parse_capacity("off") == 0 and parse_capacity(0) == 0
    with pytest.raises(ValueError):
        parse_capacity("lots")


def test_a_sequential_stream_reads_ahead_and_random_reads_do_not():
    class Counting(MemoryStore):
        calls = 0

        def read_into(self, offset, buf):  # type: ignore[override]
            self.calls += 1
            super().read_into(offset, buf)

    inner = Counting(64 * CHUNK)
    inner.write(0, bytes(range(256)) * (64 * CHUNK // 256))
    store = _cached(inner, capacity=64 * CHUNK, readahead=8 * CHUNK)
    for i in range(32):
        assert store.read(i * CHUNK, CHUNK) == inner.read(i * CHUNK, CHUNK)
        inner.calls -= 1  # (the check's own read)
    assert inner.calls <= 32 // 8 + 3, inner.calls  # one brick read per window, not per read
    assert store.readahead_bytes

    inner2 = Counting(64 * CHUNK)
    random_reads = _cached(inner2, capacity=64 * CHUNK, readahead=8 * CHUNK)
    for i in (5, 1, 9, 3, 30, 17):
        random_reads.read(i * CHUNK, CHUNK)
    assert random_reads.readahead_bytes == 0 and inner2.calls == 6


@pytest.mark.parametrize(
    "options",
    [{"cache": "lots"}, {"cache": "-1"}, {"cache_chunk": "3000"}, {"cache_chunk": "4MiB"}],
)
def test_bad_cache_options_are_einval_before_any_connection(options):
    import errno

    from gluster_iscsi.backstore.open import open_store

    with pytest.raises(BackingStoreError) as e:
        open_store("gluster://127.0.0.1/no-such-volume/x.img", **options)
    assert e.value.errno == errno.EINVAL and "cache" in str(e.value)


def test_serve_gfapi_cache_option_and_the_ledger_from_the_budget():
    import click

    from gluster_iscsi.backstore import cache as cachemod
    from gluster_iscsi.buffers import MemoryBudget
    from gluster_iscsi.cli.serve import _cache_size

    assert _cache_size(None, None, "1GiB") == 1 << 30  # type: ignore[arg-type]
    assert _cache_size(None, None, "0") == 0  # type: ignore[arg-type]
    with pytest.raises(click.BadParameter):
        _cache_size(None, None, "plenty")  # type: ignore[arg-type]
    saved = (cachemod._ledger, cachemod._default_capacity)
    cachemod._ledger = None
    try:
        led = cachemod.configure(MemoryBudget(1 << 30), 64 << 20)
        assert led.limit == 256 << 20 and cachemod.default_capacity() == 64 << 20
    finally:
        cachemod._ledger, cachemod._default_capacity = saved


def test_a_range_drop_from_the_store_forgets_that_range_only():
    # the gfapi store's on_range: the bricks forgot one shard's inode (gfapi/store.py
    # _on_upcall), so that shard's bytes are no longer covered by upcalls; the rest is
    class Watched(MemoryStore):
        on_range = None

        def watch_invalidations(self, cb, on_range=None):
            self.on_range = on_range
            return 30.0

        def unwatch_invalidations(self, cb):
            pass

    inner = Watched(4 * CHUNK)
    store = _cached(inner, capacity=4 * CHUNK, clock=lambda: 0.0)
    assert inner.on_range == store.invalidate_range
    store.read(0, 4 * CHUNK)  # all cached
    inner.write(CHUNK, b"n" * 10)  # another client, then its shard is forgotten
    inner.write(3 * CHUNK, b"m" * 10)  # (a change outside the dropped range: still cached)
    inner.on_range(CHUNK, CHUNK)
    misses = store.misses
    assert store.read(CHUNK, 10) == b"n" * 10 and store.misses == misses + 1
    assert store.read(0, 10) == bytes(10) and store.read(2 * CHUNK, 10) == bytes(10)
    assert store.read(3 * CHUNK, 10) == bytes(10)  # from memory: the range drop left it
    assert store.misses == misses + 1 and store.cache_status()["invalidations"] == 1
    store.close()


def test_summary_for_status_hit_ratio_bytes_and_upcalls():
    """``cache.summary()``, the read caches in the daemon's ``status`` (issue 19): hit ratio,
    bytes held, and "off (single-writer only)" when no cache has upcalls."""
    import gc

    from gluster_iscsi.backstore import cache as cachemod

    class Watched(MemoryStore):
        def watch_invalidations(self, cb, on_range=None):
            return 30.0

        def unwatch_invalidations(self, cb):
            pass

    gc.collect()
    plain = _cached(MemoryStore(8 * CHUNK))
    empty = cachemod.summary([])
    assert empty["luns"] == 0 and empty["hit_ratio"] is None and empty["upcalls"] is None
    plain.read(0, 10)  # miss: one chunk filled
    plain.read(0, 10)  # hit
    plain.read(5, 10)  # hit
    plain.read(CHUNK, 10)  # miss
    s = cachemod.summary([plain])
    assert (s["luns"], s["enabled"], s["hits"], s["misses"]) == (1, 1, 2, 2)
    assert s["hit_ratio"] == 0.5 and s["bytes_cached"] == 2 * CHUNK == plain.bytes
    assert s["upcalls"] == cachemod.SINGLE_WRITER_ONLY == "off (single-writer only)"
    line = cachemod.summary_line(s)
    assert "1 of 1 LUNs on" in line and "hit ratio 50.0%" in line
    assert "upcalls off: single-writer only" in line
    assert cachemod.summary_line(empty) == "read cache: no gfapi LUN has one"
    watched = _cached(Watched(8 * CHUNK))
    assert cachemod.summary([watched])["upcalls"] == "on"
    assert "coherent with other Gluster clients" in cachemod.summary_line(
        cachemod.summary([watched]))
    mixed = cachemod.summary([plain, watched])
    assert mixed["upcalls"] == "mixed" and mixed["luns_with_upcalls"] == 1
    assert "upcalls on 1 of 2 LUNs (the others single-writer only" in cachemod.summary_line(
        mixed)
    off = _cached(MemoryStore(CHUNK), capacity=0)  # cache 0: not a cached LUN
    assert cachemod.summary([off])["luns"] == 0
    # Without an argument: every cache open now, and none once closed.
    every = cachemod.summary()
    assert every["luns"] >= 2 and every["bytes_cached"] >= 2 * CHUNK
    for c in (plain, watched, off):
        c.close()
    gc.collect()
    assert cachemod.summary()["bytes_cached"] == every["bytes_cached"] - 2 * CHUNK


def test_a_write_of_whole_chunks_is_cached_and_racing_writes_are_not():
    """A write that succeeded leaves the whole chunks it covered in the cache (as the page
    cache keeps what is written: a LUN written end to end reads from memory), partial
    chunks dropped; but when another write of the same chunks was in flight, the two may
    have landed in either order, and neither is cached."""

    class PausingWrites(MemoryStore):
        pause_next = False

        def __init__(self, size: int) -> None:
            super().__init__(size)
            self.landed = threading.Event()
            self.release = threading.Event()

        def write(self, offset, data):  # type: ignore[override]
            super().write(offset, data)
            if self.pause_next:
                self.pause_next = False
                self.landed.set()
                assert self.release.wait(10)

    inner = PausingWrites(8 * CHUNK)
    store = _cached(inner)
    store.write(CHUNK - 10, b"a" * (2 * CHUNK + 20))  # chunks 1 and 2 whole, 0 and 3 partly
    assert sorted(store._chunks) == [1, 2] and store.bytes == 2 * CHUNK
    inner.write(CHUNK, b"z" * 10)  # behind its back: a hit proves it came from the cache
    assert store.read(CHUNK, 10) == b"a" * 10 and (store.hits, store.misses) == (1, 0)
    assert store.read(CHUNK - 20, 20) == bytes(10) + b"a" * 10  # chunk 0 was dropped: a miss
    assert store.misses == 1
    # A write covering a cached chunk in part patches it (a 4K write does not cost the
    # chunk); one covering an uncached chunk in part leaves it uncached.
    assert store.read(6 * CHUNK, 10) == bytes(10) and store.misses == 2  # chunk 6 cached
    store.writev(6 * CHUNK + 100, [b"p" * 5, bytearray(b"q" * 5)])
    assert sorted(store._chunks) == [0, 1, 2, 6] and store.bytes == 4 * CHUNK
    inner.write(6 * CHUNK, b"z" * 200)  # behind its back again
    assert store.read(6 * CHUNK + 95, 20) == bytes(5) + b"ppppp" + b"qqqqq" + bytes(5)
    assert store.misses == 2
    store.write(7 * CHUNK + 1, b"u")  # chunk 7 was not cached: stays out
    assert 7 not in store._chunks
    # Two writes of chunk 4 in flight: the first lands, then the second runs whole, then
    # the first returns. The store holds the second's bytes; the first must not be cached.
    inner.pause_next = True
    first = threading.Thread(target=store.write, args=(4 * CHUNK, b"1" * CHUNK))
    first.start()
    assert inner.landed.wait(10)
    store.write(4 * CHUNK, b"2" * CHUNK)
    inner.release.set()
    first.join(10)
    assert 4 not in store._chunks
    assert store.read(4 * CHUNK, CHUNK) == inner.read(4 * CHUNK, CHUNK)


def test_the_runner_answers_cache_hits_on_the_loop_and_sends_misses_to_the_workers():
    """A hit costs no hand-off to the store's worker threads (issue 19: gfapi hot reads as
    fast as the page cache); a miss, or a LU whose lock COMPARE AND WRITE holds, goes there."""
    from gluster_iscsi.buffers import BufferPool
    from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiTask, Status
    from gluster_iscsi.server.runner import Runner, lu_on, lu_state

    class Blocking(MemoryStore):
        blocking = True  # as the gfapi store: its calls run on the workers

    class Pool:
        def __init__(self) -> None:
            self.calls = 0
            self.hold = False  # True: take the call, never run it (a worker still busy)

        def in_flight(self) -> bool:
            return False

        def submit(self, fn, arg, callback, timeout=0.0) -> None:
            self.calls += 1
            if self.hold:
                return
            try:
                value, exc = fn(arg), None
            except Exception as e:  # handed back as the pool does
                value, exc = None, e
            callback(value, exc)

    class Engines:
        io_timeout = 7.0
        ring = None
        gfaio = None

        class poller:
            missed_at = None

        def __init__(self) -> None:
            self.pool = Pool()

        def pool_for(self, store):
            return self.pool

    class Host:
        def __init__(self) -> None:
            self.results = []

        def reserve(self, task, n):
            return True

        def alone(self):
            return True

        def complete(self, task, result):
            self.results.append(result)

    nexus = Nexus("iqn.x:i", "iqn.x:i,i,0x1", "iqn.x:t,t,0x1")
    inner = Blocking(16 * CHUNK)
    inner.write(CHUNK, b"h" * CHUNK)
    store = _cached(inner)
    lu = lu_on(store, serial="hits")
    device = DeviceServer({0: lu})
    device.nexus_added(nexus)
    lu.clear_ua(nexus.initiator_port)
    engines = Engines()
    runner = Runner(engines, buffers=BufferPool())  # type: ignore[arg-type]
    host = Host()

    def read(lba: int, blocks: int) -> bytes:
        cdb = bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") + b"\0"
        task = ScsiTask(cdb, 0, nexus, expected_length=blocks * 512)
        runner.start(task, device.execute(task), lu, host)
        result = host.results[-1]
        assert result.status == Status.GOOD
        return bytes(result.data)

    lba = CHUNK // 512
    assert read(lba, 8) == b"h" * 4096 and engines.pool.calls == 1  # a miss: on the workers
    assert read(lba, 8) == b"h" * 4096 and engines.pool.calls == 1  # a hit: not
    assert (store.hits, store.misses) == (1, 1) and len(host.results) == 2
    # COMPARE AND WRITE holds the LU's lock: the loop must not wait for it, the hit goes to
    # the workers (which wait there).
    lock = lu_state(lu).lock
    lock.acquire()
    engines.pool.hold = True
    try:
        cdb = bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 8, 0])
        task = ScsiTask(cdb, 0, nexus, expected_length=4096)
        runner.start(task, device.execute(task), lu, host)
        assert engines.pool.calls == 2 and len(host.results) == 2
    finally:
        lock.release()


class _Recording(MemoryStore):
    """A memory store that records the (offset, length) of each read_into."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.reads: list[tuple[int, int]] = []

    def read_into(self, offset, buf):  # type: ignore[override]
        self.reads.append((offset, len(buf)))
        super().read_into(offset, buf)


def test_a_random_miss_reads_only_its_units_and_a_sequential_stream_whole_chunks():
    """Issue 19, cold set: a 4K random miss read a whole 64 KiB chunk (~450 us at the bricks
    against ~260 us for 4 KiB); now it reads the units it needs, and only a sequential stream
    fills whole chunks and reads ahead."""
    big = 64 * KiB
    inner = _Recording(64 * big)
    inner.write(0, bytes(range(256)) * (64 * big // 256))
    store = CachedStore(inner, 16 * big, ledger_=CacheLedger(1 << 30))  # the defaults
    assert store.read(5 * big + 8192 + 512, 4096) == inner.read(5 * big + 8192 + 512, 4096)
    inner.reads.pop()  # (the check's own read)
    assert inner.reads == [(5 * big + 8192, 8192)]  # the two 4K units it straddles, not 64K
    assert (store.chunk, store.unit) == (big, 4 * KiB)
    # those units hit now, their neighbours miss (one unit each)
    inner.reads.clear()
    assert store.read(5 * big + 8192, 8192) == inner.read(5 * big + 8192, 8192)
    assert store.read(5 * big + 20480, 100) == inner.read(5 * big + 20480, 100)
    assert inner.reads == [(5 * big + 8192, 8192), (5 * big + 20480, 4096), (5 * big + 20480, 100)]
    assert store.bytes == big  # one chunk's memory, three of its units valid
    # A sequential stream: the second read in a row fills whole chunks, the third reads ahead.
    inner.reads.clear()
    for k in range(3):
        store.read(20 * big + k * 4096, 4096)
    assert inner.reads[0] == (20 * big, 4096)
    assert inner.reads[1] == (20 * big, big)
    assert len(inner.reads) == 2 and store.readahead_bytes == 0  # the third read hit
    for k in range(3, 40):
        store.read(20 * big + k * 4096, 4096)
    assert store.readahead_bytes > 0
    assert len(inner.reads) <= 4  # one brick read per readahead window, not per read


def test_a_write_patches_the_units_it_covers_and_a_discard_drops_only_its_own():
    """A write into a cached chunk patches it and makes the units it covers whole valid; one
    into a chunk not cached caches it only if it covers it whole (a 64K chunk for each 4K
    write cost more CPU than the write's own path). UNMAP/WRITE SAME drop only the units they
    touch, not the whole chunk."""
    big = 64 * KiB
    inner = MemoryStore(8 * big)
    store = CachedStore(inner, 8 * big, ledger_=CacheLedger(1 << 30))
    store.write(3 * big + 4096, b"n" * 4096)  # a chunk not cached, covered in part: stays out
    assert 3 not in store._chunks
    store.write(4 * big, b"c" * big)  # covered whole: cached
    inner.write(4 * big, b"x" * 10)
    assert store.read(4 * big, 10) == b"c" * 10 and store.misses == 0
    assert store.read(big + 4096, 10) == bytes(10) and store.misses == 1  # caches unit 1 only
    store.write(big + 4096 - 10, b"w" * (8192 + 20))  # units 1, 2 whole; 0 and 3 in part
    inner.write(big + 4096, b"z" * 8192)  # behind its back: a hit proves the cache answered
    assert store.read(big + 4096, 8192) == b"w" * 8192 and store.misses == 1
    assert store.bytes == 2 * big
    assert store.read(big + 4096 - 10, 10) == b"w" * 10 and store.misses == 2  # unit 0: a miss
    # a write covering a valid unit in part patches it
    store.write(big + 4096 + 1, b"p")
    inner.write(big + 4096, b"z" * 8192)
    assert store.read(big + 4096, 3) == b"wpw" and store.misses == 2
    # A discard (UNMAP) of unit 2 leaves units 0 and 1 cached
    store.discard(big + 8192, 4096)
    assert store.read(big + 4096, 3) == b"wpw" and store.misses == 2
    assert store._chunks[1].valid == 0b0011 and store._chunks[4].valid == 0xFFFF
    assert store.read(big + 8192, 4096) == bytes(4096) and store.misses == 3  # from the store
    store.write_zeroes(big, 8192)  # WRITE SAME: units 0 and 1; the chunk keeps only unit 2
    assert store._chunks[1].valid == 0b0100
    assert store.read(big, 8192) == bytes(8192)
    store.discard(big, big)
    assert 1 not in store._chunks
    # SANITIZE BLOCK ERASE, XCOPY and resize end in the same calls (discard, write, resize)
    store.resize(16 * big)
    assert store.bytes == 0 and not store._chunks


def test_a_region_in_use_stays_cached_past_the_ttl_and_one_left_alone_expires():
    """With upcalls the bricks notify a client only of inodes it touched within the volume's
    cache-invalidation-timeout (ttl: half of it). Cached bytes used to expire ttl after their
    fill however busy the file was, so a LUN written end to end (the benchmark's prefill) was
    read from the bricks again half a timeout later. Now a region that this store keeps
    touching (a miss every ttl/2 renews it) stays cached; one left alone longer than the ttl
    is dropped at the next touch."""

    class Watched(MemoryStore):
        def watch_invalidations(self, cb, on_range=None):
            return 30.0

        def unwatch_invalidations(self, cb):
            pass

    big = 64 * KiB
    inner = Watched(128 * big)
    now = [0.0]
    store = CachedStore(inner, 128 * big, ledger_=CacheLedger(1 << 30), clock=lambda: now[0])
    store.write(0, b"a" * (2 * big))  # (one 4 MiB region)
    inner.write(0, b"z" * (2 * big))  # behind its back: a hit answers "a"
    now[0] = 10.0
    assert store.read(big, 10) == b"a" * 10 and store.misses == 0
    now[0] = 20.0  # past ttl/2: this read goes to the bricks (and renews the region)
    assert store.read(0, 10) == b"z" * 10 and store.misses == 1
    now[0] = 35.0  # 35 s after the write, 15 after the renewal: still trusted
    assert store.read(big + 100, 10) == b"a" * 10 and store.misses == 1
    now[0] = 80.0  # left alone for more than the ttl: what was cached there is dropped
    assert store.read(0, 10) == b"z" * 10 and store.misses == 2
    assert store.read(big + 100, 10) == b"z" * 10 and store.misses == 3


def test_the_keeper_renews_the_regions_a_cache_holds_so_they_stay_trusted_when_only_hit():
    """A hot set read only from memory (or an idle LUN) does not touch the bricks, which then
    forget this client after the volume's cache-invalidation-timeout: the whole cache used to
    expire ttl after its fill (the benchmark's reads a minute after the prefill went to the
    bricks). ``keep_alive`` (the keeper thread's pass) reads one unit at each end of every
    region held and not touched for a quarter of the ttl, so those bytes stay trusted."""

    class Watched(_Recording):
        def watch_invalidations(self, cb, on_range=None):
            return 40.0

        def unwatch_invalidations(self, cb):
            pass

    big = 64 * KiB
    region = 4 << 20
    inner = Watched(2 * region)
    now = [0.0]
    store = CachedStore(inner, 2 * region, ledger_=CacheLedger(1 << 30), clock=lambda: now[0])
    assert not store.kept  # (a test clock: no keeper thread, the test calls keep_alive)
    store.write(0, b"a" * (2 * big))  # region 0
    store.write(region, b"b" * big)  # region 1
    inner.write(0, b"z" * (2 * big))  # behind its back: hits answer "a"
    now[0] = 5.0
    assert store.keep_alive() == 0 and not inner.reads  # touched 5 s ago: nothing due
    now[0] = 11.0  # past ttl/4 = 10
    assert store.keep_alive() == 2
    assert sorted(inner.reads) == [(0, 4096), (region - 4096, 4096), (region, 4096),
                                   (2 * region - 4096, 4096)]
    for t in (21.0, 31.0, 41.0, 51.0, 61.0):  # only hits from now on, the keeper renewing
        now[0] = t
        store.keep_alive()
        assert store.read(100, 10) == b"a" * 10
    assert store.misses == 0 and store.expired == 0 and store.renewals >= 6
    now[0] = 200.0  # the keeper stopped (say the bricks were away): dropped, not trusted
    assert store.keep_alive() == 0 and store.expired == 2 and not store._chunks
    assert store.read(100, 10) == b"z" * 10


def test_a_cache_with_upcalls_on_real_time_is_kept_by_the_keeper_thread():
    from gluster_iscsi.backstore import cache as cachemod

    class Watched(MemoryStore):
        def watch_invalidations(self, cb, on_range=None):
            return 30.0

        def unwatch_invalidations(self, cb):
            pass

    plain = CachedStore(MemoryStore(CHUNK), CHUNK, ledger_=CacheLedger(1 << 30))
    watched = CachedStore(Watched(CHUNK), CHUNK, ledger_=CacheLedger(1 << 30))
    try:
        assert not plain.kept and watched.kept  # no upcalls: nothing to renew
        keeper = cachemod._keeper
        assert keeper is not None and keeper.is_alive() and keeper.daemon
        assert watched.cache_status()["renewals"] == 0 and "expired" in watched.cache_status()
    finally:
        plain.close()
        watched.close()


class _Outage(MemoryStore):
    """A store with upcalls whose calls fail with ENOTCONN while ``down`` (the bricks away),
    and whose bytes can change behind the cache's back with no upcall (another client's write
    while this client was disconnected: the bricks forgot this client, so none was sent)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.down = False
        self.pause_next = False
        self.read_done = threading.Event()
        self.release = threading.Event()

    def watch_invalidations(self, cb, on_range=None):
        return 40.0

    def unwatch_invalidations(self, cb):
        pass

    def _unless_down(self) -> None:
        if self.down:
            raise BackingStoreError(errno.ENOTCONN, "Transport endpoint is not connected", "o")

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._unless_down()
        super().read_into(offset, buf)
        if self.pause_next:
            self.pause_next = False
            self.read_done.set()
            assert self.release.wait(10)

    def write(self, offset, data) -> None:
        self._unless_down()
        super().write(offset, data)

    def flush(self) -> None:
        self._unless_down()
        super().flush()

    def discard(self, offset: int, length: int) -> None:
        self._unless_down()
        super().discard(offset, length)


@pytest.mark.parametrize("failed", ["read", "write", "flush", "discard", "keeper"])
def test_a_failed_store_call_empties_the_cache_as_upcalls_may_have_been_lost(failed):
    """Issue 19 follow-up (the stopped-volume test once read bytes older than a SYNCHRONIZE
    CACHE'd write): what the cache held before the bricks were lost is not trusted after, as
    the bricks sent no upcall for what changed meanwhile. A failed call (ENOTCONN here) is
    how the loss shows: it empties the cache. Before, the chunks stayed, fresh by the clock,
    and answered the old bytes."""
    inner = _Outage(8 * CHUNK)
    now = [0.0]
    store = _cached(inner, clock=lambda: now[0])
    store.write(0, b"a" * (2 * CHUNK))  # kept (whole chunks) and fresh
    assert store.read(0, 2 * CHUNK) == b"a" * (2 * CHUNK) and store.hits == 1
    inner.down = True
    with pytest.raises(BackingStoreError):
        if failed == "read":
            store.read(4 * CHUNK, 10)  # a range not cached: it goes to the store
        elif failed == "write":
            store.write(4 * CHUNK, b"w" * 10)
        elif failed == "flush":
            store.flush()
        elif failed == "discard":
            store.discard(4 * CHUNK, CHUNK)
        else:
            now[0] = 11.0  # past ttl/4 (10 s): due for renewal, still fresh (ttl/2 = 20 s)
            assert store.keep_alive() == 0
            raise BackingStoreError(errno.ENOTCONN, "(the keeper swallows it)", "o")
    inner.down = False
    MemoryStore.write(inner, 0, b"z" * (2 * CHUNK))  # meanwhile, no upcall
    assert store.read(0, 2 * CHUNK) == b"z" * (2 * CHUNK)
    assert store.cache_status()["error_drops"] == 1
    store.close()


def test_a_fill_that_read_before_a_store_failure_is_not_inserted_after_it():
    """A fill that read the bricks before they were lost and inserts after another call saw
    the loss holds bytes nobody vouches for any more (an upcall for them may be lost)."""
    inner = _Outage(8 * CHUNK)
    store = _cached(inner, clock=lambda: 0.0)
    MemoryStore.write(inner, 0, b"a" * CHUNK)
    inner.pause_next = True
    got = bytearray(CHUNK)
    reader = threading.Thread(target=store.read_into, args=(0, memoryview(got)))
    reader.start()
    assert inner.read_done.wait(10)  # it read "a", not inserted yet
    inner.down = True
    with pytest.raises(BackingStoreError):
        store.read(4 * CHUNK, 10)
    inner.down = False
    inner.release.set()
    reader.join(10)
    assert got == b"a" * CHUNK
    MemoryStore.write(inner, 0, b"z" * CHUNK)  # meanwhile, no upcall
    assert store.read(0, CHUNK) == b"z" * CHUNK
    store.close()


def test_the_keeper_stops_at_the_first_failed_renewal():
    """During an outage the keeper's pass used to read every held region at the bricks in
    turn, each failing (18 ENOTCONN in one stopped-volume test, 5 without); the first
    failure empties the cache, so the pass ends there and the next has nothing to renew."""
    region = 4 << 20

    class Counting(_Outage):
        attempts = 0

        def read_into(self, offset: int, buf: memoryview) -> None:
            self.attempts += 1
            super().read_into(offset, buf)

    inner = Counting(3 * region)
    now = [0.0]
    store = CachedStore(inner, 3 * region, ledger_=CacheLedger(1 << 30), clock=lambda: now[0])
    for r in range(3):
        store.write(r * region, b"a" * (64 * KiB))
    inner.down = True
    now[0] = 11.0  # every region due (ttl 40: past ttl/4)
    assert store.keep_alive() == 0
    assert inner.attempts == 1 and store.error_drops == 1 and not store._chunks
    now[0] = 22.0
    assert store.keep_alive() == 0 and inner.attempts == 1
    store.close()


#: What callers read off a LU's store that may be a CachedStore, beyond the BackingStore
#: interface, and who reads it (a getattr with a default where the store may lack it):
_READ_OFF_STORES = {
    "store_errors": "server/metrics.py (getattr, None): /metrics lun_store_errors",
    "io_threads": "server/daemon.py pool_for (getattr, None): the store's worker count",
    "created": "backstore/provision.py create_backing (getattr, True)",
    "path": "backstore/provision.py remove_backing",
    "_vol": "backstore/provision.py remove_backing",
    "allocate": "backstore/provision.py _fallocate (getattr, None)",
    "o_direct": "tests/backstore/test_gfapi.py (a group LU's store)",
    "address": "the gfapi store's identity (tests/backstore/test_gfapi.py)",
    "write_behind": "server/runner.py _write_behind (getattr, False): writes acknowledged early",
    "_client": "tests/backstore/test_gfapi.py (two stores share one client)",
    "write_piece": "server/gfaio.py (getattr, 0): a write's asynchronous calls, one a piece",
    "cache_status": "control/api.py, server/metrics.py (the cache's own)",
    "read_hit": "server/runner.py _read_hit (the cache's own)",
    "lends_fd": "server/runner.py (getattr, False): never lend (the cache's own)",
}


def _gfapi_like_inner():
    """A GfapiStore (the real class: its methods, properties, class attributes) on a memory
    file, without a volume: what the cache wraps in the daemon."""
    from gluster_iscsi.backstore.gfapi.store import GfapiStore

    class Volume:
        pass

    class Client:
        volume = Volume()

    class Inner(GfapiStore):
        def __init__(self) -> None:  # no volume: the attributes only
            self.mem = MemoryStore(1 << 20)
            self.name, self.path, self.read_only = "gluster://h/v/lun.img", "/lun.img", False
            self.address = object()
            self.o_direct = True
            self.created = True
            self.errors_by_errno = {errno.ENOTCONN: 2}
            self._lock = threading.Lock()
            self._client = Client()

        def read_into(self, offset: int, buf: memoryview) -> None:
            self.mem.read_into(offset, buf)

        def watch_invalidations(self, callback, on_range=None):  # noqa: ANN001, ANN202
            return None

        def close(self, timeout: float | None = None) -> None:
            pass

    return Inner()


def test_the_cache_answers_for_its_inner_stores_own_attributes() -> None:
    """The daemon reads store-specific attributes through the cache (``store_errors`` for
    /metrics, ``io_threads``, ``created``, the gfapi client...). Each is forwarded by its own
    property: the class is compiled, and a compiled class has no ``__getattr__`` (a compiled
    CachedStore on ``__getattr__`` forwarding once lost them all, and /metrics the gfapi
    store's errors). This runs compiled in the real build too."""
    from gluster_iscsi.backstore import cache as cachemod

    inner = _gfapi_like_inner()
    store = CachedStore(inner, 1 << 19, ledger_=CacheLedger(1 << 30))
    try:
        for name in _READ_OFF_STORES:
            assert hasattr(store, name), name
            if name not in ("cache_status", "read_hit", "lends_fd"):
                assert getattr(store, name) == getattr(inner, name), name
        assert store.store_errors() == {"ENOTCONN": 2}  # type: ignore[attr-defined]
        assert store.io_threads is None and store.created is True  # type: ignore[attr-defined]
        assert store._vol is inner._vol  # type: ignore[attr-defined]
        assert store.lends_fd is False  # I/O on a lent descriptor would bypass the cache
        assert getattr(store, "no_such_thing", None) is None
        # Nothing forwarded that no caller reads (the list above is the contract).
        assert set(cachemod.FORWARDED) <= set(_READ_OFF_STORES)
    finally:
        store.close()
    # Over an inner without them (a memory store) each is missing, as it is on the inner:
    # ``getattr(store, name, default)`` callers get their default.
    plain = CachedStore(MemoryStore(1 << 20), 1 << 19, ledger_=CacheLedger(1 << 30))
    try:
        for name in cachemod.FORWARDED:
            assert getattr(plain, name, None) is None, name
    finally:
        plain.close()


def test_every_store_attribute_the_sources_read_is_forwarded() -> None:
    """Each ``getattr(<a store>, "name"...)`` in src/ names an attribute the cache answers
    for (its own or forwarded): a new caller of a gfapi-only attribute must extend
    ``FORWARDED`` (a compiled CachedStore cannot fall back to its inner)."""
    import pathlib
    import re

    import gluster_iscsi

    src = pathlib.Path(gluster_iscsi.__file__).parent
    pattern = re.compile(r"getattr\(\s*[\w.]*store\w*\s*,\s*\"(\w+)\"")
    names = {m.group(1) for path in src.rglob("*.py")
             if path.name != "cache.py" for m in pattern.finditer(path.read_text())}
    assert {"store_errors", "io_threads", "created", "allocate"} <= names  # the scan works
    store = CachedStore(_gfapi_like_inner(), 1 << 19, ledger_=CacheLedger(1 << 30))
    try:
        missing = sorted(n for n in names if not hasattr(store, n))
        assert not missing, f"read off stores, not answered by CachedStore: {missing}"
        assert names <= set(_READ_OFF_STORES) | {"name", "blocking"}, sorted(names)
    finally:
        store.close()


# -- admission: a thrashing cache stops paying for inserts (issue 19) ---------------------------


def _patterned(size: int) -> MemoryStore:
    inner = MemoryStore(size)
    inner.write(0, bytes(range(251)) * (size // 251) + bytes(size % 251))
    return inner


def _read_all(store: CachedStore, ref: MemoryStore, offsets: list[int], bs: int = 4096,
              made: list[int] | None = None) -> float:
    """Read each offset (checking the bytes); the hit ratio of these reads. ``made``: add
    the chunks these reads made (seen in the map: no counter of the cache's own)."""
    h0, m0 = store.hits, store.misses
    buf = memoryview(bytearray(bs))
    held = set(store._chunks)
    for off in offsets:
        store.read_into(off, buf)
        assert buf == ref.read(off, bs), off
        if made is not None:
            now = set(store._chunks)
            made.append(len(now - held))
            held = now
    return (store.hits - h0) / (store.hits + store.misses - h0 - m0)


def test_uniform_random_reads_beyond_the_cache_stop_inserting_and_keep_their_hits():
    """Issue 19, cold set: 4K random reads over a LUN 4x the cache (the defaults: 64 KiB
    chunks, 4 KiB units) inserted every miss, evicting a chunk for nearly each one, for a hit
    ratio that no insert policy changes. Once the cache judges itself thrashing, only about one
    miss in ADMIT_SAMPLE that needs a new chunk takes one: most misses are read straight into
    the caller's and not inserted, the cache stays full and its hit ratio does not drop."""
    import random

    size = 16 << 20
    inner = _patterned(size)
    store = CachedStore(inner, size // 4, ledger_=CacheLedger(1 << 30))
    rnd = random.Random(7)
    units = size // 4096

    def batch(n: int) -> list[int]:
        return [rnd.randrange(units) * 4096 for _ in range(n)]

    _read_all(store, inner, batch(4000))  # warm-up: the cache fills, the rule judges
    misses0, made = store.misses, []
    ratio = _read_all(store, inner, batch(20000), made=made)
    misses = store.misses - misses0
    assert sum(made) < misses // 5, (sum(made), misses)  # each would make one: ~90% of misses
    assert store.bytes == store.capacity  # not emptied: held, just not churned
    assert store.thrashing and store.skipped > misses // 2
    assert store.cache_status()["skipped"] == store.skipped
    # Against the same reads through a cache that inserts every miss (plain LRU).
    lru = CachedStore(_patterned(size), size // 4, ledger_=CacheLedger(1 << 30), admit_sample=1)
    rnd = random.Random(7)
    _read_all(lru, inner, batch(4000))
    lru_ratio = _read_all(lru, inner, batch(20000))
    assert lru.skipped == 0 and lru.evictions > 3 * store.evictions
    assert ratio >= 0.9 * lru_ratio, (ratio, lru_ratio)
    for c in (store, lru):
        c.close()


@pytest.mark.parametrize("layout", ["dense", "strided"])
def test_a_new_hot_set_gets_in_after_thrashing_and_the_rule_turns_off(layout):
    """After a thrashing phase, a hot set half the cache's size read over and over gets in and
    is answered from memory within a bounded number of passes, and the rule turns itself off.
    ``dense``: 4K reads anywhere in 2 MiB (its chunks take all their units once admitted: a
    miss into a cached chunk evicts nothing and is always inserted), mostly hits by the third
    pass. ``strided``: one 4K unit per chunk (the worst case: each unit waits for its own
    sample, 1 in 8 per pass), 32 units, mostly hits within 32 passes (one ADMIT_WINDOW of
    these reads; 15-18 seen: sampling leaves out (7/8)**k of them after k passes). Either way
    the rule, judged every ADMIT_WINDOW reads, is off once hits reach a third of a window."""
    import random

    size = 16 << 20
    inner = _patterned(size)
    store = CachedStore(inner, 4 << 20, ledger_=CacheLedger(1 << 30))
    rnd = random.Random(3)
    _read_all(store, inner, [rnd.randrange(size // 4096) * 4096 for _ in range(6000)])
    assert store.thrashing and store.skipped
    chunk = store.chunk
    if layout == "dense":
        hot = [8 * chunk + k * 4096 for k in range((2 << 20) // 4096)]
        bound = 3
    else:
        hot = [(100 + 2 * k) * chunk + 4096 for k in range(32)]
        bound = 32
    rnd.shuffle(hot)
    ratios = []
    for _ in range(bound):
        ratios.append(_read_all(store, inner, hot))
    assert ratios[-1] >= 0.9, ratios
    # the rule is off once a window of these reads is judged
    _read_all(store, inner, hot * (store._window // len(hot) + 1))
    assert not store.cache_status()["thrashing"] and not store.thrashing
    skipped = store.skipped
    assert _read_all(store, inner, hot) == 1.0 and store.skipped == skipped
    store.close()


def test_a_sequential_stream_is_inserted_and_reads_ahead_while_the_cache_thrashes():
    """Sequential misses are not sampled: what a stream reads ahead pays back only if it is
    inserted (one brick read per readahead window, not per read, also while thrashing)."""
    import random

    big = 64 * KiB
    inner = _Recording(256 * big)
    inner.write(0, bytes(range(256)) * (256 * big // 256))
    store = CachedStore(inner, 16 * big, ledger_=CacheLedger(1 << 30))
    rnd = random.Random(5)
    _read_all(store, inner, [rnd.randrange(256 * big // 4096) * 4096 for _ in range(3000)])
    assert store.thrashing
    inner.reads.clear()
    skipped = store.skipped
    buf = memoryview(bytearray(4096))
    for k in range(64):
        store.read_into(200 * big + k * 4096, buf)
    assert store.skipped - skipped <= 1  # (its first read is not known to be sequential yet)
    assert len(inner.reads) <= 6, inner.reads


def test_a_skipped_miss_reads_straight_into_the_callers_buffer_and_a_failure_still_clears():
    """A miss not admitted reads exactly its bytes into the caller's buffer (also unaligned:
    no scratch buffer, since nothing is inserted) and inserts nothing; through
    ``begin_fill``/``end_fill`` (the runner's asynchronous path) as well; and a failed read of
    such a miss empties the cache, as every failed store call does."""
    size = 64 * CHUNK
    inner = _Recording(size)
    inner.write(0, bytes(range(256)) * (size // 256))
    store = _cached(inner, capacity=4 * CHUNK, admit_window=8, admit_sample=1 << 20)
    for i in range(0, 64, 2):  # every miss evicts: thrashing at the first judged window
        store.read(i * CHUNK, 10)
    assert store.thrashing
    held, evictions = dict(store._chunks), store.evictions
    order = list(store._chunks)
    inner.reads.clear()
    buf = bytearray(700)
    store.read_into(41 * CHUNK + 100, memoryview(buf))
    assert bytes(buf) == inner.read(41 * CHUNK + 100, 700)
    assert inner.reads[0] == (41 * CHUNK + 100, 700)  # not widened to its units
    assert store._chunks == held and list(store._chunks) == order
    assert store.evictions == evictions and store.skipped >= 1
    view = memoryview(bytearray(300))
    fill = store.begin_fill(43 * CHUNK + 7, view)
    assert fill is not None and not fill.admit
    assert fill.view is view and (fill.lo, len(fill.view)) == (43 * CHUNK + 7, 300)
    inner.read_into(fill.lo, fill.view)
    store.end_fill(fill, True)
    assert list(store._chunks) == order and bytes(view) == inner.read(43 * CHUNK + 7, 300)
    view = memoryview(bytearray(CHUNK))  # a whole unit: an insert would cache it
    fill = store.begin_fill(44 * CHUNK, view)
    assert fill is not None and not fill.admit and fill.view is view
    inner.read_into(fill.lo, fill.view)
    store.end_fill(fill, True)
    assert list(store._chunks) == order and store.evictions == evictions
    store.cancel_fill(store.begin_fill(45 * CHUNK, memoryview(bytearray(10))))
    assert store._filling == 0
    fill = store.begin_fill(47 * CHUNK, memoryview(bytearray(10)))
    assert fill is not None and not fill.admit
    store.end_fill(fill, False)  # the bricks failed it
    assert store.error_drops == 1 and not store._chunks and not store.thrashing


def test_status_counts_skipped_misses_and_says_when_admission_is_sampled():
    from gluster_iscsi.backstore import cache as cachemod

    size = 64 * CHUNK
    store = _cached(_patterned(size), capacity=4 * CHUNK, admit_window=8)
    for i in range(0, 64):
        store.read((i * 37 % 64) * CHUNK, 10)
    s = cachemod.summary([store])
    assert s["thrashing"] == 1 and s["skipped"] == store.skipped > 0
    assert "admission sampled on 1 (thrashing)" in cachemod.summary_line(s)
    store.clear()
    s = cachemod.summary([store])
    assert s["thrashing"] == 0 and "sampled" not in cachemod.summary_line(s)
    store.close()


def test_a_write_begun_elsewhere_keeps_its_bytes_whatever_the_views_format():
    """``end_write`` (the asynchronous gfapi path, server/gfaio.py) copies a write's bytes into
    the chunks through their memoryviews, which take only flat unsigned bytes: a view of
    another byte format ('b', 'c') is made one first, the bytes kept are the write's, and
    a later read hits them."""
    inner = MemoryStore(8 * CHUNK)
    store = _cached(inner)
    store.read(0, 4 * CHUNK)  # chunks 0-3 cached
    for k, fmt in enumerate(("b", "c", "B")):
        data = bytes((k * 50 + i) % 256 for i in range(CHUNK + 512))
        begun, when = store.begin_write()
        inner.write(512, data)  # as gfapi would, outside the cache
        store.end_write(512, memoryview(data).cast(fmt), begun, when, True)
        hits = store.hits
        assert store.read(512, len(data)) == data
        assert store.hits > hits  # from the patched chunks, not from the store
