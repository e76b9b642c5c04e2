"""The I/O requests the SCSI layer yields: plain records, fields only.

A handler (and so :meth:`.device.DeviceServer.execute`) yields one of these for every piece
of I/O it needs and receives the outcome: the value is sent back into its generator, a
failure (normally a ``BackingStoreError``, an ``OSError``) is thrown in, where the SCSI layer
turns it into sense data. Like SPDK's bdev I/O types, a request says what to do and where;
it does nothing itself. Who does it is the command runner (``server.runner``): one table
maps each request type to a store call, and the runner decides the thread, holds the LU's
I/O lock (shared for reads and writes, exclusive for the read-modify-writes) and lends the
read buffers.

``lu`` names the logical unit a request addresses when it is not the command's own
(EXTENDED COPY reads one LU and writes another); None, the common case, means the LU the
command (or background job) addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# At run time too: compiled (setup.py), a dataclass's field types must exist.
from ..buffers import Buffer  # collections.abc.Buffer is 3.12+
from .background import BackgroundJob


class Request:
    """Base of every request (the runner's table is keyed by the exact type)."""

    __slots__ = ()


@dataclass(slots=True, init=False)
class Read(Request):
    """Read ``length`` bytes at ``offset``: the outcome is a buffer lent by the runner."""

    offset: int
    length: int
    lu: Any

    # (Explicit __init__s: compiled, see setup.py, they are native and ~4x cheaper than a
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, offset: int, length: int, lu: Any = None) -> None:
        self.offset = offset
        self.length = length
        self.lu = lu


@dataclass(slots=True, init=False)
class Write(Request):
    """Write ``data`` at ``offset`` (then flush, if ``fua``). ``last``: the command uses
    ``data`` no more once this is done (a plain WRITE's one request), so whoever runs it may
    keep the buffer past the command's end; a command that writes the same bytes again
    (WRITE SAME, SANITIZE's pattern) or reads them after (a verify) leaves it False."""

    offset: int
    data: Buffer
    fua: bool
    lu: Any
    last: bool

    def __init__(self, offset: int, data: Buffer, fua: bool = False, lu: Any = None,
                 last: bool = False) -> None:
        self.offset = offset
        self.data = data
        self.fua = fua
        self.lu = lu
        self.last = last


@dataclass(slots=True, init=False)
class Flush(Request):
    """Make written data durable (SYNCHRONIZE CACHE)."""

    lu: Any

    def __init__(self, lu: Any = None) -> None:
        self.lu = lu


@dataclass(slots=True, init=False)
class Size(Request):
    """The medium's current size in bytes (may be a network round trip: it is I/O)."""

    lu: Any

    def __init__(self, lu: Any = None) -> None:
        self.lu = lu


@dataclass(slots=True, init=False)
class Unmap(Request):
    """Deallocate ``length`` bytes at ``offset`` (UNMAP, WRITE SAME with UNMAP)."""

    offset: int
    length: int
    lu: Any

    def __init__(self, offset: int, length: int, lu: Any = None) -> None:
        self.offset = offset
        self.length = length
        self.lu = lu


@dataclass(slots=True, init=False)
class WriteZeroes(Request):
    """Zero ``length`` bytes at ``offset`` efficiently (WRITE SAME of a zero block)."""

    offset: int
    length: int
    lu: Any

    def __init__(self, offset: int, length: int, lu: Any = None) -> None:
        self.offset = offset
        self.length = length
        self.lu = lu


@dataclass(slots=True, init=False)
class Extents(Request):
    """The mapped/deallocated runs over ``length`` bytes at ``offset`` (GET LBA STATUS)."""

    offset: int
    length: int
    lu: Any

    def __init__(self, offset: int, length: int, lu: Any = None) -> None:
        self.offset = offset
        self.length = length
        self.lu = lu


@dataclass(slots=True, init=False)
class CompareAndWrite(Request):
    """Read ``len(verify)`` bytes at ``offset``; if equal, write ``data`` there, atomically.

    The outcome is None on success or the byte offset (relative to ``offset``) of the first
    miscompare. Atomic because the runner holds the LU's I/O lock exclusive across it.
    """

    offset: int
    verify: Buffer
    data: Buffer
    fua: bool
    lu: Any

    def __init__(self, offset: int, verify: Buffer, data: Buffer, fua: bool = False,
                 lu: Any = None) -> None:
        self.offset = offset
        self.verify = verify
        self.data = data
        self.fua = fua
        self.lu = lu


@dataclass(slots=True, init=False)
class OrWrite(Request):
    """ORWRITE: ``data`` OR the current contents at ``offset``, atomic like COMPARE AND WRITE."""

    offset: int
    data: Buffer
    fua: bool
    lu: Any

    def __init__(self, offset: int, data: Buffer, fua: bool = False, lu: Any = None) -> None:
        self.offset = offset
        self.data = data
        self.fua = fua
        self.lu = lu


@dataclass(slots=True, init=False)
class StartJob(Request):
    """Start driving a LU's :class:`~.background.BackgroundJob` (the outcome comes at once);
    ``lu`` is the LU its requests address."""

    job: BackgroundJob
    lu: Any

    def __init__(self, job: BackgroundJob, lu: Any = None) -> None:
        self.job = job
        self.lu = lu


@dataclass(slots=True, init=False)
class WaitJob(Request):
    """Wait up to ``timeout`` seconds for a background job: the outcome is True once it ended.

    The runner never waits on its event loop: this goes to a worker whatever the store."""

    job: BackgroundJob
    timeout: float
    lu: Any

    def __init__(self, job: BackgroundJob, timeout: float = 0.25, lu: Any = None) -> None:
        self.job = job
        self.timeout = timeout
        self.lu = lu


@dataclass(slots=True, init=False)
class SharedUpdate(Request):
    """Change LU-wide state of ``kind`` ("pr": persistent reservations, "mode": the
    changeable mode page bits) by calling ``apply()``: the outcome is what it returned, or
    the exception it raised, thrown in (a CheckCondition or ReservationConflict then ends
    the command as it would have without the request).

    ``apply`` reads and changes the LU in memory only. Whoever runs it calls it with the
    LU's ``state_lock`` held, and in a gateway group (docs/HA.md decision 4) around it:
    takes the state record's lock, loads the latest state into the LU
    (``LogicalUnit.load_shared_state``), and afterwards stores ``shared_state(kind)``. The
    handlers name their LU in ``lu`` (the runner's calls see the request, not the command).
    """

    kind: str
    apply: Callable[[], Any]
    lu: Any

    def __init__(self, kind: str, apply: Callable[[], Any], lu: Any = None) -> None:
        self.kind = kind
        self.apply = apply
        self.lu = lu


@dataclass(slots=True, init=False)
class SharedRefresh(Request):
    """About to read LU-wide state of ``kind``: a gateway group may load the latest into the
    LU first (a lone gateway has nothing to do). The outcome is None."""

    kind: str
    lu: Any

    def __init__(self, kind: str, lu: Any = None) -> None:
        self.kind = kind
        self.lu = lu


#: Every request type, for whoever maps them (``server.runner.STORE_CALLS`` must cover all).
REQUEST_TYPES: tuple[type[Request], ...] = (
    Read, Write, Flush, Size, Unmap, WriteZeroes, Extents, CompareAndWrite, OrWrite,
    StartJob, WaitJob, SharedUpdate, SharedRefresh,
)
