"""The preamble: LUN check, unit attentions, opcode table, sense formats, resets."""

from __future__ import annotations

from gluster_iscsi.scsi import Nexus
from gluster_iscsi.scsi.device import DEPARTED_KEEP
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


def _past_sessions(h: Harness, n: int) -> None:
    """``n`` sessions, each with its own initiator port, that log in, do I/O and end."""
    for i in range(n):
        nexus = Nexus(f"iqn.2024-01.org.test:past{i}", f"iqn.2024-01.org.test:past{i},i,0x{i:012x}",
                      N1.target_port)
        h.server.nexus_added(nexus)
        h.run("000000000000", nexus=nexus)
        h.server.nexus_lost(nexus)


def test_a_past_sessions_state_is_released_when_its_nexus_ends(h: Harness) -> None:
    h.server.add_lun(1, make_lu())
    h.run("000000000000", nexus=N2)  # one live nexus
    _past_sessions(h, 50)
    assert list(h.server._nexuses) == [N2.initiator_port]
    for lun in (0, 1):
        assert list(h.server.lu(lun)._ua) == [N2.initiator_port]  # what a LUN RESET walks
    assert len(h.server._departed) == 50
    _past_sessions(h, DEPARTED_KEEP + 10)
    assert len(h.server._departed) == DEPARTED_KEEP  # what is remembered of them is bounded


def test_registrations_survive_their_nexus_and_a_returning_port_learns_of_the_loss(h: Harness) -> None:
    key = 0x1234
    cdb = bytes([0x5F, 0x00]) + bytes(5) + (24).to_bytes(2, "big") + b"\0"  # PR OUT REGISTER
    params = bytes(8) + key.to_bytes(8, "big") + bytes(8)
    assert h.run(cdb, data=params).status == Status.GOOD
    h.server.nexus_lost(N1)
    assert N1.initiator_port not in h.server.lu(0)._ua
    assert h.server.lu(0).pr.registrations  # SPC-4: registrations are the port's, kept
    h.server.nexus_added(N1)
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.I_T_NEXUS_LOSS_OCCURRED)
    prin = bytes([0x5E, 0x00]) + bytes(5) + (64).to_bytes(2, "big") + b"\0"  # READ KEYS
    assert bytes(h.run(prin).data)[8:16] == key.to_bytes(8, "big")


def test_the_end_of_a_reinstated_session_leaves_its_successor_alone(h: Harness) -> None:
    old = Nexus(N1.initiator_name, N1.initiator_port, N1.target_port)
    h.server.nexus_added(old)
    h.server.nexus_lost(old)  # reinstatement: the old session ends...
    h.server.nexus_added(N1)  # ...and the new one starts
    h.run("000000000000")
    h.server.nexus_lost(old)  # the old connection goes away late: old news
    assert h.server._nexuses[N1.initiator_port] is N1
    assert N1.initiator_port in h.server.lu(0)._ua
