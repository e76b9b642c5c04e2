"""SPC-2 RESERVE/RELEASE and persistent reservations with two (or three) I_T nexuses."""

from __future__ import annotations

import struct

import pytest

from gluster_iscsi.scsi import Nexus
from gluster_iscsi.scsi.opcodes import commands
from gluster_iscsi.scsi.reservations import Access
from gluster_iscsi.scsi.sense import Asc, SenseKey
from gluster_iscsi.scsi.task import Status

from .conftest import N1, N2, Harness, make_lu

N3 = Nexus(
    "iqn.2024-01.org.test:three",
    "iqn.2024-01.org.test:three,i,0x023d00000003",
    "iqn.2024-01.org.gluster:tgt,t,0x0001",
)
A, B, C = 0xAAAA, 0xBBBB, 0xCCCC
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
READ10 = "28000000000000000100"
WRITE10 = "2a000000000000000100"
BLOCK = bytes(512)


def prout(
    sa: int, key: int = 0, sa_key: int = 0, rtype: int = 0, flags: int = 0, extra: bytes = b""
) -> tuple[bytes, bytes]:
    params = struct.pack(">QQ4xBxH", key, sa_key, flags, 0) + extra
    cdb = bytes([0x5F, sa, rtype, 0, 0]) + struct.pack(">IB", len(params), 0)
    return cdb, params


def out(h: Harness, nexus: Nexus, sa: int, **kw: object) -> Status:
    cdb, params = prout(sa, **kw)  # type: ignore[arg-type]
    r = h.run(cdb, nexus=nexus, data=params)
    assert r.status != Status.CHECK_CONDITION or r.sense is not None
    return r.status


def prin(h: Harness, sa: int, nexus: Nexus = N1, alloc: int = 1024) -> bytes:
    r = h.run(bytes([0x5E, sa, 0, 0, 0, 0, 0]) + struct.pack(">HB", alloc, 0), nexus=nexus)
    assert r.status == Status.GOOD, r
    return bytes(r.data)


def register(h: Harness, nexus: Nexus, key: int) -> None:
    assert out(h, nexus, 0, sa_key=key) == Status.GOOD


def iscsi_tid(port: str) -> bytes:
    body = port.encode() + b"\x00"
    body += b"\x00" * (-len(body) % 4)
    return bytes([0x45, 0]) + len(body).to_bytes(2, "big") + body


# -- SPC-2 -------------------------------------------------------------------------------------


def test_spc2_reserve_two_initiators(h: Harness) -> None:
    assert h.run("160000000000").status == Status.GOOD
    assert h.run("160000000000").status == Status.GOOD  # re-reserve by the holder
    assert h.run("160000000000", nexus=N2).status == Status.RESERVATION_CONFLICT
    assert h.run("170000000000", nexus=N2).status == Status.GOOD  # no-op
    assert h.run("1a003f00ff00").status == Status.GOOD
    assert h.run("1a003f00ff00", nexus=N2).status == Status.RESERVATION_CONFLICT
    assert h.run("120000006000", nexus=N2).status == Status.GOOD
    assert h.run("a00000000000000001000000", nexus=N2).status == Status.GOOD
    assert h.run("170000000000").status == Status.GOOD
    assert h.run("560000000000000000 00".replace(" ", ""), nexus=N2).status == Status.GOOD


def test_spc2_reserve_conflicts_with_persistent_registrations(h: Harness) -> None:
    register(h, N1, A)
    assert h.run("160000000000", nexus=N2).status == Status.RESERVATION_CONFLICT
    assert h.run("160000000000").status == Status.RESERVATION_CONFLICT


# -- PR IN -------------------------------------------------------------------------------------


def test_read_keys_and_generation(h: Harness) -> None:
    assert prin(h, 0) == bytes(8)
    register(h, N1, A)
    register(h, N2, B)
    assert prin(h, 0) == struct.pack(">IIQQ", 2, 16, A, B)


def test_report_capabilities(h: Harness) -> None:
    assert prin(h, 2) == bytes([0, 8, 0x1C, 0x90, 0xEA, 0x01, 0, 0])
    h.server.lu(0).on_persist = lambda state: None
    assert prin(h, 2)[2] & 0x01  # PTPL_C once the daemon wired persistence


def test_register_key_rules(h: Harness) -> None:
    assert out(h, N1, 0, key=A, sa_key=B) == Status.RESERVATION_CONFLICT  # unregistered + key
    assert out(h, N1, 0, sa_key=0) == Status.GOOD  # unregistered, zero: nothing
    register(h, N1, A)
    assert out(h, N1, 0, key=B, sa_key=C) == Status.RESERVATION_CONFLICT
    assert out(h, N1, 0, key=A, sa_key=C) == Status.GOOD  # change key
    assert out(h, N1, 6, key=0, sa_key=B) == Status.GOOD  # ignore existing key
    assert prin(h, 0)[8:] == struct.pack(">Q", B)
    assert out(h, N1, 0, key=B, sa_key=0) == Status.GOOD  # unregister
    assert prin(h, 0)[4:8] == bytes(4)


def test_parameter_list_length_must_be_24(h: Harness) -> None:
    cdb, params = prout(0, sa_key=A)
    cdb = cdb[:5] + struct.pack(">IB", 20, 0)
    r = h.run(cdb, data=params[:20])
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)


def test_reserve_requires_registration_and_valid_type(h: Harness) -> None:
    assert out(h, N1, 1, key=A, rtype=WE) == Status.RESERVATION_CONFLICT
    register(h, N1, A)
    assert out(h, N1, 1, key=B, rtype=WE) == Status.RESERVATION_CONFLICT
    cdb, params = prout(1, key=A, rtype=2)
    assert h.sense(h.run(cdb, data=params)) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)
    cdb, params = prout(1, key=A, rtype=0x11)  # scope 1
    assert h.sense(h.run(cdb, data=params)) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)


# -- reservation types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtype", "reg_read", "reg_write", "unreg_read", "unreg_write"),
    [
        (WE, True, False, True, False),
        (EA, False, False, False, False),
        (WE_RO, True, True, True, False),
        (EA_RO, True, True, False, False),
        (WE_AR, True, True, True, False),
        (EA_AR, True, True, False, False),
    ],
)
def test_access_under_each_type(
    h: Harness, rtype: int, reg_read: bool, reg_write: bool, unreg_read: bool, unreg_write: bool
) -> None:
    register(h, N1, A)
    register(h, N2, B)
    assert out(h, N1, 1, key=A, rtype=rtype) == Status.GOOD
    assert h.run(READ10).status == Status.GOOD
    assert h.run(WRITE10, data=BLOCK).status == Status.GOOD

    def ok(nexus: Nexus, cdb: str) -> bool:
        st = h.run(cdb, nexus=nexus, data=BLOCK).status
        assert st in (Status.GOOD, Status.RESERVATION_CONFLICT)
        return st == Status.GOOD

    assert ok(N2, READ10) == reg_read
    assert ok(N2, WRITE10) == reg_write
    assert ok(N3, READ10) == unreg_read
    assert ok(N3, WRITE10) == unreg_write
    assert ok(N3, "120000006000") and ok(N3, "25000000000000000000")


def test_conflict_table_drives_every_command(h: Harness) -> None:
    """Under Exclusive Access held by N1, what N3 may run is exactly the ALWAYS class."""
    register(h, N1, A)
    assert out(h, N1, 1, key=A, rtype=EA) == Status.GOOD
    for cmd in commands(h.server.lu(0)):
        if cmd.opcode == 0x5F:
            continue  # PERSISTENT RESERVE OUT decides by registration itself (SPC-4 5.9.7)
        cdb = bytes(cmd.usage[:1]) + bytes(cmd.cdb_length - 1)
        if cmd.service_action is not None:
            cdb = cdb[:1] + bytes([cmd.service_action]) + cdb[2:]
        r = h.run(cdb, nexus=N3, data=bytes(512))
        conflict = r.status == Status.RESERVATION_CONFLICT
        assert conflict == (cmd.pr_access(cdb) != Access.ALWAYS), cmd.name


def test_read_reservation_and_all_registrants_key(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    assert prin(h, 1) == struct.pack(">II", 2, 0)
    out(h, N1, 1, key=A, rtype=WE)
    assert prin(h, 1) == struct.pack(">IIQ4xxBH", 2, 16, A, WE, 0)
    out(h, N1, 2, key=A, rtype=WE)
    out(h, N1, 1, key=A, rtype=EA_AR)
    assert prin(h, 1)[8:16] == bytes(8)
    # any registrant holds an all-registrants reservation and may release it
    assert out(h, N2, 2, key=B, rtype=EA_AR) == Status.GOOD
    assert prin(h, 1)[4:8] == bytes(4)


def test_release_rules(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    out(h, N1, 1, key=A, rtype=WE_RO)
    assert out(h, N2, 2, key=B, rtype=WE_RO) == Status.GOOD  # not the holder: no-op
    assert prin(h, 1)[4:8] != bytes(4)
    cdb, params = prout(2, key=A, rtype=WE)
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
    assert out(h, N1, 2, key=A, rtype=WE_RO) == Status.GOOD
    r = h.run("000000000000", nexus=N2, clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.RESERVATIONS_RELEASED)


def test_unregistering_holder_releases(h: Harness) -> None:
    register(h, N1, A)
    out(h, N1, 1, key=A, rtype=WE)
    out(h, N1, 0, key=A, sa_key=0)
    assert prin(h, 1)[4:8] == bytes(4)


def test_preempt_takes_over_and_notifies(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    out(h, N1, 1, key=A, rtype=WE)
    h.run("000000000000")
    assert out(h, N2, 4, key=B, sa_key=A, rtype=EA) == Status.GOOD
    assert prin(h, 0, nexus=N2) == struct.pack(">IIQ", 3, 8, B)
    assert prin(h, 1, nexus=N2)[8:16] == struct.pack(">Q", B)
    r = h.run("000000000000", clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.REGISTRATIONS_PREEMPTED)
    assert h.run(READ10).status == Status.RESERVATION_CONFLICT


def test_preempt_without_reservation_removes_registrations(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    assert out(h, N1, 4, key=A, sa_key=B, rtype=WE) == Status.GOOD
    assert prin(h, 0) == struct.pack(">IIQ", 3, 8, A)
    assert out(h, N1, 4, key=A, sa_key=C, rtype=WE) == Status.RESERVATION_CONFLICT
    cdb, params = prout(4, key=A, sa_key=0, rtype=WE)
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST)


def test_preempt_and_abort_names_the_victims(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    out(h, N2, 1, key=B, rtype=WE)
    cdb, params = prout(5, key=A, sa_key=B, rtype=WE)
    r = h.run(cdb, data=params)
    assert r.status == Status.GOOD
    assert r.extra["abort_initiators"] == [N2.initiator_port]


def test_clear(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    out(h, N1, 1, key=A, rtype=WE)
    h.run("000000000000", nexus=N2)
    assert out(h, N1, 3, key=A) == Status.GOOD
    assert prin(h, 0) == struct.pack(">II", 3, 0)
    r = h.run("000000000000", nexus=N2, clear_ua=False)
    assert h.sense(r) == (SenseKey.UNIT_ATTENTION, Asc.RESERVATIONS_PREEMPTED)
    assert h.run(WRITE10, nexus=N2, data=BLOCK).status == Status.GOOD


def test_spec_i_pt_registers_named_initiators(h: Harness) -> None:
    tids = iscsi_tid(N2.initiator_port) + iscsi_tid(N3.initiator_port)
    extra = struct.pack(">I", len(tids)) + tids
    assert out(h, N1, 0, sa_key=A, flags=0x08, extra=extra) == Status.GOOD
    assert prin(h, 0) == struct.pack(">IIQQQ", 1, 24, A, A, A)
    assert out(h, N2, 1, key=A, rtype=WE) == Status.GOOD
    # a registered nexus may not use SPEC_I_PT
    cdb, params = prout(0, key=A, sa_key=B, flags=0x08, extra=extra)
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST)


def test_all_tg_pt_registration_matches_other_ports(h: Harness) -> None:
    other_port = Nexus(N1.initiator_name, N1.initiator_port, "iqn.x:tgt,t,0x0002", 2, 2)
    assert out(h, N1, 0, sa_key=A, flags=0x04) == Status.GOOD
    assert out(h, other_port, 1, key=A, rtype=WE) == Status.GOOD
    full = prin(h, 3)
    assert full[8:16] == struct.pack(">Q", A) and full[20] == 0x03 and full[21] == WE


def test_read_full_status_transport_ids(h: Harness) -> None:
    register(h, N1, A)
    register(h, N2, B)
    out(h, N1, 1, key=A, rtype=WE)
    data = prin(h, 3)
    gen, length = struct.unpack(">II", data[:8])
    assert gen == 2 and length == len(data) - 8
    first = data[8:]
    assert first[:8] == struct.pack(">Q", A) and first[12] == 0x01 and first[13] == WE
    tid_len = struct.unpack(">I", first[20:24])[0]
    tid = first[24 : 24 + tid_len]
    assert tid[0] == 0x45 and tid[4:].rstrip(b"\x00") == N1.initiator_port.encode()


def test_register_and_move(h: Harness) -> None:
    register(h, N1, A)
    out(h, N1, 1, key=A, rtype=WE)
    tid = iscsi_tid(N2.initiator_port)
    params = struct.pack(">QQxBHI", A, B, 0, 1, len(tid)) + tid
    cdb = bytes([0x5F, 7, WE, 0, 0]) + struct.pack(">IB", len(params), 0)
    assert h.run(cdb, data=params).status == Status.GOOD
    assert prin(h, 1)[8:16] == struct.pack(">Q", B)
    assert h.run(WRITE10, nexus=N2, data=BLOCK).status == Status.GOOD
    assert h.run(WRITE10, data=BLOCK).status == Status.RESERVATION_CONFLICT
    # N1 is still registered (UNREG was 0) but no longer the holder
    assert struct.unpack(">Q", prin(h, 0)[8:16])[0] == A


def test_aptpl_persists_and_restores(h: Harness) -> None:
    saved: list[object] = []
    lu = h.server.lu(0)
    lu.on_persist = saved.append
    assert out(h, N1, 0, sa_key=A, flags=0x01) == Status.GOOD
    out(h, N1, 1, key=A, rtype=EA)
    state = saved[-1]
    assert isinstance(state, dict) and state["aptpl"] and state["type"] == EA
    fresh = make_lu(serial=lu.serial)
    fresh.load_pr_state(state)
    h2 = Harness(type(h.server)({0: fresh}))
    assert prin(h2, 1)[8:16] == struct.pack(">Q", A)
    assert h2.run(READ10, nexus=N2).status == Status.RESERVATION_CONFLICT
    assert prin(h2, 2)[3] & 0x01  # PTPL_A: persistence is active
    out(h, N1, 0, key=A, sa_key=A)  # APTPL 0 now: the daemon is told to forget
    assert saved[-1] is None


def test_aptpl_refused_without_persistence_hook(h: Harness) -> None:
    cdb, params = prout(0, sa_key=A, flags=0x01)
    r = h.run(cdb, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST)


def test_pr_survives_target_reset_and_nexus_loss(h: Harness) -> None:
    register(h, N1, A)
    out(h, N1, 1, key=A, rtype=WE)
    h.server.target_reset(N2)
    h.server.nexus_lost(N1)
    assert prin(h, 1)[8:16] == struct.pack(">Q", A)


def test_register_and_move_to_another_target_port(h: Harness) -> None:
    port2 = Nexus(
        N2.initiator_name, N2.initiator_port, "iqn.2024-01.org.gluster:tgt,t,0x0002", 2, 2
    )
    h.run("000000000000", nexus=port2)  # the server learns relative port 2
    register(h, N1, A)
    out(h, N1, 1, key=A, rtype=WE)
    tid = iscsi_tid(N2.initiator_port)
    params = struct.pack(">QQxBHI", A, B, 0x02, 2, len(tid)) + tid  # UNREG
    cdb = bytes([0x5F, 7, WE, 0, 0]) + struct.pack(">IB", len(params), 0)
    assert h.run(cdb, data=params).status == Status.GOOD
    assert h.run(WRITE10, nexus=port2, data=BLOCK).status == Status.GOOD
    assert h.run(WRITE10, nexus=N2, data=BLOCK).status == Status.RESERVATION_CONFLICT
    assert prin(h, 0, nexus=port2) == struct.pack(">IIQ", 2, 8, B)  # N1 unregistered
    # an unknown relative port is refused
    out(h, port2, 0, key=B, sa_key=C)
    params = struct.pack(">QQxBHI", C, A, 0, 9, len(tid)) + tid
    r = h.run(cdb, nexus=port2, data=params)
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST)
