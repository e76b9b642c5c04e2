"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18) between LUs of one target.

Copy targets (CSCDs) are identification descriptors (E4h) naming a logical unit by the NAA
designator of its VPD page 83h; segments are block -> block (02h). Data moves through the
runner as ordinary read and write requests naming their LU (``lu=``), so the source and
the destination may be different stores; nothing here touches a store.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .context import ReservationConflict, data_in
from .io import Read, Write
from .reservations import Access
from .sense import Asc, CheckCondition, SenseKey, invalid_cdb, invalid_param
from .task import ScsiResult

if TYPE_CHECKING:
    from .context import Ctx
    from .lu import LogicalUnit
    from .task import Execution

MAX_CSCD_DESCRIPTORS = 8
MAX_SEGMENT_DESCRIPTORS = 8
MAX_DESCRIPTOR_LIST_LENGTH = 1024
MAX_SEGMENT_BYTES = 32 << 20
CHUNK_BYTES = 1 << 20
IDENTIFICATION_CSCD = 0xE4
BLOCK_TO_BLOCK = 0x02
HEADER = 16
CSCD_LENGTH = 32
SEGMENT_LENGTH = 28


def _length_error() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)


def _copy_aborted(asc: Asc) -> CheckCondition:
    return CheckCondition(SenseKey.COPY_ABORTED, asc)


@dataclass(slots=True)
class CopyStatus:
    """Outcome of one EXTENDED COPY, kept for RECEIVE COPY STATUS (per initiator, list id)."""

    status: int  # 1 completed without errors, 2 completed with errors
    segments: int
    bytes_copied: int


def _results(ctx: Ctx) -> dict[tuple[str, int], CopyStatus]:
    return ctx.lu.copy_results


def _resolve_cscd(ctx: Ctx, desc: memoryview, index: int) -> LogicalUnit:
    base = HEADER + index * CSCD_LENGTH
    if desc[0] != IDENTIFICATION_CSCD:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE)
    # LU ID TYPE (byte 1 bits 7-6) is not looked at: an identification descriptor names its
    # LU by the designator (libiscsi 1.19's validate_tgt_descr expects a reserved value to
    # be accepted).
    if desc[1] & 0x20:  # NUL: no LU to copy to/from
        raise _copy_aborted(Asc.COPY_TARGET_DEVICE_NOT_REACHABLE)
    if desc[1] & 0x1F:  # only direct-access block devices
        raise invalid_param(base + 1)
    designator_type = desc[5] & 0x0F
    association = (desc[5] >> 4) & 0x03
    length = desc[7]
    if designator_type != 0x3 or association != 0 or length != 8:
        raise _copy_aborted(Asc.COPY_TARGET_DEVICE_NOT_REACHABLE)
    lu = ctx.server.find_by_naa(bytes(desc[8 : 8 + 8]))
    if lu is None:
        raise _copy_aborted(Asc.COPY_TARGET_DEVICE_NOT_REACHABLE)
    block_length = int.from_bytes(desc[29:32], "big")
    if block_length != lu.block_size:
        raise invalid_param(base + 29)
    return lu


def extended_copy(ctx: Ctx) -> Execution:
    cdb = ctx.cdb
    length = int.from_bytes(cdb[10:14], "big")
    if length == 0:
        return ScsiResult()
    if length < HEADER:
        raise _length_error()
    params = ctx.require_parameter_list(length)
    list_id = params[0]
    # LIST ID USAGE: 00b hold results for RECEIVE COPY STATUS, 10b discard them,
    # 11b no list identifier, 01b reserved.
    usage = (params[1] >> 3) & 0x03
    hold = usage == 0x00
    if usage == 0x01:
        raise invalid_param(1, 4)
    cscd_len = int.from_bytes(params[2:4], "big")
    seg_len = int.from_bytes(params[8:12], "big")
    inline_len = int.from_bytes(params[12:16], "big")
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise _length_error()
    if HEADER + cscd_len + seg_len + inline_len > length:
        raise _length_error()
    if inline_len:
        raise invalid_param(12)
    if cscd_len % CSCD_LENGTH:
        raise invalid_param(2)
    n_cscd = cscd_len // CSCD_LENGTH
    if n_cscd > MAX_CSCD_DESCRIPTORS:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.TOO_MANY_TARGET_DESCRIPTORS)
    # Count segment descriptors by walking them (their lengths are self-described).
    segments: list[tuple[int, memoryview]] = []
    pos = HEADER + cscd_len
    end = pos + seg_len
    while pos < end:
        if pos + 4 > end:
            raise _length_error()
        dlen = int.from_bytes(params[pos + 2 : pos + 4], "big") + 4
        if pos + dlen > end:
            raise _length_error()
        segments.append((pos, params[pos : pos + dlen]))
        pos += dlen
    if len(segments) > MAX_SEGMENT_DESCRIPTORS:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.TOO_MANY_SEGMENT_DESCRIPTORS)
    for pos, seg in segments:
        if seg[0] != BLOCK_TO_BLOCK:
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST, Asc.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE
            )
        if len(seg) != SEGMENT_LENGTH:
            raise invalid_param(pos + 2)
    lus = [
        _resolve_cscd(ctx, params[HEADER + i * CSCD_LENGTH : HEADER + (i + 1) * CSCD_LENGTH], i)
        for i in range(n_cscd)
    ]
    # Validate every segment before moving a byte.
    plan: list[tuple[LogicalUnit, int, LogicalUnit, int, int]] = []
    for pos, seg in segments:
        src_i, dst_i = struct.unpack(">HH", seg[4:8])
        if src_i >= n_cscd or dst_i >= n_cscd:
            raise _copy_aborted(Asc.UNREACHABLE_COPY_TARGET)  # index names no CSCD
        blocks = int.from_bytes(seg[10:12], "big")
        src_lba = int.from_bytes(seg[12:20], "big")
        dst_lba = int.from_bytes(seg[20:28], "big")
        src, dst = lus[src_i], lus[dst_i]
        if blocks * src.block_size > MAX_SEGMENT_BYTES:
            raise invalid_param(pos + 10)
        for lu, lba in ((src, src_lba), (dst, dst_lba)):
            if lba + blocks > lu.block_count:
                # COPY ABORTED with no additional sense: what libiscsi's
                # extendedcopy_validate_seg_descr accepts for a segment past the end.
                raise _copy_aborted(Asc.NO_ADDITIONAL_SENSE)
        if dst.write_protected:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        if not (src.started and dst.started) or src.sanitizing or dst.sanitizing:
            raise _copy_aborted(Asc.COPY_TARGET_DEVICE_NOT_REACHABLE)
        # The copy acts for this I_T nexus on both LUs: their reservations apply.
        for lu, access in ((src, Access.READ), (dst, Access.WRITE)):
            port = ctx.nexus.initiator_port
            if lu.reserved_by not in (None, port) or lu.pr.conflicts(ctx.nexus, access):
                raise ReservationConflict
        plan.append((src, src_lba, dst, dst_lba, blocks))
    done = 0
    copied = 0
    try:
        for src, src_lba, dst, dst_lba, blocks in plan:
            bs = src.block_size
            total = blocks * bs
            chunks = [(o, min(CHUNK_BYTES, total - o)) for o in range(0, total, CHUNK_BYTES)]
            if src is dst and src_lba < dst_lba < src_lba + blocks:
                chunks.reverse()  # overlapping, destination above source: copy from the end
            for offset, size in chunks:
                data = yield Read(src_lba * bs + offset, size, src)
                yield Write(dst_lba * bs + offset, data, not dst.write_cache, dst)
                copied += size
            done += 1
    except OSError:
        if hold:
            _results(ctx)[(ctx.nexus.initiator_port, list_id)] = CopyStatus(2, done, copied)
        raise _copy_aborted(Asc.THIRD_PARTY_DEVICE_FAILURE) from None
    if hold:
        _results(ctx)[(ctx.nexus.initiator_port, list_id)] = CopyStatus(1, done, copied)
    return ScsiResult()


def copy_status(ctx: Ctx) -> ScsiResult:
    """RECEIVE COPY STATUS(LID1) (SPC-4 6.18.2) for the list identifier in byte 2."""
    cdb = ctx.cdb
    alloc = int.from_bytes(cdb[10:14], "big")
    # Held until retrieved (SPC-4 6.18.2), so it cannot grow without bound.
    status = _results(ctx).pop((ctx.nexus.initiator_port, cdb[2]), None)
    if status is None:
        raise invalid_cdb(2)
    units, count = 0x00, status.bytes_copied  # TRANSFER COUNT UNITS 00h: bytes
    if count > 0xFFFFFFFF:
        units, count = 0x01, count >> 10  # 01h: kibibytes
    out = struct.pack(">IBHBI", 8, status.status, status.segments, units, count)
    return data_in(out, alloc)


def operating_parameters(ctx: Ctx) -> ScsiResult:
    """RECEIVE COPY OPERATING PARAMETERS (SPC-4 6.18.4)."""
    alloc = int.from_bytes(ctx.cdb[10:14], "big")
    out = bytearray(46)
    out[0:4] = (len(out) - 4).to_bytes(4, "big")
    out[4] = 0x01  # SNLID: a list identifier is optional
    out[8:10] = MAX_CSCD_DESCRIPTORS.to_bytes(2, "big")
    out[10:12] = MAX_SEGMENT_DESCRIPTORS.to_bytes(2, "big")
    out[12:16] = MAX_DESCRIPTOR_LIST_LENGTH.to_bytes(4, "big")
    out[16:20] = MAX_SEGMENT_BYTES.to_bytes(4, "big")
    out[34:36] = (1).to_bytes(2, "big")  # total concurrent copies
    out[36] = 1  # maximum concurrent copies
    out[37] = 9  # data segment granularity: 512 bytes (log2)
    out[43] = 2
    out[44] = BLOCK_TO_BLOCK
    out[45] = IDENTIFICATION_CSCD
    return data_in(bytes(out), alloc)
