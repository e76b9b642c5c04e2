"""The one byte-level interface every backing store implements.

A backing store knows offsets and lengths, never CDBs, block sizes or SCSI status. Its
methods block; the server calls them from worker threads (``blocking = True``) or inline
(``blocking = False``, e.g. the memory store), so no method may touch the event loop.

Errors are raised as :class:`BackingStoreError` carrying an ``errno`` value; the SCSI layer
maps the errno to sense data (EIO -> MEDIUM ERROR, ENOSPC -> space allocation failed,
ENOTCONN/ETIMEDOUT -> NOT READY, ...). A store never returns partial success silently.
"""

from __future__ import annotations

import errno as _errno
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..buffers import Buffer  # (re-exported: the stores import it from here)

T = TypeVar("T")


class BackingStoreError(OSError):
    """An I/O error from a backing store. ``errno`` says what kind; ``path`` which object."""

    def __init__(self, err: int, message: str, path: str | None = None) -> None:
        super().__init__(err, message)
        self.path = path

    def __str__(self) -> str:  # pragma: no cover - formatting only
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        where = f" ({self.path})" if self.path else ""
        return f"[{name}] {self.strerror}{where}"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store can really do; the SCSI layer advertises only these (VPD B0h/B2h)."""

    discard: bool = False  # deallocate a byte range (punch hole / glfs_discard)
    discard_zeroes: bool = False  # a deallocated range reads back as zeroes (LBPRZ)
    write_zeroes: bool = False  # an efficient zero fill (zerofill / FALLOC_FL_ZERO_RANGE)
    extents: bool = False  # can tell mapped from unmapped ranges (SEEK_DATA/SEEK_HOLE)
    flush: bool = True  # flush() makes written data durable
    resize: bool = True


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of bytes that is either mapped (holds data) or deallocated."""

    offset: int
    length: int
    mapped: bool


class BackingStore(ABC):
    """Byte-addressed storage behind one logical unit."""

    #: True if calls may block (file, gfapi): run them off the event loop.
    blocking: bool = True
    #: Human-readable description, e.g. the path or URL.
    name: str = ""
    read_only: bool = False
    capabilities: Capabilities = Capabilities()
    #: True if :meth:`with_fd` lends a descriptor (checked before doing any work for it).
    lends_fd: bool = False

    @property
    @abstractmethod
    def size(self) -> int:
        """Current size in bytes."""

    @abstractmethod
    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill all of ``buf`` with the bytes at ``offset``; raise on a short read."""

    def read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return buf

    @abstractmethod
    def write(self, offset: int, data: Buffer) -> None:
        """Write all of ``data`` at ``offset``; raise on a short write."""

    @abstractmethod
    def flush(self) -> None:
        """Make every completed write durable (fdatasync)."""

    def discard(self, offset: int, length: int) -> None:
        raise BackingStoreError(_errno.EOPNOTSUPP, "discard not supported", self.name)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero a range; the default writes zero buffers in chunks."""
        chunk = bytes(min(length, 1 << 20))
        end = offset + length
        while offset < end:
            n = min(len(chunk), end - offset)
            self.write(offset, memoryview(chunk)[:n])
            offset += n

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped/deallocated runs covering [offset, offset+length); default: all mapped."""
        return [Extent(offset, length, True)]

    def resize(self, new_size: int) -> None:
        raise BackingStoreError(_errno.EOPNOTSUPP, "resize not supported", self.name)

    def with_fd(self, use: Callable[[int], T]) -> T | None:
        """``use(fd)`` with a descriptor whose bytes are this store's bytes at the same offsets
        (pread/pwrite on it, no alignment rules), kept open for the call; None, without calling
        ``use``, if the store lends none (:attr:`lends_fd`). For a server that does its own
        asynchronous I/O (io_uring): ``use`` must not block, whatever it starts on ``fd`` must
        hold its own reference to the file (the kernel does, from submission on), and a store
        lends only where the kernel never does such I/O inside the submitting call."""
        return None

    def close(self, timeout: float | None = None) -> None:  # noqa: B027 - optional hook
        """Release handles. Idempotent. A store whose calls run on worker threads waits for
        those still running, at most ``timeout`` seconds (None: its own default), and leaks
        a handle a hung call may still use rather than close it under that call."""
