"""iSCSI PDU codec (RFC 7143 section 11): framing, the Basic Header Segment, digests.

Incoming PDUs are kept as their raw 48-byte BHS plus AHS and data; fields are read through
precompiled ``struct`` layouts on demand, so no per-field object is built for a PDU whose
fields are never looked at. Outgoing PDUs are built by small functions returning the header
bytes; :func:`frame` adds digests and padding and returns a list of buffers for a
scatter/gather send, so payload data is never copied into a header buffer.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Final

from crc32c import crc32c

from ..buffers import POOL, Buffer
from .errors import ProtocolError, RejectReason

BHS_LEN: Final = 48
MAX_DSL = (1 << 24) - 1
NO_TAG: Final = 0xFFFFFFFF


class Opcode(enum.IntEnum):
    """PDU opcodes (RFC 7143 11.1.1)."""

    NOP_OUT = 0x00
    SCSI_CMD = 0x01
    TMF_REQ = 0x02
    LOGIN_REQ = 0x03
    TEXT_REQ = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQ = 0x06
    SNACK = 0x10
    NOP_IN = 0x20
    SCSI_RSP = 0x21
    TMF_RSP = 0x22
    LOGIN_RSP = 0x23
    TEXT_RSP = 0x24
    DATA_IN = 0x25
    LOGOUT_RSP = 0x26
    R2T = 0x31
    ASYNC_MSG = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset(
    {Opcode.NOP_OUT, Opcode.SCSI_CMD, Opcode.TMF_REQ, Opcode.LOGIN_REQ, Opcode.TEXT_REQ,
     Opcode.DATA_OUT, Opcode.LOGOUT_REQ, Opcode.SNACK}
)


class TmfFunction(enum.IntEnum):
    """Task management functions (RFC 7143 11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LUN_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(enum.IntEnum):
    """Task management responses (RFC 7143 11.6.1)."""

    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class LogoutReason(enum.IntEnum):
    """Logout reason codes (RFC 7143 11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_FOR_RECOVERY = 2


class LogoutResponse(enum.IntEnum):
    """Logout response codes (RFC 7143 11.15.1)."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


# opcode, flags, b2, b3, (TotalAHSLength << 24 | DataSegmentLength), LUN, ITT, then 7 words.
_BHS = struct.Struct(">BBBBI8sIIIIIIII")
_U32 = struct.Struct(">I")
#: SCSI Command (11.3): flags, LUN, ITT, EDTL, CmdSN, read in one go on the per-command path.
SCSI_CMD_FIELDS = struct.Struct(">xB6x8sIII")
#: Fields read from a raw BHS before its PDU is made (``PduReader.place``): a SCSI Command's
#: EDTL and CmdSN, a Data-Out's ITT and Buffer Offset.
SCSI_CMD_TRANSFER = struct.Struct(">20xII20x")
DATA_OUT_PLACE = struct.Struct(">16xI20xI4x")
_U16 = struct.Struct(">H")
_ZERO_LUN = bytes(8)
PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # to a multiple of 4 bytes


def encode_lun(lun: int) -> bytes:
    """SAM LUN encoding: peripheral (< 256) or flat space (< 16384) addressing."""
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    if lun < 0x4000:
        return bytes((0x40 | (lun >> 8), lun & 0xFF)) + bytes(6)
    raise ValueError(f"LUN {lun} out of range")


def decode_lun(raw: bytes) -> int:
    """The LUN number from an 8-byte SAM LUN field (peripheral or flat addressing)."""
    method = raw[0] >> 6
    if method in (0, 1):
        return ((raw[0] & 0x3F) << 8) | raw[1]
    # Other methods (logical unit / extended addressing) are not ours to serve: keep them
    # distinct so they are reported as unsupported LUNs rather than aliasing LUN 0.
    return 0x10000 | int.from_bytes(raw[:2], "big")


class Pdu:
    """A received PDU: raw BHS, AHS and data segment, with lazy field accessors."""

    __slots__ = ("bhs", "ahs", "data", "placed")

    def __init__(self, bhs: bytes, ahs: bytes = b"", data: bytes | memoryview = b"") -> None:
        self.bhs = bhs
        self.ahs = ahs
        #: bytes, or for a large SCSI Command or Data-Out payload a memoryview of its buffer
        self.data = data
        #: The data segment was received where the reader's ``place`` said (already in place).
        self.placed = False

    # -- fields common to every PDU --
    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    @property
    def immediate(self) -> bool:
        return bool(self.bhs[0] & 0x40)

    @property
    def flags(self) -> int:
        return self.bhs[1]

    @property
    def final(self) -> bool:
        return bool(self.bhs[1] & 0x80)

    @property
    def dsl(self) -> int:
        return int.from_bytes(self.bhs[5:8], "big")

    @property
    def lun_raw(self) -> bytes:
        return self.bhs[8:16]

    @property
    def lun(self) -> int:
        return decode_lun(self.bhs[8:16])

    @property
    def itt(self) -> int:
        return _U32.unpack_from(self.bhs, 16)[0]

    # -- names for the words, by opcode (RFC 7143 11.x) --
    @property
    def ttt(self) -> int:  # NOP-Out, Data-Out, Text, SNACK
        return _U32.unpack_from(self.bhs, 20)[0]

    @property
    def edtl(self) -> int:  # SCSI Command
        return _U32.unpack_from(self.bhs, 20)[0]

    @property
    def cmdsn(self) -> int:  # every request but Data-Out and SNACK
        b = self.bhs  # (read on every PDU: compiled, four byte reads beat a struct call)
        return b[24] << 24 | b[25] << 16 | b[26] << 8 | b[27]

    @property
    def expstatsn(self) -> int:
        return _U32.unpack_from(self.bhs, 28)[0]

    @property
    def cdb(self) -> bytes:
        if self.ahs:
            return self.bhs[32:48] + extended_cdb(self.ahs)
        return self.bhs[32:48]

    @property
    def datasn(self) -> int:  # Data-Out
        return _U32.unpack_from(self.bhs, 36)[0]

    @property
    def buffer_offset(self) -> int:  # Data-Out
        return _U32.unpack_from(self.bhs, 40)[0]

    @property
    def ref_task_tag(self) -> int:  # TMF: the task to abort
        return _U32.unpack_from(self.bhs, 20)[0]

    @property
    def ref_cmdsn(self) -> int:  # TMF
        return _U32.unpack_from(self.bhs, 32)[0]

    @property
    def function(self) -> int:  # TMF function, Logout reason code
        return self.bhs[1] & 0x7F

    @property
    def cont(self) -> bool:  # Login, Text: C, more of the request follows
        return bool(self.bhs[1] & 0x40)

    @property
    def csg(self) -> int:  # Login: current stage
        return (self.bhs[1] >> 2) & 3

    @property
    def nsg(self) -> int:  # Login: next stage (with T)
        return self.bhs[1] & 3

    @property
    def version_max(self) -> int:  # Login
        return self.bhs[2]

    @property
    def version_min(self) -> int:  # Login
        return self.bhs[3]

    @property
    def cid(self) -> int:  # Login, Logout
        return _U16.unpack_from(self.bhs, 20)[0]

    @property
    def isid(self) -> bytes:  # Login
        return self.bhs[8:14]

    @property
    def tsih(self) -> int:  # Login
        return _U16.unpack_from(self.bhs, 14)[0]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        try:
            name = Opcode(self.opcode).name
        except ValueError:
            name = hex(self.opcode)
        return f"<Pdu {name} itt={self.itt:#x} dsl={self.dsl}>"


def extended_cdb(ahs: bytes) -> bytes:
    """The extra CDB bytes from an Extended CDB AHS (type 1, RFC 7143 11.2.2.3)."""
    pos = 0
    while pos + 3 <= len(ahs):
        length = _U16.unpack_from(ahs, pos)[0]
        kind = ahs[pos + 2]
        if kind == 1:
            return bytes(ahs[pos + 4 : pos + 3 + length])
        pos += (3 + length + 3) & ~3
    return b""


def bhs(
    opcode: int,
    flags: int = 0,
    b2: int = 0,
    b3: int = 0,
    dsl: int = 0,
    lun: bytes = _ZERO_LUN,
    itt: int = NO_TAG,
    w20: int = 0,
    w24: int = 0,
    w28: int = 0,
    w32: int = 0,
    w36: int = 0,
    w40: int = 0,
    w44: int = 0,
) -> bytes:
    """Pack a 48-byte BHS by offset (tests, and PDUs without a builder of their own below)."""
    return _BHS.pack(opcode, flags, b2, b3, dsl, lun, itt, w20, w24, w28, w32, w36, w40, w44)


# Opcodes as Final ints: compiled, the builders pack constants, not enum look-ups.
_OP_DATA_IN: Final = 0x25
_OP_SCSI_RSP: Final = 0x21
_OP_R2T: Final = 0x31
_OP_NOP_IN: Final = 0x20
_OP_TMF_RSP: Final = 0x22
_OP_LOGOUT_RSP: Final = 0x26
_OP_TEXT_RSP: Final = 0x24
_OP_LOGIN_RSP: Final = 0x23
_OP_REJECT: Final = 0x3F


# -- target PDUs, one builder each (RFC 7143 11.x): named fields, one precompiled layout --
# Every target PDU but Data-In (without status) and R2T carries StatSN, and all of them
# ExpCmdSN/MaxCmdSN: the window as the session has it when the PDU is built. Reserved
# fields are pad bytes of the layout, so no builder takes what the wire must not vary.

# Data-In (11.7): flags, status, DSL, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, DataSN,
# Buffer Offset, Residual Count.
_DATA_IN = struct.Struct(">BBxBI8sIIIIIIII")
# SCSI Response (11.4): flags, response, status, DSL, (LUN reserved), ITT, SNACK Tag, StatSN,
# ExpCmdSN, MaxCmdSN, ExpDataSN, Bidirectional Read Residual, Residual Count.
_SCSI_RSP = struct.Struct(">BBBBI8xIIIIIIII")
# R2T (11.8): LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, R2TSN, Buffer Offset, Desired Length.
_R2T = struct.Struct(">BB2xI8sIIIIIIII")
# NOP-In (11.19): DSL, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN.
_NOP_IN = struct.Struct(">BB2xI8sIIIII12x")
# TMF Response (11.6), Logout Response (11.15): response, ITT, StatSN, ExpCmdSN, MaxCmdSN
# (Logout: and Time2Wait, Time2Retain).
_TMF_RSP = struct.Struct(">BBBx12xI4xIII12x")
_LOGOUT_RSP = struct.Struct(">BBBx12xI4xIII4xHH4x")
# Text Response (11.11): flags, DSL, (LUN), ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN.
_TEXT_RSP = struct.Struct(">BB2xI8xIIIII12x")
# Login Response (11.13): flags, DSL, ISID, TSIH, ITT, StatSN, ExpCmdSN, MaxCmdSN, Status-Class,
# Status-Detail (versions 0: the only one there is).
_LOGIN_RSP = struct.Struct(">BB2xI6sHI4xIIIBB10x")
# Reject (11.17): reason, DSL (the rejected BHS), ITT 0xffffffff, StatSN, ExpCmdSN, MaxCmdSN.
_REJECT = struct.Struct(">BBBxI8xI4xIII12x")


def data_in(itt: int, lun: bytes, dsl: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int,
            data_sn: int = 0, offset: int = 0, flags: int = 0x81, status: int = 0,
            residual: int = 0) -> bytes:
    """SCSI Data-In; ``flags`` F (0x80), A, O/U residual (0x04/0x02), S (0x01: carries
    ``status``, ``stat_sn`` and ``residual``; without S those are sent as 0 by the caller)."""
    return _DATA_IN.pack(_OP_DATA_IN, flags, status, dsl, lun, itt, NO_TAG, stat_sn,
                         exp_cmd_sn, max_cmd_sn, data_sn, offset, residual)


def scsi_response(itt: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int, status: int = 0,
                  exp_data_sn: int = 0, residual_flags: int = 0, residual: int = 0,
                  dsl: int = 0) -> bytes:
    """SCSI Response (response 0x00: command completed at target); ``residual_flags`` O/U."""
    return _SCSI_RSP.pack(_OP_SCSI_RSP, 0x80 | residual_flags, 0, status, dsl, itt, 0,
                          stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn, 0, residual)


def r2t(itt: int, lun: bytes, ttt: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int,
        r2t_sn: int, offset: int, length: int) -> bytes:
    """Ready To Transfer ``length`` bytes at ``offset`` (StatSN: the next one, not taken)."""
    return _R2T.pack(_OP_R2T, 0x80, 0, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn,
                     offset, length)


def nop_in(itt: int, ttt: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int,
           lun: bytes = _ZERO_LUN, dsl: int = 0) -> bytes:
    """NOP-In: an answer to a NOP-Out (``ttt`` 0xffffffff) or our ping (``itt`` 0xffffffff)."""
    return _NOP_IN.pack(_OP_NOP_IN, 0x80, dsl, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)


def tmf_response(itt: int, response: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int) -> bytes:
    return _TMF_RSP.pack(_OP_TMF_RSP, 0x80, response, itt, stat_sn, exp_cmd_sn, max_cmd_sn)


def logout_response(itt: int, response: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int,
                    time2wait: int, time2retain: int) -> bytes:
    return _LOGOUT_RSP.pack(_OP_LOGOUT_RSP, 0x80, response, itt, stat_sn, exp_cmd_sn,
                            max_cmd_sn, time2wait, time2retain)


def text_response(itt: int, ttt: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int,
                  final: bool = True, cont: bool = False, dsl: int = 0) -> bytes:
    flags = (0x80 if final else 0) | (0x40 if cont else 0)
    return _TEXT_RSP.pack(_OP_TEXT_RSP, flags, dsl, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)


def login_response(itt: int, isid: bytes, tsih: int, stat_sn: int, exp_cmd_sn: int,
                   max_cmd_sn: int, flags: int = 0, status: int = 0, dsl: int = 0) -> bytes:
    """Login Response; ``flags`` T/C/CSG/NSG, ``status`` class << 8 | detail (LoginStatus)."""
    return _LOGIN_RSP.pack(_OP_LOGIN_RSP, flags, dsl, isid, tsih, itt, stat_sn, exp_cmd_sn,
                           max_cmd_sn, status >> 8, status & 0xFF)


def reject(reason: int, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int) -> bytes:
    """Reject; its data segment is the rejected PDU's BHS."""
    return _REJECT.pack(_OP_REJECT, 0x80, reason, BHS_LEN, NO_TAG, stat_sn, exp_cmd_sn,
                        max_cmd_sn)


def frame(header: bytes, data: Buffer | None, header_digest: bool, data_digest: bool) -> list[Buffer]:
    """Buffers for one PDU on the wire: header [+digest], data, pad [+digest]."""
    out: list[Buffer] = [header]
    if header_digest:
        out.append(_U32.pack(crc32c(header)))
    if data is not None:
        n = len(memoryview(data))
        if n:
            out.append(data)
            pad = PAD[n & 3]
            if pad:
                out.append(pad)
            if data_digest:
                c = crc32c(data)
                if pad:
                    c = crc32c(pad, c)
                out.append(_U32.pack(c))
    return out


class DigestError(ProtocolError):
    """A header or data digest did not match. ``pdu`` is set for data digest errors."""

    def __init__(self, message: str, pdu: Pdu | None = None, header: bool = False) -> None:
        super().__init__(message, reason=RejectReason.DATA_DIGEST_ERROR)
        self.pdu = pdu
        self.header = header


class OversizedPdu(ProtocolError):
    """A data segment longer than we declared we can receive; its bytes are skipped."""

    def __init__(self, message: str, pdu: Pdu) -> None:
        super().__init__(message, reason=RejectReason.PROTOCOL_ERROR)
        self.pdu = pdu


#: Data segments at least this large of SCSI Command and Data-Out PDUs are received straight
#: into a buffer of their own (or the task's data-out buffer), never through the staging area.
DIRECT_MIN = 16 << 10
_DIRECT_OPCODES = (0x01, 0x05)  # SCSI Command (immediate data), SCSI Data-Out
_STAGE = 64 << 10  # staging area: what one receive may take of a stream of small PDUs
_MIN_WINDOW = 4096

#: ``place(bhs) -> memoryview | None``: where the data segment of a large SCSI Command or
#: Data-Out PDU should land (exactly ``dsl`` bytes), or None for a buffer of its own.
Placement = Callable[[bytes], "memoryview | None"]


class PduReader:
    """Splits a byte stream into PDUs. Lengths are checked before data is buffered.

    Bytes arrive either by :meth:`feed` or, without a copy, by :meth:`get_buffer` (where the
    next bytes should be received) and :meth:`buffer_updated` (how many were). Headers and small
    PDUs go through a staging area; a large data segment of a SCSI Command or Data-Out PDU is
    received straight into its own buffer (from ``place``, say the command's data-out buffer at
    the PDU's offset, or a pooled one), so its payload is copied once, by the kernel. After such
    a PDU the reader asks for the next header alone, so the next payload is not drawn into the
    staging area either.

    :meth:`next_pdu` returns one complete PDU or None. A data segment larger than
    ``max_recv_dsl`` raises :class:`OversizedPdu` once its header is seen; its payload is then
    skipped without being stored, and the stream stays in sync.
    """

    __slots__ = ("_buf", "_view", "_pos", "_end", "_skip", "header_digest", "data_digest",
                 "max_recv_dsl", "place", "_pdu", "_dst", "_got", "_trailer", "_headers_alone")

    def __init__(self, max_recv_dsl: int = 8192, place: Placement | None = None) -> None:
        self._buf = bytearray(_STAGE)
        # One view of the staging area for the reader's life (a new one with a new area): a
        # PDU's fields are copied out of it without a view made and released per PDU. (The
        # area is never resized, which its view would forbid: ``_compact`` moves bytes within
        # it, ``get_buffer`` makes a new one.)
        self._view = memoryview(self._buf)
        self._pos = 0  # next unread byte of the staging area
        self._end = 0  # end of the received bytes in it
        self._skip = 0  # bytes of a refused PDU still to discard
        self.header_digest = False
        self.data_digest = False
        self.max_recv_dsl = max_recv_dsl
        self.place = place
        self._pdu: Pdu | None = None  # a PDU whose data segment is being received into _dst
        self._dst: memoryview | None = None
        self._got = 0  # bytes of _dst received
        self._trailer = 0  # pad + data digest after _dst, received through the staging area
        self._headers_alone = False  # the last PDU was direct: read the next header by itself

    @property
    def buffered(self) -> int:
        return self._end - self._pos + (self._got if self._dst is not None else 0)

    def awaiting(self) -> int:
        """Bytes still to come of a data segment being received straight into its buffer."""
        dst = self._dst
        return len(dst) - self._got if dst is not None else 0

    @property
    def large_stream(self) -> bool:
        """Large payloads are coming: each receive takes exactly one header or one payload."""
        return self._headers_alone or self._dst is not None

    def receiving_into(self, obj: object) -> bool:
        """True while a data segment is being received into a view of ``obj``: the buffer
        must not be reused until that PDU is complete."""
        dst = self._dst
        return dst is not None and dst.obj is obj

    def feed(self, data: Buffer) -> None:
        """Take received bytes (copying them); then call :meth:`next_pdu` until it returns
        None. A large payload goes into its own buffer only once :meth:`next_pdu` has seen
        its header: callers that want that feed in steps (see ``Connection.receive_data``)."""
        mv = memoryview(data)  # type: ignore[arg-type]
        while len(mv):
            window = self.get_buffer(len(mv))
            n = min(len(window), len(mv))
            window[:n] = mv[:n]
            del window
            self.buffer_updated(n)
            mv = mv[n:]

    def get_buffer(self, hint: int = -1) -> memoryview:
        """Where the next received bytes should go (never empty); ``hint``: how many are
        expected, for the size of a staging window."""
        dst = self._dst
        if dst is not None and self._got < len(dst):
            return dst[self._got :]
        buf = self._buf
        if self._skip:  # scratch space for bytes that are discarded
            if len(buf) - self._end < _MIN_WINDOW:
                self._compact()
            end = self._end
            return memoryview(buf)[end : end + min(self._skip, len(buf) - end)]
        pos, end = self._pos, self._end
        if pos == end:
            self._pos = self._end = pos = end = 0
        avail = end - pos
        if dst is not None:
            want = self._trailer - avail  # the pad and digest after a direct data segment
        elif self._headers_alone:
            want = BHS_LEN + (4 if self.header_digest else 0) - avail
            if avail >= BHS_LEN:
                want += buf[pos + 4] * 4  # and its AHS
        else:
            want = 0
        exact = want > 0
        if not exact:
            want = max(hint, _MIN_WINDOW, self._missing())
        if len(buf) - end < want:
            self._compact()
            end = self._end
            if len(buf) - end < want:
                # A new area, not a resize: views handed out earlier may still be alive.
                grown = bytearray(max(end + want, 2 * len(buf)))
                grown[:end] = buf[:end]
                self._buf = buf = grown
                self._view = memoryview(grown)
        view = self._view
        return view[end : end + want] if exact else view[end:]

    def buffer_updated(self, n: int) -> None:
        """``n`` bytes were received into the last :meth:`get_buffer` window."""
        dst = self._dst
        if dst is not None and self._got < len(dst):
            self._got += n
        elif self._skip:
            self._skip -= n  # the window offered was scratch space of at most _skip bytes
        else:
            self._end += n

    def _missing(self) -> int:
        """Bytes still missing of the PDU whose header is in the staging area (0: unknown)."""
        buf, pos = self._buf, self._pos
        avail = self._end - pos
        if avail < BHS_LEN:
            return 0
        dsl = int.from_bytes(buf[pos + 5 : pos + 8], "big")
        if dsl > self.max_recv_dsl:
            return 0
        total = (BHS_LEN + buf[pos + 4] * 4 + (4 if self.header_digest else 0) + ((dsl + 3) & ~3)
                 + (4 if self.data_digest and dsl else 0))
        return max(total - avail, 0)

    def _compact(self) -> None:
        pos, end = self._pos, self._end
        if pos:
            buf = self._buf
            buf[: end - pos] = buf[pos:end]
            self._pos, self._end = 0, end - pos

    def next_pdu(self) -> Pdu | None:
        if self._dst is not None:
            return self._finish_direct()
        buf = self._buf
        pos = self._pos
        avail = self._end - pos
        if avail < BHS_LEN:
            return None
        ahs_len = buf[pos + 4] * 4
        dsl = buf[pos + 5] << 16 | buf[pos + 6] << 8 | buf[pos + 7]  # (no slice, no call)
        hdr_len = BHS_LEN + ahs_len + (4 if self.header_digest else 0)
        if avail < hdr_len:
            return None
        if self.header_digest:
            want = _U32.unpack_from(buf, pos + BHS_LEN + ahs_len)[0]
            if crc32c(buf[pos : pos + BHS_LEN + ahs_len]) != want:
                # The lengths cannot be trusted: the connection has to go (RFC 7143 7.8).
                raise DigestError("header digest mismatch", header=True)
        padded = (dsl + 3) & ~3
        total = hdr_len + padded + (4 if self.data_digest and dsl else 0)
        if dsl > self.max_recv_dsl:
            pdu = Pdu(bytes(buf[pos : pos + BHS_LEN]), bytes(buf[pos + BHS_LEN : pos + BHS_LEN + ahs_len]))
            have = min(avail, total)
            self._pos = pos + have
            self._skip = total - have
            raise OversizedPdu(
                f"data segment of {dsl} bytes exceeds MaxRecvDataSegmentLength {self.max_recv_dsl}", pdu
            )
        start = pos + BHS_LEN
        if avail < total:
            if dsl < DIRECT_MIN or buf[pos] & 0x3F not in _DIRECT_OPCODES:
                return None
            # A large payload: receive it into its own buffer, with what is here already.
            with memoryview(buf) as mv:
                pdu = Pdu(bytes(mv[pos:start]), bytes(mv[start : start + ahs_len]) if ahs_len else b"")
                dst = self.place(pdu.bhs) if self.place is not None else None
                placed = dst is not None
                if dst is None:
                    dst = POOL.borrow(dsl)
                here = min(avail - hdr_len, dsl)
                dst[:here] = mv[pos + hdr_len : pos + hdr_len + here]
            pdu.data = dst
            pdu.placed = placed
            self._pdu, self._dst, self._got = pdu, dst, here
            self._trailer = total - hdr_len - dsl
            self._pos = pos + hdr_len + here
            return self._finish_direct()
        self._headers_alone = False
        mv = self._view  # one copy per field (a bytearray slice would add one)
        pdu = Pdu(
            bytes(mv[pos:start]),
            bytes(mv[start : start + ahs_len]) if ahs_len else b"",
            bytes(mv[pos + hdr_len : pos + hdr_len + dsl]) if dsl else b"",
        )
        self._pos = pos + total
        if self.data_digest and dsl:
            want = _U32.unpack_from(buf, pos + hdr_len + padded)[0]
            if crc32c(buf[pos + hdr_len : pos + hdr_len + padded]) != want:
                raise DigestError("data digest mismatch", pdu=pdu)
        return pdu

    def _finish_direct(self) -> Pdu | None:
        dst, pdu = self._dst, self._pdu
        assert dst is not None and pdu is not None
        if self._got < len(dst):
            return None
        trailer = self._trailer
        pos = self._pos
        if self._end - pos < trailer:
            return None
        self._pdu = self._dst = None
        self._pos = pos + trailer
        self._headers_alone = True
        if self.data_digest:
            buf = self._buf
            pad = trailer - 4
            want = _U32.unpack_from(buf, pos + pad)[0]
            if crc32c(buf[pos : pos + pad], crc32c(dst)) != want:
                raise DigestError("data digest mismatch", pdu=pdu)
        return pdu
