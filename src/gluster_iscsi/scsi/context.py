"""What a command handler is given: the task, its logical unit, the server, helpers.

Handlers are ``handler(ctx) -> Execution`` generators (or plain functions returning a
:class:`ScsiResult` when they need no I/O). They raise :class:`~.sense.CheckCondition` or
:class:`ReservationConflict`; the device server turns both into a status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .sense import Asc, CheckCondition, SenseKey
from .task import Nexus, ScsiResult, ScsiTask

if TYPE_CHECKING:
    from ..buffers import Buffer
    from .device import DeviceServer
    from .lu import LogicalUnit
    from .opcodes import Command


class ReservationConflict(Exception):  # noqa: N818 - named after the status it produces
    """End the command with RESERVATION CONFLICT status (no sense data)."""


class Ctx:
    """One command as its handler sees it (made for every command: a plain class with a
    cheap __init__). Not compiled: ``lu`` is None for the commands that need no LU (REPORT
    LUNS to a LUN that does not exist), which compiled code would refuse."""

    __slots__ = ("task", "lu", "server", "command", "cdb")

    def __init__(self, task: ScsiTask, lu: LogicalUnit, server: DeviceServer,
                 command: Command) -> None:
        self.task = task
        self.lu = lu
        self.server = server
        self.command = command
        #: the task's CDB (padded to 16 bytes by the device server before the handler runs;
        #: a slot, not a property: interpreted, a property call costs a frame per command)
        self.cdb: bytes = task.cdb

    @property
    def nexus(self) -> Nexus:
        return self.task.nexus

    def parameter_list(self, length: int) -> memoryview:
        """The first ``length`` bytes of data-out (fewer if the initiator sent fewer)."""
        data = self.task.data_out
        if data is None:
            return memoryview(b"")
        mv = memoryview(data).cast("B")
        return mv[:length]

    def require_parameter_list(self, length: int) -> memoryview:
        """Exactly ``length`` bytes of data-out, or PARAMETER LIST LENGTH ERROR."""
        mv = self.parameter_list(length)
        if len(mv) < length:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
        return mv


def data_in(data: Buffer, allocation_length: int) -> ScsiResult:
    """Data-in truncated to the allocation length (SPC-4 4.2.5.6): never an error.

    The transfer length is what the device server really sends (the shorter of the two), so
    the transport reports an underflow residual when the allocation length was larger.
    """
    mv = memoryview(data).cast("B")
    return ScsiResult(data=bytes(mv[:allocation_length]))
