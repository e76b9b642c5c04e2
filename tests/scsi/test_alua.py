"""ALUA (SPC-4 5.15): access states per target port group, the commands each state allows,
the 2A/06 unit attention, REPORT TARGET PORT GROUPS and VPD 83h as a gateway group sets them."""

from __future__ import annotations

import struct

import pytest

from gluster_iscsi.scsi import DeviceServer, Nexus
from gluster_iscsi.scsi.alua import AccessState
from gluster_iscsi.scsi.opcodes import commands
from gluster_iscsi.scsi.sense import Asc, SenseKey
from gluster_iscsi.scsi.task import Status

from .conftest import TARGET, Harness, make_lu

AO = AccessState.ACTIVE_OPTIMIZED
SB = AccessState.STANDBY
UN = AccessState.UNAVAILABLE
TR = AccessState.TRANSITIONING


def port_nexus(n: int, who: str = "one") -> Nexus:
    """An initiator port logged in through gateway ``n``: TPGT, relative port and group n."""
    return Nexus(
        f"iqn.2024-01.org.test:{who}",
        f"iqn.2024-01.org.test:{who},i,0x023d0000000{n}",
        f"{TARGET},t,0x000{n}",
        n,
        n,
    )


A, B, C = port_nexus(1), port_nexus(2), port_nexus(3)


def not_ready(ascq: int) -> bytes:
    """Fixed-format sense: NOT READY, LOGICAL UNIT NOT ACCESSIBLE (04h/ascq), nothing else."""
    return bytes([0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, ascq, 0, 0, 0, 0])


def prout_register(key: int) -> tuple[str, bytes]:
    params = struct.pack(">QQ4xBxH", 0, key, 0, 0)
    return "5f0000000000000018" + "00" * 7, params


# name -> (CDB hex, data-out or None)
COMMANDS: dict[str, tuple[str, bytes | None]] = {
    "TEST UNIT READY": ("000000000000", None),
    "READ(10)": ("28000000000000000100", None),
    "WRITE(10)": ("2a000000000000000100", bytes(512)),
    "INQUIRY": ("120000006000", None),
    "REPORT LUNS": ("a0000000000000000100" + "0000", None),
    "REPORT TARGET PORT GROUPS": ("a30a00000000000001000000", None),
    "MODE SENSE(6)": ("1a003f00ff00", None),
    "PERSISTENT RESERVE IN": ("5e000000000000040000", None),
    "PERSISTENT RESERVE OUT": (prout_register(0xABC)[0], prout_register(0xABC)[1]),
    "REQUEST SENSE": ("030000001200", None),
}
#: What a non-active group still serves (SPC-4 5.15.2.4.4-5, 5.15.2.5).
SERVED = {
    SB: {"INQUIRY", "REPORT LUNS", "REPORT TARGET PORT GROUPS", "MODE SENSE(6)",
         "PERSISTENT RESERVE IN", "PERSISTENT RESERVE OUT", "REQUEST SENSE"},
    UN: {"INQUIRY", "REPORT LUNS", "REPORT TARGET PORT GROUPS", "REQUEST SENSE"},
    TR: {"INQUIRY", "REPORT LUNS", "REPORT TARGET PORT GROUPS", "REQUEST SENSE"},
}
ASCQ = {SB: 0x0B, UN: 0x0C, TR: 0x0A}


def group_harness(state: AccessState) -> Harness:
    """Gateway 1 owns the LU (active/optimized); gateway 2's group is in ``state``."""
    h = Harness(DeviceServer({0: make_lu()}, target_name=TARGET))
    h.server.lu(0).alua.set_groups({1: (AO, [1]), 2: (state, [2])})
    return h


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("state", [AO, SB, UN, TR], ids=lambda s: s.name)
def test_each_access_state_serves_what_spc4_allows_and_refuses_the_rest(
    state: AccessState, name: str
) -> None:
    h = group_harness(state)
    cdb, data = COMMANDS[name]
    r = h.run(cdb, nexus=B, data=data)
    if state is AO or name in SERVED[state]:
        assert r.status == Status.GOOD, (r.status, r.sense)
    else:
        assert r.status == Status.CHECK_CONDITION
        assert r.sense == not_ready(ASCQ[state])
    # Through the owner's port the same command always runs.
    if name not in ("PERSISTENT RESERVE OUT",):
        assert h.run(cdb, nexus=A, data=data).status == Status.GOOD


def test_refusals_use_descriptor_sense_when_d_sense_is_set() -> None:
    h = group_harness(SB)
    h.server.lu(0).load_shared_state("mode", {"wce": True, "d_sense": True, "swp": False})
    r = h.run("28000000000000000100", nexus=B)
    assert r.sense == bytes([0x72, 0x02, 0x04, 0x0B, 0, 0, 0, 0])


def test_a_group_the_table_does_not_name_is_unavailable() -> None:
    h = group_harness(SB)
    stranger = port_nexus(7)
    assert h.server.lu(0).alua.state_of(7) is UN
    assert h.run("000000000000", nexus=stranger).sense == not_ready(0x0C)
    assert h.run("120000006000", nexus=stranger).status == Status.GOOD


def test_a_lone_gateway_is_unrestricted_and_every_group_active_optimized(h: Harness) -> None:
    alua = h.server.lu(0).alua
    assert not alua.restricted
    assert alua.state_of(1) is AO and alua.state_of(42) is AO
    for nexus in (A, B, C):
        assert h.run("28000000000000000100", nexus=nexus).status == Status.GOOD


def test_unit_attention_comes_before_the_access_state_and_that_before_reservations() -> None:
    h = group_harness(SB)
    lu = h.server.lu(0)
    # A holds a Write Exclusive reservation: B's WRITE would conflict, were B active.
    cdb, params = prout_register(0xA)
    assert h.run(cdb, nexus=A, data=params).status == Status.GOOD
    reserve = bytes([0x5F, 1, 1, 0, 0]) + struct.pack(">IB", 24, 0)
    assert h.run(reserve, nexus=A, data=struct.pack(">QQ8x", 0xA, 0)).status == Status.GOOD
    h.run("000000000000", nexus=B)  # B logs in
    lu.clear_ua(B.initiator_port)
    lu.queue_ua(B.initiator_port, Asc.MODE_PARAMETERS_CHANGED)
    first = h.run("2a000000000000000100", nexus=B, data=bytes(512), clear_ua=False)
    assert h.sense(first) == (SenseKey.UNIT_ATTENTION, Asc.MODE_PARAMETERS_CHANGED)
    second = h.run("2a000000000000000100", nexus=B, data=bytes(512), clear_ua=False)
    assert second.status == Status.CHECK_CONDITION and second.sense == not_ready(0x0B)
    # Once active, B meets the reservation.
    lu.alua.set_groups({1: (SB, [1]), 2: (AO, [2])}, announce=False)
    third = h.run("2a000000000000000100", nexus=B, data=bytes(512), clear_ua=False)
    assert third.status == Status.RESERVATION_CONFLICT


def three_gateways() -> tuple[Harness, DeviceServer]:
    h = Harness(DeviceServer({0: make_lu()}, target_name=TARGET))
    for nexus in (A, B, C):
        h.run("000000000000", nexus=nexus)  # login; clears the power-on UA
    return h, h.server


def pending(h: Harness, nexus: Nexus) -> list[Asc]:
    return list(h.server.lu(0)._ua.get(nexus.initiator_port, []))


def test_a_state_change_reaches_every_nexus_once_with_2a06_and_a_no_op_does_not() -> None:
    h, server = three_gateways()
    alua = server.lu(0).alua
    table = {1: (AO, [1]), 2: (SB, [2]), 3: (SB, [3])}
    assert alua.set_groups(table) is True  # the first table changes the groups
    for nexus in (A, B, C):
        assert pending(h, nexus) == [Asc.ASYMMETRIC_ACCESS_STATE_CHANGED]
    for nexus in (A, B, C):  # reported once: UA, then the command's own answer
        r = h.run("000000000000", nexus=nexus, clear_ua=False)
        assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.ASYMMETRIC_ACCESS_STATE_CHANGED)
        again = h.run("000000000000", nexus=nexus, clear_ua=False)
        assert again.status == (Status.GOOD if nexus is A else Status.CHECK_CONDITION)
        assert nexus is A or again.sense == not_ready(0x0B)
    # The same table again (ports in another order): nothing changed, nothing announced.
    assert alua.set_groups({3: (SB, [3]), 1: (AO, [1]), 2: (SB, [2])}) is False
    assert all(pending(h, n) == [] for n in (A, B, C))
    # A move: 1 -> standby, 2 -> active/optimized.
    assert alua.set_groups({1: (SB, [1]), 2: (AO, [2]), 3: (SB, [3])}) is True
    assert all(pending(h, n) == [Asc.ASYMMETRIC_ACCESS_STATE_CHANGED] for n in (A, B, C))
    for n in (A, B, C):
        server.lu(0).clear_ua(n.initiator_port)
    # Unannounced: the table changes, no UA (the runtime tells the initiators itself).
    assert alua.set_groups({1: (TR, [1]), 2: (AO, [2]), 3: (SB, [3])}, announce=False)
    assert all(pending(h, n) == [] for n in (A, B, C))
    assert alua.state_of(1) is TR and alua.state_of(2) is AO


def test_set_groups_refuses_states_it_does_not_report_and_ports_in_two_groups() -> None:
    alua = make_lu().alua
    with pytest.raises(ValueError, match="OFFLINE"):
        alua.set_groups({1: (AccessState.OFFLINE, [1])})
    with pytest.raises(ValueError, match="ACTIVE_NON_OPTIMIZED"):
        alua.set_groups({1: (AccessState.ACTIVE_NON_OPTIMIZED, [1])})
    with pytest.raises(ValueError, match="port 2"):
        alua.set_groups({1: (AO, [1, 2]), 2: (SB, [2])})
    with pytest.raises(ValueError, match="group 0"):
        alua.set_groups({0: (AO, [1])})
    assert not alua.restricted  # nothing was installed


def rtpg_descriptors(data: bytes, start: int) -> list[dict[str, object]]:
    out = []
    pos = start
    while pos < len(data):
        d = data[pos : pos + 8]
        count = d[7]
        ports = [int.from_bytes(data[pos + 8 + 4 * i + 2 : pos + 8 + 4 * i + 4], "big")
                 for i in range(count)]
        assert all(data[pos + 8 + 4 * i : pos + 10 + 4 * i] == b"\0\0" for i in range(count))
        out.append({
            "pref": d[0] >> 7, "state": d[0] & 0x0F, "supported": d[1],
            "group": int.from_bytes(d[2:4], "big"), "reserved": d[4], "status": d[5],
            "vendor": d[6], "ports": ports,
        })
        pos += 8 + 4 * count
    assert pos == len(data)
    return out


def test_rtpg_lists_every_group_with_its_true_state_the_same_through_every_port() -> None:
    h, server = three_gateways()
    alua = server.lu(0).alua
    alua.set_groups({1: (AO, [1]), 2: (SB, [2]), 3: (UN, [3])}, announce=False)
    short = [bytes(h.run("a30a00000000000001000000", nexus=n).data) for n in (A, B, C)]
    ext = [bytes(h.run("a32a00000000000001000000", nexus=n).data) for n in (A, B, C)]
    assert short[0] == short[1] == short[2] and ext[0] == ext[1] == ext[2]
    data = short[0]
    assert int.from_bytes(data[0:4], "big") == len(data) - 4 == 3 * 12
    groups = rtpg_descriptors(data, 4)
    # T_SUP | U_SUP | S_SUP | AO_SUP: no offline, no LBA dependent, no active/non-optimized
    assert groups == [
        {"pref": 0, "state": 0x0, "supported": 0x8D, "group": 1, "reserved": 0, "status": 0,
         "vendor": 0, "ports": [1]},
        {"pref": 0, "state": 0x2, "supported": 0x8D, "group": 2, "reserved": 0, "status": 0,
         "vendor": 0, "ports": [2]},
        {"pref": 0, "state": 0x3, "supported": 0x8D, "group": 3, "reserved": 0, "status": 0,
         "vendor": 0, "ports": [3]},
    ]
    e = ext[0]
    assert int.from_bytes(e[0:4], "big") == len(e) - 4  # counts header bytes 4..7 too
    assert e[4] == 0x10  # FORMAT TYPE 001b
    assert e[5] == 60  # IMPLICIT TRANSITION TIME (default)
    assert e[6:8] == b"\0\0"
    assert e[8:] == data[4:]
    alua.implicit_transition_seconds = 15
    assert bytes(h.run("a32a00000000000001000000", nexus=B).data)[5] == 15
    # A move: groups whose state changed say so (status 02h, implicit), the other does not.
    alua.set_groups({1: (SB, [1]), 2: (AO, [2]), 3: (UN, [3])})
    moved = rtpg_descriptors(bytes(h.run("a30a00000000000001000000", nexus=C).data), 4)
    assert [(g["group"], g["state"], g["status"]) for g in moved] == [
        (1, 0x2, 0x02), (2, 0x0, 0x02), (3, 0x3, 0x00)
    ]


def test_rtpg_of_a_lone_gateway_is_as_before(h: Harness) -> None:
    for nexus in (A, B):
        h.run("000000000000", nexus=nexus)
    data = bytes(h.run("a30a00000000000001000000").data)
    assert rtpg_descriptors(data, 4) == [
        {"pref": 0, "state": 0, "supported": 0x01, "group": 1, "reserved": 0, "status": 0,
         "vendor": 0, "ports": [1]},
        {"pref": 0, "state": 0, "supported": 0x01, "group": 2, "reserved": 0, "status": 0,
         "vendor": 0, "ports": [2]},
    ]
    assert bytes(h.run("a32a00000000000001000000").data)[4:8] == bytes([0x10, 0, 0, 0])


def test_inquiry_says_implicit_alua_and_vpd_83h_names_the_port_and_its_group() -> None:
    h = group_harness(SB)
    assert bytes(h.run("120000006000", nexus=B).data)[5] & 0x30 == 0x10  # TPGS 01b
    data = bytes(h.run("12018301ff00", nexus=B).data)
    descs = {}
    pos = 4
    while pos < len(data):
        d = data[pos : pos + 4 + data[pos + 3]]
        descs[d[1] & 0x0F] = d
        pos += len(d)
    # protocol iSCSI (5), binary; PIV 1, association 01b (target port)
    assert descs[4] == bytes([0x51, 0x94, 0, 4, 0, 0, 0, 2])  # relative target port 2
    assert descs[5] == bytes([0x51, 0x95, 0, 4, 0, 0, 0, 2])  # target port group 2


def test_the_opcode_table_gives_every_command_its_access_states() -> None:
    by_name = {c.name: c.alua for c in commands()}
    any_state = (1 << SB) | (1 << UN) | (1 << TR)
    for name in ("INQUIRY", "REPORT LUNS", "REQUEST SENSE", "REPORT TARGET PORT GROUPS"):
        assert by_name[name] == any_state, name
    for name in ("MODE SENSE(6)", "MODE SENSE(10)", "MODE SELECT(6)", "MODE SELECT(10)",
                 "READ CAPACITY(10)", "READ CAPACITY(16)"):
        assert by_name[name] == 1 << SB, name
    assert all(by_name[f"PERSISTENT RESERVE IN/{sa}"] == 1 << SB for sa in range(4))
    assert all(by_name[f"PERSISTENT RESERVE OUT/{sa}"] == 1 << SB for sa in range(8))
    media = [c.name for c in commands() if c.media and c.alua & ((1 << UN) | (1 << TR))]
    assert media == []  # nothing touching the medium runs unless active
    writes = [c.name for c in commands() if c.write and c.alua]
    assert writes == []
