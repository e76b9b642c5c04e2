"""Worker threads for blocking backing-store calls, with batched completions.

``loop.run_in_executor`` costs a Future pair, a lock and a self-pipe write per call; at tens
of thousands of 4 KiB I/Os a second that hand-off, not the I/O, is what the event loop spends
its time on. Here submissions go through a C ``SimpleQueue``; a worker appends its result to
a deque and wakes the loop only when that deque was empty, so a burst of completions costs
one wake-up, and the loop handles the whole batch before any connection flushes (the
drivers defer their flush with ``call_soon``, which runs after this batch).

The store calls (``os.preadv``, ctypes into libgfapi) release the GIL while they block.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

Callback = Callable[[Any, BaseException | None], None]

_STOP = object()


class IoPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, *, name: str = "store-io") -> None:
        self.loop = loop
        self._q: SimpleQueue[Any] = SimpleQueue()
        self._done: deque[tuple[Callback, Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[Any], Any], arg: Any, callback: Callback) -> None:
        """Run ``fn(arg)`` on a worker; ``callback(result, exc)`` runs later on the loop."""
        self._q.put((fn, arg, callback))

    def _work(self) -> None:
        q, done, lock = self._q, self._done, self._lock
        while True:
            item = q.get()
            if item is _STOP:
                return
            fn, arg, callback = item
            entry: tuple[Callback, Any, BaseException | None]
            try:
                entry = (callback, fn(arg), None)
            except BaseException as exc:  # noqa: BLE001 - delivered to the callback
                entry = (callback, None, exc)
            with lock:
                done.append(entry)
                if self._wake_pending:
                    continue
                self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop closed during shutdown
                return

    def _drain(self) -> None:
        done, lock = self._done, self._lock
        while True:
            with lock:
                if not done:
                    self._wake_pending = False
                    break
                batch = list(done)
                done.clear()
            for callback, result, exc in batch:
                callback(result, exc)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._q.put(_STOP)
        for t in self._threads:
            t.join(timeout=30)
