"""Operations of a logical unit that outlive the command that started them (SBC-3 4.11).

A SANITIZE is not a task: once accepted it runs to the end whatever happens to the command
(IMMED=1 returns at once; ABORT TASK, LOGICAL UNIT RESET, target resets and I_T nexus loss
end the command, never the sanitize). So the overwrite is a :class:`BackgroundJob` the LU
holds: a generator of the same :mod:`.io` ops a command yields, driven by a thread of its own
that :class:`~.io.StartJob` starts. The transport's driver needs to know nothing about it:
it runs ``StartJob`` (it only starts the thread) and, for IMMED=0, the command's
:class:`~.io.WaitJob` polls (each a short wait in the driver's worker pool).

While a job runs, the device server answers media commands NOT READY / SANITIZE IN PROGRESS
with the progress indication (SPC-4 4.5.2.4.4) taken from :attr:`BackgroundJob.progress`.

The job writes at most ``rate`` bytes a second: a background overwrite of a multi-terabyte
LU must not take the whole volume's bandwidth from the other LUNs (tgt and real drives
likewise sanitize at media speed, not faster).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..backstore.base import BackingStore

log = logging.getLogger(__name__)

#: A job's body: yields io ops, receives their results; its return value is ignored.
JobBody = Generator[Any, Any, Any]


class JobCancelled(Exception):  # noqa: N818 - thrown into the body, not an error to log
    """Thrown into a job's body when its LU is closed (LUN removed, daemon stopping)."""


class BackgroundJob:
    """One background operation: its body, progress, pace, and how it ended."""

    def __init__(
        self,
        name: str,
        body: JobBody,
        *,
        total: int,
        rate: float | None = None,
        on_end: Callable[[BackgroundJob], None] | None = None,
    ) -> None:
        self.name = name
        self._body = body
        #: Units of work (bytes for an overwrite) the body reports through :meth:`advance`.
        self.total = max(1, total)
        self.done_units = 0
        #: Largest number of units per second (None: as fast as the store goes).
        self.rate = rate
        self._on_end = on_end
        self.finished = threading.Event()
        self._cancel = threading.Event()
        #: What the body raised, if it ended in error.
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    # -- what the device server reads -----------------------------------------------------

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    @property
    def progress(self) -> int:
        """PROGRESS INDICATION: the fraction done, as a numerator over 65536."""
        return min(0xFFFF, self.done_units * 0x10000 // self.total)

    def advance(self, units: int) -> None:
        """The body finished ``units`` more units of work."""
        self.done_units += units

    # -- what the ops do ------------------------------------------------------------------

    def start(self, store: BackingStore | None) -> None:
        """Run the body on a thread of its own against ``store`` (:class:`.io.StartJob`)."""
        if self._thread is not None:
            return
        self._t0 = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, args=(store,), name=f"lu-{self.name}", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        """True once the job ended (:class:`.io.WaitJob`)."""
        return self.finished.wait(timeout)

    def cancel(self, timeout: float | None = 30.0) -> None:
        """Stop at the next op boundary and wait for the thread (the LU is being closed)."""
        self._cancel.set()
        if self._thread is not None:
            self.finished.wait(timeout)
        else:
            self._end()

    # -- the driver -----------------------------------------------------------------------

    def _run(self, store: BackingStore | None) -> None:
        from .io import store_for

        body = self._body
        try:
            op = next(body)
            while True:
                self._pace()
                if self._cancel.is_set():
                    op = body.throw(JobCancelled())
                    continue
                try:
                    value = op.run(store_for(op, store))
                except Exception as exc:  # noqa: BLE001 - the body decides what it means
                    op = body.throw(exc)
                else:
                    op = body.send(value)
        except StopIteration:
            pass
        except JobCancelled as exc:
            self.error = exc
            log.warning("%s: cancelled at %d/%d", self.name, self.done_units, self.total)
        except Exception as exc:
            self.error = exc
            log.error("%s failed: %s", self.name, exc)
        finally:
            self._end()

    def _pace(self) -> None:
        if not self.rate:
            return
        ahead = self.done_units / self.rate - (time.monotonic() - self._t0)
        if ahead > 0:
            self._cancel.wait(ahead)

    def _end(self) -> None:
        if self.finished.is_set():
            return
        self.finished.set()
        if self._on_end is not None:
            self._on_end(self)
