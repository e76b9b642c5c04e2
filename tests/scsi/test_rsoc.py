"""REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS, generated from the table."""

from __future__ import annotations

import struct

from gluster_iscsi.backstore.base import Capabilities
from gluster_iscsi.scsi.opcodes import TABLE, commands
from gluster_iscsi.scsi.sense import Asc, SenseKey
from gluster_iscsi.scsi.task import Status

from .conftest import Harness


def rsoc(option: int, opcode: int = 0, sa: int = 0, rctd: bool = False, alloc: int = 8192) -> bytes:
    return bytes([0xA3, 0x0C, option | (0x80 if rctd else 0), opcode]) + struct.pack(
        ">HIBB", sa, alloc, 0, 0
    )


def parse_all(data: bytes, rctd: bool) -> list[tuple[int, int | None, int]]:
    length = struct.unpack(">I", data[:4])[0]
    out, pos, step = [], 4, 20 if rctd else 8
    while pos < 4 + length:
        op, sa, flags, cdb_len = (
            data[pos],
            struct.unpack(">H", data[pos + 2 : pos + 4])[0],
            data[pos + 5],
            struct.unpack(">H", data[pos + 6 : pos + 8])[0],
        )
        out.append((op, sa if flags & 1 else None, cdb_len))
        if rctd:
            assert flags & 0x02 and data[pos + 8 : pos + 10] == b"\x00\x0a"
        pos += step
    return out


def test_all_commands_listing_matches_table(h: Harness) -> None:
    for rctd in (False, True):
        listed = parse_all(bytes(h.run(rsoc(0, rctd=rctd)).data), rctd)
        expected = [(c.opcode, c.service_action, c.cdb_length) for c in commands(h.server.lu(0))]
        assert listed == expected


def test_every_listed_command_is_really_implemented(h: Harness) -> None:
    """The listing never lies: no listed opcode answers INVALID COMMAND OPERATION CODE."""
    for op, sa, cdb_len in parse_all(bytes(h.run(rsoc(0)).data), False):
        cdb = bytes([op, sa or 0]) + bytes(cdb_len - 2)
        r = h.run(cdb, data=bytes(512))
        if r.status == Status.CHECK_CONDITION:
            assert h.sense(r)[1] != Asc.INVALID_COMMAND_OPERATION_CODE, hex(op)


def test_one_command(h: Harness) -> None:
    data = bytes(h.run(rsoc(1, 0x28)).data)
    assert data[:4] == bytes([0, 0x03, 0, 10]) and data[4:] == TABLE[0x28].usage
    assert data[4:5] == b"\x28"
    data = bytes(h.run(rsoc(2, 0x9E, 0x10, rctd=True)).data)
    assert data[1] == 0x83 and data[2:4] == b"\x00\x10" and data[4:6] == b"\x9e\x10"
    assert data[20:22] == b"\x00\x0a"
    assert bytes(h.run(rsoc(1, 0xFF)).data) == bytes([0, 0x01, 0, 0])  # not supported
    assert bytes(h.run(rsoc(2, 0x9E, 0x1F)).data) == bytes([0, 0x01, 0, 0])


def test_one_command_option_mismatch_is_invalid(h: Harness) -> None:
    r = h.run(rsoc(1, 0x9E))  # has service actions
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)
    r = h.run(rsoc(2, 0x28))  # has none
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)
    r = h.run(rsoc(5))
    assert h.sense(r) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB)


def test_unmap_listed_only_when_store_discards(make_harness) -> None:  # noqa: ANN001
    h = make_harness(capabilities=Capabilities())
    listed = {op for op, _, _ in parse_all(bytes(h.run(rsoc(0)).data), False)}
    assert 0x42 not in listed and 0x28 in listed
    assert bytes(h.run(rsoc(1, 0x42)).data)[1] == 0x01


def test_usage_data_is_sane() -> None:
    for cmd in commands():
        assert cmd.usage[0] == cmd.opcode and cmd.cdb_length in (6, 10, 12, 16), cmd.name
        if cmd.service_action is not None:
            assert cmd.usage[1] & 0x1F == cmd.service_action, cmd.name


def test_report_supported_tmfs(h: Harness) -> None:
    assert bytes(h.run("a30d00000000000000040000").data) == bytes([0xDA, 0, 0, 0])
    data = bytes(h.run("a30d80000000000000100000").data)
    assert len(data) == 16 and data[3] == 0x0C
