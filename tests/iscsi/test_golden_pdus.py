"""Golden bytes: every PDU the target builds, byte for byte as the codec built them before
the named builders (``pdu.scsi_response`` etc.) replaced ``pdu.bhs(..., w20, ..., w44)``.

The scenario walks each builder (Login Response: continue, transit, final, refusal; NOP-In
echo and ping; Data-In single and multi-PDU; SCSI Response good/sense/residual; R2T; Reject;
TMF Response; Text Response, continued; Logout Response). The expected bytes were recorded
from the offset-based builders (``data/golden_pdus.json``); regenerate only on purpose:
``python -m tests.iscsi.test_golden_pdus``.
"""

from __future__ import annotations

import json
from pathlib import Path

from gluster_iscsi.iscsi.connection import Connection
from gluster_iscsi.iscsi.session import SessionTable
from gluster_iscsi.scsi.task import ScsiResult, Status

from . import initiator as I
from .test_connection import INAME, OPERATIONAL, TNAME, registry

GOLDEN = Path(__file__).with_name("data") / "golden_pdus.json"


def _conn(**kw) -> Connection:
    return Connection(registry(alias="golden"), SessionTable(), peer_address="127.0.0.1",
                      local_address="127.0.0.1:3260", now=0.0, nop_interval=10, nop_timeout=5, **kw)


def _out(conn: Connection) -> str:
    return b"".join(bytes(memoryview(b)) for b in conn.data_to_send()).hex()


def transcript() -> dict[str, str]:
    got: dict[str, str] = {}

    def step(name: str, conn: Connection, data: bytes = b"") -> list:
        events = conn.receive_data(data) if data else []
        got[name] = _out(conn)
        return events

    # Login through the security stage, a continued request, then operational to FFP.
    c = _conn()
    step("login_continue", c, I.login([("InitiatorName", INAME)], csg=0, nsg=1, transit=False,
                                      cont=True, expstatsn=5, cmdsn=3))
    step("login_security", c, I.login([("TargetName", TNAME), ("AuthMethod", "None")], csg=0,
                                      nsg=1, cmdsn=3))
    pairs = [p for p in OPERATIONAL if p[0] not in ("InitiatorName", "TargetName", "SessionType")]
    step("login_final", c, I.login(pairs, csg=1, nsg=3, cmdsn=3, itt=2))
    step("nop_echo", c, I.nop_out(itt=0x77, cmdsn=3, data=b"hello", immediate=True))
    c.handle_timer(10.0)
    got["nop_ping"] = _out(c)
    c.receive_data(I.nop_out(itt=0xFFFFFFFF, cmdsn=3, ttt=1))
    # A 4 KiB read answered by one Data-In carrying status.
    (e,) = c.receive_data(I.scsi_cmd(b"\x28" + bytes(9), itt=5, cmdsn=3, edtl=4096, read=True))
    c.complete_task(e.task, ScsiResult(Status.GOOD, memoryview(bytes(range(256)) * 16)))
    got["read_single"] = _out(c)
    # A read split over PDUs and bursts, with an underflow residual.
    (e,) = c.receive_data(I.scsi_cmd(b"\x28" + bytes(9), itt=6, cmdsn=4, edtl=600000, read=True))
    c.complete_task(e.task, ScsiResult(Status.GOOD, memoryview(bytes(300000))))
    got["read_multi"] = _out(c)
    # CHECK CONDITION with sense.
    (e,) = c.receive_data(I.scsi_cmd(b"\x00" + bytes(5), itt=7, cmdsn=5))
    c.complete_task(e.task, ScsiResult(Status.CHECK_CONDITION, None, bytes([0x70, 0, 5] + [0] * 15)))
    got["check_condition"] = _out(c)
    # A write with immediate data, an R2T for the rest, Data-Out, GOOD.
    step("r2t", c, I.scsi_cmd(b"\x2a" + bytes(9), itt=8, cmdsn=6, edtl=12288, write=True,
                              data=bytes(4096)))
    (e,) = c.receive_data(I.data_out(bytes(8192), itt=8, ttt=2, datasn=0, offset=4096))
    c.complete_task(e.task, ScsiResult(Status.GOOD))
    got["write_good"] = _out(c)
    # A write whose store used less than expected: residual underflow.
    (e,) = c.receive_data(I.scsi_cmd(b"\x2a" + bytes(9), itt=9, cmdsn=7, edtl=4096, write=True,
                                     data=bytes(4096)))
    c.complete_task(e.task, ScsiResult(Status.GOOD, None, b"", transfer_length=2048))
    got["write_residual"] = _out(c)
    step("reject", c, I._bhs(0x1C, 0x80, itt=10, words=(0, 8, 0, 0, 0, 0, 0)))
    step("tmf_not_supported", c, I.tmf(0x0F, itt=11, cmdsn=9))
    c.complete_tmf(12, 0)
    got["tmf_complete"] = _out(c)
    step("text_continue", c, I.text_req([("SendTargets", "All")], itt=13, cmdsn=9, cont=True))
    step("text_final", c, I.text_req([], itt=13, cmdsn=9, ttt=3))
    step("logout", c, I.logout(itt=14, cmdsn=9))
    # A refused login.
    f = _conn()
    step("login_refused", f, I.login([("InitiatorName", INAME), ("TargetName", TNAME + "x")]))
    return got


def test_every_target_pdu_is_byte_identical_to_the_recorded_bytes():
    want = json.loads(GOLDEN.read_text())
    got = transcript()
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name


def test_the_transcript_exercises_every_response_opcode():
    opcodes = set()
    for hexed in json.loads(GOLDEN.read_text()).values():
        for r in I.parse([bytes.fromhex(hexed)]):
            opcodes.add(r.opcode)
    assert opcodes == {0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x3F}


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(transcript(), indent=1) + "\n")
