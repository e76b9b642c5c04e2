"""Typed I/O requests the SCSI layer yields and the driver runs against a backing store.

Each op's :meth:`run` calls the store (blocking is fine: the driver decides which thread runs
it). The value ``run`` returns is sent back into the command's generator; an exception it
raises (normally :class:`BackingStoreError`) is thrown into the generator, where the SCSI
layer turns it into sense data.

:func:`drive` runs an execution to completion synchronously: the test harness and simple
callers use it. The asyncio server has its own driver that runs blocking ops in a thread pool.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# At run time too: compiled (setup.py), a dataclass's field types must exist.
from ..backstore.base import (
    BackingStore,
    Buffer,  # collections.abc.Buffer is 3.12+
    Extent,
)
from ..backstore.buffers import POOL
from .background import BackgroundJob
from .task import CommandRun, Execution, ScsiResult


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
        if not mutex.acquire(blocking=False):
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

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

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


class IoOp:
    __slots__ = ()

    def run(self, store: BackingStore) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(slots=True, init=False)
class ReadOp(IoOp):
    offset: int
    length: int
    lock: IoLock | None = None

    # (An explicit __init__: compiled, see setup.py, it is native and ~4x cheaper than the
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, offset: int, length: int, lock: IoLock | None = None) -> None:
        self.offset = offset
        self.length = length
        self.lock = lock

    def run(self, store: BackingStore) -> memoryview:
        buf = POOL.borrow(self.length)  # reused buffers: no zero fill, no page faults
        lock = self.lock
        if lock is None:
            store.read_into(self.offset, buf)
            return buf
        lock.acquire_shared()
        try:
            store.read_into(self.offset, buf)
        finally:
            lock.release_shared()
        return buf


@dataclass(slots=True, init=False)
class WriteOp(IoOp):
    offset: int
    data: Buffer
    fua: bool = False
    lock: IoLock | None = None

    # (An explicit __init__: compiled, see setup.py, it is native and ~4x cheaper than the
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, offset: int, data: Buffer, fua: bool = False, lock: IoLock | None = None) -> None:
        self.offset = offset
        self.data = data
        self.fua = fua
        self.lock = lock

    def run(self, store: BackingStore) -> None:
        lock = self.lock
        if lock is None:
            store.write(self.offset, self.data)
        else:
            lock.acquire_shared()
            try:
                store.write(self.offset, self.data)
            finally:
                lock.release_shared()
        if self.fua:
            store.flush()


@dataclass(slots=True)
class FlushOp(IoOp):
    def run(self, store: BackingStore) -> None:
        store.flush()


@dataclass(slots=True)
class SizeOp(IoOp):
    """The store's current size in bytes (may be a network round trip: run it like I/O)."""

    def run(self, store: BackingStore) -> int:
        return store.size


@dataclass(slots=True)
class DiscardOp(IoOp):
    offset: int
    length: int
    lock: IoLock | None = None

    def run(self, store: BackingStore) -> None:
        with self.lock.shared() if self.lock else contextlib.nullcontext():
            store.discard(self.offset, self.length)


@dataclass(slots=True)
class WriteZeroesOp(IoOp):
    offset: int
    length: int
    lock: IoLock | None = None

    def run(self, store: BackingStore) -> None:
        with self.lock.shared() if self.lock else contextlib.nullcontext():
            store.write_zeroes(self.offset, self.length)


@dataclass(slots=True)
class ExtentsOp(IoOp):
    offset: int
    length: int

    def run(self, store: BackingStore) -> list[Extent]:
        return store.extents(self.offset, self.length)


@dataclass(slots=True)
class CompareAndWriteOp(IoOp):
    """Read ``len(verify)`` bytes at ``offset``; if equal write ``data`` there, atomically.

    Returns None on success or the byte offset (relative to ``offset``) of the first miscompare.
    Atomic with respect to every other op on the same store because the store's ``lock`` is
    held across read and write; writers that race with COMPARE AND WRITE take the same lock
    (see :func:`locked_write`).
    """

    offset: int
    verify: Buffer
    data: Buffer
    fua: bool = False
    lock: threading.Lock | IoLock | None = None

    def run(self, store: BackingStore) -> int | None:
        lock = self.lock or threading.Lock()
        with lock:
            current = store.read(self.offset, len(memoryview(self.verify)))
            if current != self.verify:
                mv = memoryview(self.verify).cast("B")
                for i in range(len(current)):
                    if current[i] != mv[i]:
                        return i
            store.write(self.offset, self.data)
            if self.fua:
                store.flush()
            return None


@dataclass(slots=True)
class OnStore(IoOp):
    """Run ``op`` against ``store`` instead of the addressed LU's store (EXTENDED COPY).

    Drivers pick the store with :func:`store_for` (to decide e.g. whether it blocks); ``run``
    ignores the store it is given, so :func:`drive` needs no special case.
    """

    op: IoOp
    store: BackingStore

    def run(self, store: BackingStore | None = None) -> Any:
        return self.op.run(self.store)


class _OffLoop:
    """A stand-in store that says "blocking": an :class:`OnStore` op wrapped around it runs
    in the driver's worker pool, never inline on the event loop (for ops that wait)."""

    blocking = True
    read_only = True
    name = "off-loop"

    def close(self) -> None:
        pass


#: ``OnStore(op, OFF_LOOP)``: run ``op`` in a worker thread whatever the LU's store is.
OFF_LOOP: Any = _OffLoop()


@dataclass(slots=True)
class StartJob(IoOp):
    """Start a LU's :class:`~.background.BackgroundJob` against the store (returns at once)."""

    job: BackgroundJob

    def run(self, store: BackingStore | None) -> None:
        self.job.start(store)


@dataclass(slots=True)
class WaitJob(IoOp):
    """Wait up to ``timeout`` seconds for a background job: True once it ended.

    Yielded as ``OnStore(WaitJob(...), OFF_LOOP)`` so the wait is never on the event loop.
    """

    job: BackgroundJob
    timeout: float = 0.25

    def run(self, store: Any = None) -> bool:
        return self.job.wait(self.timeout)


def store_for(op: IoOp, default: BackingStore | None) -> BackingStore | None:
    """The store ``op`` will touch: its own for :class:`OnStore`, else ``default``."""
    return op.store if isinstance(op, OnStore) else default


@dataclass(slots=True)
class OrWriteOp(IoOp):
    """ORWRITE: ``data`` OR the current contents at ``offset``, atomic like COMPARE AND WRITE."""

    offset: int
    data: Buffer
    fua: bool = False
    lock: threading.Lock | IoLock | None = None

    def run(self, store: BackingStore) -> None:
        lock = self.lock or threading.Lock()
        with lock:
            mv = memoryview(self.data).cast("B")
            current = store.read(self.offset, len(mv))
            merged = (int.from_bytes(current, "big") | int.from_bytes(mv, "big")).to_bytes(
                len(mv), "big"
            )
            store.write(self.offset, merged)
            if self.fua:
                store.flush()


def drive(execution: Execution | CommandRun, store: BackingStore | None) -> ScsiResult:
    """Run an execution (a handler's, or a whole command's) to completion on this thread."""
    try:
        op = next(execution)
        while type(op) is not ScsiResult:  # a CommandRun's last item is its result
            try:
                value = op.run(store)
            except Exception as exc:  # noqa: BLE001 - handed to the SCSI layer to map
                op = execution.throw(exc)
            else:
                op = execution.send(value)
        return op
    except StopIteration as stop:  # an Execution returns its result
        return stop.value
