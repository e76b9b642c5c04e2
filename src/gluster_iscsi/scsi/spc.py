"""SPC-4 commands every device type shares: INQUIRY, REPORT LUNS, REQUEST SENSE, MODE SENSE and
MODE SELECT, TEST UNIT READY, REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .context import data_in
from .io import SharedRefresh, SharedUpdate
from .lu import ModePage
from .sense import (
    Asc,
    CheckCondition,
    Progress,
    SenseKey,
    build_sense,
    invalid_cdb,
    invalid_param,
)
from .task import Execution, ScsiResult

if TYPE_CHECKING:
    from .context import Ctx
    from .lu import LogicalUnit

#: Version descriptors (SPC-4 table 142): SAM-5, iSCSI (RFC 7143 era: 0960h), SPC-4, SBC-3.
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)
#: Preferred transfer sizes (VPD B0h OPTIMAL ...), chosen for GlusterFS/network filesystems.
OPTIMAL_TRANSFER_BYTES = 1 << 20
OPTIMAL_GRANULARITY_BYTES = 4096
MAX_UNMAP_DESCRIPTORS = 256
#: Blocks one UNMAP descriptor may name (libiscsi calls more than 2^20 insane).
MAX_UNMAP_BLOCKS = 1 << 20
#: Blocks one GET LBA STATUS looks at.
MAX_LBA_STATUS_BLOCKS = 1 << 24
MAX_COMPARE_AND_WRITE_BLOCKS = 8

PERIPHERAL_DISK = 0x00
PERIPHERAL_NO_LU = 0x7F  # qualifier 011b, type 1Fh: no logical unit at this LUN


def _pad(text: str, width: int) -> bytes:
    return text.encode("ascii", "replace")[:width].ljust(width, b" ")


# -- TEST UNIT READY -------------------------------------------------------------------------


def test_unit_ready(ctx: Ctx) -> ScsiResult:
    return ScsiResult()  # NOT READY when stopped is decided by the preamble


# -- INQUIRY ---------------------------------------------------------------------------------


def inquiry(ctx: Ctx) -> ScsiResult:
    cdb = ctx.cdb
    alloc = int.from_bytes(cdb[3:5], "big")
    evpd = cdb[1] & 0x01
    if cdb[1] & 0x02:  # CmdDt is obsolete (SPC-3)
        raise invalid_cdb(1, 1)
    if not evpd and cdb[2]:
        raise invalid_cdb(2)
    lu = ctx.server.lu(ctx.task.lun)
    if lu is None:
        if evpd:
            return data_in(bytes([PERIPHERAL_NO_LU, cdb[2], 0, 0]), alloc)
        return data_in(standard_inquiry(None), alloc)
    if not evpd:
        return data_in(standard_inquiry(lu), alloc)
    page = VPD_PAGES.get(cdb[2])
    if page is None:
        raise invalid_cdb(2)
    body = page(ctx, lu)
    return data_in(bytes([PERIPHERAL_DISK, cdb[2]]) + len(body).to_bytes(2, "big") + body, alloc)


def standard_inquiry(lu: LogicalUnit | None) -> bytes:
    """Standard INQUIRY data, 96 bytes (SPC-4 6.6.2)."""
    out = bytearray(96)
    out[0] = PERIPHERAL_NO_LU if lu is None else PERIPHERAL_DISK
    out[2] = 0x06  # SPC-4
    out[3] = 0x10 | 0x02  # HiSup, response data format 2
    out[4] = len(out) - 5
    out[5] = 0x08 | 0x10  # 3PC: EXTENDED COPY; TPGS 01b: implicit ALUA (all ports optimized)
    out[7] = 0x02  # CmdQue
    out[8:16] = _pad(lu.vendor if lu else "GLUSTER", 8)
    out[16:32] = _pad(lu.product if lu else "iSCSI Disk", 16)
    out[32:36] = _pad(lu.revision if lu else "0001", 4)
    for i, desc in enumerate(VERSION_DESCRIPTORS):
        out[58 + 2 * i : 60 + 2 * i] = desc.to_bytes(2, "big")
    return bytes(out)


def _vpd_supported(ctx: Ctx, lu: LogicalUnit) -> bytes:
    return bytes(sorted(VPD_PAGES))


def _vpd_serial(ctx: Ctx, lu: LogicalUnit) -> bytes:
    return lu.serial.encode("ascii", "replace")


def _designator(code_set: int, piv_assoc_type: int, value: bytes, protocol: int = 0) -> bytes:
    return bytes([protocol << 4 | code_set, piv_assoc_type, 0, len(value)]) + value


def _name_string(name: str) -> bytes:
    raw = name.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def device_identifiers(ctx: Ctx, lu: LogicalUnit) -> bytes:
    """VPD 83h designators (SPC-4 7.8.6): the LU's NAA id, T10 vendor id, and the port."""
    nexus = ctx.nexus
    iscsi = 0x5
    out = bytearray()
    out += _designator(0x1, 0x03, lu.naa)  # NAA, associated with the LU
    out += _designator(0x2, 0x01, _pad(lu.vendor, 8) + lu.serial.encode("ascii", "replace"))
    out += _designator(0x1, 0x94, struct.pack(">HH", 0, nexus.relative_port), iscsi)
    out += _designator(0x1, 0x95, struct.pack(">HH", 0, nexus.target_port_group), iscsi)
    if nexus.target_port:
        out += _designator(0x3, 0x98, _name_string(nexus.target_port), iscsi)
    if ctx.server.target_name:
        out += _designator(0x3, 0xA8, _name_string(ctx.server.target_name), iscsi)
    return bytes(out)


def _vpd_block_limits(ctx: Ctx, lu: LogicalUnit) -> bytes:
    """VPD B0h (SBC-3 6.5.3)."""
    bs = lu.block_size
    caps = lu.capabilities
    out = bytearray(0x3C)
    # WSNZ 0: a zero-length WRITE SAME means "to the end of the medium" (SBC-3 5.42).
    out[1] = MAX_COMPARE_AND_WRITE_BLOCKS
    granularity = max(1, max(OPTIMAL_GRANULARITY_BYTES, lu.physical_block_size) // bs)
    out[2:4] = granularity.to_bytes(2, "big")
    out[4:8] = (lu.max_transfer_bytes // bs).to_bytes(4, "big")
    out[8:12] = (OPTIMAL_TRANSFER_BYTES // bs).to_bytes(4, "big")
    if caps.discard:
        out[16:20] = MAX_UNMAP_BLOCKS.to_bytes(4, "big")
        out[20:24] = MAX_UNMAP_DESCRIPTORS.to_bytes(4, "big")
        out[24:28] = granularity.to_bytes(4, "big")
        out[28:32] = (0x80000000).to_bytes(4, "big")  # UGAVALID, alignment 0
    # Writes and deallocations are chunked, so any length up to the whole LU is fine.
    out[32:40] = max(lu.block_count, 1).to_bytes(8, "big")
    return bytes(out)


def _vpd_characteristics(ctx: Ctx, lu: LogicalUnit) -> bytes:
    """VPD B1h: non-rotating medium (SBC-3 6.5.2)."""
    out = bytearray(0x3C)
    out[0:2] = (1).to_bytes(2, "big")
    if offers_block_erase(lu):
        out[3] = 0x40  # WABEREQ 01b: reads after BLOCK ERASE succeed (they return zeroes)
    return bytes(out)


def _vpd_provisioning(ctx: Ctx, lu: LogicalUnit) -> bytes:
    """VPD B2h: logical block provisioning, claiming only what the store can do."""
    caps = lu.capabilities
    flags = 0
    if caps.discard:
        flags |= 0x80 | 0x40 | 0x20  # LBPU, LBPWS, LBPWS10
        if caps.discard_zeroes:
            flags |= 0x04  # LBPRZ
    ptype = 0x02 if caps.discard else 0x00  # thin / full provisioning
    return bytes([0, flags, ptype, 0])


VPD_PAGES = {
    0x00: _vpd_supported,
    0x80: _vpd_serial,
    0x83: device_identifiers,
    0xB0: _vpd_block_limits,
    0xB1: _vpd_characteristics,
    0xB2: _vpd_provisioning,
}


# -- REPORT LUNS -----------------------------------------------------------------------------


def encode_lun(lun: int) -> bytes:
    """SAM-5 4.7: peripheral addressing below 256, flat space addressing above."""
    if lun < 256:
        return bytes([0, lun]) + bytes(6)
    return bytes([0x40 | (lun >> 8) & 0x3F, lun & 0xFF]) + bytes(6)


def report_luns(ctx: Ctx) -> ScsiResult:
    cdb = ctx.cdb
    select = cdb[2]
    alloc = int.from_bytes(cdb[6:10], "big")
    if alloc < 16:
        raise invalid_cdb(6)
    if select not in (0, 1, 2):
        raise invalid_cdb(2)
    luns = [] if select == 1 else sorted(ctx.server.luns)
    # SPC-4 6.33: REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED on every LU of the nexus.
    for lu in ctx.server.luns.values():
        lu.discard_ua(ctx.nexus.initiator_port, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)
    body = b"".join(encode_lun(n) for n in luns)
    return data_in(len(body).to_bytes(4, "big") + bytes(4) + body, alloc)


# -- REQUEST SENSE ---------------------------------------------------------------------------


def request_sense(ctx: Ctx) -> ScsiResult:
    cdb = ctx.cdb
    desc = bool(cdb[1] & 0x01)
    alloc = cdb[4]
    lu = ctx.server.lu(ctx.task.lun)
    if lu is None:
        sense = build_sense(
            SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED, descriptor=desc
        )
        return data_in(sense, alloc)
    asc = lu.pop_ua(ctx.nexus.initiator_port)
    job = lu.background
    if asc is not None:
        sense = build_sense(SenseKey.UNIT_ATTENTION, asc, descriptor=desc)
    elif job is not None and job.running:
        sense = build_sense(
            SenseKey.NOT_READY,
            Asc.LU_NOT_READY_SANITIZE_IN_PROGRESS,
            descriptor=desc,
            field=Progress(job.progress),
        )
    elif not lu.started:
        sense = build_sense(
            SenseKey.NOT_READY, Asc.LU_NOT_READY_INITIALIZING_COMMAND_REQUIRED, descriptor=desc
        )
    else:
        sense = build_sense(SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE, descriptor=desc)
    return data_in(sense, alloc)


# -- MODE SENSE / MODE SELECT ----------------------------------------------------------------

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = range(4)


def _page_bytes(page: ModePage, pc: int) -> bytes:
    if pc == PC_CHANGEABLE:
        return bytes([page.code, len(page.default) - 2]) + page.changeable[2:]
    if pc == PC_DEFAULT:
        return page.default
    return bytes(page.current)


def _mode_pages(lu: LogicalUnit, code: int, subpage: int, pc: int) -> bytes:
    if pc == PC_SAVED:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.SAVING_PARAMETERS_NOT_SUPPORTED)
    if code == 0x3F:
        if subpage not in (0x00, 0xFF):
            raise invalid_cdb(3)
        return b"".join(_page_bytes(lu.mode_pages[c], pc) for c in sorted(lu.mode_pages))
    page = lu.mode_pages.get(code)
    if page is None:
        raise invalid_cdb(2, 5)
    if subpage != 0:
        raise invalid_cdb(3)
    return _page_bytes(page, pc)


def _device_specific(lu: LogicalUnit) -> int:
    return (0x80 if lu.write_protected else 0) | 0x10  # WP, DPOFUA


def mode_sense(ctx: Ctx) -> Execution:
    cdb, lu = ctx.cdb, ctx.lu
    ten = cdb[0] == 0x5A
    dbd = bool(cdb[1] & 0x08)
    llbaa = ten and bool(cdb[1] & 0x10)
    pc, code, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    alloc = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
    yield SharedRefresh("mode", lu)  # another gateway of a group may have changed them
    with lu.state_lock:
        pages = _mode_pages(lu, code, subpage, pc)
    blocks = lu.block_count
    if dbd:
        desc = b""
    elif llbaa:
        desc = struct.pack(">QII", blocks, 0, lu.block_size)
    else:
        desc = struct.pack(">II", min(blocks, 0xFFFFFFFF), lu.block_size & 0xFFFFFF)
    if ten:
        body = bytes([0, _device_specific(lu), 0x01 if desc and llbaa else 0, 0])
        body += len(desc).to_bytes(2, "big") + desc + pages
        out = (len(body)).to_bytes(2, "big") + body
    else:
        body = bytes([0, _device_specific(lu), len(desc)]) + desc + pages
        out = bytes([len(body) & 0xFF]) + body
    return data_in(out, alloc)


def mode_select(ctx: Ctx) -> Execution:
    """MODE SELECT: the parameter list is checked here (against the bits no MODE SELECT
    changes, the same on every gateway); the change is a :class:`~.io.SharedUpdate`."""
    cdb, lu = ctx.cdb, ctx.lu
    ten = cdb[0] == 0x55
    if cdb[1] & 0x01:  # SP: we keep no saved pages
        raise invalid_cdb(1, 0)
    length = int.from_bytes(cdb[7:9], "big") if ten else cdb[4]
    if length == 0:
        return ScsiResult()
    params = ctx.require_parameter_list(length)
    head = 8 if ten else 4
    if length < head:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    bd_len = int.from_bytes(params[6:8], "big") if ten else params[3]
    long_lba = ten and params[4] & 0x01
    pos = head
    if bd_len:
        step = 16 if long_lba else 8
        if bd_len % step or pos + bd_len > length:
            raise invalid_param(6 if ten else 3)
        for off in range(pos, pos + bd_len, step):
            block_len = (
                int.from_bytes(params[off + 12 : off + 16], "big")
                if long_lba
                else int.from_bytes(params[off + 5 : off + 8], "big")
            )
            if block_len != lu.block_size:
                raise invalid_param(off + (12 if long_lba else 5))
        pos += bd_len
    updates: list[tuple[ModePage, bytes]] = []
    while pos < length:
        if pos + 2 > length:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
        code = params[pos] & 0x3F
        if params[pos] & 0x40:  # sub-page format: we have no sub-pages
            raise invalid_param(pos, 6)
        page = lu.mode_pages.get(code)
        if page is None:
            raise invalid_param(pos)
        plen = params[pos + 1]
        if plen != len(page.default) - 2:
            raise invalid_param(pos + 1)
        if pos + 2 + plen > length:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
        new = bytes(params[pos : pos + 2 + plen])
        for i in range(2, 2 + plen):
            if (new[i] ^ page.current[i]) & ~page.changeable[i] & 0xFF:
                raise invalid_param(pos + i)
        updates.append((page, new))
        pos += 2 + plen
    issuer = ctx.nexus.initiator_port

    def apply() -> None:
        changed = False
        with lu.state_lock:
            for page, new in updates:
                if bytes(page.current[2:]) != new[2:]:
                    page.current[2:] = new[2:]
                    changed = True
            if changed:
                lu.queue_ua_others(Asc.MODE_PARAMETERS_CHANGED, issuer)

    yield SharedUpdate("mode", apply, lu)
    return ScsiResult()


# -- REPORT TARGET PORT GROUPS ---------------------------------------------------------------


def report_target_port_groups(ctx: Ctx) -> ScsiResult:
    """REPORT TARGET PORT GROUPS (SPC-4 6.36), implicit ALUA.

    A lone gateway (``lu.alua`` unrestricted): every group active/optimized, the groups and
    ports being those of the I_T nexuses seen so far (an iSCSI target port is target name +
    TPGT, so they are all known once an initiator logged in through them). In a gateway
    group: the table the group set (:meth:`.alua.Alua.set_groups`), every group with its
    true state, the same bytes through every port.
    """
    cdb = ctx.cdb
    fmt = cdb[1] >> 5
    if fmt not in (0, 1):
        raise invalid_cdb(1, 7)
    alloc = int.from_bytes(cdb[6:10], "big")
    alua = ctx.lu.alua
    body = bytearray()
    transition = 0
    if alua.restricted:
        for group, state, supported, status, members in alua.descriptors():
            body += bytes([state, supported]) + group.to_bytes(2, "big")
            body += bytes([0, status, 0, len(members)])
            for rel in members:
                body += bytes(2) + rel.to_bytes(2, "big")
        transition = min(max(alua.implicit_transition_seconds, 0), 0xFF)
    else:
        groups: dict[int, set[int]] = {}
        for rel, group in ctx.server.target_ports().items():
            groups.setdefault(group, set()).add(rel)
        for group in sorted(groups):
            ports = sorted(groups[group])
            # PREF 0, state 0h active/optimized; only AO_SUP; status: no change reason
            body += bytes([0x00, 0x01]) + group.to_bytes(2, "big") + bytes([0, 0, 0, len(ports)])
            for rel in ports:
                body += bytes(2) + rel.to_bytes(2, "big")
    if fmt == 1:  # extended header: format type 001b, implicit transition time
        # RETURN DATA LENGTH counts what follows it, the rest of the header included (as
        # sg_rtpg and Linux's scsi_dh_alua read it).
        head = bytes([0x10, transition, 0, 0])
        out = (len(body) + 4).to_bytes(4, "big") + head + bytes(body)
    else:
        out = len(body).to_bytes(4, "big") + bytes(body)
    return data_in(out, alloc)


def offers_block_erase(lu: LogicalUnit) -> bool:
    """SANITIZE BLOCK ERASE deallocates everything: honest only if that reads back zero and
    GET LBA STATUS can then show it (a sharded Gluster volume cannot map its holes)."""
    caps = lu.capabilities
    return lu.sanitize_allowed and caps.discard and caps.discard_zeroes and caps.extents
