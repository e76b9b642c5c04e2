"""The target side of one iSCSI connection: login, then the full feature phase.

Pure state machine (RFC 7143): ``receive_data(bytes, now)`` returns events, ``data_to_send()``
returns the buffers to write, ``complete_task``/``complete_tmf`` feed results back in, and
``handle_timer(now)`` drives NOP-In keepalives and the login timeout. No sockets, no clock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..buffers import POOL, Buffer, MemoryBudget
from . import pdu as P
from .errors import LoginStatus, ProtocolError, RejectReason
from .events import LoginComplete, TaskManagement
from .login import MAX_LOGIN_TEXT, Login
from .params import Negotiator
from .pdu import NO_TAG, Opcode, Pdu, TmfFunction, TmfResponse
from .portal import TargetDirectory, TargetEntry
from .session import Session, SessionTable
from .tasks import IscsiTask
from .text import decode_text, encode_text
from .transfer import MAX_WRITE_BUFFER, Transfer

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

#: The memory budget of a connection made without one (the daemon passes its shared
#: :class:`~gluster_iscsi.buffers.MemoryBudget`).
MAX_CONNECTION_BUFFERS = 256 << 20

#: The refusal kept for a SCSI Command that waits for a CmdSN gap when its immediate data did
#: not fit the memory budget: in its turn it ends with TASK SET FULL or BUSY
#: (``Transfer._refuse_full``), as a command the budget refuses on arrival does.
_NO_MEMORY = -1


# Opcodes tested on every PDU, as Final ints: compiled, a constant compare, not an enum
# member's look-up and a rich comparison.
_OP_NOP_OUT: Final = 0x00
_OP_SCSI_CMD: Final = 0x01
_OP_DATA_OUT: Final = 0x05
_OP_SNACK: Final = 0x10


def _numbered(pdu: Pdu) -> bool:
    """Whether a full-feature-phase request takes a CmdSN slot: every non-immediate one but
    Data-Out and SNACK (which carry no CmdSN) and a NOP-Out answering our ping (ITT
    0xffffffff, RFC 7143 11.18: never numbered)."""
    b0 = pdu.bhs[0]
    if b0 & 0x40:
        return False
    op = b0 & 0x3F
    if op == _OP_DATA_OUT or op == _OP_SNACK:
        return False
    return not (op == _OP_NOP_OUT and pdu.itt == NO_TAG)


class Connection(Transfer):
    """One TCP connection's iSCSI state: login, then the full feature phase's dispatch and its
    requests other than SCSI commands and their data (``transfer.py``, ``responses.py``)."""

    def __init__(
        self,
        registry: TargetDirectory,
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
        super().__init__(peer_address, queue_depth, budget if budget is not None else MemoryBudget(
            MAX_CONNECTION_BUFFERS, share=MAX_CONNECTION_BUFFERS))
        self.registry = registry
        self.sessions = sessions
        self.local_address = local_address
        self.tpgt = portal_tpgt
        self.target_params = dict(DEFAULT_TARGET_PARAMS)
        if target_params:
            self.target_params.update(target_params)
        self.cid = 0
        self.logging_out = False
        # CmdSN -> (PDU, its refusal: a Reject reason, _NO_MEMORY or 0; why; the bytes of its
        # data charged to the memory budget), waiting for a gap to fill (``_hold``)
        self._pending: dict[int, tuple[Pdu, int, str, int]] = {}
        # The login phase, until it hands the connection a session (``_enter_full_feature``).
        self.login: Login | None = Login(registry, sessions, self.target_params, peer_address=peer_address,
                                         portal_tpgt=portal_tpgt, queue_depth=queue_depth,
                                         random_bytes=random_bytes)
        self._negotiator: Negotiator | None = None  # the login's, for Text negotiation after it
        self._handlers: dict[int, Callable[..., None]] = {}  # chosen at login by session type
        self.target: TargetEntry | None = None
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

    def complete_tmf(self, itt: int, response: int) -> None:
        exp, mx = self._window()
        self._emit(P.tmf_response(itt, response, self._next_statsn(), exp, mx))

    # ------------------------------------------------------------------ plumbing
    def _who(self) -> str:
        if self.login is not None:
            return self.login.who()
        return f"{self.initiator_name or '?'} at {self.peer_address}"

    def _reject(self, bad: Pdu, reason: int) -> None:
        if not self.full_feature:
            # No Reject during login: a malformed login PDU ends the login (RFC 7143 6.2).
            self._login_step(None, LoginStatus.INITIATOR_ERROR, "protocol error during login")
            return
        exp, mx = self._window()
        self._emit(P.reject(reason, self._next_statsn(), exp, mx), bad.bhs)

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
                self._login_step(None, LoginStatus.INITIATOR_ERROR, f"opcode {pdu.opcode:#x} before login completed")
            else:
                self._login_step(pdu)
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
                    self._hold(cmdsn, pdu, refuse, why)
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
            if item[3]:
                # Its data leaves the wait: a write's moves into the command's own buffer,
                # which ``_on_scsi_cmd`` charges.
                self.budget.release(self.share, item[3])
            s.advance()
            self._run(item[0], item[1], item[2], True)

    def _hold(self, cmdsn: int, pdu: Pdu, refuse: int, why: str) -> None:
        """Keep a PDU that came before its CmdSN turn until the gap fills. Its data is held
        meanwhile, so it is charged to the session's share of the memory budget (released
        when it runs, or when the wait ends: Logout, the connection closing): up to the
        window's worth of whole PDUs per session would otherwise escape the budget. When it
        does not fit, only what answers it in its turn is kept, its header: a SCSI Command
        then gets TASK SET FULL or BUSY, anything else a Reject (out of resources); so does
        one refused in any case (oversized, an opcode the session does not take), whose data
        is never needed."""
        data = pdu.data
        n = len(data)
        if n:
            if refuse or self._handlers.get(pdu.opcode) is None:
                n = 0
            elif not self.budget.charge(self.share, n):
                n = 0
                if pdu.opcode == Opcode.SCSI_CMD:
                    refuse = _NO_MEMORY
                else:
                    refuse = RejectReason.LONG_OPERATION_REJECT
                    why = f"no memory to hold the data of CmdSN {cmdsn} until its turn"
            if not n:
                pdu = Pdu(pdu.bhs, pdu.ahs)
                POOL.give_back(data)  # a large payload's own pooled buffer (others are ignored)
        self._pending[cmdsn] = (pdu, refuse, why, n)

    def _drop_pending(self) -> None:
        """The PDUs waiting for a CmdSN gap are dropped (Logout, the connection closed): their
        data's charges end here."""
        pending = self._pending
        if pending:
            held = 0
            for item in pending.values():
                held += item[3]
            pending.clear()
            if held:
                self.budget.release(self.share, held)

    def _close(self, reason: str) -> None:
        self._drop_pending()
        super()._close(reason)

    def _run(self, pdu: Pdu, refuse: int, why: str, numbered: bool) -> None:
        """Handle a PDU taken in. Every handler but a SCSI Command's is done when it returns:
        a numbered PDU's slot in the window is given back before it answers (so the answer
        already carries the wider MaxCmdSN); a SCSI Command's when it completes, or here,
        when it is rejected before it became a task."""
        op = pdu.opcode
        s = self.session
        early = numbered and (refuse > 0 or op != _OP_SCSI_CMD)
        if early and s is not None:
            s.retire()
        try:
            if refuse:
                if refuse != _NO_MEMORY:
                    raise ProtocolError(why, refuse)
                self._refuse_full(pdu)  # a SCSI Command whose data could not wait (``_hold``)
                return
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
    def _login_step(self, pdu: Pdu | None, refuse: LoginStatus = LoginStatus.SUCCESS, why: str = "") -> None:
        """Give the login phase a Login Request (``pdu``), or have it refuse the login; send
        what it answers, then close (refused) or enter the full feature phase (done)."""
        login = self.login
        if login is None:
            return
        if pdu is not None:
            login.receive(pdu)
        else:
            login.fail(refuse, why)
        for header, data in login.out:
            self._emit(header, data)
        login.out.clear()
        self._events += login.events
        login.events.clear()
        self.stat_sn = login.stat_sn
        if login.failed is not None:
            self._close("login failed")
        elif login.session is not None:
            self._enter_full_feature(login, login.session)

    def _enter_full_feature(self, login: Login, session: Session) -> None:
        """The final Login Response is queued: digests and the negotiated sizes apply from
        the first PDU after it."""
        params = login.params
        assert params is not None
        self.login = None
        self.session = session
        self.params = params
        self.cid = login.cid
        self.initiator_name = login.initiator_name
        self.target = login.target
        self.session_type = login.session_type
        self._negotiator = login.negotiator
        self._ffp = True
        self._handlers = _FFP if self.session_type == "Normal" else _FFP_DISCOVERY
        self.login_deadline = None
        self.hd = params.header_digest
        self.dd = params.data_digest
        self.reader.header_digest = params.header_digest
        self.reader.data_digest = params.data_digest
        self.reader.max_recv_dsl = params.max_recv_dsl
        self.max_xmit = params.max_xmit_dsl
        self._datain_single = min(params.max_xmit_dsl, params.max_burst)
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
        exp, mx = self._window()
        self._emit(P.nop_in(itt, NO_TAG, self._next_statsn(), exp, mx, lun=pdu.lun_raw, dsl=len(data)),
                   data)

    def _send_ping(self) -> None:
        ttt = self._new_ttt()
        self._ping_ttt = ttt
        self._ping_deadline = self.now + self.nop_timeout
        exp, mx = self._window()
        self._emit(P.nop_in(NO_TAG, ttt, self.stat_sn, exp, mx))

    def _on_tmf(self, pdu: Pdu) -> None:
        function = pdu.function
        if function not in TmfFunction.__members__.values():
            self.complete_tmf(pdu.itt, TmfResponse.NOT_SUPPORTED)
        elif function == TmfFunction.TASK_REASSIGN:
            self.complete_tmf(pdu.itt, TmfResponse.REASSIGNMENT_NOT_SUPPORTED)
        else:
            self._events.append(TaskManagement(pdu.itt, function, pdu.lun, pdu.ref_task_tag, pdu.ref_cmdsn))

    def _on_text(self, pdu: Pdu) -> None:
        if pdu.ttt != NO_TAG and pdu.ttt == self._text_ttt and not pdu.data:
            self._send_text_chunk(pdu.itt)  # the initiator asks for the next part
            return
        if len(self._text_in) + len(pdu.data) > MAX_LOGIN_TEXT:
            self._text_in.clear()
            raise ProtocolError("text request too long", RejectReason.PROTOCOL_ERROR)
        self._text_in += pdu.data
        if pdu.cont:  # more of the request follows: ask for it
            exp, mx = self._window()
            self._emit(P.text_response(pdu.itt, self._new_ttt(), self._next_statsn(), exp, mx,
                                       final=False))
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
            negotiator = self._negotiator
            assert negotiator is not None
            out += negotiator.negotiate(rest, stage="ffp", session_type=self.session_type)
            new = negotiator.result()
            self.params = new
            self.max_xmit = new.max_xmit_dsl
            self._datain_single = min(new.max_xmit_dsl, new.max_burst)
        self._text_out = encode_text(out)
        self._send_text_chunk(pdu.itt)

    def _send_text_chunk(self, itt: int) -> None:
        data, self._text_out = self._text_out[: self.max_xmit], self._text_out[self.max_xmit :]
        more = bool(self._text_out)
        self._text_ttt = self._new_ttt() if more else NO_TAG
        exp, mx = self._window()
        self._emit(P.text_response(itt, self._text_ttt, self._next_statsn(), exp, mx, final=not more,
                                   cont=more, dsl=len(data)),
                   data)

    def _send_targets(self, which: str) -> list[tuple[str, str]]:
        reg = self.registry
        if self.session_type == "Normal":
            # In a normal session only the session's own target is reported (RFC 7143 A.?).
            targets: Sequence[TargetEntry | None] = (
                [self.target] if self.target is not None and which in ("", "All", self.target.name) else [])
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
                # the portal group tag of this daemon's portals (a gateway group's member: its number)
                out.append(("TargetAddress", f"{portal.advertised(self.local_address)},{self.tpgt}"))
        return out

    def _on_logout(self, pdu: Pdu) -> None:
        reason = pdu.function
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
        self._drop_pending()
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
        exp, mx = self._window()
        self._emit(P.logout_response(self._logout_itt, response, self._next_statsn(), exp, mx, t2w, t2r))

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


__all__ = ["Connection", "DEFAULT_TARGET_PARAMS", "IscsiTask", "MAX_CONNECTION_BUFFERS", "MAX_WRITE_BUFFER"]
