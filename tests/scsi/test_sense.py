"""Sense data builders and the errno -> sense mapping."""

from __future__ import annotations

import errno

import pytest

from gluster_iscsi.backstore.base import BackingStoreError
from gluster_iscsi.scsi.sense import (
    Asc,
    FieldPointer,
    SenseKey,
    descriptor_sense,
    fixed_sense,
    from_store_error,
    invalid_cdb,
    parse_sense,
)


def test_fixed_sense_golden() -> None:
    sense = fixed_sense(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=0x1234)
    assert sense == bytes.fromhex("f0000e00001234 0a 00000000 1d00 00 000000".replace(" ", ""))
    sense = invalid_cdb(2, 5).sense()
    assert sense == bytes.fromhex("700005000000000a000000002400 00 cd0002".replace(" ", ""))


def test_descriptor_sense_golden() -> None:
    sense = descriptor_sense(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        information=7,
        field=FieldPointer(9, in_cdb=False),
    )
    assert sense == bytes.fromhex(
        "72052600000000 14000a8000 000000000000000702060000 800009 00".replace(" ", "")
    )
    assert parse_sense(sense) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST)


@pytest.mark.parametrize(
    ("err", "write", "expected"),
    [
        (errno.EIO, False, (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR)),
        (errno.EIO, True, (SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)),
        (errno.ENOSPC, True, (SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT)),
        (errno.EROFS, True, (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)),
        (errno.ENOTCONN, False, (SenseKey.NOT_READY, Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)),
        (errno.ESHUTDOWN, True, (SenseKey.NOT_READY, Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)),
        (errno.EHOSTDOWN, True, (SenseKey.NOT_READY, Asc.LU_NOT_ACCESSIBLE_TRANSITIONING)),
        (errno.ETIMEDOUT, True, (SenseKey.NOT_READY, Asc.LU_NOT_READY_BECOMING_READY)),
        (errno.EOPNOTSUPP, True, (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)),
        (errno.EXDEV, False, (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR)),
    ],
)
def test_errno_mapping(err: int, write: bool, expected: tuple[int, int]) -> None:
    cc = from_store_error(BackingStoreError(err, "x"), write=write)
    assert (cc.key, cc.asc) == expected
    assert parse_sense(cc.sense()) == expected


def test_non_os_errors_are_internal_target_failures() -> None:
    cc = from_store_error(ValueError("bug"))
    assert (cc.key, cc.asc) == (SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE)


def test_asc_values_are_unique() -> None:
    assert len({a.value for a in Asc}) == len(Asc)
