"""Reads and writes of file-backed stores through Linux io_uring, without worker threads.

A blocking file store (a file on a Gluster FUSE mount or on a disk file system) cannot be read
on the event loop: a read that misses the page cache, or a FUSE attribute refresh, may wait for
the volume, for as long as its ping timeout when the servers are gone. The worker pool
(``iopool``) keeps such calls off the loop, but each hand-off between the loop thread and a
Python worker costs ~45 us on one CPU here (thread switches and GIL hand-overs), while the
cached read itself costs 3 us. io_uring does the same hand-off in the kernel: a request the file
cannot serve at once (FUSE serves none at once: it has no NOWAIT reads) goes to io_uring's own
kernel workers, which need no GIL, and a page-cache read of a FUSE file round-trips in ~3 us.
``io_uring_enter`` never waits for the file, so a hung volume holds kernel workers, not the loop.

This is a small binding of the three system calls with ctypes (no Python package for io_uring is
kept up), for x86-64 only: the rings are shared memory, and only there do plain loads and stores
give the ordering the kernel's protocol asks for (acquire the CQ tail, release the SQ tail).
:meth:`Ring.create` returns None where io_uring is missing or refused (seccomp, an old kernel,
``kernel.io_uring_disabled``), and the server then uses the worker pool as before.

Only the byte-level data path comes here: preadv/pwrite of a store's file descriptor at the
store's offsets, each submission under the store's ``with_fd`` (so a descriptor closed and its
number reused for another file can never be the one submitted), with the same guarantees the
store's own methods give
(a short transfer is continued, end of file is EIO, errors carry their errno), and the same
deadline as the pool: a call that has not completed after ``timeout`` seconds gets
:class:`~.iopool.IoTimeout`, its late completion is dropped, and its buffer stays referenced until
the kernel is done with it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

from ..backstore.base import BackingStoreError
from .iopool import IoTimeout

log = logging.getLogger(__name__)

Callback = Callable[[Any, BaseException | None], None]
#: ``BackingStore.with_fd``: calls its argument with the store's descriptor, held open.
Lend = Callable[[Callable[[int], bool]], "bool | None"]

# System calls and constants (include/uapi/linux/io_uring.h); the numbers are shared by all
# architectures since Linux 5.1, but see the module docstring for why only x86-64 is used.
_SYS_SETUP, _SYS_ENTER, _SYS_REGISTER = 425, 426, 427
_OFF_SQ_RING, _OFF_SQES = 0, 0x10000000
_FEAT_SINGLE_MMAP = 1 << 0
_FEAT_NODROP = 1 << 1
_FEAT_RW_CUR_POS = 1 << 3  # Linux 5.6, with IORING_OP_READ/WRITE
_REGISTER_EVENTFD = 4
_OP_READ, _OP_WRITE = 22, 23


class _SqOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")
                ] + [("user_addr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")
                ] + [("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", _SqOffsets), ("cq_off", _CqOffsets)]


class _Sqe(ctypes.Structure):
    _fields_ = [("opcode", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("ioprio", ctypes.c_uint16),
                ("fd", ctypes.c_int32), ("off", ctypes.c_uint64), ("addr", ctypes.c_uint64),
                ("len", ctypes.c_uint32), ("rw_flags", ctypes.c_uint32),
                ("user_data", ctypes.c_uint64), ("buf_index", ctypes.c_uint16),
                ("personality", ctypes.c_uint16), ("splice_fd_in", ctypes.c_int32),
                ("addr3", ctypes.c_uint64), ("pad", ctypes.c_uint64)]


class _Cqe(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint64), ("res", ctypes.c_int32), ("flags", ctypes.c_uint32)]


assert ctypes.sizeof(_Params) == 120 and ctypes.sizeof(_Sqe) == 64 and ctypes.sizeof(_Cqe) == 16


class _Call:
    """One read or write in flight: what to continue with after a short transfer, whom to tell."""

    __slots__ = ("op", "lend", "view", "offset", "done", "total", "callback", "name", "result",
                 "deadline", "timeout", "timed_out", "finish", "keep", "late")

    def __init__(self, op: int, lend: Lend, view: memoryview, offset: int, callback: Callback,
                 name: str, result: Any, finish: Callable[[], None] | None) -> None:
        self.op = op
        self.lend = lend
        self.view = view  # the part still to transfer; holds the buffer until the kernel is done
        self.offset = offset
        self.done = 0
        self.total = len(view)
        self.callback = callback
        self.name = name
        self.result = result
        self.deadline = 0.0
        self.timeout = 0.0
        self.timed_out = False
        self.finish = finish  # runs once when the kernel is done (releases a lock), even late
        self.keep: Any = None  # the ctypes view whose address the kernel has
        #: timed out: what runs once the kernel is done with it (``Ring.when_returned``)
        self.late: Callable[[], None] | None = None


class Ring:
    """One io_uring instance per event loop. All methods run on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, params: _Params,
                 ring: mmap.mmap, sqes: mmap.mmap, efd: int, enter: Any) -> None:
        self.loop = loop
        self.fd = fd
        self._enter = enter  # libc's syscall(2), bound to io_uring_enter below
        self._mm = (ring, sqes)
        self._efd = efd
        p = params
        self._sq_tail = ctypes.c_uint32.from_buffer(ring, p.sq_off.tail)
        self._sq_mask = ctypes.c_uint32.from_buffer(ring, p.sq_off.ring_mask).value
        self._sq_array = (ctypes.c_uint32 * p.sq_entries).from_buffer(ring, p.sq_off.array)
        self._sqes = (_Sqe * p.sq_entries).from_buffer(sqes)
        self._cq_head = ctypes.c_uint32.from_buffer(ring, p.cq_off.head)
        self._cq_tail = ctypes.c_uint32.from_buffer(ring, p.cq_off.tail)
        self._cq_mask = ctypes.c_uint32.from_buffer(ring, p.cq_off.ring_mask).value
        self._cqes = (_Cqe * p.cq_entries).from_buffer(ring, p.cq_off.cqes)
        #: At most this many calls in flight: the completion ring then never overflows.
        self.capacity = p.cq_entries
        self._calls: dict[int, _Call] = {}
        self._live = 0  # calls whose caller still waits (not timed out)
        self._next_key = 0
        self._reap_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._expiring: _Call | None = None  # whose IoTimeout callback runs now
        #: Calls submitted and refused (ring full or the kernel said no): for tests and logs.
        self.submitted = 0
        self.refused = 0
        loop.add_reader(efd, self._reap)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop, entries: int = 256) -> Ring | None:
        """A ring, or None (logged) where io_uring cannot be used."""
        if sys.platform != "linux" or platform.machine() != "x86_64":
            log.info("io_uring not used on %s %s: worker threads do the file I/O",
                     sys.platform, platform.machine())
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            syscall = libc.syscall
            syscall.restype = ctypes.c_long
        except (OSError, AttributeError) as e:
            log.info("io_uring unavailable (%s): worker threads do the file I/O", e)
            return None
        params = _Params()
        fd = syscall(_SYS_SETUP, entries, ctypes.byref(params))
        if fd < 0:
            err = ctypes.get_errno()
            log.info("io_uring unavailable (%s): worker threads do the file I/O", os.strerror(err))
            return None
        fd = int(fd)
        need = _FEAT_SINGLE_MMAP | _FEAT_NODROP | _FEAT_RW_CUR_POS
        efd = -1
        try:
            if params.features & need != need:
                raise OSError(errno.ENOTSUP, "io_uring of this kernel is older than Linux 5.6")
            size = max(params.sq_off.array + params.sq_entries * 4,
                       params.cq_off.cqes + params.cq_entries * ctypes.sizeof(_Cqe))
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
            ring = mmap.mmap(fd, size, flags, prot, offset=_OFF_SQ_RING)
            sqes = mmap.mmap(fd, params.sq_entries * ctypes.sizeof(_Sqe), flags, prot,
                             offset=_OFF_SQES)
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            arg = ctypes.c_int32(efd)
            if syscall(_SYS_REGISTER, fd, _REGISTER_EVENTFD, ctypes.byref(arg), 1) < 0:
                raise OSError(ctypes.get_errno(), "io_uring_register(EVENTFD)")
            r = cls(loop, fd, params, ring, sqes, efd, syscall)
        except (OSError, ValueError, AttributeError) as e:  # mmap, os.eventfd, the kernel
            log.info("io_uring unavailable (%s): worker threads do the file I/O", e)
            os.close(fd)
            if efd >= 0:
                os.close(efd)
            return None
        log.info("file I/O: io_uring (%d entries)", params.sq_entries)
        return r

    def close(self) -> None:
        """Stop reaping and release the ring. Calls still in flight are abandoned: the kernel
        finishes them on its own; their buffers stay referenced here."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove_reader(self._efd)
        os.close(self._efd)
        os.close(self.fd)
        # The mappings go with this object: views into them (ctypes) forbid an explicit close.

    # ------------------------------------------------------------------ the poller's view
    def in_flight(self) -> bool:
        """Calls whose callers still wait: one that timed out (a hung volume) no longer counts,
        so it does not keep the ring from other LUNs."""
        return self._live > 0

    def has_done(self) -> bool:
        """Completions wait in the ring (a read of shared memory, no system call)."""
        return self._cq_tail.value != self._cq_head.value

    # ------------------------------------------------------------------ submitting
    def read(self, lend: Lend, buf: memoryview, offset: int, callback: Callback, *,
             name: str = "", timeout: float = 0.0, finish: Callable[[], None] | None = None) -> bool:
        """Fill ``buf`` with the bytes at ``offset`` of the file ``lend`` (a store's ``with_fd``)
        lends; ``callback(buf, None)`` or ``(None, error)`` later, on the loop. False (nothing
        submitted, ``finish`` not to be called) if the ring or the store cannot take it now:
        the caller uses its other path."""
        return self._start(_Call(_OP_READ, lend, buf, offset, callback, name, buf, finish), timeout)

    def write(self, lend: Lend, data: memoryview, offset: int, callback: Callback, *,
              name: str = "", timeout: float = 0.0, finish: Callable[[], None] | None = None) -> bool:
        """Write all of ``data`` (writable memory) at ``offset``; as :meth:`read`."""
        return self._start(_Call(_OP_WRITE, lend, data, offset, callback, name, None, finish),
                           timeout)

    def _start(self, call: _Call, timeout: float) -> bool:
        view = call.view
        if (self._closed or len(self._calls) >= self.capacity or view.readonly
                or view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous):
            self.refused += 1
            return False
        if call.total == 0:
            return False
        self._next_key = key = self._next_key + 1
        if not call.lend(lambda fd: self._submit(key, call, fd)):
            self.refused += 1
            return False
        self._calls[key] = call
        self._live += 1
        self.submitted += 1
        if timeout > 0:
            call.timeout = timeout
            call.deadline = self.loop.time() + timeout
            timer = self._timer
            if timer is None or call.deadline < timer.when():
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(call.deadline, self._expire)
        return True

    def _submit(self, key: int, call: _Call, fd: int) -> bool:
        view = call.view
        n = len(view)
        arr = (ctypes.c_char * n).from_buffer(view)
        tail = self._sq_tail.value
        index = tail & self._sq_mask
        sqe = self._sqes[index]
        ctypes.memset(ctypes.addressof(sqe), 0, ctypes.sizeof(_Sqe))
        sqe.opcode = call.op
        sqe.fd = fd
        sqe.off = call.offset + call.done
        sqe.addr = ctypes.addressof(arr)
        sqe.len = n
        sqe.user_data = key
        self._sq_array[index] = index
        self._sq_tail.value = tail + 1  # x86-64: stores are seen in order (release)
        while True:
            got = self._enter(_SYS_ENTER, self.fd, 1, 0, 0, None, 0)
            if got == 1:
                break
            err = ctypes.get_errno() if got < 0 else errno.EAGAIN
            if err != errno.EINTR:
                # Not consumed (EAGAIN, EBUSY): without SQPOLL the kernel reads the ring only
                # inside io_uring_enter, so taking the entry back is safe.
                self._sq_tail.value = tail
                return False
        call.keep = arr
        if self.has_done() and not self._reap_scheduled:
            # Served at once (a page-cache hit on a file that can say so): no need to wait
            # for the eventfd's turn in the loop.
            self._reap_scheduled = True
            self.loop.call_soon(self._reap)
        return True

    # ------------------------------------------------------------------ completing
    def _reap(self) -> None:
        self._reap_scheduled = False
        if self._closed:
            return
        try:
            os.eventfd_read(self._efd)
        except (BlockingIOError, OSError):
            pass
        head = self._cq_head.value
        cqes, mask, calls = self._cqes, self._cq_mask, self._calls
        while head != self._cq_tail.value:  # x86-64: loads are seen in order (acquire)
            cqe = cqes[head & mask]
            key, res = cqe.user_data, cqe.res
            head += 1
            self._cq_head.value = head
            call = calls.get(key)
            if call is not None:
                self._complete(key, call, res)

    def _complete(self, key: int, call: _Call, res: int) -> None:
        what = "read" if call.op == _OP_READ else "write"
        error: BaseException | None = None
        if res == -errno.EINTR and call.lend(lambda fd: self._submit(key, call, fd)):
            return  # as os.preadv/pwrite do: again
        if res < 0:
            err = -res
            error = BackingStoreError(err, f"{what} {call.total} bytes at offset {call.offset}: "
                                      f"{os.strerror(err)}", call.name or None)
        elif res == 0:
            error = BackingStoreError(
                errno.EIO, f"short {what}: {call.done} of {call.total} bytes at offset "
                f"{call.offset}" + (" (end of file)" if call.op == _OP_READ else ""),
                call.name or None)
        elif res < len(call.view):
            call.done += res
            call.view = call.view[res:]
            # The rest under the store's lending again: it may have been closed meanwhile.
            if call.lend(lambda fd: self._submit(key, call, fd)):
                return  # the rest goes on
            error = BackingStoreError(errno.EBADF, f"{what}: could not continue a short "
                                      f"transfer at offset {call.offset} (store closed?)",
                                      call.name or None)
        del self._calls[key]
        call.keep = None
        if call.finish is not None:
            call.finish()
        if call.timed_out:  # its caller has had IoTimeout; the buffer is free now
            if call.late is not None:
                call.late()
            return
        self._live -= 1
        if error is not None:
            call.callback(None, error)
        else:
            call.callback(call.result, None)

    def when_returned(self, then: Callable[[], None]) -> bool:
        """As ``IoPool.when_returned``: called by a callback as it gets IoTimeout, ``then()``
        runs once the kernel is done with the call (a call handed to the kernel is under way:
        it may still land), and True; False when no call of this ring is timing out now."""
        call = self._expiring
        if call is None:
            return False
        call.late = then
        return True

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        earliest = None
        for call in list(self._calls.values()):
            if call.timed_out or not call.deadline:
                continue
            if call.deadline > now:
                if earliest is None or call.deadline < earliest:
                    earliest = call.deadline
                continue
            call.timed_out = True
            self._live -= 1
            self._expiring = call
            try:
                call.callback(None, IoTimeout(f"no answer within {call.timeout:g} s"))
            finally:
                self._expiring = None
        if earliest is not None and not self._closed:
            self._timer = self.loop.call_at(earliest, self._expire)
