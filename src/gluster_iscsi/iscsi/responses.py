"""The outgoing side of a connection: the send queue, StatSN and the CmdSN window it carries,
and the encoding of a command's result as Data-In and SCSI Response PDUs (RFC 7143 11.4, 11.7).

:class:`Responder` is the base of :class:`~gluster_iscsi.iscsi.connection.Connection` (through
:class:`~gluster_iscsi.iscsi.transfer.Transfer`); it is compiled (``DATA_PATH_MODULES``):
``_send_result`` runs for every command.
"""

from __future__ import annotations

import logging
from typing import Any

from ..buffers import Buffer
from ..logs import PROBLEMS
from ..scsi.task import ScsiResult, Status
from . import pdu as P
from .events import CloseConnection
from .login import LOGIN_DSL
from .params import SessionParams
from .session import Session
from .tasks import IscsiTask

# The connection's logger: what a peer did wrong is logged as the connection's, wherever found.
log = logging.getLogger("gluster_iscsi.iscsi.connection")


class Responder:
    """What a connection sends, and how: PDUs queued for :meth:`data_to_send`."""

    def __init__(self, peer_address: str) -> None:
        self.peer_address = peer_address
        self.initiator_name = ""
        self._out: list[Buffer] = []
        self._events: list[Any] = []
        self.session: Session | None = None
        self.params: SessionParams | None = None
        self.stat_sn = 0
        self.closed = False
        self._next_ttt = 1
        self.hd = False
        self.dd = False
        self.max_xmit = LOGIN_DSL
        # The largest Data-In that can go out alone, status and all: one PDU (the initiator's
        # MaxRecvDataSegmentLength) and one sequence (MaxBurstLength, RFC 7143 13.13).
        self._datain_single = LOGIN_DSL

    def data_to_send(self) -> list[Buffer]:
        out, self._out = self._out, []
        return out

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

    def _window(self) -> tuple[int, int]:
        """ExpCmdSN and MaxCmdSN as the session has them now (0, 0 before it exists)."""
        s = self.session
        if s is None:
            return 0, 0
        return s.exp_cmdsn, s.max_cmdsn

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (ttt + 1) % 0xFFFFFFFF or 1
        return ttt

    def _close(self, reason: str) -> None:
        self.closed = True
        self._events.append(CloseConnection(reason))

    def _who(self) -> str:
        return f"{self.initiator_name or '?'} at {self.peer_address}"

    def _log_bad(self, message: str, kind: str = "bad PDU") -> None:
        # Escaped (names are the peer's) and rate-limited per kind and peer (``logs.py``).
        PROBLEMS.report(log, logging.WARNING, "iSCSI " + kind, self.peer_address,
                        "iSCSI %s: %s", self._who(), message,
                        fields={"initiator": self.initiator_name or None,
                                "address": self.peer_address, "reason": message})

    # ------------------------------------------------------------------ response encoding
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
                P.data_in(it.itt, it.lun_raw, edtl, sn, s.exp_cmdsn if s else 0, s.max_cmdsn if s else 0),
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
            self._emit(P.scsi_response(it.itt, sn, s.exp_cmdsn if s else 0, s.max_cmdsn if s else 0, 0,
                                       it.r2tsn))
            return
        residual_flags = 0
        residual = 0
        exp, mx = self._window()
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
                    P.data_in(itt, lun_raw, n, statsn, exp, mx, datasn, offset, flags,
                              status if flags & 1 else 0, residual if flags & 1 else 0),
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
            P.scsi_response(it.itt, self._next_statsn(), exp, mx, status,
                            it.datain_pdus if it.read else it.r2tsn, residual_flags, residual,
                            len(payload) if payload else 0),
            payload,
        )


__all__ = ["Responder"]
