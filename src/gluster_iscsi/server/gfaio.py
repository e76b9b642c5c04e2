"""Reads and writes of gfapi stores as libgfapi's asynchronous calls, without worker threads.

A blocking gfapi call on a worker costs three thread hand-offs a command: the loop wakes a
worker, the worker winds the call and sleeps until gfapi's event thread wakes it with the
reply, and the worker wakes the loop. Measured here (a 4 KiB read the bricks serve from their
page cache, QD1): 234-256 us a read from the loop through a worker, 160-171 us for the same
call made on the calling thread (what fio's gfapi engine does), 171 us as an asynchronous call
made on the loop whose completion comes back as below (issue 19, BENCHMARKS.md).

So the loop itself calls ``glfs_pread_async``/``glfs_pwrite_async``: that winds the call down
the client's translators and returns. The reply arrives on a gfapi event thread, which calls a
C callback (``backstore/gfapi/_aio.c``) that never touches Python: it queues (token, result,
errno) and writes an eventfd when the queue turns non-empty. The loop reads the eventfd and
finishes the whole batch here: a burst of completions costs one wake-up, as the worker pool's
batches do.

The same guarantees as the worker pool and io_uring (``uring.py``): a short transfer is
continued, end of file is EIO, errors carry their errno and count as the store's failed
calls, and a call that has not completed after ``timeout`` seconds gets
:class:`~.iopool.IoTimeout` while its buffer stays referenced and its store counted busy
(``close()`` waits for it: libgfapi drops the completion of a call whose fd is closed) until
gfapi is done with it. ``finish(ok)`` runs once gfapi is done, even late (the read cache
inserts its fill there, the runner releases the LU's lock).

Where it does not apply, the call goes to the worker pool as before: without the C module
(a pure-Python build), for anything but a plain read or write, for a gateway group's LU (its
calls are fenced on the workers), when the store refuses (closed), and when the queue is full
(:data:`CAPACITY` calls in flight in the process).

A write longer than its store's write piece (``serve --gfapi-write-piece``) goes as one call a
piece, all started at once, and completes when the last is back (the first failure is the
write's; a timeout answers once and holds the buffer until every piece is back): the bricks
get piece-sized WRITEs at the latency of one, where a worker writes the pieces one by one.

One queue per process (the C callback's state outlives every Python object): one engine per
process uses it; a second event loop in the same process (tests) gets None and the workers.
The risk it takes: the wind runs on the loop's thread. It does no network wait, except when
libgfapi must move the fd to a new graph first (a volume option changed): that is done
synchronously, once, by the first call after the change, as the workers would do it.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..backstore.base import BackingStoreError
from ..backstore.gfapi._binding import GfapiError
from .iopool import IoTimeout

log = logging.getLogger(__name__)

Callback = Callable[[Any, BaseException | None], None]
Finish = Callable[[bool], None]

#: Calls in flight in the process at most (the C queue's size; more go to the workers).
CAPACITY = 1024
#: A single call never moves more than this (larger requests go to the workers, which split).
MAX_CALL = 32 << 20

_READ, _WRITE = 0, 1

_active: GfapiEngine | None = None  # the process's one engine, while open
# The last token given to a call: unique in the process, not per engine, so a late completion
# of a closed engine's call can never be taken for a later engine's call.
_last_key = 0
_queue_ready: tuple[ModuleType, int] | None = None  # (the C module, its eventfd), once set up


class _Call:
    """One read or write in flight, whom to tell when it is done. It goes as one libgfapi call,
    or a write longer than its store's ``write_piece`` as one call per piece, all in flight at
    once (:class:`_Part`): it is done when the last of them is."""

    __slots__ = ("op", "store", "glfd", "view", "offset", "total", "callback", "name",
                 "result", "deadline", "timeout", "timed_out", "finish", "late", "pending",
                 "error")

    def __init__(self, op: int, store: Any, view: memoryview, offset: int, callback: Callback,
                 result: Any, finish: Finish | None) -> None:
        self.op = op
        self.store = store
        self.glfd = 0
        self.view = view  # all of it: holds the buffer until gfapi is done with every part
        self.offset = offset
        self.total = len(view)
        self.callback = callback
        self.name: str = getattr(store, "name", "") or ""
        self.result = result
        self.deadline = 0.0
        self.timeout = 0.0
        self.timed_out = False
        self.finish = finish
        self.late: Callable[[], None] | None = None  # after a timeout: when gfapi returns
        self.pending = 0  # parts gfapi has not returned yet
        self.error: BackingStoreError | None = None  # the first part's failure


class _Part:
    """One libgfapi call of a :class:`_Call` (its token is the key in ``GfapiEngine._calls``):
    the bytes still to transfer after a short transfer, and where."""

    __slots__ = ("call", "view", "offset", "done")

    def __init__(self, call: _Call, view: memoryview, offset: int) -> None:
        self.call = call
        self.view = view  # the part still to transfer
        self.offset = offset  # where the part starts (``done`` bytes of it are transferred)
        self.done = 0


def _c_module() -> ModuleType | None:
    """``backstore/gfapi/_aio`` (imported by name: this module may run compiled), or None."""
    try:
        return importlib.import_module("gluster_iscsi.backstore.gfapi._aio")
    except ImportError:
        return None


def supported() -> bool:
    """Whether the C module is built (a pure-Python build has none)."""
    return _c_module() is not None


def _setup_queue() -> tuple[ModuleType, int] | None:
    """The C module with its queue and eventfd, set up once per process; None without it."""
    global _queue_ready
    if _queue_ready is not None:
        return _queue_ready
    _aio = _c_module()
    if _aio is None:
        return None
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        _aio.setup(efd, CAPACITY)
    except (RuntimeError, MemoryError, ValueError) as e:
        os.close(efd)
        log.warning("gfapi asynchronous calls unavailable (%s): worker threads do them", e)
        return None
    _queue_ready = (_aio, efd)
    return _queue_ready


class GfapiEngine:
    """The process's asynchronous gfapi calls, completed on one event loop. All methods run
    on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, aio: ModuleType, efd: int,
                 functions: dict[str, int]) -> None:
        self.loop = loop
        self._aio = aio
        self._efd = efd
        self._pread = functions["glfs_pread_async"]
        self._pwrite = functions["glfs_pwrite_async"]
        self.capacity = CAPACITY
        self._calls: dict[int, _Part] = {}  # every libgfapi call in flight, by token
        self._live = 0  # calls whose caller still waits (not timed out)
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._expiring: _Call | None = None  # the call whose IoTimeout callback runs now
        #: Calls started, and refused (the store or libgfapi said no, or the queue was full).
        self.submitted = 0
        self.refused = 0
        loop.add_reader(efd, self._reap)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop) -> GfapiEngine | None:
        """The engine, or None (logged) where it cannot be used: no C module (a pure-Python
        build), no libgfapi, or another loop of this process has it."""
        global _active
        if _active is not None:
            log.info("gfapi asynchronous calls are another event loop's: worker threads here")
            return None
        queue = _setup_queue()
        if queue is None:
            log.info("gfapi asynchronous calls need the compiled build (backstore/gfapi/_aio.c):"
                     " worker threads do gfapi I/O")
            return None
        from ..backstore.gfapi import _binding

        try:
            functions = _binding.async_functions()
        except BackingStoreError as e:
            log.info("gfapi asynchronous calls unavailable (%s): worker threads do gfapi I/O",
                     e.strerror or e)
            return None
        aio, efd = queue
        _active = engine = cls(loop, aio, efd, functions)
        log.info("gfapi I/O: asynchronous calls, completed through an eventfd")
        return engine

    def close(self) -> None:
        """Stop reaping. Calls still in flight are abandoned: their buffers stay referenced
        here, their stores stay counted busy (a store's close waits, then leaks its fd)."""
        global _active
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove_reader(self._efd)
        if _active is self:
            _active = None

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no call is in flight, also none that timed
        out (before stores close at shutdown: their close waits for such calls, and would
        wait on the loop that completes them). True if none is left."""
        deadline = self.loop.time() + timeout
        while self._calls and self.loop.time() < deadline:
            await asyncio.sleep(0.005)
        return not self._calls

    # ------------------------------------------------------------------ the poller's view
    def in_flight(self) -> bool:
        """Calls whose callers still wait (one that timed out no longer counts)."""
        return self._live > 0

    def has_done(self) -> bool:
        """Completions wait to be taken (a read without the lock: a hint)."""
        return bool(self._aio.waiting())

    # ------------------------------------------------------------------ submitting
    def read(self, store: Any, buf: memoryview, offset: int, callback: Callback, *,
             result: Any = None, timeout: float = 0.0, finish: Finish | None = None) -> bool:
        """Fill ``buf`` (writable, flat bytes) with the store's bytes at ``offset``;
        ``callback(result, None)`` (``result`` defaults to ``buf``) or ``(None, error)``
        later, on the loop. False: nothing started (``finish`` will not be called), use
        the workers."""
        return self._start(_Call(_READ, store, buf, offset, callback,
                                 buf if result is None else result, finish), timeout)

    def write(self, store: Any, data: memoryview, offset: int, callback: Callback, *,
              timeout: float = 0.0, finish: Finish | None = None) -> bool:
        """Write all of ``data`` (flat bytes) at ``offset``; as :meth:`read` (result None).
        Longer than the store's ``write_piece`` (if it has one): one call per piece, all
        started now, so the bricks get the store's piece-sized writes (small folios in their
        page cache, see ``GfapiStore``) at the latency of one call instead of one per piece."""
        return self._start(_Call(_WRITE, store, data, offset, callback, None, finish), timeout)

    def _start(self, call: _Call, timeout: float) -> bool:
        view = call.view
        total = call.total
        piece = total
        if call.op == _WRITE:
            piece = int(getattr(call.store, "write_piece", 0)) or total
        parts = (total + piece - 1) // piece if piece > 0 else 1
        if (self._closed or len(self._calls) + parts > self.capacity or view.ndim != 1
                or view.itemsize != 1 or not view.c_contiguous
                or (call.op == _READ and view.readonly)
                or not 0 < total <= MAX_CALL):
            self.refused += 1
            return False
        try:
            call.glfd = call.store.begin_async(call.op == _WRITE, total)
        except BackingStoreError:
            self.refused += 1  # (the workers' call says what the store says)
            return False
        if not call.glfd:  # not as asynchronous calls (the store says): the workers
            self.refused += 1
            return False
        global _last_key
        calls = self._calls
        at = 0
        while at < total:
            _last_key = key = _last_key + 1
            part = _Part(call, view[at:at + piece] if parts > 1 else view, call.offset + at)
            calls[key] = part
            err = self._submit(key, part)
            if err:
                del calls[key]
                if not at:  # nothing under way: the workers
                    call.store.end_async(None)
                    self.refused += 1  # (the workers' call fails the same way, or succeeds)
                    return False
                # earlier pieces are under way: the call fails once they are back
                call.error = _error(err, f"glfs_pwrite_async: piece at offset {call.offset + at}"
                                    f" refused: {os.strerror(err)}", call.name)
                break
            call.pending += 1
            at += piece
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

    def _submit(self, key: int, part: _Part) -> int:
        """Start (the rest of) ``part``: 0, or the errno libgfapi refused it with."""
        aio = self._aio
        call = part.call
        if call.op == _READ:
            return int(aio.pread(self._pread, call.glfd, part.view, part.offset + part.done,
                                 key))
        return int(aio.pwrite(self._pwrite, call.glfd, part.view, part.offset + part.done, key))

    # ------------------------------------------------------------------ completing
    def take_done(self) -> None:
        """Complete what gfapi returned, now, as the loop's turn to the eventfd would (the
        poller's wait for a QD1 miss: ``poller.IdlePoller._await_store``)."""
        self._reap()

    def _reap(self) -> None:
        if self._closed:
            return
        try:
            os.eventfd_read(self._efd)
        except OSError:  # (BlockingIOError: another reap took it)
            pass
        calls = self._calls
        for key, res, err in self._aio.drain():
            part = calls.get(key)
            if part is not None:  # (else: an engine of this process closed before)
                self._complete(key, part, res, err)

    def _complete(self, key: int, part: _Part, res: int, err: int) -> None:
        call = part.call
        what = "read" if call.op == _READ else "write"
        error: BackingStoreError | None = None
        if res < 0:
            err = err or errno.EIO
            error = _error(err, f"glfs_{'p' + what}_async {part.done + len(part.view)} bytes "
                           f"at offset {part.offset}: {os.strerror(err)}", call.name)
        elif res == 0:
            error = _error(errno.EIO, f"short {what}: {part.done} of "
                           f"{part.done + len(part.view)} bytes at offset {part.offset}"
                           + (" (end of file)" if call.op == _READ else ""), call.name)
        elif res < len(part.view):
            part.done += res
            part.view = part.view[res:]
            again = self._submit(key, part)  # (the store is still counted busy: fd open)
            if not again:
                return  # the rest goes on
            error = _error(again, f"{what}: could not continue a short transfer at offset "
                           f"{part.offset}: {os.strerror(again)}", call.name)
        del self._calls[key]
        call.pending -= 1
        if error is not None and call.error is None:
            call.error = error
        if call.pending:
            return  # other pieces are still under way
        error = call.error
        call.store.end_async(error)
        if call.finish is not None:
            call.finish(error is None)
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
        runs on the loop once gfapi returned the call (every call here is under way: it may
        still land), and True; False when no call of this engine is timing out now."""
        call = self._expiring
        if call is None:
            return False
        call.late = then
        return True

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        earliest = None
        for part in list(self._calls.values()):
            call = part.call
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


def _error(err: int, message: str, name: str) -> BackingStoreError:
    return GfapiError(err, message, name or None)
