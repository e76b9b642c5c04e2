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

from crc32c import crc32c

from ..backstore.base import Buffer
from .errors import ProtocolError, RejectReason

BHS_LEN = 48
MAX_DSL = (1 << 24) - 1
NO_TAG = 0xFFFFFFFF


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

    __slots__ = ("bhs", "ahs", "data")

    def __init__(self, bhs: bytes, ahs: bytes = b"", data: bytes = b"") -> None:
        self.bhs = bhs
        self.ahs = ahs
        self.data = data

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

    def word(self, offset: int) -> int:
        return _U32.unpack_from(self.bhs, offset)[0]

    # -- names for the words, by opcode (RFC 7143 11.x) --
    @property
    def ttt(self) -> int:  # NOP-Out, Data-Out, Text, SNACK
        return _U32.unpack_from(self.bhs, 20)[0]

    @property
    def edtl(self) -> int:  # SCSI Command
        return _U32.unpack_from(self.bhs, 20)[0]

    @property
    def cmdsn(self) -> int:  # every request but Data-Out and SNACK
        return _U32.unpack_from(self.bhs, 24)[0]

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
    """Pack a 48-byte BHS. ``dsl`` is the data segment length (no AHS is ever sent)."""
    return _BHS.pack(opcode, flags, b2, b3, dsl, lun, itt, w20, w24, w28, w32, w36, w40, w44)


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


class PduReader:
    """Splits a byte stream into PDUs. Lengths are checked before data is buffered.

    ``feed`` appends received bytes; ``next_pdu`` returns one complete PDU or None. A data
    segment larger than ``max_recv_dsl`` raises :class:`OversizedPdu` once its header is seen;
    its payload is then skipped without being stored, and the stream stays in sync.
    """

    __slots__ = ("_buf", "_pos", "_skip", "header_digest", "data_digest", "max_recv_dsl")

    def __init__(self, max_recv_dsl: int = 8192) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0
        self.header_digest = False
        self.data_digest = False
        self.max_recv_dsl = max_recv_dsl

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: Buffer) -> None:
        if self._skip:
            mv = memoryview(data)
            n = min(self._skip, len(mv))
            self._skip -= n
            if n == len(mv):
                return
            data = mv[n:]
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_pdu(self) -> Pdu | None:
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < BHS_LEN:
            return None
        ahs_len = buf[pos + 4] * 4
        dsl = int.from_bytes(buf[pos + 5 : pos + 8], "big")
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
        if avail < total:
            return None
        start = pos + BHS_LEN
        with memoryview(buf) as mv:  # one copy per field (a bytearray slice would add one)
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
