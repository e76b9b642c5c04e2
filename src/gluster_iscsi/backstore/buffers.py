"""Reusable read buffers.

A fresh ``bytearray(256 KiB)`` costs a zero fill and, above glibc's mmap threshold, page
faults on first touch: profiled at a third of the daemon's CPU for 256 KiB sequential reads.
Reads therefore borrow buffers from size-classed free lists and the transport gives them
back once their bytes have reached the kernel (see ``server.driver``). A buffer that is
never given back is simply garbage-collected, so returning is an optimisation, never a
correctness requirement. One that something may still read or write (a store call that timed
out, its worker or the kernel still holding the buffer) is :meth:`BufferPool.abandon`-ed: given
back, it is dropped instead of handed to another command.

Thread safety: ``deque.append``/``pop`` are atomic in CPython; reads borrow on worker
threads, the event loop returns.
"""

from __future__ import annotations

from collections import deque
from typing import Any

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # installed without mypy: the decorator only guides the compiler

    def mypyc_attr(*_attrs: str, **_kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


_MIN_CLASS = 64 << 10  # smaller reads are cheap to allocate: not pooled
_MAX_CLASS = 16 << 20
_KEEP = 32  # buffers kept per size class


@mypyc_attr(native_class=False)  # compiled code cannot subclass bytearray natively
class PooledBuffer(bytearray):
    """A buffer the pool made. Only these are ever taken back: a view over anything else
    (say a memory store's own storage) must never be handed out again as scratch space."""

    __slots__ = ()


def _size_class(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class BufferPool:
    def __init__(self) -> None:
        self._free: dict[int, deque[PooledBuffer]] = {}
        self._abandoned: set[int] = set()  # ids of live buffers that must not be reused

    def borrow(self, n: int) -> memoryview:
        """A writable view of exactly ``n`` bytes (contents undefined)."""
        if n < _MIN_CLASS or n > _MAX_CLASS:
            return memoryview(bytearray(n))
        cls = _size_class(n)
        free = self._free.get(cls)
        try:
            buf = free.pop() if free is not None else PooledBuffer(cls)
        except IndexError:
            buf = PooledBuffer(cls)
        return memoryview(buf)[:n]

    def give_back(self, view: object) -> None:
        """Return the buffer behind ``view`` (a view from :meth:`borrow`); others are ignored."""
        if not isinstance(view, memoryview):
            return
        buf = view.obj
        if type(buf) is not PooledBuffer:
            return
        abandoned = self._abandoned
        if abandoned and id(buf) in abandoned:
            abandoned.discard(id(buf))  # (alive now, so the id is this buffer's)
            return
        cls = len(buf)
        view.release()
        free = self._free.setdefault(cls, deque())
        if len(free) < _KEEP:
            free.append(buf)


    def abandon(self, view: object) -> None:
        """Never hand out again the buffer behind ``view``: a call that timed out may still
        use it (a worker in a hung pwrite, the kernel in an io_uring write), and the bytes it
        writes late must be the command's own, not those of the next command to borrow it."""
        buf = view.obj if isinstance(view, memoryview) else view
        if type(buf) is PooledBuffer:
            self._abandoned.add(id(buf))


#: The process-wide pool.
POOL = BufferPool()
