"""Buffers lent to commands, and the memory budget they are charged to.

Neutral ground: the iSCSI core (data-out buffers, received payloads), the stores (reads land
in these) and the server's command runner all use it, and it imports none of them.
:data:`Buffer` is the type of a byte buffer as annotations name it.

Reusable read buffers.

A fresh ``bytearray(256 KiB)`` costs a zero fill and, above glibc's mmap threshold, page
faults on first touch: profiled at a third of the daemon's CPU for 256 KiB sequential reads.
Reads therefore borrow buffers from size-classed free lists and the transport gives them
back once their bytes have reached the kernel (see ``server.runner``). A buffer that is
never given back is simply garbage-collected, so returning is an optimisation, never a
correctness requirement. One that something may still read or write (a store call that timed
out, its worker or the kernel still holding the buffer) is :meth:`BufferPool.abandon`-ed: given
back, it is dropped instead of handed to another command.

The pool gives memory back: it keeps at most :attr:`BufferPool.max_retained` bytes (the daemon
sets a small fraction of its :class:`MemoryBudget`), and :meth:`BufferPool.trim`, called on a
timer by the server layer, empties it once nothing was borrowed for a whole interval, so an idle
daemon returns to its starting size while a busy one keeps its buffers.

Thread safety: ``list.append``/``pop`` are atomic in CPython; reads borrow on worker
threads, the event loop returns. The retained-bytes count is updated from both without a
lock (no lock on the hot path): in interpreted code a rare lost update can make it drift,
and :meth:`BufferPool.trim` recounts it from the free lists.

:class:`MemoryBudget` is the other half: the bytes the daemon as a whole may hold for
commands (data-out buffers, read buffers, responses not yet sent), charged before the memory
is taken and released when it is given up. It only counts; it allocates nothing.
"""

from __future__ import annotations

from typing import Any, Final

from .buffertype import Buffer  # re-exported: import it from here

__all__ = ["Buffer", "POOL", "BufferPool", "BudgetShare", "MemoryBudget", "PooledBuffer",
           "default_budget"]

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # installed without mypy: the decorator only guides the compiler

    def mypyc_attr(*_attrs: str, **_kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


#: Smaller reads are cheap to allocate: not pooled. A page and up are: a fresh 4 KiB buffer
#: costs a zero fill, a malloc and a free per read (~6k of the ~73k instructions of a 4K read).
_MIN_CLASS: Final = 4 << 10
_MAX_CLASS: Final = 16 << 20
_KEEP: Final = 32  # buffers kept per size class
#: Bytes the pool keeps by default (the daemon sets a fraction of its memory budget).
DEFAULT_RETAINED = 64 << 20


@mypyc_attr(native_class=False)  # compiled code cannot subclass bytearray natively
class PooledBuffer(bytearray):
    """A buffer the pool made. Only these are ever taken back: a view over anything else
    (say a memory store's own storage) must never be handed out again as scratch space."""

    __slots__ = ()


def _size_class(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class BufferPool:
    def __init__(self, max_retained: int = DEFAULT_RETAINED) -> None:
        # The free lists: lists, not deques (compiled, their pop/append/len are native).
        self._free: dict[int, list[PooledBuffer]] = {}
        self._abandoned: set[int] = set()  # ids of live buffers that must not be reused
        #: The most bytes the free lists may hold; more given back is left to the allocator.
        self.max_retained = max_retained
        #: Bytes held in the free lists (see the module's note on thread safety).
        self.retained = 0
        self._used = False  # a pooled size was borrowed since the last trim

    def borrow(self, n: int) -> memoryview:
        """A writable view of exactly ``n`` bytes (contents undefined)."""
        if n < _MIN_CLASS or n > _MAX_CLASS:
            return memoryview(bytearray(n))
        cls = _size_class(n)
        self._used = True
        free = self._free.get(cls)
        if not free:
            buf = PooledBuffer(cls)
        else:
            try:
                buf = free.pop()
            except IndexError:  # another thread took the last one meanwhile
                buf = PooledBuffer(cls)
            else:
                self.retained -= cls
        # (a whole buffer, the common case of power-of-two reads: one view, not two)
        return memoryview(buf) if n == cls else memoryview(buf)[:n]

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
        sized: bytearray = buf  # (compiled: len of a bytearray, not a method call)
        cls = len(sized)
        view.release()
        free = self._free.get(cls)
        if free is None:  # (not setdefault: that would make a list on every call)
            free = self._free[cls] = []
        if len(free) < _KEEP and self.retained + cls <= self.max_retained:
            free.append(buf)
            self.retained += cls

    def abandon(self, view: object) -> None:
        """Never hand out again the buffer behind ``view``: a call that timed out may still
        use it (a worker in a hung pwrite, the kernel in an io_uring write), and the bytes it
        writes late must be the command's own, not those of the next command to borrow it."""
        buf = view.obj if isinstance(view, memoryview) else view
        if type(buf) is PooledBuffer:
            self._abandoned.add(id(buf))

    def trim(self) -> int:
        """Called every few seconds (the server layer's timer): if nothing was borrowed from
        the pool since the last call, free every buffer it holds (the daemon went idle: its
        memory goes back); otherwise keep them (a busy daemon reuses them at once) but no
        more than :attr:`max_retained`. Returns the bytes freed. Buffers out on loan, and
        abandoned ones, are not the pool's: untouched."""
        idle = not self._used
        self._used = False
        freed = 0
        kept = 0
        for cls, free in self._free.items():
            while free and (idle or kept + cls * len(free) > self.max_retained):
                try:
                    free.pop(0)  # the least recently returned first
                except IndexError:  # a worker took the last one meanwhile
                    break
                freed += cls
            kept += cls * len(free)
        self.retained = kept
        return freed


#: The process-wide pool.
POOL = BufferPool()


#: Bounds of the default memory budget (see :func:`default_budget`).
BUDGET_FLOOR = 256 << 20
BUDGET_CEILING = 4 << 30


def default_budget(mem_total: int | None = None) -> int:
    """An eighth of the machine's memory, at least 256 MiB and at most 4 GiB.

    The daemon shares the machine with what serves its stores (Gluster bricks and clients,
    the page cache), so it takes a small part. The floor lets 32 commands of 8 MiB (SBC
    MAXIMUM TRANSFER LENGTH, VPD B0h) be in flight at once, the queue depth initiators use;
    beyond the ceiling more buffers buy no throughput, only more to lose to one peer."""
    if mem_total is None:
        mem_total = _mem_total()
    return max(BUDGET_FLOOR, min(BUDGET_CEILING, mem_total // 8))


def _mem_total() -> int:
    return meminfo()[0]


def meminfo(path: str = "/proc/meminfo") -> tuple[int, int | None]:
    """(MemTotal, MemAvailable) in bytes from ``path``: 0 for a total it cannot read, None for
    MemAvailable where the kernel has none (before 3.14)."""
    total, avail = 0, None
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    total = int(line.split()[1]) << 10
                elif line.startswith(b"MemAvailable:"):
                    avail = int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return total, avail


class BudgetShare:
    """What one session holds of a :class:`MemoryBudget` (MaxConnections=1: one connection)."""

    def __init__(self) -> None:
        self.used = 0


class MemoryBudget:
    """The bytes the whole daemon may hold for commands: data-out buffers (R2T'd writes,
    immediate and unsolicited data), read buffers and the responses not yet sent.

    A command is charged before its memory is taken; when the charge does not fit, the
    command does not run (TASK SET FULL or BUSY, see ``iscsi.connection``). Each session has
    a share besides (:attr:`share`), so one session cannot take it all; a session holding
    nothing may always take one command that fits the budget, however large, so a command
    larger than the share is slow rather than impossible. Charged and released on the event
    loop thread only.
    """

    def __init__(self, limit: int, share: int | None = None) -> None:
        #: The budget, in bytes.
        self.limit = limit
        #: The most one session may hold (default: a quarter of the budget).
        self.share = share if share is not None else max(limit // 4, 1)
        #: Bytes charged now, and the most ever charged at once.
        self.used = 0
        self.peak = 0

    def fits(self, owner: BudgetShare, n: int) -> bool:
        """Would :meth:`charge` take ``n`` bytes for ``owner`` now?"""
        held = owner.used
        return self.used + n <= self.limit and (not held or held + n <= self.share)

    def charge(self, owner: BudgetShare, n: int) -> bool:
        """Take ``n`` bytes for ``owner`` if they fit; False (nothing taken) if not."""
        held = owner.used
        used = self.used + n
        if used > self.limit or (held and held + n > self.share):
            return False
        owner.used = held + n
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def release(self, owner: BudgetShare, n: int) -> None:
        owner.used -= n
        self.used -= n
