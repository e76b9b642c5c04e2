"""Typed I/O requests the SCSI layer yields and the driver runs against a backing store.

Each op's :meth:`run` calls the store (blocking is fine: the driver decides which thread runs
it). The value ``run`` returns is sent back into the command's generator; an exception it
raises (normally :class:`BackingStoreError`) is thrown into the generator, where the SCSI
layer turns it into sense data.

:func:`drive` runs an execution to completion synchronously: the test harness and simple
callers use it. The asyncio server has its own driver that runs blocking ops in a thread pool.
"""

from __future__ import annotations

import threading
from collections.abc import Buffer
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backstore.base import BackingStore, Extent

if TYPE_CHECKING:
    from .task import Execution, ScsiResult


class IoOp:
    __slots__ = ()

    def run(self, store: BackingStore) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(slots=True)
class ReadOp(IoOp):
    offset: int
    length: int

    def run(self, store: BackingStore) -> bytearray:
        return store.read(self.offset, self.length)


@dataclass(slots=True)
class WriteOp(IoOp):
    offset: int
    data: Buffer
    fua: bool = False

    def run(self, store: BackingStore) -> None:
        store.write(self.offset, self.data)
        if self.fua:
            store.flush()


@dataclass(slots=True)
class FlushOp(IoOp):
    def run(self, store: BackingStore) -> None:
        store.flush()


@dataclass(slots=True)
class DiscardOp(IoOp):
    offset: int
    length: int

    def run(self, store: BackingStore) -> None:
        store.discard(self.offset, self.length)


@dataclass(slots=True)
class WriteZeroesOp(IoOp):
    offset: int
    length: int

    def run(self, store: BackingStore) -> None:
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
    lock: threading.Lock | None = None

    def run(self, store: BackingStore) -> int | None:
        lock = self.lock or threading.Lock()
        with lock:
            current = store.read(self.offset, len(memoryview(self.verify)))
            if current != self.verify:
                mv = memoryview(self.verify)
                for i in range(len(current)):
                    if current[i] != mv[i]:
                        return i
            store.write(self.offset, self.data)
            if self.fua:
                store.flush()
            return None


def drive(execution: Execution, store: BackingStore | None) -> ScsiResult:
    """Run an execution to completion on this thread."""
    try:
        op = next(execution)
        while True:
            try:
                value = op.run(store)
            except Exception as exc:  # noqa: BLE001 - handed to the SCSI layer to map
                op = execution.throw(exc)
            else:
                op = execution.send(value)
    except StopIteration as stop:
        return stop.value
