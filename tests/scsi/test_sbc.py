"""READ/WRITE, capacity, SYNCHRONIZE CACHE, VERIFY, START STOP UNIT, store errors."""

from __future__ import annotations

import errno
import struct

import pytest

from gluster_iscsi.scsi import DeviceServer
from gluster_iscsi.scsi.sense import Asc, SenseKey
from gluster_iscsi.scsi.task import Status
from gluster_iscsi.server.runner import lu_on

from .conftest import BLOCKS, Harness, MemStore

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def rw(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    if op in (0x08, 0x0A):
        return bytes([op, lba >> 16 & 0x1F, lba >> 8 & 0xFF, lba & 0xFF, n & 0xFF, 0])
    if op in (0x28, 0x2A, 0x2E, 0x2F, 0x34, 0x35, 0x41):
        return bytes([op, flags]) + struct.pack(">IBHB", lba, 0, n, 0)
    if op in (0xA8, 0xAA, 0xAE, 0xAF):
        return bytes([op, flags]) + struct.pack(">IIBB", lba, n, 0, 0)
    return bytes([op, flags]) + struct.pack(">QIBB", lba, n, 0, 0)


@pytest.mark.parametrize(("rd", "wr"), [(0x08, 0x0A), (0x28, 0x2A), (0xA8, 0xAA), (0x88, 0x8A)])
def test_write_read_round_trip(h: Harness, rd: int, wr: int) -> None:
    payload = bytes(range(256)) * 4
    r = h.run(rw(wr, 10, 2), data=payload)
    assert r.status == Status.GOOD and r.transfer_length == 1024
    r = h.run(rw(rd, 10, 2))
    assert r.status == Status.GOOD and bytes(r.data) == payload


def test_read6_zero_length_means_256_blocks(h: Harness) -> None:
    assert len(h.run(rw(0x08, 0, 0)).data) == 256 * 512


def test_zero_length_transfers_are_good(h: Harness) -> None:
    for op in (0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A):
        r = h.run(rw(op, 0, 0))
        assert r.status == Status.GOOD, hex(op)
    assert h.run(rw(0x28, BLOCKS, 0)).status == Status.GOOD
    assert h.sense(h.run(rw(0x28, BLOCKS + 1, 0))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)


@pytest.mark.parametrize("op", [0x08, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x2F, 0x8F])
def test_beyond_end_is_lba_out_of_range(h: Harness, op: int) -> None:
    r = h.run(rw(op, BLOCKS - 1, 2), data=bytes(1024))
    assert h.sense(r) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_lba_minus_one_is_out_of_range(h: Harness) -> None:
    assert h.sense(h.run(rw(0x88, 2**64 - 1, 1))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_rdprotect_is_invalid_field(h: Harness) -> None:
    r = h.run(rw(0x28, 0, 1, flags=0x20))
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_fua_write_flushes(h: Harness) -> None:
    store = h.server.lu(0).store
    h.run(rw(0x2A, 0, 1), data=bytes(512))
    assert store.flushes == 0
    h.run(rw(0x2A, 0, 1, flags=0x08), data=bytes(512))
    assert store.flushes == 1
    h.run(rw(0x28, 0, 1, flags=0x10))  # DPO accepted
    assert store.flushes == 1


def test_short_data_out_writes_whole_blocks_only(h: Harness) -> None:
    lu = h.server.lu(0)
    h.run(rw(0x2A, 0, 2), data=b"a" * 1024)
    r = h.run(rw(0x2A, 0, 2), data=b"b" * 512)
    assert r.status == Status.GOOD and r.transfer_length == 1024
    assert bytes(lu.store.data[:1024]) == b"b" * 512 + b"a" * 512
    r = h.run(rw(0x2A, 0, 1), data=b"c" * 200)
    assert r.status == Status.GOOD and r.transfer_length == 512
    assert lu.store.data[0:1] == b"b"
    r = h.run(rw(0x2A, 0, 1), data=b"d" * 1024)  # extra data-out ignored
    assert bytes(lu.store.data[:1024]) == b"d" * 512 + b"a" * 512


def test_transfer_over_maximum_is_invalid(make_harness) -> None:  # noqa: ANN001
    h = make_harness(blocks=70000)
    r = h.run(rw(0x88, 0, (32 << 20) // 512 + 1))
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_read_capacity(h: Harness) -> None:
    assert bytes(h.run("25000000000000000000").data) == struct.pack(">II", BLOCKS - 1, 512)
    assert h.sense(h.run("25000000000100000000")) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    data = bytes(h.run("9e100000000000000000000000200000").data)
    assert data == struct.pack(">QI", BLOCKS - 1, 512) + bytes([0, 0, 0xC0, 0]) + bytes(16)
    assert bytes(h.run("9e100000000000000000000000080000").data) == data[:8]


class HugeStore(MemStore):
    """Claims 2^33 blocks; only the size is ever asked for."""

    @property
    def size(self) -> int:
        return (1 << 33) * 512


def test_read_capacity10_saturates_and_16_reports_all() -> None:
    h = Harness(DeviceServer({0: lu_on(HugeStore(512), serial="huge")}))
    assert bytes(h.run("25000000000000000000").data)[:4] == b"\xff\xff\xff\xff"
    data = bytes(h.run("9e100000000000000000000000200000").data)
    assert data[:8] == struct.pack(">Q", (1 << 33) - 1)


def test_capacity_changed_raises_ua_for_everyone(h: Harness) -> None:
    lu = h.server.lu(0)
    h.run("000000000000")
    lu.store.resize((BLOCKS + 8) * 512)
    # not measured behind the scenes: handlers never call store.size on the event loop
    assert h.run("000000000000", clear_ua=False).status == Status.GOOD
    lu.capacity_changed(lu.store.size)  # the caller measures (scsi/ never asks the store)
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.CAPACITY_DATA_HAS_CHANGED)
    assert bytes(h.run("25000000000000000000").data)[:4] == struct.pack(">I", BLOCKS + 7)


def test_read_capacity_sees_an_online_grow(h: Harness) -> None:
    from .conftest import N2

    lu = h.server.lu(0)
    h.run("000000000000", nexus=N2)
    lu.store.resize((BLOCKS + 16) * 512)
    r = h.run("25000000000000000000")
    assert bytes(r.data)[:4] == struct.pack(">I", BLOCKS + 15)
    assert h.run("000000000000", clear_ua=False).status == Status.GOOD  # the issuer knows
    assert h.run(rw(0x28, BLOCKS + 15, 1)).status == Status.GOOD
    r = h.run("000000000000", nexus=N2, clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.CAPACITY_DATA_HAS_CHANGED)


def test_synchronize_cache(h: Harness) -> None:
    store = h.server.lu(0).store
    assert h.run(rw(0x35, 0, 0)).status == Status.GOOD
    assert h.run(rw(0x91, 0, 10)).status == Status.GOOD
    assert store.flushes == 2
    assert h.sense(h.run(rw(0x35, BLOCKS, 1))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_flush_error_is_never_good(h: Harness) -> None:
    h.server.lu(0).store.fail["flush"] = errno.EIO
    r = h.run(rw(0x35, 0, 0))
    assert h.sense(r) == (SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)


@pytest.mark.parametrize(
    ("op", "err", "expected"),
    [
        ("read", errno.EIO, (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR)),
        ("write", errno.EIO, (SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)),
        ("write", errno.ENOSPC, (SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT)),
        ("write", errno.EROFS, (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)),
        ("read", errno.ENOTCONN, (SenseKey.NOT_READY, Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)),
        ("read", errno.ETIMEDOUT, (SenseKey.NOT_READY, Asc.LU_NOT_READY_BECOMING_READY)),
    ],
)
def test_store_errors_map_to_sense(h: Harness, op: str, err: int, expected: tuple) -> None:
    h.server.lu(0).store.fail[op] = err
    cdb = rw(0x28, 0, 1) if op == "read" else rw(0x2A, 0, 1)
    r = h.run(cdb, data=bytes(512))
    assert r.status == Status.CHECK_CONDITION and h.sense(r) == expected


def test_verify_bytchk(h: Harness) -> None:
    h.run(rw(0x2A, 4, 2), data=b"x" * 1024)
    assert h.run(rw(0x2F, 4, 2)).status == Status.GOOD
    assert h.run(rw(0x2F, 4, 2, flags=0x02), data=b"x" * 1024).status == Status.GOOD
    r = h.run(rw(0xAF, 4, 2, flags=0x02), data=b"x" * 700 + b"y" * 324)
    assert h.sense(r) == (SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY)
    assert r.sense[0] == 0xF0 and int.from_bytes(r.sense[3:7], "big") == 700
    assert h.run(rw(0x8F, 4, 2, flags=0x06), data=b"x" * 512).status == Status.GOOD
    assert h.run(rw(0x2F, 4, 2), data=b"y" * 1024).status == Status.GOOD  # BYTCHK 0
    assert h.sense(h.run(rw(0x2F, 4, 2, flags=0x04))) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_start_stop_unit(h: Harness) -> None:
    assert h.run("1b0000000000").status == Status.GOOD
    r = h.run(rw(0x28, 0, 1))
    assert h.sense(r) == (SenseKey.NOT_READY, Asc.LU_NOT_READY_INITIALIZING_COMMAND_REQUIRED)
    assert h.sense(h.run("000000000000"))[0] == SenseKey.NOT_READY
    assert h.run("120000006000").status == Status.GOOD
    assert h.run("1b0000000100").status == Status.GOOD
    assert h.run(rw(0x28, 0, 1)).status == Status.GOOD


def test_eject_refused_on_non_removable_medium(h: Harness) -> None:
    assert h.run("1e0000000100").status == Status.GOOD  # PREVENT is accepted
    r = h.run("1b0000000200")  # LOEJ: RMB=0, nothing to eject (libiscsi startstopunit_simple)
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert h.run("1e0000000000").status == Status.GOOD
    assert h.run("1b0000001000").status == Status.GOOD  # a power condition: accepted


def test_software_write_protect(h: Harness) -> None:
    page = bytearray(bytes(h.run("1a080a00ff00").data)[4:])
    page[4] |= 0x08  # SWP
    r = h.run(bytes([0x15, 0x10, 0, 0, 4 + len(page), 0]), data=bytes(4) + bytes(page))
    assert r.status == Status.GOOD
    assert bytes(h.run("1a080a00ff00").data)[2] & 0x80  # WP now reported
    assert h.run(rw(0x28, 0, 1)).status == Status.GOOD
    r = h.run(rw(0x2A, 0, 1), data=bytes(512))
    assert h.sense(r) == (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
    page[4] &= ~0x08
    h.run(bytes([0x15, 0x10, 0, 0, 4 + len(page), 0]), data=bytes(4) + bytes(page))
    assert h.run(rw(0x2A, 0, 1), data=bytes(512)).status == Status.GOOD


def test_read_only_lu_refuses_writes(make_harness) -> None:  # noqa: ANN001
    h = make_harness(read_only=True)
    for cdb in (rw(0x2A, 0, 1), rw(0x8A, 0, 1), rw(0x0A, 0, 1), rw(0x41, 0, 1), rw(0x2E, 0, 1)):
        r = h.run(cdb, data=bytes(512))
        assert h.sense(r) == (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED), cdb.hex()
    assert h.run(rw(0x28, 0, 1)).status == Status.GOOD
    assert h.run(rw(0x35, 0, 0)).status == Status.GOOD
    assert bytes(h.run("1a003f00ff00").data)[2] & 0x80  # WP in MODE SENSE


def test_max_transfer_length_is_per_lu(make_harness) -> None:  # noqa: ANN001
    h = make_harness(blocks=70000, max_transfer_bytes=1 << 20)
    data = bytes(h.run("1201b0004000").data)
    assert struct.unpack(">I", data[8:12])[0] == 2048
    assert h.run(rw(0x8A, 0, 2048), data=bytes(1 << 20)).status == Status.GOOD
    r = h.run(rw(0x88, 0, 2049))
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
