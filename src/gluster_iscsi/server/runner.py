"""The command runner: the one place that runs a SCSI command's I/O.

A command is one generator (:data:`scsi.task.CommandRun`, from ``DeviceServer.execute``):
it yields :mod:`scsi.io <gluster_iscsi.scsi.io>` requests, plain records, and last its
:class:`~gluster_iscsi.scsi.task.ScsiResult`. The runner steps it, and for every request

- finds the LU it addresses (the request's ``lu``, else the command's) and that LU's store;
- maps it to a store call through one table, :data:`STORE_CALLS` (request type -> call);
- holds the LU's I/O lock around the call (:class:`LockTable`: shared for reads and writes,
  exclusive for COMPARE AND WRITE and ORWRITE), so a read-modify-write is atomic;
- lends the read's buffer (:data:`~gluster_iscsi.buffers.POOL`) after charging it to the
  transport's memory budget (:meth:`Host.reserve`), takes it back once sent
  (:meth:`Runner.give_back`), and abandons a buffer a timed-out call may still use;
- chooses where the call runs: inline when the store does not block, else on the store's
  own worker pool, or through io_uring for a lone read/write of a FUSE file store;
- bounds blocking calls by the I/O timeout: a late call becomes ETIMEDOUT in the command,
  and its late result is dropped;
- drives background jobs (SANITIZE) with the clock it is given (:class:`JobRun`).

:meth:`Runner.start` is the asynchronous form (the connection driver's commands, on the event
loop); :meth:`Runner.run` the synchronous one (tests, tools); both step the same generator
with the same table and locks. The SCSI layer thus holds no thread, I/O lock, clock or store
call; the transport holds no store.

Where state shared between gateways plugs in: everything a command's I/O must agree on with
other gateways of a gateway group goes through the two objects a runner is given, never
through module state. ``locks`` (the :class:`Locks` protocol) is asked for a LU's lock on
every request: a lock table backed by the shared store (a Gluster-held lease per LU, taken
exclusive for COMPARE AND WRITE, shared otherwise) replaces :class:`LockTable` without the
runner changing. ``calls`` (request type -> call) is where a request that must consult or
update shared state (a reservation check-and-set, a unit attention posted to the group)
gets a call of its own, or the read/write calls a wrapper that fences a gateway that lost
its lease. The per-LU SCSI state itself (reservations, unit attentions) lives in
``scsi.lu.LogicalUnit``; the group's copy of it will be loaded and stored around commands
at this same seam.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..backstore.base import BackingStoreError
from ..backstore.cache import CachedStore
from ..buffers import POOL, BudgetShare, BufferPool, MemoryBudget, PooledBuffer
from ..logs import PROBLEMS
from ..scsi.background import BackgroundJob, JobCancelled
from ..scsi.io import (
    CompareAndWrite,
    Extents,
    Flush,
    OrWrite,
    Read,
    SharedRefresh,
    SharedUpdate,
    Size,
    StartJob,
    Unmap,
    WaitJob,
    Write,
    WriteZeroes,
)
from ..scsi.lu import LogicalUnit
from ..scsi.sense import SenseKey, build_sense, from_store_error
from ..scsi.task import ScsiResult, ScsiTask, Status
from .iopool import IoTimeout

if TYPE_CHECKING:
    from ..scsi.task import CommandRun, Execution
    from .gfaio import GfapiEngine
    from .uring import Ring

log = logging.getLogger(__name__)

_INTERNAL_ERROR = (0x04, 0x4400)  # HARDWARE ERROR / INTERNAL TARGET FAILURE


# ------------------------------------------------------------------------------ locks
class IoLock:
    """Shared/exclusive lock of one logical unit's data (COMPARE AND WRITE atomicity).

    Ordinary reads and writes hold it shared (:meth:`acquire_shared`/:meth:`release_shared`),
    so they still run in parallel; COMPARE AND WRITE holds it exclusive (``with lock:``)
    across its read-compare-write, so no write of another command can land between the
    compare and the write, and no read sees half of it.

    The shared side is on every read and write: it costs one plain mutex acquire/release
    each way while nobody wants the lock exclusive; the condition variable is used only
    when an exclusive holder or waiter exists. An exclusive waiter blocks new shared
    holders, so a stream of reads cannot starve COMPARE AND WRITE.
    """

    __slots__ = ("_mutex", "_cond", "_shared", "_exclusive", "_waiting_exclusive")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    def acquire_shared(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        finally:
            mutex.release()

    def try_acquire_shared(self) -> bool:
        """Take the shared side only if that needs no waiting (for a caller that must not
        block, the event loop): False while COMPARE AND WRITE holds or wants the lock."""
        mutex = self._mutex
        if not mutex.acquire(False):  # (not blocking; positional: a keyword costs ~1k a call)
            return False
        try:
            if self._exclusive or self._waiting_exclusive:
                return False
            self._shared += 1
            return True
        finally:
            mutex.release()

    def release_shared(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        self._shared -= 1
        if not self._shared and self._waiting_exclusive:
            self._cond.notify_all()
        mutex.release()

    def held(self) -> bool:
        """Whether a store call holds the lock now, shared or exclusive (read without the
        mutex: a gateway group asks before it gives a LU's lease back, once no new call can
        be issued; a call its command gave up on, IoTimeout, still holds it while it runs)."""
        return bool(self._shared or self._exclusive)

    def acquire(self) -> None:
        with self._cond:
            self._waiting_exclusive += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting_exclusive -= 1
            self._exclusive = True

    def release(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    def __enter__(self) -> IoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Lock(Protocol):
    """What the store calls need of a LU's I/O lock (:class:`IoLock` here; a lock held with
    the other gateways of a group later)."""

    def acquire_shared(self) -> None: ...
    def try_acquire_shared(self) -> bool: ...
    def release_shared(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...


class Locks(Protocol):
    """Who gives a LU its I/O lock (this process's :class:`LockTable`, or later one shared
    by a gateway group)."""

    def lock(self, lu: Any) -> Lock: ...


class LockTable:
    """One :class:`IoLock` per logical unit of this process, made on first use.

    Kept in the LU's ``runner_state`` slot (opaque to the SCSI layer, a :class:`LuState`), so
    it goes with the LU: a table keyed by LU would keep removed LUs alive, and compiled LUs
    take no weak references."""

    def lock(self, lu: Any) -> Lock:
        return lu_state(lu).lock


# ------------------------------------------------------------------------------ counters
#: Latency histogram: bucket ``i`` counts commands that took less than ``2**(LAT_SHIFT + i)`` ns
#: (16.4 us, 32.8 us, ... 4.29 s); the last bucket counts the slower ones (+Inf).
LAT_SHIFT: Final = 14  # (Final: compiled, a constant, not a module dict lookup per command)
LAT_BUCKETS: Final = 20

#: The first CDB byte -> 1 (a read), 2 (a write) or 0 (anything else): one list index per
#: command, not a set or dict lookup.
_READS = (0x08, 0x28, 0xA8, 0x88)
_WRITES = (0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x93, 0x89)  # + (WRITE AND VERIFY, WRITE SAME, CAW)
OP_KIND: Final[list[int]] = [1 if op in _READS else 2 if op in _WRITES else 0 for op in range(256)]


class LuStats:
    """A logical unit's counters, plain ints bumped where a command ends
    (:meth:`Runner._step`); read, never reset, by the metrics and ``lun stats`` views."""

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0
        self.others = 0
        self.read_bytes = 0
        self.write_bytes = 0
        #: CHECK CONDITION by sense key (index 0..15); index 6 counts unit attentions reported
        self.errors: list[int] = [0] * 16
        #: other non-GOOD statuses (BUSY, TASK SET FULL, RESERVATION CONFLICT)
        self.busy = 0
        self.in_flight = 0
        self.timeouts = 0
        self.latency: list[int] = [0] * LAT_BUCKETS
        self.latency_ns = 0
        #: writes acknowledged before they reached the store (write-behind), and those of
        #: them that then failed or timed out there (deferred errors, see :class:`LuState`)
        self.wb_writes = 0
        self.wb_errors = 0

    def count(self, task: ScsiTask, result: ScsiResult, t0: int) -> None:
        self.in_flight -= 1
        ns = perf_counter_ns() - t0
        i = (ns >> LAT_SHIFT).bit_length()  # bucket i: under 2**(LAT_SHIFT + i) ns
        if i >= LAT_BUCKETS:
            i = LAT_BUCKETS - 1
        self.latency[i] += 1
        self.latency_ns += ns
        kind = OP_KIND[task.cdb[0]]
        status = result.status
        if kind == 1:
            self.reads += 1
            data = result.data
            if status == 0 and data is not None:
                self.read_bytes += len(data)  # type: ignore[arg-type]  # byte-sized buffers
        elif kind == 2:
            self.writes += 1
            out = task.data_out
            if status == 0 and out is not None:
                self.write_bytes += len(out)
        else:
            self.others += 1
        if status != 0:
            sense = result.sense
            if status == 2 and sense is not None and len(sense) > 2:
                # fixed format (0x70/0x71): key in byte 2; descriptor format: byte 1
                self.errors[(sense[2] if sense[0] & 0x7E == 0x70 else sense[1]) & 0x0F] += 1
            else:
                self.busy += 1


class LuState:
    """What the runner keeps in a LU's ``runner_state``: its I/O lock and its counters, and
    for a LU of a gateway group (``server/group.py``) the group member and the issue
    deadline it keeps here: no store call of the LU is issued at or after it."""

    def __init__(self) -> None:
        self.lock = IoLock()
        self.stats = LuStats()
        #: the gateway group's member (``group.GroupMember``) of a group LU; None: a lone LU,
        #: nothing checked per request
        self.group: Any = None
        #: the LU's key in the group (its file's GFID)
        self.group_key: str | None = None
        #: monotonic seconds (the runner's clock) from which no store call may be issued:
        #: the start of the owner's last successful heartbeat + lease_seconds; -inf while
        #: this gateway does not own the LU (docs/HA.md decision 3)
        self.issue_deadline = -math.inf
        #: a group LU on a gateway whose non-owner paths are active/non-optimized: the
        #: command shipper (``ship.Shipper``: its ``maybe_ship`` is True if it sent the
        #: command to the LU's owner); None: every command runs here
        self.ship: Any = None
        #: the store ``hit_read`` was looked up on, and its ``read_hit`` (None: it has none);
        #: looked up again when the LU's store is another (``_read_hit``)
        self.hit_store: Any = None
        self.hit_read: Any = None
        # -- write-behind (``Runner._write_behind``; all of it on the event loop thread)
        #: writes acknowledged and still running on the store's workers: their count,
        #: bytes, and byte ranges (start, end)
        self.wb_count = 0
        self.wb_bytes = 0
        self.wb_ranges: list[tuple[int, int]] = []
        #: such writes that failed (or timed out), not reported yet, by whom they are owed
        #: to: initiator name (all its paths) -> the error of its first failed write; each
        #: one's next SYNCHRONIZE CACHE or FUA write gets its own (another initiator's flush
        #: must not take it: its fsync would succeed); while any is owed, no write is
        #: acknowledged early
        self.wb_owed: dict[str, BaseException] = {}
        #: byte ranges of write-behind writes, and of a lone LU's requests that change
        #: blocks, that timed out under way (reported as failed, but they may still land): a
        #: read or write there fails as a timeout does until the call returned
        #: (``_landed_late``, ``Runner._held_until_returned``)
        self.wb_late: list[tuple[int, int]] = []
        #: commands waiting for write-behind writes to finish: (task, gen, lu, host, request,
        #: t0), stepped again, in order, as each write finishes
        self.wb_parked: list[tuple[Any, Any, Any, Any, Any, int]] = []
        #: futures set once no write-behind write is pending (the LU's store is closing)
        self.wb_idle: list[Any] = []
        #: no write-behind any more (the LU is being closed; a config change that drained
        #: it and was undone turns it back on: ``Runner.write_behind_resume``)
        self.wb_off = False
        #: the store whose eligibility :attr:`wb_ok` says (a blocking store that asks for it,
        #: ``write_behind``: gfapi; a file's writes wait only for the page cache)
        self.wb_store: Any = None
        self.wb_ok = False

    @property
    def wb_error(self) -> BaseException | None:
        """The earliest write-behind failure not reported to everyone it is owed to (None:
        none is owed)."""
        for err in self.wb_owed.values():
            return err
        return None


def lu_state(lu: Any) -> LuState:
    """The LU's :class:`LuState`, made on first use."""
    state = lu.runner_state
    if state is None:
        state = lu.runner_state = LuState()
    return state  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ store calls
#: A store call: ``call(runner, request, store, lock)`` -> the value sent into the command.
StoreCall = Callable[["Runner", Any, Any, Lock], Any]


def _read(runner: Runner, req: Read, store: Any, lock: Lock) -> memoryview:
    buf = runner.buffers.borrow(req.length)  # reused buffers: no zero fill, no page faults
    if isinstance(lock, IoLock):  # this process's own lock: native calls (compiled), the
        lock.acquire_shared()     # common case of every read and write
        try:
            store.read_into(req.offset, buf)
        finally:
            lock.release_shared()
        return buf
    lock.acquire_shared()
    try:
        store.read_into(req.offset, buf)
    finally:
        lock.release_shared()
    return buf


def _read_hit(runner: Runner, req: Read, store: Any, rs: LuState | None,
              lock: Lock) -> memoryview | None:
    """A read that a blocking store answers from memory (``store.read_hit``: the gfapi read
    cache, backstore/cache.py), here on the loop; None (nothing done): go to the workers,
    also when ``read_hit`` raises (the workers' read then says what the store says). The
    bound ``read_hit`` is looked up once per LU and store (``rs``), not per read."""
    if rs is None:
        read_hit = getattr(store, "read_hit", None)
    elif rs.hit_store is store:
        read_hit = rs.hit_read
    else:
        read_hit = rs.hit_read = getattr(store, "read_hit", None)
        rs.hit_store = store
    if read_hit is None:
        return None
    # (this process's own lock, the common case: native calls compiled, as in _read)
    own = lock if isinstance(lock, IoLock) else None
    if not (own.try_acquire_shared() if own is not None else lock.try_acquire_shared()):
        return None
    buf = runner.buffers.borrow(req.length)
    ok = False
    try:
        ok = read_hit(req.offset, buf)
    except Exception as e:  # not the command's end: a bug of the cache, read elsewhere
        name = getattr(store, "name", None)
        # one line per store per interval, not one per read
        PROBLEMS.report(log, logging.ERROR, "read cache", str(name),
                        "%s: the read cache failed (%r); reading from the store", name, e)
    finally:
        if own is not None:
            own.release_shared()
        else:
            lock.release_shared()
    if ok:
        return buf
    runner.buffers.give_back(buf)
    return None


def _write(runner: Runner, req: Write, store: Any, lock: Lock) -> None:
    if isinstance(lock, IoLock):  # (as in _read)
        lock.acquire_shared()
        try:
            store.write(req.offset, req.data)
        finally:
            lock.release_shared()
    else:
        lock.acquire_shared()
        try:
            store.write(req.offset, req.data)
        finally:
            lock.release_shared()
    if req.fua:
        store.flush()


def _async_parts(store: Any) -> tuple[CachedStore | None, Any]:
    """(its read cache or None, the store that takes asynchronous calls or None) of a LU's
    store: a gfapi store, alone or under its read cache (``gfaio.py``)."""
    cache: CachedStore | None = None
    inner: Any = store
    if isinstance(store, CachedStore):
        cache = store
        inner = store.inner
    return cache, (inner if getattr(inner, "async_io", False) else None)


def _released(lock: Lock, ok: bool) -> None:
    """An asynchronous store call is done (``Runner._submit_to_gfaio``)."""
    lock.release_shared()


def _filled(lock: Lock, cache: CachedStore, fill: Any, ok: bool) -> None:
    """An asynchronous read of a cache miss is done: the cache takes what it read."""
    try:
        cache.end_fill(fill, ok)
    finally:
        lock.release_shared()


def _written(lock: Lock, cache: CachedStore, offset: int, view: memoryview, begun: int,
             when: float, ok: bool) -> None:
    """An asynchronous write under the read cache is done, before its command answers."""
    try:
        cache.end_write(offset, view, begun, when, ok)
    finally:
        lock.release_shared()


def _wrote_behind(lock: Lock, marks: dict[str, Any], cache: CachedStore | None, offset: int,
                  view: memoryview, begun: int, when: float, ok: bool) -> None:
    """A write-behind write made as an asynchronous call is done (even late): the cache
    learns it, the lock is free, and a loop waiting for it since it timed out goes on
    (``Runner._write_behind``'s ``marks``, as ``_write_in_background`` does on a worker)."""
    try:
        if cache is not None:
            cache.end_write(offset, view, begun, when, ok)
    finally:
        lock.release_shared()
        then = marks.setdefault("end", _FINISHED)
        if then is not _FINISHED:  # it timed out under way: its blocks are free now
            then()


def _flush(runner: Runner, req: Flush, store: Any, lock: Lock) -> None:
    store.flush()


def _size(runner: Runner, req: Size, store: Any, lock: Lock) -> int:
    size: int = store.size
    return size


def _unmap(runner: Runner, req: Unmap, store: Any, lock: Lock) -> None:
    lock.acquire_shared()
    try:
        store.discard(req.offset, req.length)
    finally:
        lock.release_shared()


def _write_zeroes(runner: Runner, req: WriteZeroes, store: Any, lock: Lock) -> None:
    lock.acquire_shared()
    try:
        store.write_zeroes(req.offset, req.length)
    finally:
        lock.release_shared()


def _extents(runner: Runner, req: Extents, store: Any, lock: Lock) -> Any:
    return store.extents(req.offset, req.length)


def _compare_and_write(runner: Runner, req: CompareAndWrite, store: Any, lock: Lock) -> int | None:
    verify = memoryview(req.verify).cast("B")
    with lock:
        current = store.read(req.offset, len(verify))
        if current != verify:
            for i in range(len(current)):
                if current[i] != verify[i]:
                    return i
        store.write(req.offset, req.data)
        if req.fua:
            store.flush()
        return None


def _or_write(runner: Runner, req: OrWrite, store: Any, lock: Lock) -> None:
    mv = memoryview(req.data).cast("B")
    with lock:
        current = store.read(req.offset, len(mv))
        merged = (int.from_bytes(current, "big") | int.from_bytes(mv, "big")).to_bytes(len(mv), "big")
        store.write(req.offset, merged)
        if req.fua:
            store.flush()


def _start_job(runner: Runner, req: StartJob, store: Any, lock: Lock) -> None:
    runner.start_job(req.job, req.lu)


def _wait_job(runner: Runner, req: WaitJob, store: Any, lock: Lock) -> bool:
    return runner.wait_job(req.job, req.timeout)


def _shared_update(runner: Runner, req: SharedUpdate, store: Any, lock: Lock) -> Any:
    lu = req.lu
    rs = lu.runner_state
    if rs is not None and rs.group is not None:
        # A group LU (on a worker: ``Runner._step``): through the state record on the volume,
        # GOOD only once the owner enforces it (docs/HA.md decision 4).
        return rs.group.shared_update(lu, req.apply)
    # A lone gateway: the LU's state is this process's alone, changed in place.
    with lu.state_lock:
        return req.apply()


def _shared_refresh(runner: Runner, req: SharedRefresh, store: Any, lock: Lock) -> None:
    lu = req.lu
    rs = lu.runner_state
    if rs is not None and rs.group is not None:
        rs.group.shared_refresh(lu)  # the latest state record, loaded (on a worker)
    return None  # a lone gateway's memory is the latest state


#: The default write-behind window of a LU (``serve --write-behind``): Gluster's own
#: write-behind-window-size, and at most this many writes.
WRITE_BEHIND_DEFAULT: Final = 1 << 20
WRITE_BEHIND_WRITES: Final = 64


#: Request type -> the call that does it. Every type in ``scsi.io.REQUEST_TYPES`` is here.
STORE_CALLS: dict[type, StoreCall] = {
    Read: _read,
    Write: _write,
    Flush: _flush,
    Size: _size,
    Unmap: _unmap,
    WriteZeroes: _write_zeroes,
    Extents: _extents,
    CompareAndWrite: _compare_and_write,
    OrWrite: _or_write,
    StartJob: _start_job,
    WaitJob: _wait_job,
    SharedUpdate: _shared_update,
    SharedRefresh: _shared_refresh,
}

#: Calls that touch memory only (a lone gateway's shared-state calls): their requests run
#: inline on the event loop even for a blocking store, never behind its workers or its I/O
#: timeout. (A gateway group's calls for the same requests do volume I/O: off the loop.)
_MEMORY_ONLY: tuple[StoreCall, ...] = (_shared_update, _shared_refresh)

#: Requests that wait (on another thread's work, not a store): never run on the event loop.
_WAITS = object()  # the key of their worker pool

#: The requests that reach a group LU's medium: none is issued past the LU's issue deadline
#: (a size query writes nothing: READ CAPACITY, which standby allows, is not refused).
FENCED: frozenset[type] = frozenset({Read, Write, Flush, Unmap, WriteZeroes, Extents,
                                     CompareAndWrite, OrWrite, StartJob})


#: Marks of a group LU's media call on a worker (``Runner._submit``): "start" is set once,
#: to _RUNNING by the worker about to issue it or to _CANCELLED by its command timing out
#: first (then it is never issued); "end" to _FINISHED by the worker once the call returned,
#: or first to what the command does then (an aborted command waits for its call).
_RUNNING: Final = object()
_CANCELLED: Final = object()
_FINISHED: Final = object()
#: The I/O timeout of an aborted command handed back once its call returned.
_LATE: Final = IoTimeout("returned late")


#: Sense keys an initiator retries a command on (Linux: NOT READY "becoming ready" or an
#: ALUA transition, UNIT ATTENTION, ABORTED COMMAND; dm-multipath: another path). A deferred
#: write-behind error reported with one of them is lost: the flush retried says GOOD.
_RETRIED: Final = frozenset({SenseKey.NOT_READY, SenseKey.UNIT_ATTENTION,
                             SenseKey.ABORTED_COMMAND})


def _overlaps(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    for a, b in ranges:
        if a < end and start < b:
            return True
    return False


def _wb_waits(rs: LuState, t: type, req: Any) -> bool:
    """Whether a request must wait for the LU's pending write-behind writes: a read or a
    plain write that overlaps one of them (never older bytes; no reordering of acknowledged
    writes), and anything else at all (a flush, a FUA write, UNMAP, WRITE SAME, COMPARE AND
    WRITE, a size or a job: a barrier)."""
    if t is Read:
        start = req.offset
        end = start + req.length
    elif t is Write and not req.fua:
        start = req.offset
        end = start + len(req.data)
    else:
        return True
    return _overlaps(rs.wb_ranges, start, end)


def _wb_late(rs: LuState, t: type, req: Any) -> bool:
    """Whether a request that reads or changes blocks overlaps a write (write-behind, or a
    lone LU's) that timed out under way."""
    if t is Read or t is Unmap or t is WriteZeroes:
        start = req.offset
        end = start + req.length
    elif t is Write or t is CompareAndWrite or t is OrWrite:
        start = req.offset
        end = start + len(req.data)
    else:
        return False
    return _overlaps(rs.wb_late, start, end)


def fenced_error(target: Any) -> BackingStoreError:
    """What a request of a group LU past its issue deadline gets instead of its store call:
    NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION (04/0Ah, the
    ESHUTDOWN mapping), which initiators retry, on this path or another."""
    return BackingStoreError(errno.ESHUTDOWN, "not the owner of this LUN (lease)",
                             getattr(target.store, "name", None))


# ------------------------------------------------------------------------------ the runner
class Host(Protocol):
    """What the runner needs of the transport a command came from (the connection driver)."""

    def reserve(self, task: ScsiTask, n: int) -> bool:
        """Charge ``n`` bytes of a read buffer for ``task`` to the memory budget."""

    def full_status(self) -> Status:
        """The status of a command the budget has no room for (TASK SET FULL or BUSY)."""

    def alone(self) -> bool:
        """Nothing else of this connection is in flight (the io_uring hand-off's condition)."""

    def complete(self, task: ScsiTask, result: ScsiResult) -> None:
        """The command ended with ``result``."""


class Workers(Protocol):
    """A store's worker threads (``iopool.IoPool``)."""

    def in_flight(self) -> bool: ...
    def submit(self, fn: Callable[[Any], Any], arg: Any,
               callback: Callable[[Any, BaseException | None], None], timeout: float = 0.0) -> None: ...
    def when_returned(self, then: Callable[[], None]) -> bool: ...


class Waker(Protocol):
    """The idle poller (``poller.IdlePoller``): told when a completion woke the loop."""

    @property
    def missed_at(self) -> float | None: ...
    def woke(self) -> None: ...


class Engines(Protocol):
    """Where blocking calls run: the daemon's pools, io_uring, I/O timeout and idle poller."""

    io_timeout: float

    @property
    def ring(self) -> Ring | None: ...
    @property
    def gfaio(self) -> GfapiEngine | None: ...
    @property
    def poller(self) -> Waker: ...
    def pool_for(self, store: object) -> Workers: ...
    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop once the current callback is done (``call_soon``)."""
        ...


class Runner:
    """Runs commands' requests against their LUs' stores (see the module's docstring)."""

    def __init__(
        self,
        engines: Engines | None = None,
        *,
        calls: dict[type, StoreCall] | None = None,
        locks: Locks | None = None,
        buffers: BufferPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        write_behind: int = 0,
        write_behind_writes: int = WRITE_BEHIND_WRITES,
        budget: MemoryBudget | None = None,
    ) -> None:
        #: None: synchronous use only (:meth:`run`), every call inline.
        self.engines = engines
        self.calls: dict[type, StoreCall] = calls if calls is not None else STORE_CALLS
        #: Request types whose call (in ``calls`` as given) is memory only: always inline.
        self._memory_only_requests: frozenset[type] = frozenset(
            t for t, call in self.calls.items() if call in _MEMORY_ONLY
        )
        self.locks: Locks = locks if locks is not None else LockTable()
        # The default table, called natively (compiled) on every request; None for another.
        self._table: LockTable | None = self.locks if isinstance(self.locks, LockTable) else None
        self.buffers: BufferPool = buffers if buffers is not None else POOL
        #: The clock background jobs are paced by.
        self.clock = clock
        self._jobs: dict[BackgroundJob, JobRun] = {}
        #: The write-behind window of each lone LU on a blocking store: bytes (0: off) and
        #: writes (``serve --write-behind``; see :meth:`_write_behind`).
        self.wb_window = write_behind if engines is not None else 0
        self.wb_writes = write_behind_writes
        #: The memory budget write-behind copies are charged to (None: not counted), as one
        #: owner: the copies of all LUs together hold at most a session's share.
        self.budget = budget
        self.wb_share = BudgetShare()
        #: Write-behind writes acknowledged and not yet started (``_start_behind``).
        self._behind: list[tuple[Any, int, Any, Lock, dict[str, Any],
                                 Callable[[Any, BaseException | None], None], float]] = []

    def _lock(self, target: Any) -> Lock:
        table = self._table
        if table is not None:
            return table.lock(target)
        return self.locks.lock(target)

    # -- one request, synchronously ---------------------------------------------------------

    def perform(self, req: Any, lu: Any) -> Any:
        """Do one request on this thread (``lu``: the LU a request without its own targets)."""
        target = req.lu
        if target is None:
            target = lu
        self._check_deadline(target, type(req))
        return self.calls[type(req)](self, req, target.store, self._lock(target))

    def _check_deadline(self, target: Any, t: type) -> None:
        """Raise the fenced error for a group LU's media request past its issue deadline."""
        rs: LuState | None = target.runner_state  # typed: native attribute access
        if (rs is not None and rs.group is not None and t in FENCED
                and self.clock() >= rs.issue_deadline):
            raise fenced_error(target)

    def run(self, execution: Execution | CommandRun, lu: Any) -> ScsiResult:
        """Run a command's (or a handler's) generator to its result on this thread."""
        try:
            req = next(execution)
            while type(req) is not ScsiResult:  # a CommandRun's last item is its result
                try:
                    value = self.perform(req, lu)
                except Exception as exc:  # noqa: BLE001 - handed to the SCSI layer to map
                    req = execution.throw(exc)
                else:
                    req = execution.send(value)
            result: ScsiResult = req
            return result
        except StopIteration as stop:  # a handler's Execution returns its result
            done: ScsiResult = stop.value
            return done

    # -- commands, on the event loop --------------------------------------------------------

    def start(self, task: ScsiTask, run: CommandRun, lu: LogicalUnit | None, host: Host) -> None:
        """Run a command; its result goes to ``host.complete`` (now, or once its I/O is done).
        A command of a LU is counted in its :class:`LuStats` (in flight now, the rest once it
        ends)."""
        if lu is not None:
            state: LuState | None = lu.runner_state  # typed: native attribute access
            if state is None:
                state = lu_state(lu)
            if state.ship is not None and state.ship.maybe_ship(task, run, lu, host):
                return  # a non-owner's media command: run by the owner (``ship.py``)
            state.stats.in_flight += 1
        self._step(task, run, lu, host, None, None, perf_counter_ns())

    def start_here(self, task: ScsiTask, run: CommandRun, lu: LogicalUnit | None,
                   host: Host) -> None:
        """Run a command on this gateway whatever its LU's shipping hook would say (the
        hook's own second try, after the owner answered ``stale``: ``ship.Shipper``)."""
        if lu is not None:
            state: LuState | None = lu.runner_state
            if state is None:
                state = lu_state(lu)
            state.stats.in_flight += 1
        self._step(task, run, lu, host, None, None, perf_counter_ns())

    def _step(self, task: ScsiTask, gen: Any, lu: LogicalUnit | None, host: Host, value: Any,
              exc: BaseException | None, t0: int, again: Any = None) -> None:
        """Step the command with ``value`` (or ``exc``), or, given ``again``, go on with that
        request of it, which waited for write-behind writes."""
        result: ScsiResult
        try:
            while True:
                if again is not None:
                    req, again = again, None
                else:
                    req = gen.throw(exc) if exc is not None else gen.send(value)
                exc = None
                t = type(req)
                if t is ScsiResult:  # the command's last item (scsi.task.CommandRun)
                    result = req
                    break
                target = req.lu
                if target is None:
                    target = lu
                store = target.store
                rs: LuState | None = target.runner_state  # typed: native attribute access
                if rs is not None and rs.group is not None and t in FENCED \
                        and (self.clock() >= rs.issue_deadline  # a group LU: the lease
                             or task.aborted):  # (a shipped task aborted by its sender)
                    exc, value = fenced_error(target), None
                    continue
                if rs is not None and (rs.wb_count or rs.wb_owed or rs.wb_late):
                    # Write-behind writes pending or failed (``_write_behind``): what must
                    # wait for them waits, and their error goes to the next flush.
                    if rs.wb_late and _wb_late(rs, t, req):
                        exc, value = BackingStoreError(
                            errno.ETIMEDOUT, "an earlier write there is still under way",
                            getattr(store, "name", None)), None
                        continue
                    if rs.wb_count and _wb_waits(rs, t, req):
                        rs.wb_parked.append((task, gen, lu, host, req, t0))
                        return
                    if rs.wb_owed and (t is Flush or (t is Write and req.fua)):
                        owed = rs.wb_owed.pop(task.nexus.initiator_name, None)
                        if owed is not None:
                            exc, value = owed, None
                            continue
                if t is Write and self.wb_window and rs is not None and rs.group is None \
                        and (rs.wb_ok or rs.wb_store is not store) \
                        and self._write_behind(req, target, rs, task):
                    value = None  # acknowledged: its store call goes on in the background
                    continue
                # A read's buffer is charged to the daemon's memory budget before it is taken.
                if t is Read and not host.reserve(task, req.length):
                    gen.close()  # the command ends here, without its read
                    result = ScsiResult(host.full_status())
                    break
                if t is WaitJob or (self.engines is not None and (
                        (store.blocking and t not in self._memory_only_requests)
                        # a group LU's shared-state requests do volume I/O: off the loop
                        or (t in self._memory_only_requests and rs is not None
                            and rs.group is not None))):
                    hit = _read_hit(self, req, store, rs, self._lock(target)) if t is Read else None
                    if hit is None:
                        self._submit(task, gen, lu, host, req, target, t0)
                        return
                    value = hit  # answered from the store's memory: no worker hand-off
                    continue
                try:
                    value = self.calls[t](self, req, store, self._lock(target))
                except Exception as e:  # handed to the SCSI layer to map to sense
                    exc, value = e, None
        except Exception:  # a bug in the SCSI layer (a CommandRun never returns): this command only
            log.exception("internal error executing CDB %s", bytes(task.cdb[:1]).hex())
            key, asc = _INTERNAL_ERROR
            result = ScsiResult(Status.CHECK_CONDITION, None, build_sense(key, asc))
        if lu is not None:
            counted: LuState = lu.runner_state  # made by start()
            counted.stats.count(task, result, t0)
        host.complete(task, result)  # outside the try: a failure there is not the command's

    def _submit(self, task: ScsiTask, gen: Any, lu: LogicalUnit | None, host: Host, req: Any,
                target: Any, t0: int) -> None:
        """Run a blocking request on its store's own workers, bounded by the I/O timeout.

        A store that hangs (a Gluster volume that lost quorum) must answer the initiator within
        the timeout: the request is then thrown into the command as ETIMEDOUT, which the SCSI
        layer maps to a sense the initiator retries, and its late result is dropped.
        """
        engines = self.engines
        assert engines is not None
        store = target.store
        timeout = engines.io_timeout
        # (a group LU's shared-state calls wait on the volume and the owner: bounded by the
        # group's lease, not by the store's I/O timeout)
        waits = type(req) is WaitJob or type(req) in (SharedUpdate, SharedRefresh)
        rs: LuState | None = target.runner_state  # typed: native attribute access
        t = type(req)
        # A group LU's media call: whether it started is known to its command (set-once
        # marks, see _perform_fenced). None for anything else: nothing more per call.
        marks: dict[str, Any] | None = None
        if rs is not None and rs.group is not None and type(req) in FENCED:
            marks = {}

        # (a closure that never names itself: one that did, for its late call, made each
        # command's objects a reference cycle, left to the garbage collector: ~7 objects a
        # command, and a tenth of the event loop's time on cold gfapi reads)
        def done(value: Any, exc: BaseException | None) -> None:
            self._completed(task, gen, lu, host, req, target, store, marks, timeout, t0, value,
                            exc)

        if waits:  # on a pool of its own, never a store's, and not bounded by the I/O timeout
            engines.pool_for(_WAITS).submit(self._perform_boxed, (req, target, task, None), done,
                                            0.0)
            return
        # A command alone on its connection, with nothing else in flight, goes to io_uring if
        # its store lends a descriptor (FUSE files, ``_submit_to_ring``): there the kernel's
        # hand-off beats ours (FUSE QD1 reads 1.24..1.45x, same daemon with and without,
        # BENCHMARKS.md). Under load the pool does better (its completions come in batches;
        # through the ring, QD32 reads were 0.80x), so a burst, and anything while one is in
        # flight, goes to the pool.
        if marks is None and (rs is None or rs.group is None) and (t is Read or t is Write):
            # A gfapi store's plain read or write: an asynchronous libgfapi call made here,
            # completed through an eventfd (``gfaio.py``), not a worker's blocking call.
            gfaio = engines.gfaio
            if gfaio is not None and self._submit_to_gfaio(gfaio, req, target, done, timeout):
                return
        ring = engines.ring
        pool = engines.pool_for(store)
        if (ring is not None and host.alone() and not ring.in_flight() and not pool.in_flight()
                and self._submit_to_ring(ring, req, target, done, timeout)):
            return
        pool.submit(self._perform_boxed, (req, target, task, marks), done, timeout)

    def _completed(self, task: ScsiTask, gen: Any, lu: LogicalUnit | None, host: Host, req: Any,
                   target: Any, store: Any, marks: dict[str, Any] | None, timeout: float,
                   t0: int, value: Any, exc: BaseException | None) -> None:
        """A store call of :meth:`_submit` ended (``value``, or ``exc``: how it failed, or
        IoTimeout once it outlived the I/O timeout, and then ``_LATE`` when a group LU's
        aborted call it held back has returned): go on with the command."""
        engines = self.engines
        assert engines is not None
        if exc is not None and type(exc) is IoTimeout:
            # A group LU's call that timed out: one still queued is never issued now;
            # one under way for an aborted command holds the command's end (TASK
            # ABORTED, the abort's answer) until it returned: an aborted write must
            # not land after the abort was answered (docs/HA.md decision 1).
            if marks is not None and exc is not _LATE \
                    and marks.setdefault("start", _CANCELLED) is _RUNNING and task.aborted:
                marks["loop"] = asyncio.get_running_loop()
                if marks.setdefault("end", functools.partial(
                        self._completed, task, gen, lu, host, req, target, store, marks, timeout,
                        t0, None, _LATE)) \
                        is not _FINISHED:
                    return  # the worker hands it back once the call returned
            if marks is None:  # a lone LU's call: never issued now, or under way
                self._held_until_returned(req, target, store)
            # The call may still read the command's data-out buffer (a write, late): it
            # must not go back to the pool when the command now completes.
            if task.data_out is not None:
                self.buffers.abandon(task.data_out)
            name = getattr(store, "name", None)
            # one line per store per interval, not one per command queued on it
            PROBLEMS.report(log, logging.WARNING, "store timeout", str(name),
                            "%s: %s did not complete within %gs", name or "store",
                            type(req).__name__, timeout)
            exc = BackingStoreError(errno.ETIMEDOUT, "I/O timed out", name)
            lu_state(target).stats.timeouts += 1
        poller = engines.poller
        if poller.missed_at is not None:
            poller.woke()
        self._step(task, gen, lu, host, value, exc, t0)

    # -- write-behind ---------------------------------------------------------------------------

    def _write_behind(self, req: Write, target: Any, rs: LuState, task: ScsiTask) -> bool:
        """Acknowledge a plain write now and write it in the background, if it may: a lone
        LU (the caller checked) whose write cache is on (WCE=1, so SBC lets a write be
        volatile until SYNCHRONIZE CACHE or FUA), on a blocking store that asks for it
        (``store.write_behind``: gfapi, also under its read cache; a file's writes already
        wait only for the kernel's page cache), with room in
        the LU's window (bytes and writes) and in the memory budget, no deferred error to
        report and nothing waiting for the pending writes (a flush waiting there must not be
        starved by new ones). The caller checked that it overlaps no pending write.

        A plain WRITE's pooled data-out buffer is kept (``ScsiTask.data_out_kept``: the
        transport leaves it to us) and given back once written; other data is copied,
        except ``bytes``, kept as it is. False: nothing done, the write goes the ordinary
        way."""
        store = target.store
        if rs.wb_store is not store:
            rs.wb_store = store
            rs.wb_ok = bool(store.blocking) and bool(getattr(store, "write_behind", False))
        if not rs.wb_ok or req.fua or rs.wb_off or rs.wb_owed or rs.wb_parked:
            return False
        data = req.data
        n = len(data)  # type: ignore[arg-type]  # byte-sized buffers
        if rs.wb_bytes + n > self.wb_window or rs.wb_count >= self.wb_writes \
                or not target.write_cache:
            return False
        budget = self.budget
        if budget is not None and not budget.charge(self.wb_share, n):
            return False
        copy: memoryview | None = None
        kept: Any = data
        out = task.data_out
        if req.last and type(data) is memoryview and out is not None \
                and not task.data_out_kept and type(out.obj) is PooledBuffer \
                and data.obj is out.obj:
            # A plain WRITE's data, the command's own pooled buffer (the transport's, which
            # nothing else writes once the command runs, and the command uses no more:
            # ``Write.last``): kept as it is, not copied (a 256 KiB copy is ~15 us of the
            # loop's time), and given back to the pool once written.
            task.data_out_kept = True
            copy = data
        elif type(data) is not bytes:
            copy = self.buffers.borrow(n)
            try:
                copy[:] = data
            except (TypeError, ValueError):  # not a flat byte buffer (never seen): the
                self.buffers.give_back(copy)  # ordinary way takes any
                if budget is not None:
                    budget.release(self.wb_share, n)
                return False
            kept = copy
        offset = req.offset
        span = (offset, offset + n)
        rs.wb_count += 1
        rs.wb_bytes += n
        rs.wb_ranges.append(span)
        rs.stats.wb_writes += 1
        who = task.nexus.initiator_name  # (a failure is owed to it)
        engines = self.engines
        assert engines is not None
        timeout = engines.io_timeout

        # "start": set once, by the worker about to issue the write or by its timeout (as
        # a group LU's media call, ``_perform_fenced``)
        marks: dict[str, Any] = {}

        def done(value: Any, exc: BaseException | None) -> None:
            if exc is not None and type(exc) is IoTimeout \
                    and marks.setdefault("start", _CANCELLED) is _RUNNING:
                # Under way: it may still land; its blocks are held until it returned.
                rs.wb_late.append(span)
                marks["loop"] = asyncio.get_running_loop()
                if marks.setdefault("end", functools.partial(self._landed_late, rs, span)) \
                        is _FINISHED:
                    self._landed_late(rs, span)  # (it returned meanwhile)
            self._written_behind(rs, span, n, copy, exc, who)

        # Started once the acknowledgement is out (``_start_behind``), not here: starting
        # it wakes a thread (libgfapi's io-thread, or a worker) that, on the loop's CPU,
        # runs first and winds the write down the client's translators while the initiator
        # waits for the GOOD it does not need to wait for.
        behind = self._behind
        behind.append((store, offset, kept, self._lock(target), marks, done, timeout))
        if len(behind) == 1:
            engines.defer(self._start_behind)
        return True

    def _start_behind(self) -> None:
        """Start the write-behind writes acknowledged since the last call (run by the loop
        after the callback that acknowledged them, so after their responses were sent: the
        driver sends at the end of its receive). Each goes as an asynchronous gfapi call
        where it can, else to its store's workers."""
        behind, self._behind = self._behind, []
        engines = self.engines
        assert engines is not None
        gfaio = engines.gfaio
        for store, offset, kept, lock, marks, done, timeout in behind:
            try:
                if gfaio is not None and self._write_behind_async(gfaio, store, offset, kept,
                                                                  lock, marks, done, timeout):
                    continue
                engines.pool_for(store).submit(self._write_in_background,
                                               (store, offset, kept, lock, marks), done,
                                               timeout)
            except Exception as e:  # (a bug) never a write that is neither done nor failed:
                log.exception("internal error starting a write-behind write")
                done(None, e)  # its error goes to the next flush, its room is freed

    def _write_behind_async(self, engine: GfapiEngine, store: Any, offset: int, data: Any,
                            lock: Lock, marks: dict[str, Any],
                            done: Callable[[Any, BaseException | None], None],
                            timeout: float) -> bool:
        """A write-behind write of a gfapi store started now as an asynchronous call
        (``gfaio.py``) instead of on a worker: under way at once (``marks["start"]``), the
        LU's lock held shared until gfapi is done, and the read cache (if any) updated then,
        as the workers' ``store.write`` would. False: nothing started, the workers do it."""
        cache, inner = _async_parts(store)
        if inner is None or not lock.try_acquire_shared():
            return False
        view = data if type(data) is memoryview else memoryview(data)
        if cache is None:
            finish = functools.partial(_wrote_behind, lock, marks, None, offset, view, 0, 0.0)
        else:
            begun, when = cache.begin_write()
            finish = functools.partial(_wrote_behind, lock, marks, cache, offset, view, begun,
                                       when)
        marks["start"] = _RUNNING
        if engine.write(inner, view, offset, done, timeout=timeout, finish=finish):
            return True
        del marks["start"]
        lock.release_shared()
        return False

    def _write_in_background(self, box: tuple[Any, int, Any, Lock, dict[str, Any]]) -> None:
        store, offset, data, lock, marks = box
        if marks.setdefault("start", _RUNNING) is not _RUNNING:
            return  # timed out in the queue, reported as failed: never over newer writes
        lock.acquire_shared()  # (shared: COMPARE AND WRITE's read-compare-write stays atomic)
        try:
            store.write(offset, data)
        finally:
            lock.release_shared()
            then = marks.setdefault("end", _FINISHED)
            if then is not _FINISHED:  # it timed out under way: the loop waits for it
                marks["loop"].call_soon_threadsafe(then)

    def _landed_late(self, rs: LuState, span: tuple[int, int]) -> None:
        """A write-behind write (or a lone LU's write, ``_held_until_returned``) that timed
        out under way returned (on the loop): its blocks are free again."""
        rs.wb_late.remove(span)

    def _held_until_returned(self, req: Any, target: Any, store: Any) -> None:
        """A lone LU's request timed out (its command fails NOT READY, which initiators
        retry). Still queued, its pool never issues it (``IoPool``: it would land over what
        the initiator writes there next). Under way, it may still land, over a newer write
        of its blocks, as a write-behind write may (W4): a request that changes blocks has
        them held the same way (``LuState.wb_late``: a read or change of them fails as a
        timeout does, and the initiator retries) until the call returned. (A group LU's
        calls have their own marks, ``_perform_fenced``.)"""
        t = type(req)
        if t is Write or t is CompareAndWrite or t is OrWrite:
            start = req.offset
            end = start + len(req.data)
        elif t is Unmap or t is WriteZeroes:
            start = req.offset
            end = start + req.length
        else:
            return  # changes no blocks
        rs = lu_state(target)
        span = (start, end)
        then = functools.partial(self._landed_late, rs, span)
        engines = self.engines
        assert engines is not None
        ring = engines.ring  # (whichever of them is timing it out now says so)
        gfaio = engines.gfaio
        if (ring is not None and ring.when_returned(then)) \
                or (gfaio is not None and gfaio.when_returned(then)) \
                or engines.pool_for(store).when_returned(then):
            rs.wb_late.append(span)

    def _written_behind(self, rs: LuState, span: tuple[int, int], n: int,
                        copy: memoryview | None, exc: BaseException | None, who: str) -> None:
        """A write-behind write finished (on the loop): free its room, keep its error for the
        next flush, and go on with the commands that waited for it."""
        rs.wb_count -= 1
        rs.wb_bytes -= n
        rs.wb_ranges.remove(span)
        budget = self.budget
        if budget is not None:
            budget.release(self.wb_share, n)
        if exc is not None:
            store = rs.wb_store
            name = getattr(store, "name", None)
            if type(exc) is IoTimeout:
                if copy is not None:
                    self.buffers.abandon(copy)  # the late call may still read it
                copy = None
                rs.stats.timeouts += 1
                exc = BackingStoreError(errno.ETIMEDOUT, "I/O timed out", name)
            # An error a synchronous write reports as retryable (a hung or disconnected
            # volume: NOT READY) is reported as what it is now, a lost write (MEDIUM ERROR,
            # WRITE ERROR): a flush retried on it would get GOOD.
            lost = exc
            if isinstance(exc, OSError) and from_store_error(exc, write=True).key in _RETRIED:
                lost = BackingStoreError(errno.EIO, f"a write acknowledged early was lost: {exc}",
                                         name)
            if who not in rs.wb_owed:
                rs.wb_owed[who] = lost
            rs.stats.wb_errors += 1
            # one line per store per interval; the error itself goes to the next flush
            PROBLEMS.report(log, logging.ERROR, "write-behind failed", str(name),
                            "%s: a write acknowledged early (write-behind, %d bytes at %d) "
                            "failed: %s; %s's next SYNCHRONIZE CACHE or FUA write reports it",
                            name or "store", n, span[0], exc, who)
        if copy is not None:
            self.buffers.give_back(copy)
        parked = rs.wb_parked
        if parked:
            rs.wb_parked = []
            for entry in parked:
                self._restart(entry)
        if not rs.wb_count and rs.wb_idle:
            idle, rs.wb_idle = rs.wb_idle, []
            for fut in idle:
                if not fut.done():
                    fut.set_result(None)

    def _restart(self, parked: tuple[Any, Any, Any, Any, Any, int]) -> None:
        """Go on with a command that waited for write-behind writes. What escapes its step (a
        failure of its host's ``complete`` or of its counters: nobody above this loop callback
        to take it) is that command's alone: it ends with the internal error, and the other
        commands that waited go on."""
        task, gen, lu, host, req, t0 = parked
        try:
            self._step(task, gen, lu, host, None, None, t0, req)
        except Exception:  # noqa: BLE001 - this command only
            log.exception("internal error going on with CDB %s after write-behind writes",
                          bytes(task.cdb[:1]).hex())
            key, asc = _INTERNAL_ERROR
            try:
                host.complete(task, ScsiResult(Status.CHECK_CONDITION, None,
                                               build_sense(key, asc)))
            except Exception:  # noqa: BLE001 - its connection is broken: the others go on
                log.exception("answering CDB %s", bytes(task.cdb[:1]).hex())

    def write_behind_idle(self, lu: Any) -> asyncio.Future[None] | None:
        """Stop write-behind on ``lu`` (its store is about to close) and return a future set
        once its pending write-behind writes finished; None if none is pending. (Each ends
        by its I/O timeout at the latest.) On the event loop."""
        rs: LuState | None = lu.runner_state
        if rs is None:
            return None
        rs.wb_off = True
        if not rs.wb_count:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rs.wb_idle.append(fut)
        return fut

    def write_behind_resume(self, lu: Any) -> None:
        """Write-behind on ``lu`` again after :meth:`write_behind_idle` stopped it: the LU
        serves on (a config change that drained it to close it was undone)."""
        rs: LuState | None = lu.runner_state
        if rs is not None:
            rs.wb_off = False

    def write_behind_status(self, lu: Any) -> dict[str, Any]:
        """What ``lun list``/``status`` show of a LU's write-behind: on (and why not), the
        window, what is pending, the counters."""
        rs = lu_state(lu)
        store = lu.store
        if not self.wb_window:
            why = "off (serve --write-behind 0)"
        elif rs.group is not None:
            why = "off (a gateway group LU: GOOD only once on the volume)"
        elif not getattr(store, "blocking", False) or not getattr(store, "write_behind", False):
            why = "off (not a gfapi store: the page cache does this for files)"
        elif rs.wb_off:
            why = "off (closing)"
        elif not lu.write_cache:
            why = "off (write cache disabled: WCE=0)"
        else:
            why = "on"
        return {"enabled": why == "on", "state": why, "window": self.wb_window,
                "window_writes": self.wb_writes, "pending_bytes": rs.wb_bytes,
                "pending_writes": rs.wb_count, "writes": rs.stats.wb_writes,
                "deferred_errors": rs.stats.wb_errors,
                "error_pending": bool(rs.wb_owed)}

    def _perform_boxed(self, box: tuple[Any, Any, ScsiTask, dict[str, Any] | None]) -> Any:
        req, target, task, marks = box
        if marks is not None:  # a group LU's media call
            return self._perform_fenced(req, target, task, marks)
        return self.calls[type(req)](self, req, target.store, self._lock(target))

    def _perform_fenced(self, req: Any, target: Any, task: ScsiTask,
                        marks: dict[str, Any]) -> Any:
        """A group LU's media call, checked again on the worker just before it is issued: it
        may have waited its turn in the queue past the LU's issue deadline, past an abort of
        its command (ABORT TASK, LUN RESET, PREEMPT AND ABORT, its nexus gone; for a shipped
        one, its sender's word) or past its I/O timeout: then it is never issued. One issued
        cannot be pulled back: an aborted command waiting for it is handed back once it
        returned (``marks``: set-once entries, so the loop and this thread agree without a
        lock)."""
        rs = target.runner_state
        if self.clock() >= rs.issue_deadline or task.aborted \
                or marks.setdefault("start", _RUNNING) is not _RUNNING:
            raise fenced_error(target)
        try:
            return self.calls[type(req)](self, req, target.store, self._lock(target))
        finally:
            then = marks.setdefault("end", _FINISHED)
            if then is not _FINISHED:  # its command waits for it (see _submit)
                marks["loop"].call_soon_threadsafe(then)

    def _submit_to_ring(self, ring: Ring, req: Any, target: Any,
                        done: Callable[[Any, BaseException | None], None], timeout: float) -> bool:
        """A read or a plain write of a FUSE file store through io_uring (``uring.py``): the
        kernel's workers instead of ours, no GIL hand-offs. False, with nothing started, for
        anything else (FUA writes, flushes, stores that lend no descriptor, read-only stores,
        a COMPARE AND WRITE holding the LU's lock, a full ring): the worker pool does those."""
        t = type(req)
        store = target.store
        if t is not Read and (t is not Write or req.fua or store.read_only):
            return False
        if not getattr(store, "lends_fd", False):
            return False
        buffers = self.buffers
        copy: memoryview | None = None
        if t is Read:
            view = buffers.borrow(req.length)
        else:
            data = req.data
            view = data if type(data) is memoryview else memoryview(data)
            if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
                return False
            if view.readonly:
                # Small immediate data arrives as bytes: the kernel wants an address it may
                # use until it is done, so a pooled copy (4 KiB: well under 1 us).
                copy = buffers.borrow(len(view))
                copy[:] = view
                view = copy
        lock = self._lock(target)

        def finish() -> None:  # once the kernel is done with the buffer, even late
            lock.release_shared()
            if copy is not None:
                buffers.give_back(copy)

        started = False
        if lock.try_acquire_shared():
            submit = ring.read if t is Read else ring.write
            started = submit(store.with_fd, view, req.offset, done, name=store.name,
                             timeout=timeout, finish=finish)
            if not started:
                lock.release_shared()
        if not started and (t is Read or copy is not None):
            buffers.give_back(view)
        return started

    def _submit_to_gfaio(self, engine: GfapiEngine, req: Any, target: Any,
                         done: Callable[[Any, BaseException | None], None],
                         timeout: float) -> bool:
        """A read or a plain write of a gfapi store (also under its read cache) as an
        asynchronous libgfapi call (``gfaio.py``), holding the LU's lock shared until gfapi is
        done with it (as the workers' call would). A miss of the read cache reads what the
        cache would (``CachedStore.begin_fill``) and is inserted when it returns; a write
        updates the cache before its command can answer (``end_write``). False, with nothing
        started: the workers do it (FUA writes, other stores, a COMPARE AND WRITE holding the
        lock, a store that refuses, a full queue)."""
        t = type(req)
        if t is Write and req.fua:
            return False
        store = target.store
        cache, inner = _async_parts(store)
        if inner is None:
            return False
        lock = self._lock(target)
        if not lock.try_acquire_shared():
            return False
        buffers = self.buffers
        offset: int = req.offset
        started = False
        if t is Read:
            view = buffers.borrow(req.length)
            fill = None
            if cache is not None:
                try:
                    fill = cache.begin_fill(offset, view)
                except Exception:  # noqa: BLE001 - (the workers' read says what the store says)
                    lock.release_shared()
                    buffers.give_back(view)
                    return False
            if cache is None or fill is None:
                started = engine.read(inner, view, offset, done, timeout=timeout,
                                      finish=functools.partial(_released, lock))
            else:
                started = engine.read(inner, fill.view, fill.lo, done, result=view,
                                      timeout=timeout,
                                      finish=functools.partial(_filled, lock, cache, fill))
                if not started:
                    cache.cancel_fill(fill)
            if not started:
                buffers.give_back(view)
        else:
            data = req.data
            wview = data if type(data) is memoryview else memoryview(data)
            if cache is None:
                started = engine.write(inner, wview, offset, done, timeout=timeout,
                                       finish=functools.partial(_released, lock))
            else:
                begun, when = cache.begin_write()
                started = engine.write(inner, wview, offset, done, timeout=timeout,
                                       finish=functools.partial(_written, lock, cache, offset,
                                                                wview, begun, when))
        if not started:
            lock.release_shared()
        return started

    # -- buffers ------------------------------------------------------------------------------

    def give_back(self, views: list[Any]) -> None:
        """The transport sent these read buffers (nothing of theirs is queued): reuse them."""
        give_back = self.buffers.give_back
        for view in views:
            give_back(view)

    # -- background jobs ----------------------------------------------------------------------

    def start_job(self, job: BackgroundJob, lu: Any) -> None:
        """Drive ``job`` against ``lu`` on a thread of its own (once)."""
        if job in self._jobs or job.ended:
            return
        run = JobRun(self, job, lu)
        self._jobs[job] = run
        run.thread = threading.Thread(target=run.loop, name=f"lu-{job.name}", daemon=True)
        run.thread.start()

    def wait_job(self, job: BackgroundJob, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``job`` to end: True once it ended."""
        run = self._jobs.get(job)
        if run is None:
            return job.ended
        return run.finished.wait(timeout)


class JobRun:
    """One background job being driven: :meth:`step` does its next request when the job's
    pace allows, by the time it is given, so tests drive it with a clock of their own and
    no thread; :meth:`loop` is the thread :meth:`Runner.start_job` starts."""

    def __init__(self, runner: Runner, job: BackgroundJob, lu: Any) -> None:
        self.runner = runner
        self.job = job
        self.lu = lu
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None
        self._wake = threading.Event()  # cut a pacing wait short (cancel)
        self._t0: float | None = None
        self._req: Any = None
        job.join = self.join

    def step(self, now: float) -> float | None:
        """Do the job's next request if its pace allows at ``now``. Returns None once the
        job ended, else the seconds to wait before the next step (0: step again now)."""
        job = self.job
        if job.ended:
            return None
        body = job.body
        try:
            if self._t0 is None:
                self._t0 = now
                self._req = next(body)
            if job.cancelled:
                self._req = body.throw(JobCancelled())
                return 0.0
            if job.rate:
                ahead = job.done_units / job.rate - (now - self._t0)
                if ahead > 0:
                    return ahead
            try:
                value = self.runner.perform(self._req, self.lu)
            except Exception as exc:  # noqa: BLE001 - the body decides what it means
                self._req = body.throw(exc)
            else:
                self._req = body.send(value)
            return 0.0
        except StopIteration:
            self._end(None)
        except JobCancelled as exc:
            log.warning("%s: cancelled at %d/%d", job.name, job.done_units, job.total)
            self._end(exc)
        except Exception as exc:
            log.error("%s failed: %s", job.name, exc)
            self._end(exc)
        return None

    def _end(self, error: BaseException | None) -> None:
        self.runner._jobs.pop(self.job, None)
        self.job.end(error)
        self.finished.set()

    def loop(self) -> None:
        clock = self.runner.clock
        wake = self._wake
        while True:
            wait = self.step(clock())
            if wait is None:
                return
            if wait > 0:
                wake.wait(wait)

    def join(self, timeout: float | None) -> bool:
        """Wake a pacing wait (the job was cancelled) and wait up to ``timeout`` for the end."""
        self._wake.set()
        return self.finished.wait(timeout)


def lu_on(store: Any, **kw: Any) -> LogicalUnit:
    """The :class:`LogicalUnit` of an opened store: its size, what it can do and whether it
    is read-only are asked here, once, where the store is opened (blocking: a network round
    trip for gfapi), not by the SCSI layer."""
    read_only = bool(kw.pop("read_only", False)) or bool(store.read_only)
    return LogicalUnit(store, size=store.size, capabilities=store.capabilities,
                       read_only=read_only, **kw)
