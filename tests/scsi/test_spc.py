"""INQUIRY, VPD pages, REPORT LUNS, REQUEST SENSE, MODE SENSE/SELECT: golden bytes and errors."""

from __future__ import annotations

import struct

from gluster_iscsi.backstore.base import Capabilities
from gluster_iscsi.scsi.sense import Asc, SenseKey, parse_sense
from gluster_iscsi.scsi.task import Status

from .conftest import N1, N2, Harness

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def test_standard_inquiry_golden(h: Harness) -> None:
    r = h.run("120000006000")
    assert r.status == Status.GOOD
    data = bytes(r.data)
    assert len(data) == 96
    assert data[:8] == bytes([0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02])
    assert data[8:36] == b"GLUSTER iSCSI Disk      0001"
    assert data[58:66] == bytes.fromhex("00a00960046004c0")


def test_inquiry_allocation_length_truncates(h: Harness) -> None:
    r = h.run("120000000500")
    assert r.status == Status.GOOD and bytes(r.data) == bytes([0, 0, 6, 0x12, 91])


def test_inquiry_cmddt_and_page_without_evpd_are_invalid(h: Harness) -> None:
    r = h.run("120200006000")
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert r.sense[15:18] == bytes([0xC9, 0, 1])  # SKSV, C/D, BPV, bit 1 of byte 1
    r = h.run("120080006000")
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert r.sense[15:18] == bytes([0xC0, 0, 2])


def test_vpd_supported_pages_and_unknown_page(h: Harness) -> None:
    assert bytes(h.run("120100006000").data) == bytes.fromhex("00000006008083b0b1b2")
    assert h.sense(h.run("1201c7006000")) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_vpd_serial(h: Harness) -> None:
    assert bytes(h.run("120180006000").data) == b"\x00\x80\x00\x10" + b"0123456789abcdef"


def test_vpd_device_identification(h: Harness) -> None:
    data = bytes(h.run("12018301ff00").data)
    assert data[:2] == b"\x00\x83"
    assert int.from_bytes(data[2:4], "big") == len(data) - 4
    descs = []
    pos = 4
    while pos < len(data):
        descs.append(data[pos : pos + 4 + data[pos + 3]])
        pos += 4 + data[pos + 3]
    naa = descs[0]
    assert naa[:4] == bytes([0x01, 0x03, 0, 8]) and naa[4] >> 4 == 5
    assert descs[1][:2] == bytes([0x02, 0x01]) and descs[1][4:12] == b"GLUSTER "
    assert descs[2] == bytes([0x51, 0x94, 0, 4, 0, 0, 0, 1])  # relative target port 1
    assert descs[3] == bytes([0x51, 0x95, 0, 4, 0, 0, 0, 1])  # target port group 1
    assert descs[4][:2] == bytes([0x53, 0x98])
    assert descs[4][4:].rstrip(b"\x00") == b"iqn.2024-01.org.gluster:tgt,t,0x0001"
    assert len(descs[4]) % 4 == 0
    assert descs[5][:2] == bytes([0x53, 0xA8])
    assert descs[5][4:].rstrip(b"\x00") == b"iqn.2024-01.org.gluster:tgt"


def test_naa_is_stable_per_serial(make_harness) -> None:  # noqa: ANN001
    a = make_harness(serial="abc").server.lu(0)
    b = make_harness(serial="abc").server.lu(0)
    c = make_harness(serial="abd").server.lu(0)
    assert a.naa == b.naa != c.naa


def test_vpd_block_limits(h: Harness) -> None:
    data = bytes(h.run("1201b0004000").data)
    assert data[:4] == bytes([0, 0xB0, 0, 0x3C])
    assert data[4] & 1 == 0  # WSNZ 0: a zero-length WRITE SAME runs to the end
    assert data[5] == 8  # MAX COMPARE AND WRITE LENGTH
    assert struct.unpack(">I", data[8:12])[0] == (32 << 20) // 512  # the iSCSI buffer cap
    assert struct.unpack(">I", data[20:24])[0] > 0  # MAX UNMAP LBA COUNT: store can discard
    assert struct.unpack(">I", data[24:28])[0] == 256
    assert struct.unpack(">Q", data[36:44])[0] == 2048  # MAX WRITE SAME LENGTH: the whole LU


def test_vpd_limits_and_provisioning_without_discard(make_harness) -> None:  # noqa: ANN001
    h = make_harness(capabilities=Capabilities())
    data = bytes(h.run("1201b0004000").data)
    assert data[20:28] == bytes(8)
    assert bytes(h.run("1201b2000800").data) == bytes([0, 0xB2, 0, 4, 0, 0, 0, 0])
    rc16 = bytes(h.run("9e100000000000000000000000200000").data)
    assert rc16[14] == 0
    assert bytes(h.run("1201b1004000").data)[7] == 0  # no BLOCK ERASE, no WABEREQ


def test_vpd_provisioning_and_characteristics(h: Harness) -> None:
    assert bytes(h.run("1201b2000800").data) == bytes([0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0])
    b1 = bytes(h.run("1201b1004000").data)
    assert b1[4:6] == b"\x00\x01"  # non-rotating medium
    assert b1[7] == 0x40  # WABEREQ 01b: SANITIZE BLOCK ERASE is offered, reads return zeroes


def test_inquiry_unconfigured_lun(h: Harness) -> None:
    r = h.run("120000006000", lun=7)
    assert r.status == Status.GOOD and bytes(r.data)[0] == 0x7F
    r = h.run("000000000000", lun=7)
    assert h.sense(r) == (ILLEGAL, Asc.LOGICAL_UNIT_NOT_SUPPORTED)
    r = h.run("a00000000000000001000000", lun=7)
    assert r.status == Status.GOOD
    r = h.run("030000001200", lun=7)
    assert parse_sense(bytes(r.data)) == (ILLEGAL, Asc.LOGICAL_UNIT_NOT_SUPPORTED)


def test_report_luns(h: Harness) -> None:
    from gluster_iscsi.server.runner import lu_on

    h.server.add_lun(300, lu_on(h.server.lu(0).store, serial="x"))
    r = h.run("a00000000000000001000000")
    assert bytes(r.data) == bytes.fromhex("00000010000000000000000000000000412c000000000000")
    assert bytes(h.run("a00001000000000001000000").data) == bytes(8)
    assert h.sense(h.run("a00000000000000000000f00")) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert h.sense(h.run("a00003000000000001000000")) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_request_sense_reports_then_clears_unit_attention(h: Harness) -> None:
    h.server.nexus_added(N1)
    r = h.run("030000001200", clear_ua=False)
    assert parse_sense(bytes(r.data)) == (
        SenseKey.UNIT_ATTENTION,
        Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET,
    )
    r = h.run("030000001200", clear_ua=False)
    assert bytes(r.data) == bytes([0x70, 0, 0, 0, 0, 0, 0, 10]) + bytes(10)
    r = h.run("030100001200", clear_ua=False)  # DESC
    assert bytes(r.data) == bytes(8)[:0] + bytes([0x72, 0, 0, 0, 0, 0, 0, 0])


def test_mode_sense6_all_pages_golden(h: Harness) -> None:
    data = bytes(h.run("1a003f00ff00").data)
    assert data[:4] == bytes([len(data) - 1, 0, 0x10, 8])
    assert data[4:12] == struct.pack(">II", 2048, 512)
    pages = data[12:]
    assert pages[:4] == bytes([0x08, 0x12, 0x04, 0x00])  # caching, WCE
    assert pages[20:32] == bytes([0x0A, 0x0A, 0, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0])
    assert pages[32:] == bytes([0x1C, 0x0A, 0x08]) + bytes(9)


def test_mode_sense10_llbaa_and_dbd(h: Harness) -> None:
    data = bytes(h.run("5a100a0000000000ff00").data)
    assert data[2:8] == bytes([0, 0x10, 1, 0, 0, 16])
    assert data[8:24] == struct.pack(">QII", 2048, 0, 512)
    assert data[24:26] == b"\x0a\x0a"
    data = bytes(h.run("5a080a0000000000ff00").data)
    assert data[6:8] == b"\x00\x00" and data[8] == 0x0A


def test_mode_sense_changeable_default_saved(h: Harness) -> None:
    data = bytes(h.run("1a084800ff00").data)  # changeable caching page
    assert data[4:8] == bytes([0x08, 0x12, 0x04, 0])
    data = bytes(h.run("1a088a00ff00").data)  # default control page
    assert data[4:6] == b"\x0a\x0a"
    r = h.run("1a08ca00ff00")  # saved
    assert h.sense(r) == (ILLEGAL, Asc.SAVING_PARAMETERS_NOT_SUPPORTED)
    assert h.sense(h.run("1a082500ff00")) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert h.sense(h.run("1a080a01ff00")) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_mode_select_d_sense_switches_sense_format_and_raises_ua(h: Harness) -> None:
    page = bytes([0x0A, 0x0A, 0x04, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0])
    h.run("000000000000", nexus=N2)
    r = h.run(bytes([0x15, 0x10, 0, 0, 4 + len(page), 0]), data=bytes(4) + page)
    assert r.status == Status.GOOD
    r = h.run("28000000ffff00000100")  # LBA out of range, now descriptor sense
    assert r.sense[0] == 0x72 and h.sense(r) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    r = h.run("000000000000", nexus=N2, clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.MODE_PARAMETERS_CHANGED)


def test_mode_select_refuses_unchangeable_bits(h: Harness) -> None:
    page = bytes([0x0A, 0x0A, 0x00, 0x30, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0])  # QAM changed
    r = h.run(bytes([0x15, 0x10, 0, 0, 16, 0]), data=bytes(4) + page)
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert r.sense[15:18] == bytes([0x80, 0, 7])  # parameter list byte 7
    r = h.run(bytes([0x15, 0x11, 0, 0, 16, 0]), data=bytes(4) + page)
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    r = h.run(bytes([0x15, 0x10, 0, 0, 16, 0]), data=bytes(4) + page[:6])
    assert h.sense(r) == (ILLEGAL, Asc.PARAMETER_LIST_LENGTH_ERROR)


def test_mode_select_caching_wce_off_makes_writes_fua(h: Harness) -> None:
    page = bytes([0x08, 0x12]) + bytes(18)
    hdr = bytes(8)
    cdb = bytes([0x55, 0x10, 0, 0, 0, 0, 0, 0, 8 + 20, 0])
    assert h.run(cdb, data=hdr + page).status == Status.GOOD
    assert not h.server.lu(0).write_cache
    store = h.server.lu(0).store
    before = store.flushes
    h.run("2a000000000000000100", data=bytes(512))
    assert store.flushes == before + 1


def test_report_target_port_groups(h: Harness) -> None:
    other = N2.__class__(N2.initiator_name, N2.initiator_port, "iqn.x:tgt,t,0x0002", 2, 2)
    h.run("000000000000", nexus=other)
    data = bytes(h.run("a30a00000000000001000000").data)
    assert data == bytes.fromhex(
        "0000001800010001 00000001 0000000100010002 00000001 00000002".replace(" ", "")
    )
    ext = bytes(h.run("a32a00000000000001000000").data)
    assert ext[:8] == bytes([0, 0, 0, 0x1C, 0x10, 0, 0, 0]) and ext[8:] == data[4:]
