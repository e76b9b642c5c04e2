"""Issue 16, protocol slips found under hostile load: Logout behind a running command, CmdSN
consumed by every reject, pair rules of negotiation, Data-In bursts, login/text response
sizes, commands in flight per session, login status for unknown and forbidden targets."""

from __future__ import annotations

import struct

import pytest

from gluster_iscsi.iscsi import events as ev
from gluster_iscsi.scsi.task import ScsiResult, Status

from . import initiator as I
from .test_connection import INAME, feed, logged_in, new_conn

TUR = b"\x00" + bytes(5)


def read10(blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, 0, 0, blocks, 0)


# ---------------------------------------------------------------- 1. Logout behind a command
def test_logout_behind_a_running_read_aborts_it_then_answers_and_closes():
    conn = logged_in()
    (run,), _ = feed(conn, I.scsi_cmd(read10(2048), itt=5, cmdsn=1, edtl=1 << 20, read=True))
    events, rsps = feed(conn, I.logout(itt=6, cmdsn=2))
    # The READ is still in the store: no answer yet (its result must land first).
    assert events == [] and rsps == [] and not conn.closed
    # Whatever comes after the Logout is not taken in.
    events, rsps = feed(conn, I.scsi_cmd(TUR, itt=7, cmdsn=3))
    assert events == [] and rsps == []
    conn.complete_task(run.task, ScsiResult(Status.GOOD, memoryview(bytes(1 << 20))))
    (r,) = I.parse(conn.data_to_send())  # terminated (RFC 7143 11.14): no Data-In, no status
    assert r.opcode == 0x26 and r.itt == 6 and r.b2 == 0
    assert conn.closed
    assert any(isinstance(e, ev.CloseConnection) for e in conn.take_events())


def test_logout_drops_a_write_still_collecting_data_and_answers_at_once():
    conn = logged_in()
    _, (r2t,) = feed(conn, I.scsi_cmd(b"\x2a" + bytes(9), itt=4, cmdsn=1, edtl=65536, write=True))
    events, (r,) = feed(conn, I.logout(itt=6, cmdsn=2))
    assert r.opcode == 0x26 and r.b2 == 0 and conn.tasks == {} and conn.buffered == 0
    assert any(isinstance(e, ev.CloseConnection) for e in events)


# ---------------------------------------------------------------- 2. rejects consume CmdSN
def _next_command_runs(conn, cmdsn: int) -> None:
    events, _ = feed(conn, I.scsi_cmd(TUR, itt=99, cmdsn=cmdsn))
    assert [type(e) for e in events] == [ev.ExecuteTask], "the next command waits behind a gap"
    assert conn.session.exp_cmdsn == cmdsn + 1


def test_a_rejected_nop_out_with_itt_and_ttt_consumes_its_cmdsn():
    conn = logged_in()
    _, (r,) = feed(conn, I.nop_out(itt=3, cmdsn=1, ttt=5, immediate=False))
    assert r.opcode == 0x3F and r.b2 == 0x09 and r.expcmdsn == 2
    assert conn.session.outstanding == 0 and r.maxcmdsn == 2 - 1 + 128
    _next_command_runs(conn, 2)


def test_a_scsi_command_in_a_discovery_session_consumes_its_cmdsn():
    conn = new_conn()
    feed(conn, I.login([("InitiatorName", INAME), ("SessionType", "Discovery")]))
    _, (r,) = feed(conn, I.scsi_cmd(TUR, itt=2, cmdsn=1))
    assert r.opcode == 0x3F and r.b2 == 0x04 and r.expcmdsn == 2
    _, (t,) = feed(conn, I.text_req([("SendTargets", "All")], itt=3, cmdsn=2, immediate=False))
    assert t.opcode == 0x24 and t.expcmdsn == 3


def test_an_unsupported_opcode_consumes_its_cmdsn():
    conn = logged_in()
    bad = bytearray(I.nop_out(itt=3, cmdsn=1, immediate=False))
    bad[0] = 0x1C
    _, (r,) = feed(conn, bytes(bad))
    assert r.opcode == 0x3F and r.b2 == 0x05
    _next_command_runs(conn, 2)


def test_an_oversized_command_consumes_its_cmdsn():
    conn = logged_in()
    big = I.scsi_cmd(b"\x2a" + bytes(9), itt=3, cmdsn=1, edtl=300000, write=True, data=bytes(262148))
    _, (r,) = feed(conn, big)
    assert r.opcode == 0x3F and r.b2 == 0x04
    _next_command_runs(conn, 2)


def test_an_early_oversized_command_is_rejected_in_its_cmdsn_turn():
    conn = logged_in()
    big = I.scsi_cmd(b"\x2a" + bytes(9), itt=3, cmdsn=2, edtl=300000, write=True, data=bytes(262148))
    events, rsps = feed(conn, big)
    assert events == [] and rsps == []  # waits for CmdSN 1
    events, rsps = feed(conn, I.scsi_cmd(TUR, itt=4, cmdsn=1))
    assert [e.task.tag for e in events] == [4]
    assert [(r.opcode, r.b2) for r in rsps] == [(0x3F, 0x04)]
    _next_command_runs(conn, 3)


def test_a_rejected_pdu_waiting_for_the_gap_is_rejected_itself_and_the_queue_drains():
    conn = logged_in()
    feed(conn, I.nop_out(itt=3, cmdsn=2, ttt=5, immediate=False))  # bad, early
    feed(conn, I.scsi_cmd(TUR, itt=4, cmdsn=3))  # good, early
    events, rsps = feed(conn, I.nop_out(itt=2, cmdsn=1, immediate=False))
    assert [(r.opcode, r.itt if r.opcode == 0x20 else None) for r in rsps] == [(0x20, 2), (0x3F, None)]
    assert rsps[1].raw.data[16:20] == (3).to_bytes(4, "big")  # the Reject carries the bad PDU's BHS
    assert [e.task.tag for e in events] == [4]
    assert conn.session.exp_cmdsn == 4


@pytest.mark.parametrize("pdu", [
    # ITT already in use (a second command with itt 1)
    I.scsi_cmd(TUR, itt=1, cmdsn=2),
    # data with a command that is not a write
    I.scsi_cmd(read10(1), itt=2, cmdsn=2, edtl=512, read=True, data=bytes(512)),
    # immediate data beyond FirstBurstLength (65536)
    I.scsi_cmd(b"\x2a" + bytes(9), itt=2, cmdsn=2, edtl=131072, write=True, data=bytes(65540)),
    # SNACK at ErrorRecoveryLevel 0 carries no CmdSN: it must not consume one
    None,
], ids=["itt-in-use", "data-on-read", "beyond-first-burst", "snack"])
def test_every_other_reject_leaves_the_window_consistent(pdu):
    conn = logged_in()
    feed(conn, I.scsi_cmd(TUR, itt=1, cmdsn=1))  # itt 1 stays in flight
    if pdu is None:
        pdu = bytearray(I.nop_out(itt=7, cmdsn=2, immediate=False))
        pdu[0] = 0x10
        _, (r,) = feed(conn, bytes(pdu))
        assert r.opcode == 0x3F and r.b2 == 0x05
        _next_command_runs(conn, 2)
        return
    _, (r,) = feed(conn, pdu)
    assert r.opcode == 0x3F
    assert conn.session.outstanding == 1  # the TUR only
    _next_command_runs(conn, 3)


# ---------------------------------------------------------------- 3. pair rules when agreed
def test_a_login_offering_max_burst_32768_with_first_burst_16384_succeeds():
    conn = logged_in({"MaxBurstLength": "32768", "FirstBurstLength": "16384"})
    assert (conn.params.max_burst, conn.params.first_burst) == (32768, 16384)
