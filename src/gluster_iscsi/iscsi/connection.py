"""The target side of one iSCSI connection: login, then the full feature phase.

Pure state machine (RFC 7143): ``receive_data(bytes, now)`` returns events, ``data_to_send()``
returns the buffers to write, ``complete_task``/``complete_tmf`` feed results back in, and
``handle_timer(now)`` drives NOP-In keepalives and the login timeout. No sockets, no clock.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..buffers import POOL, BudgetShare, Buffer, MemoryBudget
from ..logs import PROBLEMS
from ..scsi.sense import build_sense
from ..scsi.task import Nexus, ScsiResult, ScsiTask, Status, TaskAttr
from ..target.model import Target, TargetRegistry
from . import pdu as P
from .chap import ChapAuthenticator
from .errors import LoginError, LoginStatus, ProtocolError, RejectReason
from .events import CloseConnection, ExecuteTask, LoginComplete, ReinstateSession, TaskManagement
from .params import Negotiator, SessionParams
from .pdu import NO_TAG, Opcode, Pdu, PduReader, TmfFunction, TmfResponse
from .session import Session, SessionTable
from .text import decode_text, encode_text

log = logging.getLogger(__name__)

#: Default login key values the target offers (the daemon may override any of them).
DEFAULT_TARGET_PARAMS: dict[str, str] = {
    "HeaderDigest": "CRC32C,None",
    "DataDigest": "CRC32C,None",
    "MaxConnections": "1",
    "InitialR2T": "Yes",
    "ImmediateData": "Yes",
    "MaxRecvDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "DefaultTime2Wait": "2",
    "DefaultTime2Retain": "20",
    "MaxOutstandingR2T": "8",
    "DataPDUInOrder": "Yes",
    "DataSequenceInOrder": "Yes",
    "ErrorRecoveryLevel": "0",
}

#: The largest data-out buffer one command may make us allocate (SBC MAXIMUM TRANSFER LENGTH
#: in VPD B0h is 8 MiB; leave headroom for EXTENDED COPY and odd block sizes).
MAX_WRITE_BUFFER = 32 << 20
#: The memory budget of a connection made without one (the daemon passes its shared
#: :class:`~gluster_iscsi.buffers.MemoryBudget`).
MAX_CONNECTION_BUFFERS = 256 << 20
#: Login text accumulated across continued PDUs.
MAX_LOGIN_TEXT = 64 << 10
LOGIN_DSL = 8192  # MaxRecvDataSegmentLength during login (RFC 7143 13.12)

STAGE_SECURITY, STAGE_OPERATIONAL, STAGE_FFP = 0, 1, 3
_STAGE_NAMES = {STAGE_SECURITY: "security", STAGE_OPERATIONAL: "operational"}

_COLLECTING, _EXECUTING, _ABORTED = 0, 1, 2
# SCSI Command BHS: flags, LUN, ITT, EDTL, CmdSN (RFC 7143 11.3), read in one go.
_CMD_FIELDS = struct.Struct(">xB6x8sIII")
_U32 = struct.Struct(">I")
_ATTRS = tuple(TaskAttr(i) for i in range(5))
_NO_LUN = bytes(8)  # the LUN field of a SCSI Response is reserved


@dataclass(slots=True)
class _R2T:
    offset: int
    length: int
    received: int = 0
    datasn: int = 0


@dataclass(slots=True, eq=False, init=False)
class IscsiTask:
    """Transport state of one SCSI command."""

    itt: int
    lun: int
    cdb: bytes
    edtl: int
    read: bool
    write: bool
    attr: int
    cmdsn: int
    immediate: bool
    lun_raw: bytes
    buf: memoryview | None = None
    received: int = 0
    unsolicited_left: int = 0
    unsol_datasn: int = 0
    next_r2t_offset: int = 0
    r2tsn: int = 0
    r2ts: dict[int, _R2T] = field(default_factory=dict)
    state: int = _COLLECTING
    scsi: ScsiTask | None = None
    datain_pdus: int = 0
    charge: int = 0  # read-buffer bytes charged to the memory budget (``reserve``)

    # (An explicit __init__: compiled, see setup.py, it is native and ~4x cheaper than the
    # dataclass-generated one, and one of these is made for every command.)
    def __init__(self, itt: int, lun: int, cdb: bytes, edtl: int, read: bool, write: bool,
                 attr: int, cmdsn: int, immediate: bool, lun_raw: bytes) -> None:
        self.itt = itt
        self.lun = lun
        self.cdb = cdb
        self.edtl = edtl
        self.read = read
        self.write = write
        self.attr = attr
        self.cmdsn = cmdsn
        self.immediate = immediate
        self.lun_raw = lun_raw
        self.buf = None
        self.received = 0
        self.unsolicited_left = 0
        self.unsol_datasn = 0
        self.next_r2t_offset = 0
        self.r2tsn = 0
        self.r2ts = {}
        self.state = _COLLECTING
        self.scsi = None
        self.datain_pdus = 0
        self.charge = 0


def _numbered(pdu: Pdu) -> bool:
    """Whether a full-feature-phase request takes a CmdSN slot: every non-immediate one but
    Data-Out and SNACK (which carry no CmdSN) and a NOP-Out answering our ping (ITT
    0xffffffff, RFC 7143 11.18: never numbered)."""
    b0 = pdu.bhs[0]
    if b0 & 0x40:
        return False
    op = b0 & 0x3F
    if op == Opcode.DATA_OUT or op == Opcode.SNACK:
        return False
    return not (op == Opcode.NOP_OUT and pdu.itt == NO_TAG)


class Connection:
    """One TCP connection's iSCSI state."""

    def __init__(
        self,
        registry: TargetRegistry,
        sessions: SessionTable,
        *,
        peer_address: str,
        local_address: str = "",
        portal_tpgt: int = 1,
        target_params: Mapping[str, str] | None = None,
        now: float = 0.0,
        login_timeout: float = 30.0,
        nop_interval: float = 10.0,
        nop_timeout: float = 30.0,
        queue_depth: int = 128,
        random_bytes: Callable[[int], bytes] = os.urandom,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.peer_address = peer_address
        self.local_address = local_address
        self.tpgt = portal_tpgt
        self.target_params = dict(DEFAULT_TARGET_PARAMS)
        if target_params:
            self.target_params.update(target_params)
        self.queue_depth = queue_depth
        self.random_bytes = random_bytes
        self.reader = PduReader(LOGIN_DSL, place=self._place)
        self._out: list[Buffer] = []
        self._events: list[Any] = []
        self.session: Session | None = None
        self.params: SessionParams | None = None
        self.cid = 0
        self.stat_sn = 0
        self.closed = False
        self.logging_out = False
        self.tasks: dict[int, IscsiTask] = {}
        self.buffered = 0  # data-out bytes held by tasks of this connection
        #: The daemon's memory budget, and this connection's (session's) part of it.
        self.budget = budget if budget is not None else MemoryBudget(
            MAX_CONNECTION_BUFFERS, share=MAX_CONNECTION_BUFFERS)
        self.share = BudgetShare()
        self.unsent = 0  # read bytes handed out for sending, charged until the driver says sent
        # CmdSN -> (PDU, Reject reason or 0, why) waiting for a gap to fill
        self._pending: dict[int, tuple[Pdu, int, str]] = {}
        self._next_ttt = 1
        self.hd = False
        self.dd = False
        self.max_xmit = LOGIN_DSL
        # The largest Data-In that can go out alone, status and all: one PDU (the initiator's
        # MaxRecvDataSegmentLength) and one sequence (MaxBurstLength, RFC 7143 13.13).
        self._datain_single = LOGIN_DSL
        # login state
        self.stage = STAGE_SECURITY
        self._login_started = False
        self._login_text = bytearray()
        self._login_keys: dict[str, str] = {}
        # A Login Response too long for one PDU: the rest, and the (T, NSG) it ends with.
        self._login_out = b""
        self._login_next = (False, 0)
        self._negotiator = Negotiator(self.target_params)
        self._chap: ChapAuthenticator | None = None
        self._auth_required = False
        self._authenticated = False
        self._auth_method: str | None = None
        self._isid = b""
        self._tsih = 0
        self._first_response = True
        self._handlers: dict[int, Callable[..., None]] = {}  # chosen at login by session type
        self._declared = False  # the target's operational declarations were sent
        self.initiator_name = ""
        self.target: Target | None = None
        self.session_type = "Normal"
        # text request continuation
        self._text_in = bytearray()
        self._text_out: bytes = b""
        self._text_ttt = NO_TAG
        # timers
        self.now = now
        self.login_deadline: float | None = now + login_timeout
        self.nop_interval = nop_interval
        self.nop_timeout = nop_timeout
        self._last_rx = now
        self._ping_ttt: int | None = None
        self._ping_deadline: float | None = None

    # ------------------------------------------------------------------ I/O-free API
    @property
    def full_feature(self) -> bool:
        return self.stage == STAGE_FFP

    def receive_data(self, data: Buffer, now: float | None = None) -> list[Any]:
        """Take bytes from the wire; return the events they caused."""
        mv = memoryview(data)  # type: ignore[arg-type]
        reader = self.reader
        events: list[Any] = []
        while True:
            # As a socket would: each window filled, then the PDUs it completed handled, so a
            # large payload lands in its own buffer here too.
            window = reader.get_buffer(len(mv))
            n = min(len(window), len(mv))
            window[:n] = mv[:n]
            del window
            events += self.buffer_updated(n, now)
            mv = mv[n:]
            if not len(mv):
                return events

    def get_buffer(self) -> memoryview:
        """Where the next bytes from the wire should be received (zero-copy receive)."""
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int, now: float | None = None) -> list[Any]:
        """``nbytes`` were received into the last :meth:`get_buffer`; return the events."""
        if now is not None:
            self.now = now
        if self.closed:
            return []
        self._last_rx = self.now
        reader = self.reader
        reader.buffer_updated(nbytes)
        while not self.closed:
            try:
                pdu = reader.next_pdu()
            except P.OversizedPdu as exc:
                # Refused in its CmdSN turn, like any other rejected command (``_dispatch``).
                self._dispatch(exc.pdu, RejectReason.PROTOCOL_ERROR, str(exc))
                continue
            except P.DigestError as dig:  # (one name per exception type: mypyc types them)
                self._log_bad(str(dig))
                if dig.header or dig.pdu is None or not self.full_feature:
                    self._close("header digest error")
                else:
                    self._reject(dig.pdu, RejectReason.DATA_DIGEST_ERROR)
                continue
            if pdu is None:
                break
            self._dispatch(pdu)
        return self._take_events()

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
            edtl, cmdsn = _U32.unpack_from(bhs, 20)[0], _U32.unpack_from(bhs, 24)[0]
            s = self.session
            if (not bhs[1] & 0x20 or bhs[1] & 0x40 or edtl <= n or edtl > MAX_WRITE_BUFFER
                    or not self.budget.fits(self.share, edtl) or s is None
                    or not (bhs[0] & 0x40 or cmdsn == s.exp_cmdsn)):
                return None
            return POOL.borrow(edtl)[:n]
        if op != Opcode.DATA_OUT:
            return None
        itt, offset = _U32.unpack_from(bhs, 16)[0], _U32.unpack_from(bhs, 40)[0]
        it = self.tasks.get(itt)
        if it is None or it.state != _COLLECTING or it.buf is None:
            return None
        if offset + n > it.edtl:
            return None
        return it.buf[offset : offset + n]

    def data_to_send(self) -> list[Buffer]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        if not self.full_feature:
            return self.login_deadline
        if self._ping_deadline is not None:
            return self._ping_deadline
        if self.nop_interval > 0:
            return self._last_rx + self.nop_interval
        return None

    def handle_timer(self, now: float) -> list[Any]:
        self.now = now
        if self.closed:
            return []
        if not self.full_feature:
            if self.login_deadline is not None and now >= self.login_deadline:
                self._log_bad("login timed out", "login timeout")
                self._close("login timeout")
        elif self._ping_deadline is not None:
            if now >= self._ping_deadline:
                self._log_bad(f"no NOP-Out answer within {self.nop_timeout:g}s", "NOP-In timeout")
                self._close("NOP-In ping timed out")
        elif self.nop_interval > 0 and now >= self._last_rx + self.nop_interval:
            self._send_ping()
        return self._take_events()

    def _release(self, it: IscsiTask, view: memoryview | None) -> None:
        if view is not None:
            n = len(view)
            self.buffered -= n
            self.budget.release(self.share, n)
            if not self.reader.receiving_into(view.obj):  # a Data-Out still landing in it
                POOL.give_back(view)

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
        self._release(it, task.data_out)
        task.data_out = None
        charge = it.charge
        if charge:
            # A read's buffer: charged until its bytes are sent (``sent``), or now if they
            # will not be.
            it.charge = 0
            if it.state != _ABORTED and not self.closed and result.data is not None:
                self.unsent += charge
            else:
                self.budget.release(self.share, charge)
        if self.tasks.get(it.itt) is it:
            del self.tasks[it.itt]
        if self.session is not None and not it.immediate:
            self.session.retire()
        if it.state == _ABORTED or self.closed:
            self._maybe_finish_logout()
            return
        self._send_result(it, result)
        self._maybe_finish_logout()

    def complete_tmf(self, itt: int, response: int) -> None:
        self._emit(
            P.bhs(Opcode.TMF_RSP, 0x80, response, itt=itt, w24=self._next_statsn(), **self._window())
        )

    def abort_tasks(self, predicate: Callable[[IscsiTask], bool]) -> tuple[int, list[ScsiTask]]:
        """Abort matching tasks: (how many matched, the ones still executing, which the driver
        waits for). Tasks still collecting data-out are dropped at once."""
        running: list[ScsiTask] = []
        found = 0
        for it in list(self.tasks.values()):
            if not predicate(it):
                continue
            found += 1
            if it.state == _EXECUTING and it.scsi is not None:
                it.state = _ABORTED
                it.scsi.aborted = True  # a long command (SANITIZE waiting) may end early
                running.append(it.scsi)
            else:
                it.state = _ABORTED
                del self.tasks[it.itt]
                self._release(it, it.buf)
                it.buf = None
                if self.session is not None and not it.immediate:
                    self.session.retire()
        return found, running

    def take_events(self) -> list[Any]:
        """Events caused outside :meth:`receive_data` and :meth:`handle_timer`: a
        :meth:`complete_task` that finished a Logout adds :class:`CloseConnection` (check
        :attr:`closed`, so the hot path does not ask for an empty list every time)."""
        return self._take_events()

    def close(self, reason: str = "closed") -> list[Any]:
        if not self.closed:
            self._close(reason)
        return self._take_events()

    # ------------------------------------------------------------------ plumbing
    def _take_events(self) -> list[Any]:
        ev, self._events = self._events, []
        return ev

    def _emit(self, header: bytes, data: Buffer | None = None) -> None:
        if self.hd or self.dd:
            self._out.extend(P.frame(header, data, self.hd, self.dd))
            return
        out = self._out
        out.append(header)
        if data is not None:
            n = len(data)  # type: ignore[arg-type]
            if n:
                out.append(data)
                if n & 3:
                    out.append(P.PAD[n & 3])

    def _next_statsn(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _window(self) -> dict[str, Any]:
        s = self.session
        if s is None:
            return {"w28": 0, "w32": 0}
        return {"w28": s.exp_cmdsn, "w32": s.max_cmdsn}

    def _close(self, reason: str) -> None:
        self.closed = True
        self._events.append(CloseConnection(reason))

    def _who(self) -> str:
        return f"{self.initiator_name or '?'} at {self.peer_address}"

    def _log_bad(self, message: str, kind: str = "bad PDU") -> None:
        # Escaped (names are the peer's) and rate-limited per kind and peer (``logs.py``).
        PROBLEMS.report(log, logging.WARNING, "iSCSI " + kind, self.peer_address,
                        "iSCSI %s: %s", self._who(), message)

    def _reject(self, bad: Pdu, reason: int) -> None:
        if not self.full_feature:
            # No Reject during login: a malformed login PDU ends the login (RFC 7143 6.2).
            self._login_fail(LoginStatus.INITIATOR_ERROR, "protocol error during login")
            return
        w = self._window()
        self._emit(
            P.bhs(Opcode.REJECT, 0x80, reason, dsl=P.BHS_LEN, w24=self._next_statsn(),
                  w28=w["w28"], w32=w["w32"]),
            bad.bhs,
        )

    def _dispatch(self, pdu: Pdu, refuse: int = 0, why: str = "") -> None:
        """Route one received PDU; ``refuse`` is a Reject reason decided before (an oversized
        data segment), sent when the PDU's CmdSN turn comes like any other reject.

        The CmdSN rule lives here, once for every opcode (RFC 7143 4.2.2.1, 3.2.2.1): a
        non-immediate request is taken in only in CmdSN order (an early one waits for the
        gap, one outside the window is dropped), and once taken in, its CmdSN is consumed
        whatever becomes of it, a Reject included, so later commands never wait behind it.
        Data-Out and SNACK carry no CmdSN, nor does a NOP-Out answering our ping."""
        if not self.full_feature:
            if refuse:
                self._log_bad(why)
                self._reject(pdu, refuse)
            elif pdu.opcode != Opcode.LOGIN_REQ:
                self._login_fail(LoginStatus.INITIATOR_ERROR, f"opcode {pdu.opcode:#x} before login completed")
            else:
                self._login(pdu)
            return
        if self.logging_out:
            # After its Logout the initiator sends nothing more (RFC 7143 11.14); whatever
            # comes is not taken in, the connection closes once the Logout is answered.
            return
        if not _numbered(pdu):
            self._run(pdu, refuse, why, False)
            return
        s = self.session
        assert s is not None
        cmdsn = pdu.cmdsn
        if cmdsn != s.exp_cmdsn:
            if s.in_window(cmdsn):
                if cmdsn not in self._pending:
                    self._pending[cmdsn] = (pdu, refuse, why)
            else:
                log.debug("dropping PDU with CmdSN %d outside [%d, %d]", cmdsn, s.exp_cmdsn, s.max_cmdsn)
            return
        s.advance()
        self._run(pdu, refuse, why, True)
        pending = self._pending
        while pending and not self.closed and not self.logging_out:
            item = pending.pop(s.exp_cmdsn, None)
            if item is None:
                return
            s.advance()
            self._run(item[0], item[1], item[2], True)

    def _run(self, pdu: Pdu, refuse: int, why: str, numbered: bool) -> None:
        """Handle a PDU taken in. Every handler but a SCSI Command's is done when it returns:
        a numbered PDU's slot in the window is given back before it answers (so the answer
        already carries the wider MaxCmdSN); a SCSI Command's when it completes, or here,
        when it is rejected before it became a task."""
        op = pdu.opcode
        s = self.session
        early = numbered and (refuse != 0 or op != Opcode.SCSI_CMD)
        if early and s is not None:
            s.retire()
        try:
            if refuse:
                raise ProtocolError(why, refuse)
            handler = self._handlers.get(op)
            if handler is None:
                if op in _FFP:
                    raise ProtocolError("only Text, NOP-Out and Logout in a discovery session",
                                        RejectReason.PROTOCOL_ERROR)
                raise ProtocolError(f"opcode {op:#x} not supported", RejectReason.COMMAND_NOT_SUPPORTED)
            handler(self, pdu)
        except ProtocolError as perr:
            if numbered and not early and s is not None:
                s.retire()
            self._log_bad(str(perr))
            self._reject(pdu, perr.reason)

    # ------------------------------------------------------------------ login
    def _login_fail(self, status: int, message: str, itt: int = NO_TAG) -> None:
        self._log_bad(f"login refused ({status >> 8:#04x}/{status & 0xff:#04x}): {message}",
                      "login refused")
        self._emit(
            P.bhs(Opcode.LOGIN_RSP, 0, 0, 0, 0, self._isid.ljust(6, b"\0") + bytes(2), itt,
                  0, self._next_statsn(), 0, 0, (status >> 8) << 24 | (status & 0xFF) << 16)
        )
        self._close("login failed")

    def _login(self, pdu: Pdu) -> None:
        flags = pdu.flags
        transit, cont = bool(flags & 0x80), bool(flags & 0x40)
        csg, nsg = (flags >> 2) & 3, flags & 3
        itt = pdu.itt
        try:
            if not self._login_started:
                self._login_started = True
                self._isid = pdu.isid
                self._tsih = pdu.tsih
                self.cid = pdu.cid
                self.stat_sn = pdu.expstatsn
                self._cmdsn = pdu.cmdsn
                if pdu.bhs[3] > 0:  # VersionMin > 0: nothing we speak (we are version 0)
                    raise LoginError(2, 5, f"unsupported version range {pdu.bhs[3]}..{pdu.bhs[2]}")
                if csg == STAGE_OPERATIONAL:  # the security stage may be skipped (RFC 7143 6.3)
                    self.stage = STAGE_OPERATIONAL
            elif pdu.isid != self._isid or pdu.tsih != self._tsih:
                raise LoginError(2, 0, "ISID/TSIH changed during login")
            if csg != self.stage:
                raise LoginError(2, 0, f"CSG {csg} does not match the current stage {self.stage}")
            if csg not in (STAGE_SECURITY, STAGE_OPERATIONAL):
                raise LoginError(2, 0, f"invalid CSG {csg}")
            if transit and (nsg == 2 or nsg <= csg):
                raise LoginError(2, 0, f"invalid transition {csg}->{nsg}")
            if transit and cont:
                raise LoginError(2, 0, "T and C bits both set")
            if self._login_out:
                # Our response goes on (C bit): the initiator asks for the rest with an
                # empty request (RFC 7143 11.13.4), and may not send keys meanwhile.
                if pdu.data or cont:
                    raise LoginError.of(LoginStatus.INITIATOR_ERROR,
                                        "login request with keys while the response continues")
                rest, (want_transit, want_nsg) = self._login_out, self._login_next
                self._login_out = b""
                self._answer_login(itt, want_transit and transit, csg, want_nsg, rest)
                return
            if len(self._login_text) + len(pdu.data) > MAX_LOGIN_TEXT:
                raise LoginError.of(LoginStatus.INITIATOR_ERROR, "login text too long")
            self._login_text += pdu.data
            if cont:
                self._login_response(itt, False, csg, nsg, b"")
                return
            pairs = decode_text(bytes(self._login_text))
            self._login_text.clear()
            self._login_step(itt, transit, csg, nsg, pairs)
        except LoginError as exc:
            self._login_fail((exc.status_class << 8) | exc.status_detail, str(exc), itt)
        except ProtocolError as perr:
            self._login_fail(LoginStatus.INITIATOR_ERROR, str(perr), itt)

    def _login_identify(self, keys: dict[str, str]) -> None:
        """First login request: who is this, which session type, which target, may they."""
        name = keys.get("InitiatorName")
        if not name:
            raise LoginError.of(LoginStatus.MISSING_PARAMETER, "InitiatorName missing")
        self.initiator_name = name
        self.session_type = keys.get("SessionType", "Normal")
        if self.session_type not in ("Normal", "Discovery"):
            raise LoginError.of(LoginStatus.INITIATOR_ERROR, f"SessionType {self.session_type!r} is invalid")
        reg = self.registry
        if self.session_type == "Normal":
            tname = keys.get("TargetName")
            if not tname:
                raise LoginError.of(LoginStatus.MISSING_PARAMETER, "TargetName missing in a normal session")
            target = reg.lookup(tname)
            # A target this initiator may not use is answered as one that does not exist
            # (0x0203), as tgt does and as SendTargets already hides it: 0x0202 for one and
            # 0x0203 for the other would let anyone probe target names. The log says which.
            if target is None:
                raise LoginError.of(LoginStatus.NOT_FOUND, f"target {tname} not found")
            if not target.allows(name, self.peer_address):
                raise LoginError.of(LoginStatus.NOT_FOUND,
                                    f"{name} at {self.peer_address} is not allowed on {tname}")
            self.target = target
            # Per-target parameters (e.g. a smaller MaxBurstLength) override the daemon's.
            self._negotiator = Negotiator(target.offered_params(self.target_params))
            accounts, outgoing = target.chap_for(name)
        else:
            accounts, outgoing = reg.discovery_incoming, reg.discovery_outgoing
        self._auth_required = bool(accounts)
        if self._auth_required:
            self._chap = ChapAuthenticator(accounts, outgoing, random_bytes=self.random_bytes)

    def _login_step(self, itt: int, transit: bool, csg: int, nsg: int, pairs: list[tuple[str, str]]) -> None:
        keys = dict(pairs)
        if not self.initiator_name:
            self._login_identify(keys)
        out: list[tuple[str, str]] = []
        if csg == STAGE_SECURITY:
            sec = [(k, v) for k, v in pairs if k == "AuthMethod" or k.startswith("CHAP_")]
            rest = [(k, v) for k, v in pairs if not (k == "AuthMethod" or k.startswith("CHAP_"))]
            out += self._security(sec)
            out += self._negotiator.negotiate(rest, stage="security", session_type=self.session_type)
            if transit and not self._security_done():
                transit = False  # keep negotiating security; the initiator will continue
        else:
            if self._auth_required and not self._authenticated:
                raise LoginError(2, 1, "authentication required (CHAP) but skipped")
            out += self._negotiator.negotiate(pairs, stage="operational", session_type=self.session_type)
        if self._first_response:
            self._first_response = False
            if self.session_type == "Normal":
                out.append(("TargetPortalGroupTag", str(self.tpgt)))
                if self.target is not None and self.target.alias:
                    out.append(("TargetAlias", self.target.alias))
        if csg == STAGE_OPERATIONAL and not self._declared:
            # Operational keys only in operational-stage responses: open-iscsi refuses them in
            # the security stage. (A login going straight from security to full feature phase
            # gets no declaration, and the initiator keeps the 8192-byte default: safe.)
            self._declared = True
            out += self._negotiator.declarations("operational", self.session_type)
        self._answer_login(itt, transit, csg, nsg, encode_text(out))

    def _answer_login(self, itt: int, transit: bool, csg: int, nsg: int, data: bytes) -> None:
        """Send a Login Response's text; beyond the 8192 bytes an initiator takes during
        login (RFC 7143 13.12), the first part with the C bit and the rest when asked. The
        stage changes (or the session starts) with the last part only."""
        if len(data) > LOGIN_DSL:
            self._login_out = data[LOGIN_DSL:]
            self._login_next = (transit, nsg)
            self._login_response(itt, False, csg, csg, data[:LOGIN_DSL], cont=True)
            return
        if transit and nsg == STAGE_FFP:
            self._finish_login(itt, csg, data)
            return
        if transit:
            self.stage = nsg
        self._login_response(itt, transit, csg, nsg if transit else csg, data)

    def _security_done(self) -> bool:
        return (not self._auth_required and self._auth_method in (None, "None")) or self._authenticated

    def _security(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        chap_keys: dict[str, str] = {}
        for k, v in pairs:
            if k == "AuthMethod":
                if self._auth_method is not None:
                    raise LoginError(2, 0, "AuthMethod sent twice")
                offered = [m.strip() for m in v.split(",")]
                if self._auth_required:
                    if "CHAP" not in offered:
                        raise LoginError(2, 1, f"CHAP is required but the initiator offered {v}")
                    self._auth_method = "CHAP"
                elif "None" in offered:
                    self._auth_method = "None"
                else:
                    raise LoginError(2, 1, f"no CHAP account configured, initiator offered only {v}")
                out.append(("AuthMethod", self._auth_method))
            else:
                chap_keys[k] = v
        if chap_keys:
            if self._auth_method != "CHAP" or self._chap is None:
                raise LoginError(2, 0, "CHAP keys without AuthMethod=CHAP")
            resp, done = self._chap.step(chap_keys)
            out += resp
            if done:
                self._authenticated = True
        return out

    def _login_response(self, itt: int, transit: bool, csg: int, nsg: int, data: bytes,
                        tsih: int | None = None, cont: bool = False) -> None:
        flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
        exp = getattr(self, "_cmdsn", 0)
        self._emit(
            P.bhs(Opcode.LOGIN_RSP, flags, 0, 0, len(data),
                  self._isid + (tsih if tsih is not None else self._tsih).to_bytes(2, "big"),
                  itt, 0, self._next_statsn(), exp, (exp + self.queue_depth - 1) & 0xFFFFFFFF, 0),
            data,
        )

    def _finish_login(self, itt: int, csg: int, data: bytes) -> None:
        params = self._negotiator.result()
        table = self.sessions
        target = self.target
        if self._tsih:
            existing = table.by_tsih.get(self._tsih)
            if existing is None or existing.isid != self._isid:
                raise LoginError(2, 0x0A, f"session TSIH {self._tsih} does not exist")
            raise LoginError(2, 6, "MaxConnections=1: no more connections in this session")
        if self.session_type == "Normal":
            old = table.find(self.initiator_name, self._isid, target.name if target else None)
            if old is not None:
                table.remove(old)
                self._events.append(ReinstateSession(old))
        tsih = table.allocate_tsih()
        nexus = None
        if target is not None:
            isid_hex = self._isid.hex()
            nexus = Nexus(
                initiator_name=self.initiator_name,
                initiator_port=f"{self.initiator_name},i,0x{isid_hex}",
                target_port=f"{target.name},t,0x{self.tpgt:04x}",
                relative_port=self.tpgt,
                target_port_group=self.tpgt,
            )
        session = Session(tsih, self._isid, self.initiator_name, self.session_type, target, nexus,
                          params, queue_depth=self.queue_depth)
        session.start_window(self._cmdsn)
        table.add(session)
        self.session = session
        self.params = params
        self._tsih = tsih
        self._login_response(itt, True, csg, STAGE_FFP, data, tsih=tsih)
        # Digests and the negotiated sizes apply from the first PDU after the final response.
        self.stage = STAGE_FFP
        self._handlers = _FFP if self.session_type == "Normal" else _FFP_DISCOVERY
        self.login_deadline = None
        self.hd = params.header_digest
        self.dd = params.data_digest
        self.reader.header_digest = params.header_digest
        self.reader.data_digest = params.data_digest
        self.reader.max_recv_dsl = params.max_recv_dsl
        self.max_xmit = params.max_xmit_dsl
        self._datain_single = min(params.max_xmit_dsl, params.max_burst)
        PROBLEMS.report(log, logging.INFO, "iSCSI login", self.peer_address,
                        "iSCSI login: %s tsih=%d %s session%s", self._who(), tsih, self.session_type,
                        f" to {target.name}" if target else "", burst=20)
        self._events.append(LoginComplete(session))

    # ------------------------------------------------------------------ full feature phase
    def _on_nop_out(self, pdu: Pdu) -> None:
        itt = pdu.itt
        if itt == NO_TAG:
            if pdu.ttt == self._ping_ttt:
                self._ping_ttt = None
                self._ping_deadline = None
            return
        if pdu.ttt != NO_TAG:
            raise ProtocolError("NOP-Out with both ITT and TTT set", RejectReason.INVALID_PDU_FIELD)
        data = pdu.data[: self.max_xmit]
        self._emit(
            P.bhs(Opcode.NOP_IN, 0x80, 0, 0, len(data), pdu.lun_raw, itt, NO_TAG,
                  self._next_statsn(), **self._window()),
            data,
        )

    def _send_ping(self) -> None:
        ttt = self._new_ttt()
        self._ping_ttt = ttt
        self._ping_deadline = self.now + self.nop_timeout
        self._emit(P.bhs(Opcode.NOP_IN, 0x80, itt=NO_TAG, w20=ttt, w24=self.stat_sn, **self._window()))

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (ttt + 1) % 0xFFFFFFFF or 1
        return ttt

    def _on_scsi_cmd(self, pdu: Pdu) -> None:
        flags, lun_raw, itt, edtl, cmdsn = _CMD_FIELDS.unpack_from(pdu.bhs)
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

    def _fail_task(self, it: IscsiTask, why: str) -> None:
        """A command PDU that breaks the negotiated rules: Reject it; the task never starts."""
        self.tasks.pop(it.itt, None)
        raise ProtocolError(f"command itt={it.itt:#x}: {why}", RejectReason.PROTOCOL_ERROR)

    def _check_condition(self, it: IscsiTask, key: int, asc: int, ascq: int) -> None:
        self._fail(it, ScsiResult(Status.CHECK_CONDITION, None, build_sense(key, asc << 8 | ascq)))

    def _fail(self, it: IscsiTask, result: ScsiResult) -> None:
        """End a command in the transport, before or instead of running it."""
        self.tasks.pop(it.itt, None)
        if not it.immediate and self.session is not None:
            self.session.retire()
        self._release(it, it.buf)
        it.buf = None
        it.state = _ABORTED
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
            it.r2ts[ttt] = _R2T(it.next_r2t_offset, length)
            self._emit(P.bhs(Opcode.R2T, 0x80, 0, 0, 0, it.lun_raw, it.itt, ttt, self.stat_sn,
                             **self._window(), w36=it.r2tsn, w40=it.next_r2t_offset, w44=length))
            it.r2tsn += 1
            it.next_r2t_offset += length

    def _on_data_out(self, pdu: Pdu) -> None:
        it = self.tasks.get(pdu.itt)
        if it is None or it.state != _COLLECTING or it.buf is None:
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
        it.state = _EXECUTING
        task = ScsiTask(
            cdb=it.cdb, lun=it.lun, nexus=s.nexus, tag=it.itt, attr=_ATTRS[it.attr] if it.attr <= 4 else TaskAttr.SIMPLE,
            data_out=it.buf,
            expected_length=it.edtl, read=it.read, write=it.write, context=it,
        )
        it.scsi = task
        it.buf = None
        self._events.append(ExecuteTask(task))

    def _send_result(self, it: IscsiTask, result: ScsiResult) -> None:
        edtl = it.edtl
        status = int(result.status)
        data = result.data
        if (
            type(data) is memoryview
            and it.read
            and status == 0
            and result.transfer_length is None
            and not result.sense
            and 0 < len(data) == edtl <= self._datain_single
            and data.itemsize == 1
        ):
            # The common case: GOOD, exactly the expected bytes, one Data-In PDU carrying status.
            s = self.session
            sn = self.stat_sn
            self.stat_sn = (sn + 1) & 0xFFFFFFFF
            self._emit(
                P.bhs(Opcode.DATA_IN, 0x81, 0, 0, edtl, it.lun_raw, it.itt, NO_TAG, sn,
                      s.exp_cmdsn if s else 0, s.max_cmdsn if s else 0, 0, 0, 0),
                data,
            )
            return
        if (
            status == 0
            and it.write
            and not it.read
            and data is None
            and not result.sense
            and (result.transfer_length is None or result.transfer_length == edtl)
        ):
            # The common write: GOOD, every expected byte used, no sense (the general path
            # below, without its residual arithmetic and keyword packing).
            s = self.session
            sn = self.stat_sn
            self.stat_sn = (sn + 1) & 0xFFFFFFFF
            self._emit(
                P.bhs(Opcode.SCSI_RSP, 0x80, 0, 0, 0, _NO_LUN, it.itt, 0, sn,
                      s.exp_cmdsn if s else 0, s.max_cmdsn if s else 0, it.r2tsn, 0, 0)
            )
            return
        residual_flags = 0
        residual = 0
        window = self._window()
        if data is not None and it.read:
            mv = memoryview(data)
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            want = result.transfer_length if result.transfer_length is not None else len(mv)
            if want > edtl:
                residual_flags, residual = 0x04, want - edtl
            elif want < edtl:
                residual_flags, residual = 0x02, edtl - want
            mv = mv[: min(len(mv), edtl)]
            total = len(mv)
            piggyback = status == Status.GOOD and not result.sense and total > 0
            chunk = self.max_xmit
            burst = self.params.max_burst if self.params else total
            offset = 0
            datasn = 0
            lun_raw = it.lun_raw
            itt = it.itt
            in_burst = 0
            while offset < total:
                n = min(chunk, total - offset, burst - in_burst)
                last = offset + n >= total
                in_burst += n
                flags = 0
                if last or in_burst >= burst:
                    flags = 0x80
                    in_burst = 0
                statsn = 0
                if last and piggyback:
                    flags |= 0x01 | residual_flags
                    statsn = self._next_statsn()
                self._emit(
                    P.bhs(Opcode.DATA_IN, flags, 0, status if flags & 1 else 0, n, lun_raw, itt,
                          NO_TAG, statsn, window["w28"], window["w32"], datasn, offset,
                          residual if flags & 1 else 0),
                    mv[offset : offset + n],
                )
                datasn += 1
                offset += n
            it.datain_pdus = datasn
            if piggyback:
                return
        elif it.write:
            want = result.transfer_length if result.transfer_length is not None else edtl
            if want > edtl:
                residual_flags, residual = 0x04, want - edtl
            elif want < edtl:
                residual_flags, residual = 0x02, edtl - want
        elif it.read and edtl:
            want = result.transfer_length or 0
            if want < edtl and status == Status.GOOD:
                residual_flags, residual = 0x02, edtl - want
        sense = result.sense
        payload = None
        if sense:
            payload = len(sense).to_bytes(2, "big") + bytes(sense)
        self._emit(
            P.bhs(Opcode.SCSI_RSP, 0x80 | residual_flags, 0, status, len(payload) if payload else 0,
                  bytes(8), it.itt, 0, self._next_statsn(), window["w28"], window["w32"],
                  it.datain_pdus if it.read else it.r2tsn, 0, residual),
            payload,
        )

    def _on_tmf(self, pdu: Pdu) -> None:
        function = pdu.flags & 0x7F
        if function not in TmfFunction.__members__.values():
            self.complete_tmf(pdu.itt, TmfResponse.NOT_SUPPORTED)
        elif function == TmfFunction.TASK_REASSIGN:
            self.complete_tmf(pdu.itt, TmfResponse.REASSIGNMENT_NOT_SUPPORTED)
        else:
            self._events.append(TaskManagement(pdu.itt, function, pdu.lun, pdu.word(20), pdu.word(32)))

    def _on_text(self, pdu: Pdu) -> None:
        if pdu.ttt != NO_TAG and pdu.ttt == self._text_ttt and not pdu.data:
            self._send_text_chunk(pdu.itt)  # the initiator asks for the next part
            return
        if len(self._text_in) + len(pdu.data) > MAX_LOGIN_TEXT:
            self._text_in.clear()
            raise ProtocolError("text request too long", RejectReason.PROTOCOL_ERROR)
        self._text_in += pdu.data
        if pdu.flags & 0x40:  # C: more of the request follows
            self._emit(P.bhs(Opcode.TEXT_RSP, 0x00, itt=pdu.itt, w20=self._new_ttt(),
                             w24=self._next_statsn(), **self._window()))
            return
        pairs = decode_text(bytes(self._text_in))
        self._text_in.clear()
        out: list[tuple[str, str]] = []
        rest: list[tuple[str, str]] = []
        for k, v in pairs:
            if k == "SendTargets":
                out += self._send_targets(v)
            else:
                rest.append((k, v))
        if rest:
            out += self._negotiator.negotiate(rest, stage="ffp", session_type=self.session_type)
            new = self._negotiator.result()
            self.params = new
            self.max_xmit = new.max_xmit_dsl
            self._datain_single = min(new.max_xmit_dsl, new.max_burst)
        self._text_out = encode_text(out)
        self._send_text_chunk(pdu.itt)

    def _send_text_chunk(self, itt: int) -> None:
        data, self._text_out = self._text_out[: self.max_xmit], self._text_out[self.max_xmit :]
        more = bool(self._text_out)
        self._text_ttt = self._new_ttt() if more else NO_TAG
        self._emit(
            P.bhs(Opcode.TEXT_RSP, 0x40 if more else 0x80, dsl=len(data), itt=itt, w20=self._text_ttt,
                  w24=self._next_statsn(), **self._window()),
            data,
        )

    def _send_targets(self, which: str) -> list[tuple[str, str]]:
        reg = self.registry
        if self.session_type == "Normal":
            # In a normal session only the session's own target is reported (RFC 7143 A.?).
            targets = [self.target] if self.target is not None and which in ("", "All", self.target.name) else []
        elif which == "All":
            targets = reg.visible_to(self.initiator_name, self.peer_address)
        elif which == "":
            targets = []
        else:
            t = reg.lookup(which)
            targets = [t] if t is not None and t.allows(self.initiator_name, self.peer_address) else []
        out: list[tuple[str, str]] = []
        for t in targets:
            if t is None:
                continue
            out.append(("TargetName", t.name))
            for portal in reg.portals:
                out.append(("TargetAddress", f"{portal.advertised(self.local_address)},{t.tpgt}"))
        return out

    def _on_logout(self, pdu: Pdu) -> None:
        reason = pdu.flags & 0x7F
        self._logout_itt = pdu.itt
        if reason == P.LogoutReason.REMOVE_FOR_RECOVERY:
            self._logout_response(P.LogoutResponse.RECOVERY_NOT_SUPPORTED)
            return
        if reason == P.LogoutReason.CLOSE_CONNECTION and pdu.cid != self.cid:
            self._logout_response(P.LogoutResponse.CID_NOT_FOUND)
            return
        # "Close the session/connection": the target MUST terminate every pending command
        # (RFC 7143 11.14), and no response is expected for them. Commands still collecting
        # data or waiting for a CmdSN gap go at once; one executing is marked aborted (its
        # result is dropped) and the Logout Response waits until the store has returned from
        # it, as a TMF ABORT's response does: a write must not land after the initiator was
        # told the session is gone. The store's calls are bounded by the I/O timeout.
        self.logging_out = True
        self._pending.clear()
        self.abort_tasks(lambda t: True)
        self._maybe_finish_logout()

    def _maybe_finish_logout(self) -> None:
        if self.logging_out and not self.closed and not self.tasks:
            self.logging_out = False
            self._logout_response(P.LogoutResponse.SUCCESS)
            if self.session is not None:
                self.sessions.remove(self.session)
            self._close("logout")

    def _logout_response(self, response: int) -> None:
        t2w = int(self.params.default_time2wait) if self.params else 2
        t2r = int(self.params.default_time2retain) if self.params else 0
        self._emit(P.bhs(Opcode.LOGOUT_RSP, 0x80, response, itt=self._logout_itt,
                         w24=self._next_statsn(), **self._window(), w40=(t2w << 16) | t2r))

    def _on_snack(self, pdu: Pdu) -> None:
        raise ProtocolError("SNACK needs ErrorRecoveryLevel > 0", RejectReason.COMMAND_NOT_SUPPORTED)

    # ------------------------------------------------------------------ views
    def describe(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "initiator_address": self.peer_address,
            "local_address": self.local_address,
            "commands_in_flight": len(self.tasks),
            "stat_sn": self.stat_sn,
        }


#: The full feature phase's handler per opcode, chosen at login by session type. (Module
#: level, not class attributes: a class body cannot name its methods when compiled.)
_FFP: dict[int, Callable[..., None]] = {
    Opcode.NOP_OUT: Connection._on_nop_out,
    Opcode.SCSI_CMD: Connection._on_scsi_cmd,
    Opcode.TMF_REQ: Connection._on_tmf,
    Opcode.TEXT_REQ: Connection._on_text,
    Opcode.DATA_OUT: Connection._on_data_out,
    Opcode.LOGOUT_REQ: Connection._on_logout,
    Opcode.SNACK: Connection._on_snack,
}
#: A discovery session carries no SCSI (RFC 7143 4.3).
_FFP_DISCOVERY: dict[int, Callable[..., None]] = {
    Opcode.NOP_OUT: Connection._on_nop_out,
    Opcode.TEXT_REQ: Connection._on_text,
    Opcode.LOGOUT_REQ: Connection._on_logout,
}


__all__ = ["Connection", "DEFAULT_TARGET_PARAMS", "IscsiTask"]
