"""Data transfer of SCSI commands (RFC 7143 10.7-10.8): a command's intake, its data-out
buffer and the memory budget, unsolicited and R2T-solicited Data-Out, and handing the command
to the SCSI layer. Compiled (``DATA_PATH_MODULES``): it runs for every command.

:class:`Transfer` is the middle layer of :class:`~gluster_iscsi.iscsi.connection.Connection`:
on top of :class:`~gluster_iscsi.iscsi.responses.Responder`, below the dispatch and the full
feature phase's other requests.
"""

from __future__ import annotations

from collections.abc import Callable

from ..buffers import POOL, BudgetShare, MemoryBudget
from ..scsi.sense import build_sense
from ..scsi.task import ScsiResult, ScsiTask, Status, TaskAttr
from . import pdu as P
from .errors import ProtocolError, RejectReason
from .events import ExecuteTask
from .login import LOGIN_DSL
from .pdu import NO_TAG, Opcode, Pdu, PduReader
from .responses import Responder
from .tasks import ABORTED, COLLECTING, EXECUTING, IscsiTask, R2tSequence

#: The largest data-out buffer one command may make us allocate (SBC MAXIMUM TRANSFER LENGTH
#: in VPD B0h is 8 MiB; leave headroom for EXTENDED COPY and odd block sizes).
MAX_WRITE_BUFFER = 32 << 20

_ATTRS = tuple(TaskAttr(i) for i in range(5))


class Transfer(Responder):
    """The commands of a connection, from their SCSI Command PDU to their result."""

    def __init__(self, peer_address: str, queue_depth: int, budget: MemoryBudget) -> None:
        super().__init__(peer_address)
        self.queue_depth = queue_depth
        self.reader = PduReader(LOGIN_DSL, place=self._place)
        self.tasks: dict[int, IscsiTask] = {}
        self.buffered = 0  # data-out bytes held by tasks of this connection
        #: The daemon's memory budget, and this connection's (session's) part of it.
        self.budget = budget
        self.share = BudgetShare()
        self.unsent = 0  # read bytes handed out for sending, charged until the driver says sent
        self._ffp = False  # in the full feature phase (``Connection`` says when)

    @property
    def full_feature(self) -> bool:
        return self._ffp

    def reserve(self, task: ScsiTask, n: int) -> bool:
        """Charge ``n`` bytes of read buffer to the command before the driver reads them (the
        iSCSI layer does not know a read's size: the CDB's, which the SCSI layer decodes,
        may exceed EDTL). False if the budget has no room: the driver ends the command with
        :meth:`full_status` instead. The charge is held until the data has been sent."""
        if not self.budget.charge(self.share, n):
            return False
        it: IscsiTask = task.context
        it.charge += n
        return True

    def full_status(self) -> Status:
        """The status of a command refused for want of memory (SAM-5 5.3.1): TASK SET FULL
        while the session has other commands in flight (the initiator lowers its queue depth
        and retries as they complete), BUSY when it has none (nothing of its own will free
        memory, so there is no queue depth to lower: it only retries later)."""
        return Status.TASK_SET_FULL if len(self.tasks) > 1 else Status.BUSY

    def sent(self, queued: int) -> None:
        """The transport still holds ``queued`` bytes: release the charges of read data
        beyond that, which has left (the driver calls this after it wrote, and with 0 once
        the transport drained or the connection is gone)."""
        unsent = self.unsent
        if unsent > queued:
            self.budget.release(self.share, unsent - queued)
            self.unsent = queued

    def complete_task(self, task: ScsiTask, result: ScsiResult) -> None:
        """Send the response (and data-in) of a finished SCSI command."""
        it: IscsiTask = task.context
        self._release(it, task.data_out, task.data_out_kept)
        task.data_out = None
        charge = it.charge
        if charge:
            # A read's buffer: charged until its bytes are sent (``sent``), or now if they
            # will not be.
            it.charge = 0
            if it.state != ABORTED and not self.closed and result.data is not None:
                self.unsent += charge
            else:
                self.budget.release(self.share, charge)
        self._forget(it)
        # The command has left the connection: drop the link back to its SCSI task, so the
        # two are freed by reference counting when their last user lets go, not left as a
        # cycle for the garbage collector (a collection every few hundred commands, ~2k
        # instructions a command).
        it.scsi = None
        if it.state == ABORTED or self.closed:
            self._maybe_finish_logout()
            return
        self._send_result(it, result)
        self._maybe_finish_logout()

    def abort_tasks(self, predicate: Callable[[IscsiTask], bool]) -> tuple[int, list[ScsiTask]]:
        """Abort matching tasks: (how many matched, the ones still executing, which the driver
        waits for). Tasks still collecting data-out are dropped at once."""
        running: list[ScsiTask] = []
        found = 0
        for it in list(self.tasks.values()):
            if not predicate(it):
                continue
            found += 1
            if it.state == EXECUTING and it.scsi is not None:
                it.state = ABORTED
                it.scsi.aborted = True  # a long command (SANITIZE waiting) may end early
                running.append(it.scsi)
            else:
                it.state = ABORTED
                self._forget(it)
                self._release(it, it.buf)
                it.buf = None
        return found, running

    def _maybe_finish_logout(self) -> None:
        """A command ended: a Logout waiting for the commands to end may go on (``Connection``)."""

    def _forget(self, it: IscsiTask) -> None:
        """A command leaves the connection: its ITT is free again, and a numbered one gives
        its CmdSN slot back to the window (RFC 7143 3.2.2.1). The one place a command retires."""
        tasks = self.tasks
        if tasks.get(it.itt) is it:
            del tasks[it.itt]
        s = self.session
        if s is not None and not it.immediate:
            s.retire()

    def _place(self, bhs: bytes) -> memoryview | None:
        """Where a large payload lands. A Data-Out's: straight in its command's data-out
        buffer when the PDU fits the task's buffer (``_on_data_out`` checks the rest; a PDU
        it refuses ends its command, so what it wrote there is never used). A write
        command's immediate data: the head of a fresh buffer for the whole transfer, which
        ``_start_command`` adopts as the data-out buffer (if it refuses the command, the
        buffer is dropped, never reused). Only for a command that runs as soon as it is in
        and fits the memory budget: one that waits for a CmdSN gap, or would get TASK SET
        FULL, must not hold a buffer for its whole transfer meanwhile."""
        if not self.full_feature:
            return None
        op = bhs[0] & 0x3F
        n = int.from_bytes(bhs[5:8], "big")
        if op == Opcode.SCSI_CMD:
            edtl, cmdsn = P.SCSI_CMD_TRANSFER.unpack_from(bhs)
            s = self.session
            if (not bhs[1] & 0x20 or bhs[1] & 0x40 or edtl <= n or edtl > MAX_WRITE_BUFFER
                    or not self.budget.fits(self.share, edtl) or s is None
                    or not (bhs[0] & 0x40 or cmdsn == s.exp_cmdsn)):
                return None
            return POOL.borrow(edtl)[:n]
        if op != Opcode.DATA_OUT:
            return None
        itt, offset = P.DATA_OUT_PLACE.unpack_from(bhs)
        it = self.tasks.get(itt)
        if it is None or it.state != COLLECTING or it.buf is None:
            return None
        if offset + n > it.edtl:
            return None
        return it.buf[offset : offset + n]

    def _release(self, it: IscsiTask, view: memoryview | None, kept: bool = False) -> None:
        """The command's data-out buffer is done with: uncharge it, and give it back to the
        pool unless a Data-Out still lands in it or the command kept it (``data_out_kept``:
        whoever kept it gives it back)."""
        if view is not None:
            n = len(view)
            self.buffered -= n
            self.budget.release(self.share, n)
            if not kept and not self.reader.receiving_into(view.obj):
                POOL.give_back(view)

    # ------------------------------------------------------------------ commands and data-out
    def _on_scsi_cmd(self, pdu: Pdu) -> None:
        flags, lun_raw, itt, edtl, cmdsn = P.SCSI_CMD_FIELDS.unpack_from(pdu.bhs)
        read, write = bool(flags & 0x40), bool(flags & 0x20)
        params = self.params
        assert params is not None and self.session is not None
        if itt in self.tasks:
            raise ProtocolError(f"ITT {itt:#x} already in use", RejectReason.TASK_IN_PROGRESS)
        it = IscsiTask(itt, P.decode_lun(lun_raw), pdu.cdb, edtl, read, write, flags & 7, cmdsn,
                       pdu.immediate, lun_raw)
        tasks = self.tasks
        tasks[itt] = it
        if len(tasks) > self.queue_depth:
            # Commands in flight are bounded, immediate ones too: they bypass the CmdSN
            # window, and the target may refuse what it cannot take (RFC 7143 3.2.2.1). SCSI
            # says how: TASK SET FULL, which initiators retry, lowering their queue depth.
            return self._fail(it, ScsiResult(Status.TASK_SET_FULL))
        data = pdu.data
        if data and not write:
            return self._fail_task(it, "data sent with a command that is not a write")
        if write and read:
            return self._check_condition(it, 0x05, 0x24, 0x00)  # bidirectional: not supported
        if not write:
            return self._execute(it)
        if edtl > MAX_WRITE_BUFFER:
            return self._check_condition(it, 0x05, 0x24, 0x00)
        if len(data) > edtl or (data and not params.immediate_data) or len(data) > params.first_burst:
            return self._fail_task(it, f"{len(data)} bytes of immediate data not allowed here")
        if not self.budget.charge(self.share, edtl):
            return self._fail(it, ScsiResult(self.full_status()))
        self.buffered += edtl
        if len(data) == edtl:
            # Every byte came as immediate data: the PDU's payload is the data-out buffer.
            it.buf = memoryview(data)
            it.received = edtl
            return self._execute(it)
        # A pooled buffer is not zeroed: Data-Out offsets are checked to cover it exactly.
        if pdu.placed:
            # The immediate data was received into the head of a buffer for all of it
            # (``_place``): adopt that buffer rather than copy.
            assert isinstance(data, memoryview)
            it.buf = memoryview(data.obj)[:edtl]
            it.received = len(data)
        else:
            it.buf = POOL.borrow(edtl)
            if data:
                it.buf[: len(data)] = data
                it.received = len(data)
                POOL.give_back(data)  # a large payload's own pooled buffer (others are ignored)
        it.next_r2t_offset = it.received
        if not params.initial_r2t and not pdu.final:
            it.unsolicited_left = min(params.first_burst, edtl) - it.received
            it.next_r2t_offset = min(params.first_burst, edtl)
        self._progress(it)

    def _refuse_full(self, pdu: Pdu) -> None:
        """A SCSI Command whose immediate data was not kept while it waited for its CmdSN turn
        (no room in the memory budget, ``Connection._hold``): in its turn it ends as one the
        budget refuses on arrival does, with TASK SET FULL or BUSY (:meth:`full_status`)."""
        flags, lun_raw, itt, edtl, cmdsn = P.SCSI_CMD_FIELDS.unpack_from(pdu.bhs)
        if itt in self.tasks:
            raise ProtocolError(f"ITT {itt:#x} already in use", RejectReason.TASK_IN_PROGRESS)
        it = IscsiTask(itt, P.decode_lun(lun_raw), pdu.cdb, edtl, bool(flags & 0x40), bool(flags & 0x20),
                       flags & 7, cmdsn, pdu.immediate, lun_raw)
        self.tasks[itt] = it
        self._fail(it, ScsiResult(self.full_status()))

    def _fail_task(self, it: IscsiTask, why: str) -> None:
        """A command PDU that breaks the negotiated rules: Reject it; the task never starts."""
        self.tasks.pop(it.itt, None)
        raise ProtocolError(f"command itt={it.itt:#x}: {why}", RejectReason.PROTOCOL_ERROR)

    def _check_condition(self, it: IscsiTask, key: int, asc: int, ascq: int) -> None:
        self._fail(it, ScsiResult(Status.CHECK_CONDITION, None, build_sense(key, asc << 8 | ascq)))

    def _fail(self, it: IscsiTask, result: ScsiResult) -> None:
        """End a command in the transport, before or instead of running it."""
        self._forget(it)
        self._release(it, it.buf)
        it.buf = None
        it.state = ABORTED
        self._send_result(it, result)

    def _progress(self, it: IscsiTask) -> None:
        """More data-out needed? Solicit it. All in? Execute."""
        if it.received >= it.edtl:
            self._execute(it)
            return
        if it.unsolicited_left > 0:
            return
        params = self.params
        assert params is not None
        while len(it.r2ts) < params.max_outstanding_r2t and it.next_r2t_offset < it.edtl:
            length = min(params.max_burst, it.edtl - it.next_r2t_offset)
            ttt = self._new_ttt()
            it.r2ts[ttt] = R2tSequence(it.next_r2t_offset, length)
            exp, mx = self._window()
            self._emit(P.r2t(it.itt, it.lun_raw, ttt, self.stat_sn, exp, mx, it.r2tsn,
                             it.next_r2t_offset, length))
            it.r2tsn += 1
            it.next_r2t_offset += length

    def _on_data_out(self, pdu: Pdu) -> None:
        it = self.tasks.get(pdu.itt)
        if it is None or it.state != COLLECTING or it.buf is None:
            return  # data for a task that ended (aborted, failed): drop it quietly
        offset = pdu.buffer_offset
        data = pdu.data
        n = len(data)
        if offset + n > it.edtl:
            return self._data_error(it, pdu, "Data-Out beyond the expected data transfer length")
        ttt = pdu.ttt
        if ttt == NO_TAG:
            if it.unsolicited_left <= 0 or n > it.unsolicited_left:
                return self._data_error(it, pdu, "unsolicited Data-Out not allowed here")
            if pdu.datasn != it.unsol_datasn:
                return self._data_error(it, pdu, f"DataSN {pdu.datasn} out of order", 0x4703)
            if offset != it.received:  # DataPDUInOrder=Yes: each PDU continues the last
                return self._data_error(it, pdu, "unsolicited Data-Out out of order")
            it.unsol_datasn += 1
            it.unsolicited_left -= n
            if pdu.final:
                it.unsolicited_left = 0
            seq = None
        else:
            seq = it.r2ts.get(ttt)
            if seq is None:
                return self._data_error(it, pdu, f"Data-Out for unknown TTT {ttt:#x}")
            if pdu.datasn != seq.datasn:
                return self._data_error(it, pdu, f"DataSN {pdu.datasn} out of order", 0x4703)
            if offset != seq.offset + seq.received or offset + n > seq.offset + seq.length:
                return self._data_error(it, pdu, "Data-Out not continuing its R2T in order")
            seq.datasn += 1
            seq.received += n
        if not pdu.placed:
            it.buf[offset : offset + n] = data
            POOL.give_back(data)  # a large payload's own pooled buffer (others are ignored)
        it.received += n
        if seq is not None and (seq.received >= seq.length or pdu.final):
            if seq.received < seq.length:
                return self._data_error(it, pdu, "R2T sequence ended short of its length")
            del it.r2ts[ttt]
        if seq is not None or it.unsolicited_left == 0:
            self._progress(it)

    def _data_error(self, it: IscsiTask, pdu: Pdu, why: str, asc: int = 0x0E03) -> None:
        """A broken Data-Out sequence. ErrorRecoveryLevel 0 cannot recover it: the command ends
        with CHECK CONDITION (ABORTED COMMAND), so it is never completed with GOOD and never
        left waiting for data that will not come (RFC 7143 7.1); later Data-Out for it is
        dropped."""
        self._log_bad(f"itt={it.itt:#x}: {why}")
        self._check_condition(it, 0x0B, asc >> 8, asc & 0xFF)

    def _execute(self, it: IscsiTask) -> None:
        s = self.session
        assert s is not None and s.nexus is not None
        it.state = EXECUTING
        task = ScsiTask(
            cdb=it.cdb, lun=it.lun, nexus=s.nexus, tag=it.itt, attr=_ATTRS[it.attr] if it.attr <= 4 else TaskAttr.SIMPLE,
            data_out=it.buf,
            expected_length=it.edtl, read=it.read, write=it.write, context=it,
        )
        it.scsi = task
        it.buf = None
        self._events.append(ExecuteTask(task))


__all__ = ["MAX_WRITE_BUFFER", "Transfer"]
