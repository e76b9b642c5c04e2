"""What crosses the boundary between the transport (iSCSI) and the SCSI device server.

The transport builds a :class:`ScsiTask` once all data-out has arrived and asks the device
server to execute it. Execution is a generator: it yields :mod:`I/O requests <.io>`, plain
records, for the command runner (``server.runner``) to do against the logical unit's store,
and last the :class:`ScsiResult`. Nothing in the SCSI layer does I/O itself: no store call, no
thread, no clock and no I/O lock is in ``scsi/`` (the runner holds the LUs' I/O locks, kept
in a slot of the LU that ``scsi/`` never reads, ``LogicalUnit.runner_state``, and drives
background jobs). What ``scsi/`` does keep is a mutex per LU and per device server
(``state_lock``) guarding its own state (unit attentions, reservations) against commands
handled on different threads; and it imports nothing of ``backstore/``, ``server/``,
``iscsi/``, ``control/``, ``cli/`` or ``model/`` (only the neutral ``buffers``).
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

# At run time too: compiled (setup.py), a dataclass's field types must exist.
from ..buffers import Buffer  # collections.abc.Buffer is 3.12+


class Status(enum.IntEnum):
    """SCSI status codes (SAM-5 5.3)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class TaskAttr(enum.IntEnum):
    """Task attribute as carried in the iSCSI SCSI Command PDU (RFC 7143 11.3.1.1)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: who sends the command, and through which target port.

    ``initiator_port`` is the SCSI initiator port name, e.g.
    ``iqn.1994-05.com.redhat:client,i,0x00023d000001``; ``target_port`` likewise with ``,t,0x``
    and the TPGT. ``relative_port`` is the relative target port identifier (VPD 83h) and
    ``transport_id`` the iSCSI TransportID (SPC-4 7.6.4.6) used by persistent reservations.
    """

    initiator_name: str
    initiator_port: str
    target_port: str
    relative_port: int = 1
    target_port_group: int = 1

    @property
    def transport_id(self) -> bytes:
        """iSCSI TransportID, format 01b (initiator port name with ISID), padded to 4 bytes."""
        name, _, isid = self.initiator_port.partition(",i,")
        body = (name + ",i," + isid).encode() + b"\x00" if isid else name.encode() + b"\x00"
        body += b"\x00" * (-len(body) % 4)
        fmt = 0x40 if isid else 0x00
        return bytes([fmt | 0x05, 0]) + len(body).to_bytes(2, "big") + body


@dataclass(slots=True, eq=False, init=False)
class ScsiTask:  # identity semantics: a task is a unique in-flight command
    """One SCSI command as the device server sees it."""

    cdb: bytes
    lun: int
    nexus: Nexus
    tag: int = 0
    attr: TaskAttr = TaskAttr.SIMPLE
    #: All data-out the initiator sent (immediate + unsolicited + solicited), or None.
    data_out: memoryview | None = None
    #: The iSCSI Expected Data Transfer Length (bytes the initiator expects to move).
    expected_length: int = 0
    read: bool = False
    write: bool = False
    #: Arbitrary per-transport context (the iSCSI layer stores its own task record here).
    context: Any = None
    #: Set by the transport when it aborts the task (ABORT TASK, ABORT TASK SET, CLEAR TASK
    #: SET, resets, connection loss) while it executes; the device server sets it on the tasks
    #: it knows wait (SANITIZE IMMED=0). A long execution checks it between ops and returns
    #: early; its result is then discarded by the transport.
    aborted: bool = False
    #: Set by what executes the command when it keeps ``data_out`` past the command's end
    #: (a write acknowledged before it is written: the runner's write-behind gives the
    #: buffer back to the pool itself once written): the transport then leaves it alone.
    data_out_kept: bool = False

    # (An explicit __init__: compiled, see setup.py, it is native and ~4x cheaper than the
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, cdb: bytes, lun: int, nexus: Nexus, tag: int = 0,
                 attr: TaskAttr = TaskAttr.SIMPLE, data_out: memoryview | None = None,
                 expected_length: int = 0, read: bool = False, write: bool = False,
                 context: Any = None, aborted: bool = False) -> None:
        self.cdb = cdb
        self.lun = lun
        self.nexus = nexus
        self.tag = tag
        self.attr = attr
        self.data_out = data_out
        self.expected_length = expected_length
        self.read = read
        self.write = write
        self.context = context
        self.aborted = aborted
        self.data_out_kept = False


@dataclass(slots=True, init=False)
class ScsiResult:
    """The outcome of a task: status, optional data-in, optional sense data.

    ``transfer_length`` is the number of bytes the CDB asked to transfer in the direction of the
    data (data-in or data-out), which the transport compares with the Expected Data Transfer
    Length to set residual counts and the overflow/underflow flags. ``None`` means "the length
    of ``data``" for data-in commands and "as expected" otherwise.
    """

    status: Status = Status.GOOD
    data: Buffer | None = None
    sense: bytes | None = None
    transfer_length: int | None = None
    #: Extra fields for the transport (e.g. "abort_initiators"); None (the common case, and
    #: one dict fewer per command) when there are none.
    extra: dict[str, Any] | None = None

    # (An explicit __init__: compiled, see setup.py, it is native and ~4x cheaper than the
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, status: Status = Status.GOOD, data: Buffer | None = None,
                 sense: bytes | None = None, transfer_length: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.status = status
        self.data = data
        self.sense = sense
        self.transfer_length = transfer_length
        self.extra = extra


#: A command handler's execution: yields io requests, receives their outcomes, returns a result.
Execution = Generator[Any, Any, ScsiResult]

#: What :meth:`.device.DeviceServer.execute` gives the runner: yields io requests and receives
#: their results like an :data:`Execution`, then yields the command's :class:`ScsiResult` as
#: its last item instead of returning it. (Compiled code catching the StopIteration of a
#: return pays for a traceback entry and the catch per command: ~5k instructions, ~5% of a
#: 4K read's.) A caller
#: tells the result from a request by ``type(x) is ScsiResult`` and then drops the generator.
CommandRun = Generator[Any, Any, None]
