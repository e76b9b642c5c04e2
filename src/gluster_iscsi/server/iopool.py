"""Worker threads for blocking backing-store calls, with batched completions.

``loop.run_in_executor`` costs a Future pair, a lock and a self-pipe write per call; at tens
of thousands of 4 KiB I/Os a second that hand-off, not the I/O, is what the event loop spends
its time on. Here submissions go through a C ``SimpleQueue``; a worker appends its result to
a deque and wakes the loop only when that deque was empty, so a burst of completions costs
one wake-up, and the loop handles the whole batch before any connection flushes (the
drivers defer their flush with ``call_soon``, which runs after this batch).

Workers start on demand, up to ``threads``, and leave after ``idle`` seconds without work,
so a pool per backing store costs nothing while its LUN is quiet (or deleted).

A call may carry a timeout: if it has not returned by then, its callback gets
:class:`IoTimeout` and its late result is dropped. One still queued then is never issued (a
write would land over what was written since); one under way cannot be pulled back, and its
callback may ask to hear when it returned (:meth:`IoPool.when_returned`). Deadlines are kept
in submission order (with the daemon's one I/O timeout, that is also deadline order) and
watched by one timer armed at the oldest deadline, not by a timer per call: at tens of
thousands of calls a second, creating and cancelling a loop timer for each was a measurable
part of the hand-off.

The store calls (``os.preadv``, ctypes into libgfapi) release the GIL while they block.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

Callback = Callable[[Any, BaseException | None], None]

_STOP = object()


class IoTimeout(Exception):  # noqa: N818 - not TimeoutError (an OSError): compiled, see setup.py
    """A call did not return within its timeout (it may still be running on its worker)."""


class IoPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, *, name: str = "store-io",
                 idle: float = 30.0) -> None:
        self.loop = loop
        self.max_threads = threads
        self.idle = idle
        self.name = name
        self._q: SimpleQueue[Any] = SimpleQueue()
        self._done: deque[tuple[Callback, Any, BaseException | None, int]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._alive = 0  # worker threads running
        self._busy = 0  # of which are running a call
        self._queued = 0  # submitted, not yet taken by a worker
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._serial = 0
        # Calls with a timeout still out: key -> [callback, deadline, timeout, started], in
        # submission order; _ordered while that is also deadline order (always, with one
        # timeout value). "started" is set (under the lock) by the worker that issues it: a
        # worker never issues a call whose key is gone (it timed out first).
        self._deadlines: dict[int, list[Any]] = {}
        # Calls that timed out under way: key -> what runs on the loop once they returned
        # (when_returned), and the key of the one whose IoTimeout callback runs now.
        self._late: dict[int, Callable[[], None]] = {}
        self._expiring = 0
        self._last_deadline = 0.0
        self._ordered = True
        self._next_key = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def threads(self) -> int:
        return self._alive

    def in_flight(self) -> bool:
        """Calls are queued or running, or results wait (a hint, read without the lock)."""
        return bool(self._queued or self._busy or self._done)

    def has_done(self) -> bool:
        """Results wait for the loop (read without the lock: a hint for the idle poller)."""
        return bool(self._done)

    def submit(self, fn: Callable[[Any], Any], arg: Any, callback: Callback,
               timeout: float = 0.0) -> None:
        """Run ``fn(arg)`` on a worker; ``callback(result, exc)`` runs later on the loop, once:
        with the result, or with :class:`IoTimeout` after ``timeout`` seconds (0: no limit)."""
        key = 0
        if timeout > 0:
            self._next_key = key = self._next_key + 1
            deadline = self.loop.time() + timeout
            if deadline < self._last_deadline:
                self._ordered = False
            self._last_deadline = deadline
            self._deadlines[key] = [callback, deadline, timeout, False]
            timer = self._timer
            if timer is None or (not self._ordered and deadline < timer.when()):
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(deadline, self._on_timer)
        with self._lock:
            self._queued += 1
            # Another worker when queued work outnumbers the idle ones and there is room.
            spawn = (not self._closed and self._alive < self.max_threads
                     and self._queued > self._alive - self._busy)
            if spawn:
                self._alive += 1
                self._serial += 1
                t = threading.Thread(target=self._work, name=f"{self.name}-{self._serial}", daemon=True)
                self._threads.add(t)
        self._q.put((fn, arg, callback, key))
        if spawn:
            t.start()

    def _work(self) -> None:
        q, done, lock = self._q, self._done, self._lock
        entry: tuple[Callback, Any, BaseException | None, int]
        while True:
            try:
                item = q.get(timeout=self.idle)
            except Empty:
                with lock:
                    # Leave only if nothing is queued: a submit that counted this worker as
                    # idle did not start another one for its item.
                    if self._queued == 0 or self._closed:
                        self._alive -= 1
                        self._threads.discard(threading.current_thread())
                        return
                continue
            if item is _STOP:
                with lock:
                    self._alive -= 1
                    self._threads.discard(threading.current_thread())
                return
            fn, arg, callback, key = item
            with lock:
                self._queued -= 1
                self._busy += 1
                if key:  # (the timer takes the lock to expire a call)
                    out = self._deadlines.get(key)
                    if out is not None:
                        out[3] = True  # started: under way, if it times out now
                    else:  # it timed out while queued, its command was answered: a write
                        self._busy -= 1  # issued now would land over what was written since
                        key = -1
            if key < 0:
                continue  # never issued
            try:
                entry = (callback, fn(arg), None, key)
            except BaseException as exc:  # noqa: BLE001 - delivered to the callback
                entry = (callback, None, exc, key)
            with lock:  # (no break/continue inside: compiled, see setup.py)
                self._busy -= 1
                done.append(entry)
                wake = not self._wake_pending
                self._wake_pending = True
            if not wake:
                continue  # the loop has a wake-up coming: it drains this entry too
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop closed during shutdown
                return

    def _drain(self) -> None:
        done, lock, deadlines = self._done, self._lock, self._deadlines
        while True:
            with lock:
                batch = list(done)
                done.clear()
                if not batch:
                    self._wake_pending = False
            if not batch:
                break
            for callback, result, exc, key in batch:
                if key and deadlines.pop(key, None) is None:
                    # it timed out already (under way): its callback has had its answer
                    then = self._late.pop(key, None) if self._late else None
                    if then is not None:
                        then()
                    continue
                callback(result, exc)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire(self.loop.time())

    def _expire(self, now: float) -> None:
        """Time out the calls whose deadline is past; re-arm for the earliest one left."""
        deadlines = self._deadlines
        due = []
        earliest = None
        for key, out in deadlines.items():
            deadline = out[1]
            if deadline > now:
                if earliest is None or deadline < earliest:
                    earliest = deadline
                if self._ordered:
                    break  # the rest are later still
                continue
            due.append((key, out))
        for key, out in due:
            with self._lock:  # no worker starts it from here on (see _work)
                del deadlines[key]
            self._expiring = key if out[3] else 0
            try:
                out[0](None, IoTimeout(f"no answer within {out[2]:g} s"))
            finally:
                self._expiring = 0
        if not deadlines:
            self._ordered = True
        elif earliest is not None and self._timer is None:
            self._timer = self.loop.call_at(earliest, self._on_timer)

    def when_returned(self, then: Callable[[], None]) -> bool:
        """Called by a callback as it gets :class:`IoTimeout` (on the loop): if its call is
        under way, ``then()`` runs on the loop once it returned (it may still land), and True;
        False if it was never issued and never will be (it timed out still queued)."""
        key = self._expiring
        if not key:
            return False
        self._late[key] = then
        return True

    def shutdown(self) -> None:
        """Stop the workers once the calls queued before this one are done (a call stuck in a
        dead store is left behind: its thread is a daemon thread)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._q.put(_STOP)
        for t in threads:
            t.join(timeout=5)
