"""A RAM-backed store for tests and benchmarks.

Calls never block (``blocking = False``), so the server may run them inline. Deallocation is
tracked byte-exactly: a new store is entirely unmapped (like a fresh sparse file), writes map
their range, discard unmaps it and zeroes it, so :meth:`extents` answers honestly.
"""

from __future__ import annotations

import errno
import threading

from ._util import RangeSet, byte_view, check_range, merge_extents
from .base import BackingStore, BackingStoreError, Buffer, Capabilities, Extent

_ZEROES = memoryview(bytes(1 << 20))


class MemoryStore(BackingStore):
    blocking = False
    capabilities = Capabilities(
        discard=True, discard_zeroes=True, write_zeroes=True, extents=True, flush=True, resize=True
    )

    def __init__(self, size: int, *, name: str | None = None, read_only: bool = False) -> None:
        if size < 0:
            raise BackingStoreError(errno.EINVAL, f"negative size {size}", name)
        self._data = bytearray(size)
        # One long-lived view (slicing it copies nothing); released around resizes, which
        # a bytearray refuses while exported.
        self._view = memoryview(self._data)
        self._holes = RangeSet()
        self._holes.add(0, size)
        # Guards resize against concurrent I/O; bytearray slicing is not atomic with resizing.
        self._lock = threading.Lock()
        self.name = name or f"memory:{size}"
        self.read_only = read_only

    @property
    def size(self) -> int:
        return len(self._data)

    def _check(self, offset: int, length: int, *, write: bool) -> None:
        check_range(offset, length, self.name)
        if write and self.read_only:
            raise BackingStoreError(errno.EROFS, "store is read-only", self.name)
        size = len(self._data)
        if offset + length > size:
            if write:
                raise BackingStoreError(
                    errno.ENOSPC, f"write beyond end: {offset}+{length} > {size}", self.name
                )
            raise BackingStoreError(
                errno.EIO,
                f"short read: {max(0, size - offset)} of {length} bytes at offset {offset}",
                self.name,
            )

    def read_into(self, offset: int, buf: memoryview) -> None:
        dst = byte_view(buf)
        n = len(dst)
        with self._lock:
            self._check(offset, n, write=False)
            dst[:] = self._view[offset : offset + n]

    def write(self, offset: int, data: Buffer) -> None:
        src = byte_view(data)
        n = len(src)
        with self._lock:
            self._check(offset, n, write=True)
            self._view[offset : offset + n] = src
            if self._holes:
                self._holes.remove(offset, offset + n)

    def flush(self) -> None:
        pass

    def _zero(self, offset: int, length: int) -> None:
        # In bounded chunks: a multi-GiB UNMAP must not allocate a multi-GiB zero buffer.
        zeroes = _ZEROES
        end = offset + length
        while offset < end:
            n = min(len(zeroes), end - offset)
            self._view[offset : offset + n] = zeroes[:n]
            offset += n

    def discard(self, offset: int, length: int) -> None:
        with self._lock:
            self._check(offset, length, write=True)
            self._zero(offset, length)
            self._holes.add(offset, offset + length)

    def write_zeroes(self, offset: int, length: int) -> None:
        # Zeroed blocks stay mapped, like FALLOC_FL_ZERO_RANGE.
        with self._lock:
            self._check(offset, length, write=True)
            self._zero(offset, length)
            self._holes.remove(offset, offset + length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(offset, length, self.name)
        end = offset + length
        with self._lock:
            size = len(self._data)
            holes = self._holes.overlapping(offset, min(end, size))
        out: list[Extent] = []
        pos = offset
        for start, stop in holes:
            out.append(Extent(pos, start - pos, True))
            out.append(Extent(start, stop - start, False))
            pos = stop
        data_end = max(pos, min(end, size))
        out.append(Extent(pos, data_end - pos, True))
        out.append(Extent(data_end, end - data_end, False))  # beyond the end: nothing mapped
        return merge_extents(out)

    def resize(self, new_size: int) -> None:
        if new_size < 0:
            raise BackingStoreError(errno.EINVAL, f"negative size {new_size}", self.name)
        if self.read_only:
            raise BackingStoreError(errno.EROFS, "store is read-only", self.name)
        with self._lock:
            old = len(self._data)
            self._view.release()
            try:
                if new_size > old:
                    self._data.extend(bytes(new_size - old))
                    self._holes.add(old, new_size)
                elif new_size < old:
                    del self._data[new_size:]
                    self._holes.remove(new_size, old)
            finally:
                self._view = memoryview(self._data)

    def close(self, timeout: float | None = None) -> None:
        pass

    def __repr__(self) -> str:
        return f"MemoryStore(size={self.size})"
