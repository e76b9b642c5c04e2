"""Operations of a logical unit that outlive the command that started them (SBC-3 4.11).

A SANITIZE is not a task: once accepted it runs to the end whatever happens to the command
(IMMED=1 returns at once; ABORT TASK, LOGICAL UNIT RESET, target resets and I_T nexus loss
end the command, never the sanitize). So the overwrite is a :class:`BackgroundJob` the LU
holds: a generator of the same :mod:`.io` requests a command yields. This module only keeps
its state; the command runner (``server.runner``) drives it, on a thread of its own with the
clock it is given, once the command yields :class:`~.io.StartJob`, and answers the
:class:`~.io.WaitJob` polls of an IMMED=0 command.

While a job runs, the device server answers media commands NOT READY / SANITIZE IN PROGRESS
with the progress indication (SPC-4 4.5.2.4.4) taken from :attr:`BackgroundJob.progress`.

The job writes at most ``rate`` bytes a second (the runner paces it): a background overwrite
of a multi-terabyte LU must not take the whole volume's bandwidth from the other LUNs (tgt
and real drives likewise sanitize at media speed, not faster).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

#: A job's body: yields io requests, receives their results; its return value is ignored.
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
        #: The generator the runner steps.
        self.body = body
        #: Units of work (bytes for an overwrite) the body reports through :meth:`advance`.
        self.total = max(1, total)
        self.done_units = 0
        #: Largest number of units per second (None: as fast as the store goes).
        self.rate = rate
        self._on_end = on_end
        self.ended = False
        #: Set by :meth:`cancel`: the runner throws :class:`JobCancelled` into the body.
        self.cancelled = False
        #: What the body raised, if it ended in error.
        self.error: BaseException | None = None
        #: Set by the runner that drives the job: waits up to a timeout for its end.
        self.join: Callable[[float | None], bool] | None = None

    # -- what the device server reads -----------------------------------------------------

    @property
    def running(self) -> bool:
        return not self.ended

    @property
    def progress(self) -> int:
        """PROGRESS INDICATION: the fraction done, as a numerator over 65536."""
        return min(0xFFFF, self.done_units * 0x10000 // self.total)

    def advance(self, units: int) -> None:
        """The body finished ``units`` more units of work."""
        self.done_units += units

    def cancel(self, timeout: float | None = 30.0) -> None:
        """Stop at the next request boundary (the LU is being closed) and, if a runner drives
        the job, wait up to ``timeout`` for it to end; a job never started ends now."""
        self.cancelled = True
        join = self.join
        if join is not None:
            join(timeout)
        else:
            self.end(JobCancelled())

    def end(self, error: BaseException | None = None) -> None:
        """The job is over (the runner calls this once, ``error`` being how it failed)."""
        if self.ended:
            return
        self.error = error
        self.ended = True
        if self._on_end is not None:
            self._on_end(self)
