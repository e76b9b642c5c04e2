"""Issue 16, protocol slips found under hostile load: Logout behind a running command, CmdSN
consumed by every reject, pair rules of negotiation, Data-In bursts, login/text response
sizes, commands in flight per session, login status for unknown and forbidden targets."""

from __future__ import annotations

import struct

import pytest

from gluster_iscsi.iscsi import events as ev
from gluster_iscsi.scsi.task import ScsiResult, Status

from . import initiator as I
from .test_connection import INAME, OPERATIONAL, feed, logged_in, new_conn

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


# ---------------------------------------------------------------- 4. Data-In bursts, long text
def _read_1mib(conn):
    (run,), _ = feed(conn, I.scsi_cmd(read10(2048), itt=5, cmdsn=1, edtl=1 << 20, read=True))
    payload = bytes(range(256)) * 4096
    conn.complete_task(run.task, ScsiResult(Status.GOOD, memoryview(payload)))
    return payload, I.parse(conn.data_to_send())


@pytest.mark.parametrize("mrdsl, per_burst", [("16777215", 1), ("32768", 2), ("65536", 1)])
def test_data_in_is_cut_into_sequences_of_max_burst_length(mrdsl, per_burst):
    conn = logged_in({"MaxRecvDataSegmentLength": mrdsl, "MaxBurstLength": "65536",
                      "FirstBurstLength": "65536"})
    payload, rsps = _read_1mib(conn)
    assert all(r.opcode == 0x25 for r in rsps)
    assert len(rsps) == 16 * per_burst
    assert b"".join(bytes(r.data) for r in rsps) == payload
    assert [r.datasn for r in rsps] == list(range(len(rsps)))  # DataSN goes on across bursts
    offset = 0
    burst = 0
    for i, r in enumerate(rsps):
        assert r.buffer_offset == offset
        offset += len(r.data)
        burst += len(r.data)
        assert burst <= 65536
        last = i == len(rsps) - 1
        assert bool(r.flags & 0x80) == (burst == 65536)  # F ends each sequence
        assert bool(r.flags & 0x01) == last  # status on the final PDU only
        if r.flags & 0x80:
            burst = 0


def _login_pdus(pairs_bytes: bytes, **kw) -> bytes:
    chunks = [pairs_bytes[i : i + 8192] for i in range(0, len(pairs_bytes), 8192)]
    out = b""
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        out += I.login(c, cont=not last, transit=last, **kw)
    return out


def test_a_login_response_longer_than_8192_bytes_is_continued_with_the_c_bit():
    conn = new_conn()
    unknown = [(f"X-com.example.k{i:04d}", "v") for i in range(2000)]
    request = I.text(list(OPERATIONAL) + unknown)
    events, rsps = feed(conn, _login_pdus(request))
    *acks, first = rsps
    assert all(a.flags & 0xC0 == 0 and not a.data for a in acks)  # "send more" to each C request
    assert events == [ev.LoginProgress()]  # the request is complete and valid: the login goes on
    events = []
    got = [first]
    while got[-1].flags & 0x40:  # C: ask for the rest with an empty request
        assert len(got[-1].data) <= 8192 and not got[-1].flags & 0x80 and events == []
        events, (r,) = feed(conn, I.login(b"", transit=True))
        got.append(r)
    assert len(got) > 5
    final = got[-1]
    assert final.flags & 0x80 and final.flags & 3 == 3 and final.status_class == 0
    assert len(final.data) <= 8192 and final.tsih != 0
    keys = I.Rsp.pairs(type("R", (), {"data": b"".join(bytes(r.data) for r in got)})())
    assert sum(v == "NotUnderstood" for v in keys.values()) == 2000
    assert keys["MaxBurstLength"] == "262144"
    assert [type(e) for e in events] == [ev.LoginComplete] and conn.full_feature


def test_keys_sent_while_the_login_response_continues_fail_the_login():
    conn = new_conn()
    unknown = [(f"X-com.example.k{i:04d}", "v") for i in range(1000)]
    _, rsps = feed(conn, _login_pdus(I.text(list(OPERATIONAL) + unknown)))
    assert rsps[-1].flags & 0x40
    events, (r,) = feed(conn, I.login([("X-more", "1")]))
    assert r.status_class == 2 and r.status_detail == 0 and conn.closed


def test_login_text_beyond_64_kib_fails_the_login():
    conn = new_conn()
    unknown = [(f"X-com.example.key{i:05d}", "v" * 20) for i in range(2000)]  # ~90 KB
    _, rsps = feed(conn, _login_pdus(I.text(unknown)))
    assert rsps[-1].status_class == 2 and conn.closed
    assert all(len(r.data) <= 8192 for r in rsps)


def test_text_request_beyond_64_kib_is_rejected_and_the_session_goes_on():
    conn = logged_in()
    chunk = I.text([("X-com.example.k", "v" * 8000)])
    sn = 1
    rsps = []
    for _ in range(9):
        _, got = feed(conn, I.text_req(chunk, itt=7, cmdsn=sn, cont=True, immediate=False))
        sn += 1
        rsps += got
    assert rsps[-1].opcode == 0x3F and rsps[-1].b2 == 0x04 and not conn.closed
    _next_command_runs(conn, sn)


# ---------------------------------------------------------------- 5. commands in flight
@pytest.mark.parametrize("immediate", [True, False])
def test_commands_in_flight_beyond_queue_depth_get_task_set_full(immediate):
    conn = logged_in(queue_depth=4)
    started = []
    refused = []
    for i in range(40):
        events, rsps = feed(conn, I.scsi_cmd(read10(1), itt=100 + i, cmdsn=1, edtl=512, read=True,
                                             immediate=True))
        started += events
        refused += rsps
    if not immediate:  # numbered commands are bounded by the window already; immediate fill it
        events, rsps = feed(conn, I.scsi_cmd(read10(1), itt=1, cmdsn=1, edtl=512, read=True))
        refused += rsps
        assert events == []
    assert len(started) == 4 and len(conn.tasks) == 4
    assert refused and all(r.opcode == 0x21 and r.b3 == 0x28 for r in refused)  # TASK SET FULL
    assert conn.session.outstanding == 0 and not conn.closed
    conn.complete_task(started[0].task, ScsiResult(Status.GOOD, memoryview(bytes(512))))
    conn.data_to_send()
    events, _ = feed(conn, I.scsi_cmd(read10(1), itt=2, cmdsn=2 if not immediate else 1, edtl=512,
                                      read=True))
    assert len(events) == 1  # a slot freed: the next command runs


# ---------------------------------------------------------------- 6. commands waiting for a gap
_WRITE = b"\x2a" + bytes(9)
_K64 = 65536


def _gapped_writes(conn, cmdsns, itt0=10) -> None:
    """Writes whose every byte is immediate data, CmdSN ahead of the expected one: they wait."""
    for i, sn in enumerate(cmdsns):
        events, rsps = feed(conn, I.scsi_cmd(_WRITE, itt=itt0 + i, cmdsn=sn, edtl=_K64, write=True,
                                             data=bytes([i]) * _K64))
        assert events == [] and rsps == []


def test_commands_waiting_for_a_cmdsn_gap_hold_their_data_within_the_memory_budget():
    # Before: up to the window's worth of PDUs with immediate data waited uncharged (16
    # sessions took 500 MiB with `status` saying 0 in use).
    from gluster_iscsi.buffers import MemoryBudget

    budget = MemoryBudget(16 * _K64, share=3 * _K64)
    conn = logged_in(budget=budget)
    _gapped_writes(conn, range(2, 7))  # CmdSN 2..6 wait for 1
    assert budget.used == 3 * _K64  # three fit the session's share; two keep their header only
    events, rsps = feed(conn, I.scsi_cmd(TUR, itt=1, cmdsn=1))
    # in CmdSN order: the TUR, the three writes that kept their data (now in their own
    # charged buffers), then the two that could not: TASK SET FULL in their turn
    assert [e.task.tag for e in events] == [1, 10, 11, 12]
    assert [bytes(e.task.data_out[:1]) for e in events[1:]] == [b"\0", b"\1", b"\2"]
    assert [(r.opcode, r.itt, r.b3) for r in rsps] == [(0x21, 13, 0x28), (0x21, 14, 0x28)]
    assert conn.session.exp_cmdsn == 7 and budget.used == 3 * _K64
    for e in events:
        conn.complete_task(e.task, ScsiResult(Status.GOOD))
    conn.data_to_send()
    assert budget.used == 0 and conn.session.outstanding == 0
    _next_command_runs(conn, 7)


def test_a_waiting_nop_out_whose_data_does_not_fit_is_rejected_in_its_turn():
    from gluster_iscsi.buffers import MemoryBudget

    budget = MemoryBudget(16 * _K64, share=_K64)
    conn = logged_in(budget=budget)
    _gapped_writes(conn, [2])
    feed(conn, I.nop_out(itt=20, cmdsn=3, data=b"p" * 1000, immediate=False))
    assert budget.used == _K64
    events, rsps = feed(conn, I.nop_out(itt=21, cmdsn=1, immediate=False))
    assert [(r.opcode, r.itt if r.opcode != 0x3F else None) for r in rsps] == [(0x20, 21), (0x3F, None)]
    assert rsps[1].b2 == 0x0A  # Reject, out of resources: the ping's data could not wait
    assert [e.task.tag for e in events] == [10]
    conn.complete_task(events[0].task, ScsiResult(Status.GOOD))
    conn.data_to_send()
    assert budget.used == 0
    _next_command_runs(conn, 4)


@pytest.mark.parametrize("end", ["logout", "close"])
def test_the_charges_of_commands_waiting_for_a_gap_end_with_the_connection(end):
    from gluster_iscsi.buffers import MemoryBudget

    budget = MemoryBudget(16 * _K64, share=8 * _K64)
    conn = logged_in(budget=budget)
    _gapped_writes(conn, range(2, 5))
    assert budget.used == 3 * _K64
    if end == "logout":
        _, (r,) = feed(conn, I.logout(itt=9, cmdsn=1))
        assert r.opcode == 0x26 and r.b2 == 0
    else:
        conn.close("connection lost")
    assert conn.closed and budget.used == 0
