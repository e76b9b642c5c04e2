"""Events a :class:`~.connection.Connection` hands to the code that drives it."""

from __future__ import annotations

from dataclasses import dataclass

# At run time too: compiled (setup.py), a dataclass's field types must exist.
from ..scsi.task import ScsiTask
from .session import Session


@dataclass(slots=True, init=False)
class ExecuteTask:
    """Every byte of a SCSI command's data-out is in; run it on the target's device server.
    When done, call ``connection.complete_task(task, result)``.

    Not frozen like the others: it is made for every command, and its explicit __init__ is
    native when compiled (see setup.py), ~4x cheaper than the dataclass-generated one."""

    task: ScsiTask

    def __init__(self, task: ScsiTask) -> None:
        self.task = task


@dataclass(frozen=True, slots=True)
class TaskManagement:
    """A task management request. The driver performs its effects across sessions (aborts,
    resets) and answers with ``connection.complete_tmf(itt, response)``."""

    itt: int
    function: int
    lun: int
    referenced_itt: int
    ref_cmdsn: int


@dataclass(frozen=True, slots=True)
class LoginProgress:
    """The login took its first complete, valid Login Request (once per connection)."""


@dataclass(frozen=True, slots=True)
class LoginComplete:
    session: Session


@dataclass(frozen=True, slots=True)
class ReinstateSession:
    """A login with the ISID of a live session: the old session must be closed first."""

    old: Session


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close this connection once what is queued to send has been sent."""

    reason: str
