"""The preamble: LUN check, unit attentions, opcode table, sense formats, resets."""

from __future__ import annotations

from gluster_iscsi.scsi.sense import Asc, SenseKey, parse_sense
from gluster_iscsi.scsi.task import Status

from .conftest import N1, N2, Harness, make_lu

ILLEGAL = SenseKey.ILLEGAL_REQUEST


def test_unknown_opcode(h: Harness) -> None:
    r = h.run("ff0000000000")
    assert r.status == Status.CHECK_CONDITION
    assert r.sense == bytes([0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0, 0, 0xC0, 0, 0])


def test_unknown_service_action(h: Harness) -> None:
    r = h.run("9e1f0000000000000000000000200000")
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)
    assert r.sense[15:18] == bytes([0xCC, 0, 1])


def test_naca_bit_is_refused(h: Harness) -> None:
    r = h.run("000000000004")
    assert h.sense(r) == (ILLEGAL, Asc.INVALID_FIELD_IN_CDB)


def test_power_on_ua_once_then_cleared(h: Harness) -> None:
    h.server.nexus_added(N1)
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)
    assert h.run("000000000000", clear_ua=False).status == Status.GOOD
    h.server.nexus_added(N1)  # the same nexus again: no new UA
    assert h.run("000000000000", clear_ua=False).status == Status.GOOD


def test_ua_does_not_block_inquiry_report_luns(h: Harness) -> None:
    h.server.nexus_added(N2)
    for cdb in ("120000006000", "a00000000000000001000000"):
        assert h.run(cdb, nexus=N2, clear_ua=False).status == Status.GOOD
    r = h.run("28000000000000000100", nexus=N2, clear_ua=False)
    assert h.sense(r)[0] == SenseKey.UNIT_ATTENTION
    # the UA even comes before an unknown opcode is refused
    h.server.lun_reset(0, N1)
    assert h.sense(h.run("ff0000000000", nexus=N2, clear_ua=False))[0] == SenseKey.UNIT_ATTENTION


def test_add_and_remove_lun_raise_reported_luns_changed(h: Harness) -> None:
    h.run("000000000000")
    h.server.add_lun(1, make_lu(serial="second"))
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)
    r = h.run("000000000000", lun=1, clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)
    h.server.remove_lun(1)
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)


def test_target_reset_ua_and_releases_spc2_reservation(h: Harness) -> None:
    h.run("000000000000", nexus=N2)
    assert h.run("160000000000").status == Status.GOOD
    assert h.run("28000000000000000100", nexus=N2).status == Status.RESERVATION_CONFLICT
    h.server.target_reset(N1)
    r = h.run("000000000000", nexus=N2, clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.BUS_DEVICE_RESET_FUNCTION_OCCURRED)
    assert h.run("28000000000000000100", nexus=N2).status == Status.GOOD


def test_nexus_loss_releases_spc2_reservation(h: Harness) -> None:
    assert h.run("160000000000").status == Status.GOOD
    h.server.nexus_lost(N1)
    assert h.run("160000000000", nexus=N2).status == Status.GOOD


def test_request_sense_desc_format(h: Harness) -> None:
    h.server.nexus_added(N2)
    r = h.run("03010000ff00", nexus=N2, clear_ua=False)
    assert bytes(r.data)[:4] == bytes([0x72, 6, 0x29, 0])
    assert parse_sense(bytes(r.data)) == (6, Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)


def test_nexus_loss_is_reported_when_the_port_returns(h: Harness) -> None:
    h.run("000000000000")
    h.server.nexus_lost(N1)
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.I_T_NEXUS_LOSS_OCCURRED)


def test_store_lookup_for_the_driver(h: Harness) -> None:
    assert h.server.store(0) is h.server.lu(0).store
    assert h.server.store(9) is None


def test_report_luns_clears_reported_luns_changed(h: Harness) -> None:
    h.run("000000000000")
    h.server.add_lun(1, make_lu(serial="second"))
    assert h.run("a00000000000000001000000", clear_ua=False).status == Status.GOOD
    assert h.run("000000000000", clear_ua=False).status == Status.GOOD
