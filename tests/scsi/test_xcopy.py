"""EXTENDED COPY (LID1) between two LUs of one target, RECEIVE COPY RESULTS."""

from __future__ import annotations

import struct

from gluster_iscsi.scsi import DeviceServer, LogicalUnit
from gluster_iscsi.scsi.sense import Asc, SenseKey
from gluster_iscsi.scsi.task import Status

from .conftest import TARGET, Harness, make_lu
from .test_sbc import rw


def cscd(lu: LogicalUnit, nul: bool = False, lu_id_type: int = 0) -> bytes:
    desc = bytearray(32)
    desc[0] = 0xE4
    desc[1] = lu_id_type << 6 | (0x20 if nul else 0)
    desc[4], desc[5], desc[7] = 0x01, 0x03, 8
    desc[8:16] = lu.naa
    desc[29:32] = lu.block_size.to_bytes(3, "big")
    return bytes(desc)


def segment(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int) -> bytes:
    return struct.pack(">BBHHH2xHQQ", 0x02, 0, 24, src, dst, blocks, src_lba, dst_lba)


def xcopy(cscds: bytes, segs: bytes, list_id: int = 1, usage: int = 0) -> tuple[bytes, bytes]:
    header = struct.pack(">BBH4xII", list_id, usage << 3, len(cscds), len(segs), 0)
    params = header + cscds + segs
    cdb = bytes([0x83, 0]) + bytes(8) + struct.pack(">IBB", len(params), 0, 0)
    return cdb, params


def two_lus() -> tuple[Harness, LogicalUnit, LogicalUnit]:
    a, b = make_lu(serial="source"), make_lu(serial="destination")
    return Harness(DeviceServer({0: a, 1: b}, target_name=TARGET)), a, b


def test_copy_between_lus() -> None:
    h, a, b = two_lus()
    h.run(rw(0x2A, 0, 8), data=bytes(range(256)) * 16)
    cdb, params = xcopy(cscd(a) + cscd(b), segment(0, 1, 8, 0, 100))
    assert h.run(cdb, data=params).status == Status.GOOD
    assert bytes(b.store.data[100 * 512 : 108 * 512]) == bytes(range(256)) * 16
    status_cdb = bytes([0x84, 0, 1]) + bytes(7) + struct.pack(">IBB", 64, 0, 0)
    status = bytes(h.run(status_cdb).data)
    assert status == struct.pack(">IBHBI", 8, 1, 1, 0, 4096)
    # held until retrieved, once
    assert h.sense(h.run(status_cdb))[1] == Asc.INVALID_FIELD_IN_CDB
    # LIST ID USAGE 10b (discard, as libiscsi's extendedcopy_simple sends): copies, keeps nothing
    cdb, params = xcopy(cscd(a) + cscd(b), segment(0, 1, 8, 0, 200), usage=2)
    assert h.run(cdb, data=params).status == Status.GOOD
    assert bytes(b.store.data[200 * 512 : 208 * 512]) == bytes(range(256)) * 16
    assert h.sense(h.run(status_cdb))[1] == Asc.INVALID_FIELD_IN_CDB
    cdb, params = xcopy(cscd(a) + cscd(b), segment(0, 1, 8, 0, 200), usage=1)  # reserved
    assert h.sense(h.run(cdb, data=params))[1] == Asc.INVALID_FIELD_IN_PARAMETER_LIST


def test_copy_within_one_lu() -> None:
    h, a, _ = two_lus()
    h.run(rw(0x2A, 0, 1), data=b"m" * 512)
    cdb, params = xcopy(cscd(a), segment(0, 0, 1, 0, 9))
    assert h.run(cdb, data=params).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 9, 1)).data) == b"m" * 512


def test_copy_errors() -> None:
    h, a, b = two_lus()
    cdb, params = xcopy(cscd(a) + cscd(b), segment(0, 1, 8, 0, 2047))
    assert h.sense(h.run(cdb, data=params)) == (SenseKey.COPY_ABORTED, Asc.NO_ADDITIONAL_SENSE)
    cdb, params = xcopy(cscd(a), segment(0, 1, 1, 0, 0))  # index 1 names no CSCD
    assert h.sense(h.run(cdb, data=params)) == (SenseKey.COPY_ABORTED, Asc.UNREACHABLE_COPY_TARGET)
    stranger = make_lu(serial="not here")
    cdb, params = xcopy(cscd(a) + cscd(stranger), segment(0, 1, 1, 0, 0))
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.COPY_ABORTED, Asc.COPY_TARGET_DEVICE_NOT_REACHABLE)
    cdb, params = xcopy(cscd(a, nul=True), segment(0, 0, 1, 0, 0))
    assert h.sense(h.run(cdb, data=params))[0] == SenseKey.COPY_ABORTED
    cdb, params = xcopy(cscd(a, lu_id_type=3), segment(0, 0, 1, 0, 0))
    assert h.run(cdb, data=params).status == Status.GOOD  # LU ID TYPE is not looked at
    cdb, params = xcopy(cscd(a) * 9, segment(0, 0, 1, 0, 0))
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.TOO_MANY_TARGET_DESCRIPTORS)
    cdb, params = xcopy(cscd(a), segment(0, 0, 1, 0, 0) * 9)
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.TOO_MANY_SEGMENT_DESCRIPTORS)
    cdb, params = xcopy(cscd(a), b"\x0a" + segment(0, 0, 1, 0, 0)[1:])
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE)
    e0 = b"\xe0" + cscd(a)[1:]  # a Fibre Channel N_Port_Name CSCD
    cdb, params = xcopy(e0, segment(0, 0, 1, 0, 0))
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE)
    cdb, params = xcopy(cscd(a), segment(0, 0, 1, 0, 0))
    r = h.run(cdb[:10] + struct.pack(">I", len(params) - 1) + cdb[14:], data=params[:-1])
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    cdb, params = xcopy(cscd(a) * 20, segment(0, 0, 1, 0, 0) * 20)
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)
    assert h.run(bytes([0x83, 0]) + bytes(14)).status == Status.GOOD  # empty list: no-op


def test_copy_to_read_only_lu_is_refused() -> None:
    a = make_lu(serial="source")
    b = make_lu(serial="ro", read_only=True)
    h = Harness(DeviceServer({0: a, 1: b}))
    cdb, params = xcopy(cscd(a) + cscd(b), segment(0, 1, 1, 0, 0))
    assert h.sense(h.run(cdb, data=params)) == (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)


def test_operating_parameters() -> None:
    h, _, _ = two_lus()
    data = bytes(h.run(bytes([0x84, 3]) + bytes(8) + struct.pack(">IBB", 256, 0, 0)).data)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert data[4] & 1 and struct.unpack(">HH", data[8:12]) == (8, 8)
    assert data[43] == 2 and data[44:46] == b"\x02\xe4"


def test_unknown_list_id_status_is_invalid() -> None:
    h, _, _ = two_lus()
    r = h.run(bytes([0x84, 0, 9]) + bytes(7) + struct.pack(">IBB", 64, 0, 0))
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)


def test_overlapping_copy_within_one_lu_is_not_smeared() -> None:
    h, a, _ = two_lus()
    pattern = b"".join(bytes([i]) * 512 for i in range(8))
    h.run(rw(0x2A, 0, 8), data=pattern)
    import gluster_iscsi.scsi.xcopy as xc

    old = xc.CHUNK_BYTES
    xc.CHUNK_BYTES = 1024  # force several chunks
    try:
        cdb, params = xcopy(cscd(a), segment(0, 0, 6, 0, 2))
        assert h.run(cdb, data=params).status == Status.GOOD
    finally:
        xc.CHUNK_BYTES = old
    assert bytes(h.run(rw(0x28, 2, 6)).data) == pattern[: 6 * 512]


def test_copy_honours_reservations_on_the_other_lu() -> None:
    from .conftest import N2

    h, a, b = two_lus()
    assert h.run("160000000000", lun=1, nexus=N2).status == Status.GOOD  # N2 reserves LU 1
    cdb, params = xcopy(cscd(a) + cscd(b), segment(0, 1, 1, 0, 0))
    assert h.run(cdb, data=params).status == Status.RESERVATION_CONFLICT
