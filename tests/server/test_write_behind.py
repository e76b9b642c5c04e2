"""Write-behind (``Runner._write_behind``): a lone LU with its write cache on acknowledges plain
writes of a blocking store before the store has them, and never lets that show: reads see
every acknowledged write, overlapping writes keep their order, a flush or FUA write (and every
other request) waits for them and reports one that failed, and a closing LU drains them.

The store's workers here are a queue the test empties in the order it likes (``ManualPool``):
no thread, no sleeping, every interleaving reproducible from the seed."""

from __future__ import annotations

import asyncio
import errno
import random
import struct
import threading
from typing import Any

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.backstore.cache import CachedStore, CacheLedger
from gluster_iscsi.backstore.file import FileStore
from gluster_iscsi.backstore.gfapi.store import GfapiStore
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.buffers import BufferPool, MemoryBudget
from gluster_iscsi.scsi import DeviceServer, Nexus, ScsiResult, ScsiTask, Status, io
from gluster_iscsi.scsi.lu import CACHING_PAGE, WCE
from gluster_iscsi.scsi.sense import from_store_error, parse_sense
from gluster_iscsi.server.iopool import IoTimeout
from gluster_iscsi.server.runner import _RUNNING, Runner, lu_on, lu_state

from ..iscsi import initiator as I

N1 = Nexus("iqn.x:i", "iqn.x:i,i,0x1", "iqn.x:t,t,0x1")
BS = 512


class GatedStore(MemoryStore):
    """A blocking in-memory store (as gfapi: its calls go to the workers); ``fail`` makes the
    writes that cover a given offset fail with EIO."""

    blocking = True  # type: ignore[assignment]
    write_behind = True  # (as GfapiStore)

    def __init__(self, size: int) -> None:
        super().__init__(size, name="gated")
        self.fail_at: set[int] = set()
        self.writes = 0

    def write(self, offset: int, data: Any) -> None:
        self.writes += 1
        if offset in self.fail_at:
            raise BackingStoreError(errno.EIO, "brick said no", self.name)
        super().write(offset, data)


class ManualPool:
    """The store's workers: calls wait in a list until the test runs them (``run``), in any
    order, with their completion on the same (the loop's) thread."""

    def __init__(self) -> None:
        self.queue: list[tuple[Any, Any, Any, float]] = []

    def in_flight(self) -> bool:
        return bool(self.queue)

    def submit(self, fn: Any, arg: Any, callback: Any, timeout: float = 0.0) -> None:
        self.queue.append((fn, arg, callback, timeout))

    def run(self, i: int = 0) -> None:
        fn, arg, callback, _ = self.queue.pop(i)
        try:
            value = fn(arg)
        except Exception as e:  # noqa: BLE001 - the call's outcome
            callback(None, e)
            return
        callback(value, None)

    def when_returned(self, then: Any) -> bool:
        return False  # (time_out: the call never runs here)

    def time_out(self, i: int = 0) -> None:
        """The call is late: its command hears IoTimeout (the call itself never runs here)."""
        _, _, callback, _ = self.queue.pop(i)
        callback(None, IoTimeout())

    def drain(self, rng: random.Random | None = None) -> None:
        while self.queue:
            self.run(rng.randrange(len(self.queue)) if rng else 0)


class Engines:
    io_timeout = 7.0
    ring = None
    gfaio = None

    def __init__(self) -> None:
        self.pool = ManualPool()

        class Poller:
            missed_at = None

        self.poller = Poller()

    def pool_for(self, store: object) -> Any:
        return self.pool

    def defer(self, callback: Any) -> None:
        """The loop's next turn: at once here (these tests drive the runner without a loop),
        unless a test queues the deferred starts (``deferred``) to run them itself."""
        if self.deferred is None:
            callback()
        else:
            self.deferred.append(callback)

    deferred: list[Any] | None = None


class Host:
    def __init__(self) -> None:
        self.results: dict[ScsiTask, ScsiResult] = {}

    def reserve(self, task: ScsiTask, n: int) -> bool:
        return True

    def full_status(self) -> Status:
        return Status.TASK_SET_FULL

    def alone(self) -> bool:
        return True

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        self.results[task] = result


class Rig:
    """One LU on a gated store, a runner with write-behind, and helpers to send commands."""

    def __init__(self, size: int = 64 << 10, *, cached: bool = False, window: int = 16 << 10,
                 writes: int = 8, budget: int = 1 << 30, inner: GatedStore | None = None) -> None:
        self.inner = inner if inner is not None else GatedStore(size)
        store: Any = self.inner
        if cached:
            store = CachedStore(self.inner, 1 << 20, chunk=4096, unit=512,
                                ledger_=CacheLedger(1 << 30))
        self.store = store
        self.lu = lu_on(store, serial="wb")
        self.device = DeviceServer({0: self.lu})
        self.device.nexus_added(N1)
        self.lu.clear_ua(N1.initiator_port)
        self.engines = Engines()
        self.pool = self.engines.pool
        self.budget = MemoryBudget(budget)
        self.buffers = BufferPool()
        self.runner = Runner(self.engines, write_behind=window,  # type: ignore[arg-type]
                             write_behind_writes=writes, budget=self.budget,
                             buffers=self.buffers)
        self.host = Host()

    def send(self, cdb: bytes, data: bytes | None = None, *, read: int = 0,
             nexus: Nexus = N1) -> ScsiTask:
        task = ScsiTask(cdb, 0, nexus, data_out=memoryview(bytearray(data)) if data else None,
                        expected_length=read or (len(data) if data else 0),
                        read=bool(read), write=data is not None)
        self.runner.start(task, self.device.execute(task), self.lu, self.host)
        return task

    def result(self, task: ScsiTask, rng: random.Random | None = None) -> ScsiResult:
        """The command's result, running queued store calls (in random order) until it has
        one: a command that waits for nothing queued would hang a real daemon."""
        while task not in self.host.results:
            self.run_one(rng)
        return self.host.results.pop(task)

    def run_one(self, rng: random.Random | None = None) -> None:
        """Run one queued store call or deferred start (``Engines.deferred``), at random."""
        deferred = self.engines.deferred or []
        queue = self.pool.queue
        assert queue or deferred, "the command waits for nothing that can finish"
        i = rng.randrange(len(queue) + len(deferred)) if rng else 0
        if i < len(queue):
            self.pool.run(i)
        else:
            deferred.pop(i - len(queue))()

    def pending(self) -> bool:
        return bool(self.pool.queue or self.engines.deferred)

    def write(self, lba: int, data: bytes, fua: bool = False, nexus: Nexus = N1) -> ScsiTask:
        n = len(data) // BS
        cdb = bytes([0x2A, 0x08 if fua else 0]) + lba.to_bytes(4, "big") + b"\0" \
            + n.to_bytes(2, "big") + b"\0"
        return self.send(cdb, data, nexus=nexus)

    def read(self, lba: int, n: int) -> ScsiTask:
        cdb = bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"
        return self.send(cdb, read=n * BS)

    def sync(self, nexus: Nexus = N1) -> ScsiTask:
        return self.send(bytes([0x35]) + bytes(9), nexus=nexus)

    def unmap(self, lba: int, n: int) -> ScsiTask:
        params = (22).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(4) \
            + lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(4)
        return self.send(bytes([0x42, 0]) + bytes(5) + len(params).to_bytes(2, "big") + b"\0",
                         params)

    def write_same(self, lba: int, n: int, block: bytes) -> ScsiTask:
        cdb = bytes([0x41, 0]) + lba.to_bytes(4, "big") + b"\0" + n.to_bytes(2, "big") + b"\0"
        return self.send(cdb, block)

    def read_capacity(self) -> ScsiTask:
        return self.send(bytes([0x25]) + bytes(9), read=8)

    @property
    def state(self) -> Any:
        return lu_state(self.lu)


def wce_off(lu: Any) -> None:
    """The Caching mode page's WCE bit cleared, as MODE SELECT does."""
    lu.mode_pages[CACHING_PAGE].current[2] &= ~WCE
    assert not lu.write_cache


def good(r: ScsiResult) -> ScsiResult:
    assert r.status == Status.GOOD, parse_sense(r.sense or b"")
    return r


def data_of(r: ScsiResult, n: int) -> bytes:
    return bytes(good(r).data or b"")[:n]  # type: ignore[arg-type]


# -- the model: every read against the acknowledged writes -----------------------------------


@pytest.mark.parametrize("later", [False, True], ids=["started-at-once", "started-later"])
@pytest.mark.parametrize("cached", [False, True], ids=["plain", "read-cache"])
@pytest.mark.parametrize("seed", range(12))
def test_reads_see_every_acknowledged_write_and_a_flush_makes_them_all_durable(
        seed: int, cached: bool, later: bool) -> None:
    """A random mix of writes (with and without FUA), reads, UNMAP, WRITE SAME (zeroes and a
    pattern), SYNCHRONIZE CACHE and READ CAPACITY, one command at a time while background
    writes finish in random order: every read returns the bytes of the writes acknowledged
    before it; after a flush, and at the end, the store holds exactly them (no acknowledged
    write lost or reordered). ``later``: the background writes start at random moments after
    their acknowledgement (the daemon starts them on the loop's next turn), not at once."""
    rng = random.Random(seed)
    size = 32 << 10
    blocks = size // BS
    rig = Rig(size, cached=cached, window=8 << 10, writes=6)
    if later:
        rig.engines.deferred = []
    ref = bytearray(size)
    early = 0
    for step in range(400):
        op = rng.random()
        lba = rng.randrange(blocks)
        n = rng.randint(1, min(16, blocks - lba))
        off, length = lba * BS, n * BS
        if op < 0.45:
            data = rng.randbytes(length)
            task = rig.write(lba, data, fua=rng.random() < 0.1)
            if task in rig.host.results:
                early += 1
            good(rig.result(task, rng))
            ref[off:off + length] = data
        elif op < 0.75:
            got = data_of(rig.result(rig.read(lba, n), rng), length)
            assert got == bytes(ref[off:off + length]), f"step {step}: read {lba}+{n}"
        elif op < 0.8:
            good(rig.result(rig.unmap(lba, n), rng))
            ref[off:off + length] = bytes(length)
        elif op < 0.85:
            block = bytes(BS) if rng.random() < 0.5 else rng.randbytes(BS)
            good(rig.result(rig.write_same(lba, n, block), rng))
            ref[off:off + length] = block * n
        elif op < 0.9:
            good(rig.result(rig.sync(), rng))
            assert bytes(rig.inner._view) == bytes(ref), f"step {step}: flushed"
        elif op < 0.93:
            r = good(rig.result(rig.read_capacity(), rng))
            assert int.from_bytes(bytes(r.data or b"")[:4], "big") == blocks - 1  # type: ignore[arg-type]
        # background writes start and finish at random moments, in random order
        for _ in range(rng.randrange(3)):
            if rig.pending():
                rig.run_one(rng)
    while rig.pending():
        rig.run_one(rng)
    assert bytes(rig.inner._view) == bytes(ref)
    assert early > 20  # write-behind did acknowledge writes early (else the test tests nothing)
    st = rig.state
    assert (st.wb_count, st.wb_bytes, st.wb_ranges, st.wb_parked) == (0, 0, [], [])
    assert rig.budget.used == 0 and rig.runner.wb_share.used == 0
    assert st.stats.wb_writes >= early and st.stats.wb_errors == 0  # (+ WRITE SAME's writes)


def test_a_write_behind_write_starts_after_its_acknowledgement_and_all_of_a_turn_at_once() -> None:
    """The acknowledgement comes first: the store call is started by the loop's next turn
    (``Engines.defer``), once for every write acknowledged in the turn; until then, what
    overlaps it or must wait for it (a read of its blocks, a flush) waits as for a started
    one, and gets its data."""
    rig = Rig()
    rig.engines.deferred = []
    first = rig.write(0, b"\x11" * 4096)
    second = rig.write(16, b"\x22" * 512)
    good(rig.host.results.pop(first))  # acknowledged,
    good(rig.host.results.pop(second))
    assert rig.pool.queue == [] and rig.inner.writes == 0  # not started
    assert len(rig.engines.deferred) == 1  # one start for the turn
    read = rig.read(4, 4)
    flush = rig.sync()
    assert read not in rig.host.results and flush not in rig.host.results
    assert rig.state.wb_count == 2
    rig.engines.deferred.pop()()  # the loop's next turn
    assert rig.engines.deferred == [] and len(rig.pool.queue) == 2
    rig.pool.drain()
    assert data_of(rig.result(read), 2048) == b"\x11" * 2048
    good(rig.result(flush))
    assert bytes(rig.inner._view[8192:8704]) == b"\x22" * 512
    assert rig.state.wb_count == 0 and rig.budget.used == 0


def test_a_write_behind_write_whose_start_fails_is_reported_at_the_next_flush() -> None:
    """A start that raises (a bug) still ends its write: its room is freed and its error
    goes to the next SYNCHRONIZE CACHE, never a write neither done nor failed."""
    rig = Rig()
    rig.engines.deferred = []
    good(rig.result(rig.write(0, b"\x11" * 512)))

    def broken(store: object) -> Any:
        raise RuntimeError("a bug")

    rig.engines.pool_for = broken  # type: ignore[method-assign]
    rig.engines.deferred.pop()()
    del rig.engines.pool_for  # (the class's again)
    st = rig.state
    assert (st.wb_count, st.wb_bytes, st.wb_ranges) == (0, 0, [])
    assert rig.inner.writes == 0
    r = rig.result(rig.sync())
    assert r.status == Status.CHECK_CONDITION, r
    assert parse_sense(r.sense or b"") == (4, 0x4400)  # HARDWARE ERROR, INTERNAL TARGET FAILURE
    good(rig.result(rig.sync()))  # reported once


def test_a_read_and_a_write_overlapping_a_pending_write_wait_for_it() -> None:
    rig = Rig()
    first = rig.write(0, b"\x11" * 4096)
    assert good(rig.host.results.pop(first))  # acknowledged at once
    assert rig.inner.writes == 0 and len(rig.pool.queue) == 1
    read = rig.read(4, 4)  # overlaps: waits, nothing queued for it
    second = rig.write(6, b"\x22" * 1024)  # overlaps too: waits behind it
    # One that does not overlap is not held up; while others wait it is not acknowledged
    # early either (a waiting flush must not be starved by new pending writes).
    apart = rig.write(16, b"\x33" * 512)
    assert read not in rig.host.results and second not in rig.host.results
    assert len(rig.pool.queue) == 2
    rig.pool.run(1)
    good(rig.host.results.pop(apart))
    assert read not in rig.host.results and second not in rig.host.results
    rig.pool.run(0)  # the first write lands
    assert data_of(rig.result(read), 2048) == b"\x11" * 2048
    good(rig.result(second))
    rig.pool.drain()
    assert bytes(rig.inner._view[3072:4096]) == b"\x22" * 1024


def test_an_inline_cache_hit_over_a_pending_write_is_not_served_before_it_landed() -> None:
    """The read cache is updated by ``store.write``, now in the background: a read of the
    cached old bytes must not be answered from memory until the write finished."""
    rig = Rig(cached=True)
    good(rig.result(rig.write(0, b"\x01" * 4096, fua=True)))
    assert data_of(rig.result(rig.read(0, 8)), 4096) == b"\x01" * 4096  # now cached
    assert data_of(rig.result(rig.read(0, 8)), 4096) == b"\x01" * 4096  # a hit: inline
    good(rig.host.results.pop(rig.write(2, b"\x02" * 512)))  # acknowledged early
    read = rig.read(0, 8)
    assert read not in rig.host.results  # the cached old bytes are not served
    rig.pool.run(0)
    assert data_of(rig.result(read), 4096) == b"\x01" * 1024 + b"\x02" * 512 + b"\x01" * 2560


def test_a_flush_waits_for_every_pending_write_and_stops_new_ones_jumping_ahead() -> None:
    rig = Rig()
    for i in range(3):
        good(rig.host.results.pop(rig.write(i * 8, bytes([i + 1]) * 4096)))
    flush = rig.sync()
    assert flush not in rig.host.results and len(rig.pool.queue) == 3
    late = rig.write(40, b"\x09" * 512)  # while the flush waits: not early, not first
    assert late not in rig.host.results
    rig.pool.run(2)
    rig.pool.run(1)
    assert flush not in rig.host.results
    rig.pool.run(0)  # the last pending one: the flush (then the late write) goes on
    good(rig.result(flush))
    assert bytes(rig.inner._view[:3 * 4096]) == b"\x01" * 4096 + b"\x02" * 4096 + b"\x03" * 4096
    good(rig.result(late))


@pytest.mark.parametrize("what", ["unmap", "write_same", "fua", "capacity", "compare_and_write"])
def test_every_other_request_waits_for_pending_writes(what: str) -> None:
    rig = Rig()
    good(rig.host.results.pop(rig.write(0, b"\x07" * 4096)))
    if what == "unmap":
        task = rig.unmap(20, 2)
    elif what == "write_same":
        task = rig.write_same(20, 2, bytes(BS))
    elif what == "fua":
        task = rig.write(20, b"\x05" * 512, fua=True)
    elif what == "capacity":
        task = rig.read_capacity()
    else:
        cdb = bytes([0x89, 0]) + (20).to_bytes(8, "big") + bytes(3) + b"\x01\0\0"
        task = rig.send(cdb, bytes(BS) + b"\x06" * BS)
    assert task not in rig.host.results
    assert len(rig.pool.queue) == 1  # only the pending write: the request is not issued yet
    rig.pool.run(0)
    good(rig.result(task))


# -- deferred errors ------------------------------------------------------------------------


def test_a_failed_background_write_is_reported_by_the_next_flush_then_cleared() -> None:
    rig = Rig()
    rig.inner.fail_at.add(4096)
    good(rig.host.results.pop(rig.write(8, b"\x01" * 512)))  # acknowledged, will fail
    rig.pool.run(0)
    st = rig.state
    assert st.stats.wb_errors == 1 and st.wb_error is not None
    # Until reported no write is acknowledged early: the error is not buried
    w = rig.write(16, b"\x02" * 512)
    assert w not in rig.host.results
    good(rig.result(w))
    assert rig.inner.writes == 2  # the second write ran before its GOOD
    assert good(rig.result(rig.read(8, 1)))  # reads are not the ones told
    r = rig.result(rig.sync())
    expected = from_store_error(BackingStoreError(errno.EIO, "x"), write=True)
    assert r.status == Status.CHECK_CONDITION
    assert parse_sense(r.sense or b"") == (expected.key, expected.asc)
    assert st.wb_error is None
    good(rig.result(rig.sync()))  # reported once
    good(rig.host.results.pop(rig.write(24, b"\x03" * 512)))  # early again
    assert rig.runner.write_behind_status(rig.lu)["deferred_errors"] == 1


def test_a_failed_background_write_is_reported_by_the_next_fua_write() -> None:
    rig = Rig()
    rig.inner.fail_at.add(0)
    good(rig.host.results.pop(rig.write(0, b"\x01" * 512)))
    rig.pool.run(0)
    r = rig.result(rig.write(8, b"\x02" * 512, fua=True))
    assert r.status == Status.CHECK_CONDITION
    good(rig.result(rig.sync()))


def test_a_background_write_that_times_out_is_a_deferred_error_and_its_copy_never_reused() -> None:
    rig = Rig(1 << 20, window=256 << 10)
    data = b"\x04" * (128 << 10)  # a pooled size: a copy from the runner's pool
    good(rig.host.results.pop(rig.write(0, data)))
    _, arg, _, timeout = rig.pool.queue[0]
    assert timeout == 7.0  # bounded by the I/O timeout
    copy = arg[2]
    backing = copy.obj
    rig.pool.time_out(0)
    st = rig.state
    assert st.stats.wb_errors == 1 and st.stats.timeouts == 1 and st.wb_count == 0
    assert rig.budget.used == 0
    assert rig.buffers.borrow(128 << 10).obj is not backing  # the late call may still read it
    r = rig.result(rig.sync())
    # a lost write, not NOT READY (see the next test)
    expected = from_store_error(BackingStoreError(errno.EIO, "x"), write=True)
    assert parse_sense(r.sense or b"") == (expected.key, expected.asc)


@pytest.mark.parametrize("how", ["timeout", "ENOTCONN", "EAGAIN"])
def test_a_deferred_error_is_reported_with_a_sense_initiators_do_not_retry(how: str) -> None:
    """A volume that hangs or drops its bricks fails a background write with an error a
    synchronous write reports as NOT READY (02/04/01, 02/04/0A): initiators retry on it
    (Linux: NEEDS_RETRY, dm-multipath: another path). The flush that reports the deferred
    error must not say so: its retry would get GOOD (the error is reported once) and the
    initiator's fsync would succeed with the acknowledged write lost."""
    rig = Rig()
    good(rig.host.results.pop(rig.write(8, b"\x01" * 512)))
    if how == "timeout":
        rig.pool.time_out(0)
    else:
        err = getattr(errno, how)
        rig.inner.write = lambda offset, data: (_ for _ in ()).throw(  # type: ignore[method-assign]
            BackingStoreError(err, "brick gone", "gated"))
        rig.pool.run(0)
    assert rig.state.stats.wb_errors == 1
    for cmd in ("sync", "fua"):
        if cmd == "fua":
            good(rig.host.results.pop(rig.write(16, b"\x02" * 512)))
            (rig.pool.time_out if how == "timeout" else rig.pool.run)(0)
            task = rig.write(24, b"\x03" * 512, fua=True)
        else:
            task = rig.sync()
        r = rig.result(task)
        assert r.status == Status.CHECK_CONDITION
        key, asc = parse_sense(r.sense or b"")
        assert (key, asc) == (0x03, 0x0C00), f"{cmd}: {key:#x}/{asc:#06x}"  # MEDIUM/WRITE ERROR


def test_a_background_write_that_timed_out_before_a_worker_took_it_is_never_issued() -> None:
    """A hung volume: the workers are stuck, the write-behind writes queued behind them time
    out (their error goes to the next flush) and the initiator goes on writing those blocks.
    Once the volume is back a worker takes the queued stale write: it must not be written,
    over the newer data."""
    rig = Rig()
    good(rig.host.results.pop(rig.write(0, b"\x01" * 512)))
    fn, arg, callback, _ = rig.pool.queue.pop(0)
    callback(None, IoTimeout())  # still queued: the timeout comes first
    r = rig.result(rig.sync())
    assert r.status == Status.CHECK_CONDITION
    good(rig.result(rig.write(0, b"\x02" * 512)))  # the initiator writes the block again
    rig.pool.drain()
    assert rig.inner.writes == 1
    fn(arg)  # the worker is free again and takes the stale call
    assert rig.inner.writes == 1 and bytes(rig.inner._view[:512]) == b"\x02" * 512


def test_a_deferred_error_goes_to_the_initiator_whose_write_failed() -> None:
    """Two initiators share the LU (a cluster file system). A's write fails in the
    background; B's flush comes first. A's own next flush must still fail: had B's taken
    the error, A's fsync would succeed with its write lost. A's flush through its other
    path (multipath: another session, the same initiator name) is A's too; B's flushes
    are not failed for A's write."""
    a1 = N1
    a2 = Nexus("iqn.x:i", "iqn.x:i,i,0x2", "iqn.x:t,t,0x1")  # A's second path
    b = Nexus("iqn.x:other", "iqn.x:other,i,0x1", "iqn.x:t,t,0x1")
    for how in ("flush", "fua"):
        rig = Rig()
        for nexus in (a2, b):
            rig.device.nexus_added(nexus)
            rig.lu.clear_ua(nexus.initiator_port)
        rig.inner.fail_at.add(0)
        good(rig.host.results.pop(rig.write(0, b"\x01" * 512, nexus=a1)))
        rig.pool.run(0)
        if how == "flush":
            good(rig.result(rig.sync(nexus=b)))
        else:
            good(rig.result(rig.write(16, b"\x02" * 512, fua=True, nexus=b)))
        r = rig.result(rig.sync(nexus=a2))
        assert r.status == Status.CHECK_CONDITION, how
        good(rig.result(rig.sync(nexus=a1)))  # reported once
        assert rig.state.wb_error is None
        good(rig.host.results.pop(rig.write(24, b"\x03" * 512, nexus=b)))  # early again


def test_a_background_write_still_under_way_at_its_timeout_holds_its_blocks_until_it_returned(
        ) -> None:
    """A write under way on a hung volume times out (its error goes to the flush) but may
    still land when the volume answers. Until then a read of its blocks cannot say what
    they hold, and a newer write there could be overwritten by it landing late: both fail
    as a timeout does (NOT READY: the initiator retries); once it returned, they go on."""
    async def main() -> None:
        rig = Rig()
        good(rig.host.results.pop(rig.write(0, b"\x01" * 1024)))
        fn, arg, callback, _ = rig.pool.queue.pop(0)
        arg[4].setdefault("start", _RUNNING)  # a worker took it: under way
        callback(None, IoTimeout())
        r = rig.result(rig.sync())
        assert r.status == Status.CHECK_CONDITION  # the deferred error, at once
        for task in (rig.read(1, 1), rig.write(0, b"\x02" * 512), rig.unmap(1, 1),
                     rig.write_same(0, 1, bytes(BS))):
            r = rig.result(task)
            assert r.status == Status.CHECK_CONDITION
            assert parse_sense(r.sense or b"")[0] == 0x02  # NOT READY: retried
        good(rig.host.results.pop(rig.write(8, b"\x03" * 512)))  # other blocks: as usual
        fn(arg)  # the volume answers: the late write lands
        await asyncio.sleep(0)
        good(rig.result(rig.write(0, b"\x02" * 512)))  # the initiator's retry
        rig.pool.drain()
        assert bytes(rig.inner._view[:1024]) == b"\x02" * 512 + b"\x01" * 512
        assert rig.state.wb_late == []

    asyncio.run(main())


def test_a_command_that_fails_when_restarted_ends_alone_and_the_others_go_on(
        caplog: Any) -> None:
    """Commands parked behind a pending write are restarted one by one once it landed. One
    whose restart raises (here its connection's ``complete``, for a write acknowledged early
    at once) ends with the internal error (04/4400) alone: the others parked with it still
    run and answer, and nothing escapes into the pool's completion batch (the other
    completions in it would be lost)."""
    async def main() -> None:
        rig = Rig()
        good(rig.host.results.pop(rig.write(0, b"\x01" * 1024)))
        first, second = rig.write(0, b"\x02" * 512), rig.write(1, b"\x03" * 512)
        third = rig.sync()
        assert not rig.host.results and len(rig.state.wb_parked) == 3
        complete = rig.host.complete
        broken: list[ScsiTask] = []

        def fails_once(task: ScsiTask, result: ScsiResult) -> None:
            if task is first and not broken:
                broken.append(task)
                raise RuntimeError("the connection's answer failed")
            complete(task, result)

        rig.host.complete = fails_once  # type: ignore[method-assign]
        caplog.clear()
        rig.pool.run(0)  # the write lands: the three go on
        assert broken
        r = rig.host.results.pop(first)
        assert r.status == Status.CHECK_CONDITION
        assert parse_sense(r.sense or b"") == (0x04, 0x4400)  # HARDWARE ERROR, INTERNAL
        assert "the connection's answer failed" in caplog.text
        good(rig.host.results.pop(second))  # acknowledged early on its restart
        good(rig.result(third))  # the flush: after both
        assert bytes(rig.inner._view[:1024]) == b"\x02" * 512 + b"\x03" * 512
        assert rig.state.wb_parked == []

    asyncio.run(main())


# -- bounds and memory ----------------------------------------------------------------------


def test_the_window_bounds_writes_and_bytes_and_the_copies_are_charged_to_the_budget() -> None:
    rig = Rig(window=8192, writes=3)
    for i in range(3):
        good(rig.host.results.pop(rig.write(i * 2, b"\x01" * 1024)))
    assert rig.budget.used == 3072 and rig.state.wb_bytes == 3072
    fourth = rig.write(10, b"\x02" * 1024)  # the (N+1)th: synchronous
    assert fourth not in rig.host.results
    rig.pool.drain()
    good(rig.host.results.pop(fourth))
    assert rig.budget.used == 0 and rig.state.wb_count == 0
    good(rig.host.results.pop(rig.write(0, b"\x03" * 8192)))  # the whole window: early
    over = rig.write(20, b"\x04" * 512)  # one more byte than the window: synchronous
    assert over not in rig.host.results
    rig.pool.drain()
    big = rig.write(40, b"\x05" * 8704)  # larger than the window: synchronous
    assert big not in rig.host.results
    rig.pool.drain()
    good(rig.host.results.pop(big))
    assert rig.budget.used == 0


def test_a_full_budget_sends_writes_the_synchronous_way() -> None:
    rig = Rig(budget=1 << 20)
    rig.budget.used = rig.budget.limit - 100  # commands hold (nearly) all of it
    w = rig.write(0, b"\x01" * 512)
    assert w not in rig.host.results
    rig.pool.run(0)
    good(rig.host.results.pop(w))
    assert rig.state.stats.wb_writes == 0


def test_the_commands_pooled_buffer_is_kept_not_copied_and_given_back_once_written() -> None:
    """The transport's pooled data-out buffer is kept (``data_out_kept``), not copied: no
    other buffer is borrowed, and it goes back to the pool once the write is done."""
    from gluster_iscsi.buffers import PooledBuffer

    rig = Rig()
    own = rig.buffers.borrow(4096)
    assert type(own.obj) is PooledBuffer
    own[:] = b"\x05" * 4096
    task = ScsiTask(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0]), 0, N1, data_out=own,
                    expected_length=4096, write=True)
    rig.runner.start(task, rig.device.execute(task), rig.lu, rig.host)
    good(rig.host.results.pop(task))
    assert task.data_out_kept
    assert rig.buffers.retained == 0  # nothing borrowed for a copy (and it is not back yet)
    rig.pool.run(0)
    assert bytes(rig.inner._view[:4096]) == b"\x05" * 4096
    assert rig.buffers.retained == 4096  # back in the pool
    again = rig.buffers.borrow(4096)
    assert again.obj is own.obj


def test_a_buffer_the_command_writes_from_again_is_copied_not_kept() -> None:
    """Only a request that is the command's last use of its data (``Write.last``, a plain
    WRITE) keeps the buffer: a command that writes the same bytes twice (as WRITE SAME and
    SANITIZE write their pattern) gets copies, and both writes land."""
    from gluster_iscsi.buffers import PooledBuffer

    rig = Rig()
    own = rig.buffers.borrow(4096)
    assert type(own.obj) is PooledBuffer
    own[:] = b"\x07" * 4096
    task = ScsiTask(bytes([0x2A]) + bytes(9), 0, N1, data_out=own, expected_length=4096,
                    write=True)

    def twice() -> Any:
        yield io.Write(0, own, False)
        yield io.Write(8192, own, False)
        yield ScsiResult(Status.GOOD)  # (a run's last item is its result)

    rig.runner.start(task, twice(), rig.lu, rig.host)
    good(rig.host.results.pop(task))
    assert not task.data_out_kept and len(rig.pool.queue) == 2
    own[:] = b"\x09" * 4096  # the transport reuses the command's buffer
    rig.pool.drain()
    assert bytes(rig.inner._view[:4096]) == bytes(rig.inner._view[8192:12288]) == b"\x07" * 4096


def test_the_commands_buffer_is_not_kept() -> None:
    rig = Rig()
    task = rig.write(0, b"\x01" * 512)
    good(rig.host.results.pop(task))
    assert task.data_out is not None
    task.data_out[:] = b"\x09" * 512  # the command's buffer, reused by the next command
    rig.pool.run(0)
    assert bytes(rig.inner._view[:512]) == b"\x01" * 512


# -- never write-behind ---------------------------------------------------------------------


def test_no_write_behind_for_fua_wce0_a_group_lu_a_file_store_or_window_zero() -> None:
    def early(rig: Rig, fua: bool = False) -> bool:
        task = rig.write(0, b"\x01" * 512, fua=fua)
        was = task in rig.host.results
        rig.pool.drain()
        good(rig.host.results.pop(task))
        return was

    rig = Rig()
    assert early(rig)  # (the control)
    assert not early(rig, fua=True)
    wce_off(rig.lu)  # MODE SELECT: write cache off (the SBC layer then sets FUA too)
    assert not early(rig)
    assert "WCE=0" in rig.runner.write_behind_status(rig.lu)["state"]
    rig = Rig()
    rig.state.group = object()  # a gateway group's LU: GOOD only once on the volume
    rig.state.issue_deadline = float("inf")
    assert not early(rig)
    rig = Rig()
    rig.inner.write_behind = False  # type: ignore[misc]  # a file: the page cache does it
    assert not early(rig)
    assert not FileStore.__dict__.get("write_behind") and GfapiStore.write_behind
    rig = Rig(window=0)
    assert not early(rig)
    assert rig.runner.write_behind_status(rig.lu)["enabled"] is False


def test_wce_turned_off_lets_pending_writes_finish_as_usual() -> None:
    rig = Rig()
    good(rig.host.results.pop(rig.write(0, b"\x01" * 512)))
    wce_off(rig.lu)
    w = rig.write(8, b"\x02" * 512)
    assert w not in rig.host.results  # FUA now: waits for the pending one, then is written
    rig.pool.drain()
    good(rig.result(w))
    assert bytes(rig.inner._view[:512]) == b"\x01" * 512


# -- closing ----------------------------------------------------------------------------------


def test_closing_a_lu_drains_its_pending_writes_and_ends_write_behind() -> None:
    async def main() -> None:
        rig = Rig()
        assert rig.runner.write_behind_idle(rig.lu) is None  # nothing pending: at once
        rig = Rig()
        good(rig.host.results.pop(rig.write(0, b"\x01" * 512)))
        idle = rig.runner.write_behind_idle(rig.lu)
        assert idle is not None and not idle.done()
        w = rig.write(8, b"\x02" * 512)  # the LU is closing: no longer early
        assert w not in rig.host.results
        rig.pool.run(0)
        assert idle.done()
        rig.pool.drain()
        good(rig.host.results.pop(w))
        assert bytes(rig.inner._view[:512]) == b"\x01" * 512

    asyncio.run(main())


def test_a_deferred_error_nobody_was_told_of_is_logged_when_its_lu_closes(
        tmp_path: Any, caplog: Any) -> None:
    """The LU is closed (lun delete, a config change, the daemon's stop) before any flush
    came to report the failed write: no initiator will hear of it, the log must say so."""
    from gluster_iscsi.server.daemon import Daemon

    rig = Rig()
    rig.inner.fail_at.add(0)
    good(rig.host.results.pop(rig.write(0, b"\x01" * 512)))
    rig.pool.run(0)
    d = Daemon(tmp_path)
    d._runner = rig.runner
    caplog.clear()
    asyncio.run(d.write_behind_drain(rig.lu))
    assert "never reported" in caplog.text and "brick said no" in caplog.text
    assert d.writes_lost() == ["gated"]  # (serve's exit status: 10)
    # A config change that drained it was undone: the LU serves on, and its initiator's
    # flush reports the error after all: nothing lost any more.
    rig.runner.write_behind_resume(rig.lu)
    assert rig.result(rig.sync()).status == Status.CHECK_CONDITION
    assert d.writes_lost() == []


@pytest.mark.parametrize("told", [False, True], ids=["never-told", "flushed"])
def test_serve_exits_10_when_a_lost_write_was_never_reported(
        tmp_path: Any, monkeypatch: Any, caplog: Any, told: bool) -> None:
    """``serve`` in this process (its own daemon, worker threads and store close), with a
    gfapi-like LUN whose write acknowledged early fails at the store; then SIGTERM. Nobody
    was told (no flush came after it): the exit status is not 0 but 10, data may be lost.
    Once the initiator's flush reported it, the stop is clean again (0)."""
    import os
    import signal

    from gluster_iscsi.cli import serve as cli_serve
    from gluster_iscsi.model.targets import AccessRule, Target

    store = GatedStore(64 << 10)
    store.fail_at.add(0)
    lu = lu_on(store, serial="lost0001")
    device = DeviceServer({0: lu}, target_name="iqn.2026-12.org.example:lost")
    device.nexus_added(N1)
    lu.clear_ua(N1.initiator_port)
    host = Host()
    steps: list[str] = []

    async def command(daemon: Any, cdb: bytes, data: bytes | None = None) -> ScsiResult:
        task = ScsiTask(cdb, 0, N1, data_out=memoryview(bytearray(data)) if data else None,
                        expected_length=len(data) if data else 0, write=data is not None)
        daemon.runner.start(task, device.execute(task), lu, host)
        while task not in host.results:  # the store's worker thread answers
            await asyncio.sleep(0.01)
        return host.results.pop(task)

    async def scenario(daemon: Any) -> None:
        cdb = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # WRITE(10), LBA 0, no FUA
        good(await command(daemon, cdb, b"\x01" * 512))  # acknowledged early ...
        while not lu_state(lu).stats.wb_errors:  # ... and lost at the store
            await asyncio.sleep(0.01)
        steps.append("lost")
        if told:
            r = await command(daemon, bytes([0x35]) + bytes(9))  # SYNCHRONIZE CACHE
            assert r.status == Status.CHECK_CONDITION
            steps.append("told")
        os.kill(os.getpid(), signal.SIGTERM)

    async def start(state_dir: Any, daemon: Any, *args: Any) -> dict[str, Any]:
        daemon.add_target(Target("iqn.2026-12.org.example:lost", 1,
                                 acl=[AccessRule(network="ALL")], device=device))
        asyncio.get_running_loop().create_task(scenario(daemon))
        return {}

    monkeypatch.setattr(cli_serve, "_start", start)
    code = asyncio.run(asyncio.wait_for(
        cli_serve._serve(tmp_path, [], None, False, 10.0, io_uring=False), 60))
    assert steps == (["lost", "told"] if told else ["lost"])
    if told:
        assert code == 0
    else:
        assert code == 10
        assert cli_serve.EXIT_WRITES_LOST == 10
        assert "stopped with data lost" in caplog.text and "gated" in caplog.text


def test_the_daemons_stop_drains_every_lu_at_once(tmp_path: Any) -> None:
    """SIGTERM with a hung volume: each LU's drain waits up to the I/O timeout (without one,
    the drain timeout); one LU after the other that was as many times that as LUs, past any
    service manager's stop timeout. The drains run together."""
    from gluster_iscsi.model.targets import AccessRule, Target
    from gluster_iscsi.scsi import DeviceServer as Device
    from gluster_iscsi.server.daemon import Daemon

    async def main() -> None:
        d = Daemon(tmp_path)
        lus = {n: lu_on(MemoryStore(1 << 20), serial=f"hung{n:04d}") for n in (1, 2, 3)}
        d.add_target(Target("iqn.2026-12.org.example:wb", 1, acl=[AccessRule(network="ALL")],
                            device=Device(lus, target_name="iqn.2026-12.org.example:wb")))
        entered: list[Any] = []
        all_in = asyncio.Event()

        async def drain(lu: Any) -> None:  # a hung volume: done only once all have begun
            entered.append(lu)
            if len(entered) == len(lus):
                all_in.set()
            await all_in.wait()

        d.write_behind_drain = drain  # type: ignore[method-assign]
        await asyncio.wait_for(d.stop(), 10)
        assert sorted(map(id, entered)) == sorted(map(id, lus.values()))

    asyncio.run(main())


# -- a real daemon: what was acknowledged reaches the store before it closes --------------------


class SlowStore(MemoryStore):
    """A blocking store whose writes wait until released; says in which order its writes
    landed and it was closed."""

    blocking = True  # type: ignore[assignment]
    write_behind = True

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.release = threading.Event()
        self.events: list[str] = []

    def write(self, offset: int, data: Any) -> None:
        self.release.wait(30)
        super().write(offset, data)
        self.events.append("write")

    def close(self, timeout: float | None = None) -> None:
        self.events.append("close")


async def _write_acknowledged_early(tmp_path: Any, store: SlowStore) -> tuple[Any, bytes]:
    from .test_driver import TNAME, command, login, next_pdu, start

    d, port = await start(tmp_path)
    d.registry.lookup(TNAME).device.add_lun(2, lu_on(store, serial="slow0002"))
    r, w, reader = await login(port)
    assert (await command(r, w, reader, 10, 1, lun=2))[0] == 0  # and the unit attention
    payload = random.Random(7).randbytes(4096)
    cdb = struct.pack(">BBIBHB", 0x2A, 0, 8, 0, 8, 0)  # WRITE(10), no FUA
    w.write(I.scsi_cmd(cdb, itt=20, cmdsn=3, edtl=4096, write=True, data=payload, lun=2))
    rsp = await next_pdu(r, reader, timeout=10)
    assert rsp.opcode == 0x21 and rsp.b3 == 0  # GOOD ...
    assert store.events == []  # ... before the store has it
    w.close()
    return d, payload


@pytest.mark.parametrize("how", ["stop", "lun delete"])
def test_writes_acknowledged_early_reach_the_store_before_it_closes(tmp_path: Any,
                                                                    how: str) -> None:
    """The daemon's stop (SIGTERM) and a LUN's removal (``close_lu_off_loop``: lun delete,
    a config apply that replaces the store) first wait for the LU's write-behind writes."""
    from gluster_iscsi.control.reconcile import close_lu_off_loop
    from gluster_iscsi.server.metrics import DaemonCollector

    async def main() -> None:
        store = SlowStore(1 << 20)
        d, payload = await _write_acknowledged_early(tmp_path, store)
        try:
            lu = next(lu for lu in d.registry.targets[next(iter(d.registry.targets))]
                      .device.luns.values() if lu.store is store)
            [row] = [r for r in d.lun_stats() if r["lun"] == 2]
            assert (row["write_behind_writes"], row["write_behind_pending_bytes"],
                    row["write_behind_deferred_errors"]) == (1, 4096, 0)
            samples = {(m.name, sm.name): sm.value for m in DaemonCollector(d).collect()
                       for sm in m.samples if sm.labels.get("lun") == "2"}
            assert samples[("gluster_iscsi_lun_write_behind_pending_bytes",
                            "gluster_iscsi_lun_write_behind_pending_bytes")] == 4096
            assert samples[("gluster_iscsi_lun_write_behind_writes",
                            "gluster_iscsi_lun_write_behind_writes_total")] == 1
            status = d.write_behind_status(lu)
            assert status["state"] == "on" and status["pending_bytes"] == 4096
            closing = asyncio.ensure_future(
                d.stop() if how == "stop" else close_lu_off_loop(d, lu))
            await asyncio.sleep(0.2)  # (whatever the delay: it has to wait for the write)
            assert store.events == []
            store.release.set()
            await asyncio.wait_for(closing, 30)
            assert store.events == ["write", "close"]
            assert bytes(store._view[4096:8192]) == payload
        finally:
            store.release.set()
            if how != "stop":
                await d.stop()

    asyncio.run(main())


def test_a_buffer_that_cannot_be_copied_flat_goes_the_ordinary_way() -> None:
    rig = Rig()
    words = memoryview(bytearray(b"\x01" * 512)).cast("H")  # 256 two-byte items
    req = io.Write(0, words)
    assert not rig.runner._write_behind(req, rig.lu, rig.state, ScsiTask(b"", 0, N1))
    assert rig.budget.used == 0 and rig.state.wb_count == 0


# -- the option ------------------------------------------------------------------------------


def test_serve_write_behind_option_and_the_daemons_runner(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from gluster_iscsi.cli.serve import _write_behind, _write_behind_or_default, serve
    from gluster_iscsi.server.daemon import Daemon

    assert _write_behind(None, None, "512KiB") == 512 << 10  # type: ignore[arg-type]
    assert _write_behind(None, None, "0") == 0  # type: ignore[arg-type]
    assert _write_behind_or_default(None) == 1 << 20  # Gluster's write-behind-window-size
    for bad, says in (("plenty", "invalid size"), ("1GiB", "maximum of 64MiB")):
        r = CliRunner().invoke(serve, ["--write-behind", bad])
        assert r.exit_code == 2 and "--write-behind" in r.output and says in r.output, r.output
    d = Daemon(tmp_path)
    assert d.runner.wb_window == 1 << 20 and d.runner.wb_writes == 64
    assert d.runner.budget is d.budget  # the copies count against the daemon's budget
    assert Daemon(tmp_path, write_behind=0).runner.wb_window == 0


def test_a_lu_that_serves_on_after_its_drain_writes_behind_again() -> None:
    """A config change drained the LU to close it, then was undone (``write_behind_resume``)."""
    async def main() -> None:
        rig = Rig()
        assert rig.state.wb_ok is False  # (the LU's runner state made, as by its commands)
        assert rig.runner.write_behind_idle(rig.lu) is None
        w = rig.write(0, b"\x01" * 512)
        assert w not in rig.host.results  # off while closing
        rig.pool.drain()
        good(rig.host.results.pop(w))
        assert "closing" in rig.runner.write_behind_status(rig.lu)["state"]
        rig.runner.write_behind_resume(rig.lu)
        assert rig.runner.write_behind_status(rig.lu)["state"] == "on"
        good(rig.host.results.pop(rig.write(0, b"\x02" * 512)))  # early again
        rig.pool.drain()
        assert bytes(rig.inner._view[:512]) == b"\x02" * 512

    asyncio.run(main())
