"""COMPARE AND WRITE, WRITE SAME, UNMAP, GET LBA STATUS, ORWRITE, PRE-FETCH, WRITE AND VERIFY,
READ DEFECT DATA, SANITIZE."""

from __future__ import annotations

import struct

import pytest

from gluster_iscsi.backstore.base import Capabilities
from gluster_iscsi.scsi.sense import Asc, SenseKey
from gluster_iscsi.scsi.task import ScsiResult, Status

from .conftest import BLOCKS, Harness
from .test_sbc import rw

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def caw(lba: int, n: int, flags: int = 0) -> bytes:
    return bytes([0x89, flags]) + struct.pack(">Q3xBBB", lba, n, 0, 0)


def ws(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return rw(op, lba, n, flags)


def unmap_cdb(length: int) -> bytes:
    return bytes([0x42, 0, 0, 0, 0, 0, 0]) + struct.pack(">HB", length, 0)


def unmap_params(*ranges: tuple[int, int]) -> bytes:
    descs = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(descs) + 6, len(descs)) + descs


def gls(lba: int, alloc: int = 1024) -> bytes:
    return bytes([0x9E, 0x12]) + struct.pack(">QIBB", lba, alloc, 0, 0)


def lba_status(data: bytes) -> list[tuple[int, int, int]]:
    n = (struct.unpack(">I", data[:4])[0] - 4) // 16
    return [struct.unpack(">QIB3x", data[8 + 16 * i : 24 + 16 * i]) for i in range(n)]


# -- COMPARE AND WRITE -------------------------------------------------------------------------


def test_compare_and_write_match_writes(h: Harness) -> None:
    h.run(rw(0x2A, 5, 1), data=b"A" * 512)
    r = h.run(caw(5, 1), data=b"A" * 512 + b"B" * 512)
    assert r.status == Status.GOOD
    assert bytes(h.run(rw(0x28, 5, 1)).data) == b"B" * 512


def test_compare_and_write_miscompare_reports_offset_and_writes_nothing(h: Harness) -> None:
    h.run(rw(0x2A, 5, 2), data=b"A" * 1024)
    verify = b"A" * 700 + b"x" + b"A" * 323
    r = h.run(caw(5, 2), data=verify + b"B" * 1024)
    assert h.sense(r) == (SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY)
    assert r.sense[0] == 0xF0 and int.from_bytes(r.sense[3:7], "big") == 700
    assert bytes(h.run(rw(0x28, 5, 2)).data) == b"A" * 1024


def test_compare_and_write_limits(h: Harness) -> None:
    assert h.run(caw(0, 0)).status == Status.GOOD
    # 256 blocks' worth of data with the 8-bit NUMBER OF LOGICAL BLOCKS wrapped to 0
    assert h.sense(h.run(caw(0, 0), data=bytes(2 * 256 * 512)))[1] == Asc.INVALID_FIELD_IN_CDB
    r = h.run(caw(0, 9), data=bytes(9 * 1024))
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert h.sense(h.run(caw(BLOCKS - 1, 2), data=bytes(2048))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    for size in (512, 2048):  # data-out must be exactly verify + write data
        assert h.sense(h.run(caw(0, 1), data=bytes(size))) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_compare_and_write_holds_lu_lock_exclusively(h: Harness) -> None:
    # The runner holds the LU's lock (scsi/ holds none): exclusive across COMPARE AND
    # WRITE's read-compare-write, shared around a plain write, from the lock table it is given.
    from gluster_iscsi.server.runner import IoLock, Runner

    lu = h.server.lu(0)
    seen = []

    class Spy:  # an IoLock that says what was taken (compiled, IoLock takes no subclass)
        def __init__(self) -> None:
            self.real = IoLock()

        def __enter__(self) -> None:
            seen.append("enter")
            self.real.acquire()

        def __exit__(self, *exc: object) -> None:
            seen.append("exit")
            self.real.release()

        def acquire_shared(self) -> None:
            seen.append("shared")
            self.real.acquire_shared()

        def release_shared(self) -> None:
            self.real.release_shared()

    spy = Spy()

    class Locks:
        def lock(self, of):  # noqa: ANN001, ANN202
            assert of is lu
            return spy

    h.runner = Runner(locks=Locks())
    assert h.run(caw(0, 1), data=bytes(1024)).status == Status.GOOD
    assert seen == ["enter", "exit"]
    seen.clear()
    assert h.run("2a000000000000000100", data=bytes(512)).status == Status.GOOD
    assert seen == ["shared"]


# -- WRITE SAME --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", [0x41, 0x93])
def test_write_same_pattern(h: Harness, op: int) -> None:
    block = bytes(range(256)) * 2
    assert h.run(ws(op, 10, 4), data=block).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 10, 4)).data) == block * 4


@pytest.mark.parametrize("op", [0x41, 0x93])
def test_write_same_unmap_deallocates(h: Harness, op: int) -> None:
    h.run(rw(0x2A, 0, 16), data=b"z" * 8192)
    # a non-zero pattern with UNMAP still deallocates (libiscsi writesame*_unmap_until_end)
    assert h.run(ws(op, 0, 16, flags=0x08), data=b"\xff" * 512).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 0, 16)).data) == bytes(8192)
    # the test store starts deallocated, so the whole LU is one deallocated run again
    assert lba_status(bytes(h.run(gls(0)).data)) == [(0, BLOCKS, 1)]


def test_write_same_unmap_without_discard_writes_zeroes(make_harness) -> None:  # noqa: ANN001
    h = make_harness(capabilities=Capabilities())
    h.run(rw(0x2A, 0, 4), data=b"z" * 2048)
    assert h.run(ws(0x93, 0, 4, flags=0x08), data=bytes(512)).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 0, 4)).data) == bytes(2048)


def test_write_same_ndob_anchor_and_zero_length(h: Harness) -> None:
    h.run(rw(0x2A, 0, 2), data=b"z" * 1024)
    assert h.run(ws(0x93, 0, 2, flags=0x01)).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 0, 2)).data) == bytes(1024)
    assert h.sense(h.run(ws(0x93, 0, 2, flags=0x10), data=bytes(512))) == (
        ILLEGAL,
        Asc.INVALID_FIELD_IN_CDB,
    )
    # zero blocks: from the LBA to the end of the medium (WSNZ=0)
    assert h.run(ws(0x41, BLOCKS - 3, 0), data=b"\x5a" * 512).status == Status.GOOD
    assert bytes(h.run(rw(0x28, BLOCKS - 4, 4)).data) == bytes(512) + b"\x5a" * 1536
    assert h.run(ws(0x93, BLOCKS, 0), data=bytes(512)).status == Status.GOOD  # nothing left
    assert h.sense(h.run(ws(0x41, BLOCKS - 1, 2), data=bytes(512))) == (
        ILLEGAL,
        Asc.LBA_OUT_OF_RANGE,
    )
    # zero blocks past the end is out of range before WSNZ refuses the length
    assert h.sense(h.run(ws(0x41, BLOCKS + 1, 0), data=bytes(512))) == (
        ILLEGAL,
        Asc.LBA_OUT_OF_RANGE,
    )
    for size in (256, 1024):  # the data-out must be exactly one block
        assert h.sense(h.run(ws(0x41, 0, 1), data=bytes(size)))[1] == Asc.INVALID_FIELD_IN_CDB


# -- UNMAP / GET LBA STATUS --------------------------------------------------------------------


def test_unmap_then_get_lba_status(h: Harness) -> None:
    h.run(rw(0x2A, 0, 64), data=b"q" * (64 * 512))
    params = unmap_params((8, 8), (32, 4))
    assert h.run(unmap_cdb(len(params)), data=params).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 8, 8)).data) == bytes(4096)
    status = lba_status(bytes(h.run(gls(0)).data))
    assert status[:5] == [(0, 8, 0), (8, 8, 1), (16, 16, 0), (32, 4, 1), (36, 28, 0)]
    # starting inside a deallocated run
    assert lba_status(bytes(h.run(gls(10)).data))[0] == (10, 6, 1)


def test_get_lba_status_errors_and_truncation(h: Harness) -> None:
    assert h.sense(h.run(gls(BLOCKS))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    data = bytes(h.run(gls(0, alloc=24)).data)
    assert len(data) == 24


def test_unmap_parameter_validation(h: Harness) -> None:
    assert h.run(unmap_cdb(0)).status == Status.GOOD
    assert h.sense(h.run(unmap_cdb(4), data=bytes(4))) == (ILLEGAL, Asc.PARAMETER_LIST_LENGTH_ERROR)
    params = unmap_params((BLOCKS - 1, 2))
    assert h.sense(h.run(unmap_cdb(len(params)), data=params)) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)
    params = unmap_params(*[(i, 1) for i in range(257)])
    r = h.run(unmap_cdb(len(params)), data=params)
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_PARAMETER_LIST)
    assert h.sense(h.run(bytes([0x42, 1]) + bytes(8))) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    params = unmap_params((0, 0))
    assert h.run(unmap_cdb(len(params)), data=params).status == Status.GOOD


def test_unmap_not_offered_without_discard(make_harness) -> None:  # noqa: ANN001
    h = make_harness(capabilities=Capabilities())
    params = unmap_params((0, 1))
    r = h.run(unmap_cdb(len(params)), data=params)
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_COMMAND_OPERATION_CODE)


# -- ORWRITE, PRE-FETCH, WRITE AND VERIFY, READ DEFECT DATA ------------------------------------


def test_orwrite(h: Harness) -> None:
    h.run(rw(0x2A, 3, 1), data=b"\x0f" * 512)
    assert h.run(rw(0x8B, 3, 1), data=b"\xf0" * 512).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 3, 1)).data) == b"\xff" * 512


def test_pre_fetch(h: Harness) -> None:
    assert h.run(rw(0x34, 0, 10)).status == Status.GOOD
    assert h.run(rw(0x90, 0, 10)).status == Status.GOOD
    assert h.sense(h.run(rw(0x90, BLOCKS, 1))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)


@pytest.mark.parametrize("op", [0x2E, 0xAE, 0x8E])
def test_write_and_verify(h: Harness, op: int) -> None:
    assert h.run(rw(op, 7, 2, flags=0x02), data=b"v" * 1024).status == Status.GOOD
    assert bytes(h.run(rw(0x28, 7, 2)).data) == b"v" * 1024
    assert h.sense(h.run(rw(op, BLOCKS, 1), data=bytes(512))) == (ILLEGAL, Asc.LBA_OUT_OF_RANGE)


def test_read_defect_data(h: Harness) -> None:
    assert bytes(h.run("37001800000000000400").data) == bytes([0, 0x18, 0, 0])
    assert bytes(h.run("b71800000000000000080000").data) == bytes([0, 0x18]) + bytes(6)


# -- SANITIZE ----------------------------------------------------------------------------------


def test_sanitize_overwrite_really_overwrites(make_harness) -> None:  # noqa: ANN001
    h = make_harness(blocks=64, sanitize=True)
    h.run(rw(0x2A, 0, 64), data=b"secret!!" * (64 * 64))
    params = bytes([0x01, 0, 0, 4]) + b"\xde\xad\xbe\xef"
    r = h.run(bytes([0x48, 0x01, 0, 0, 0, 0, 0, 0, len(params), 0]), data=params)
    assert r.status == Status.GOOD
    assert bytes(h.server.lu(0).store.data) == b"\xde\xad\xbe\xef" * (64 * 128)
    for cdb in (
        bytes([0x48, 0x03, 0, 0, 0, 0, 0, 0, 0, 0]),  # CRYPTO ERASE: nothing is encrypted
        bytes([0x48, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0]),  # EXIT FAILURE MODE: never fails
        bytes([0x48, 0x41, 0, 0, 0, 0, 0, 0, len(params), 0]),  # reserved bit
        bytes([0x48, 0x01, 0, 7, 0, 0, 0, 0, len(params), 0]),  # reserved byte
    ):
        assert h.sense(h.run(cdb, data=params)) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB), cdb.hex()


def test_sanitize_block_erase_deallocates_everything(make_harness) -> None:  # noqa: ANN001
    h = make_harness(blocks=64)
    h.run(rw(0x2A, 0, 64), data=b"secret!!" * (64 * 64))
    assert h.run(bytes([0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0])).status == Status.GOOD
    assert bytes(h.server.lu(0).store.data) == bytes(64 * 512)
    assert lba_status(bytes(h.run(gls(0)).data)) == [(0, 64, 1)]
    r = h.run(bytes([0x48, 0x02, 0, 0, 0, 0, 0, 0, 8, 0]), data=bytes(8))
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)  # no parameter list allowed


@pytest.mark.parametrize(
    "caps",
    [
        Capabilities(discard=True, extents=True),  # deallocated blocks may not read zero
        Capabilities(discard=True, discard_zeroes=True),  # no map to show them deallocated
    ],
)
def test_block_erase_not_offered_without_zeroing_discard_and_extents(
    make_harness,  # noqa: ANN001
    caps: Capabilities,
) -> None:
    h = make_harness(blocks=8, capabilities=caps)
    r = h.run(bytes([0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)  # a service action it lacks


@pytest.mark.parametrize(
    "params",
    [
        b"",
        bytes([0x01, 0, 0]),
        bytes([0x00, 0, 0, 4]) + b"abcd",  # OVERWRITE COUNT 0
        bytes([0x01, 0, 0, 0]) + b"abcd",  # pattern length 0
        bytes([0x01, 0, 0x02, 0x04]) + bytes(516),  # pattern longer than a block
    ],
)
def test_sanitize_bad_parameters_are_invalid_field_in_cdb(make_harness, params: bytes) -> None:  # noqa: ANN001
    h = make_harness(blocks=8, sanitize=True)
    r = h.run(
        bytes([0x48, 0x01, 0, 0, 0, 0, 0]) + len(params).to_bytes(2, "big") + b"\0", data=params
    )
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_sanitize_in_progress_blocks_other_commands(make_harness) -> None:  # noqa: ANN001
    h = make_harness(blocks=8, sanitize=True)
    params = bytes([0x01, 0, 0, 1]) + b"\xaa"
    from gluster_iscsi.scsi import ScsiTask

    from .conftest import N1

    h.run("000000000000")
    execution = h.server.execute(
        ScsiTask(bytes([0x48, 1, 0, 0, 0, 0, 0, 0, 5, 0]), 0, N1, data_out=memoryview(params))
    )
    op = next(execution)  # the first overwrite is in flight
    r = h.run(rw(0x28, 0, 1))
    assert h.sense(r) == (SenseKey.NOT_READY, Asc.LU_NOT_READY_SANITIZE_IN_PROGRESS)
    assert h.run("120000006000").status == Status.GOOD
    lu = h.server.lu(0)
    while type(op) is not ScsiResult:
        op = execution.send(h.runner.perform(op, lu))
    assert op.status == Status.GOOD
    assert h.run(rw(0x28, 0, 1)).status == Status.GOOD


def test_sanitize_can_be_turned_off(make_harness) -> None:  # noqa: ANN001
    h = make_harness(sanitize=False)
    r = h.run(bytes([0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0]), data=bytes([1, 0, 0, 4]) + b"abcd")
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_COMMAND_OPERATION_CODE)


# -- physical blocks larger than logical blocks (LBPPBE) ----------------------------------------


def test_4k_physical_blocks_are_reported(make_harness) -> None:  # noqa: ANN001
    h = make_harness(physical_block_size=4096)
    rc16 = bytes(h.run("9e100000000000000000000000200000").data)
    assert rc16[13] & 0x0F == 3  # LBPPBE: 8 logical blocks per physical block
    b0 = bytes(h.run("1201b0004000").data)
    assert struct.unpack(">H", b0[6:8])[0] == 8  # OPTIMAL TRANSFER LENGTH GRANULARITY
    assert struct.unpack(">I", b0[28:32])[0] == 8  # OPTIMAL UNMAP GRANULARITY


def test_lba_status_is_per_physical_block(make_harness) -> None:  # noqa: ANN001
    h = make_harness(physical_block_size=4096)
    h.run(rw(0x2A, 0, 64), data=b"m" * (64 * 512))
    params = unmap_params((1, 7))  # part of physical block 0
    assert h.run(unmap_cdb(len(params)), data=params).status == Status.GOOD
    assert lba_status(bytes(h.run(gls(0)).data))[0] == (0, 64, 0)
    params = unmap_params((8, 16))  # physical blocks 1 and 2, whole
    assert h.run(unmap_cdb(len(params)), data=params).status == Status.GOOD
    assert lba_status(bytes(h.run(gls(0)).data))[:3] == [(0, 8, 0), (8, 16, 1), (24, 40, 0)]
    # Asked from the middle of a deallocated physical block: deallocated from there on.
    assert lba_status(bytes(h.run(gls(9)).data))[:2] == [(9, 15, 1), (24, 40, 0)]


def test_physical_block_must_be_a_power_of_two_multiple() -> None:
    from .conftest import make_lu

    for bad in (256, 1536):
        with pytest.raises(ValueError):
            make_lu(physical_block_size=bad)
