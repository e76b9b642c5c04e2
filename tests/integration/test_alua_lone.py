"""ALUA on a lone daemon, as an initiator sees it over iSCSI: implicit ALUA in INQUIRY, the port
and its group in VPD 83h, every group active/optimized in REPORT TARGET PORT GROUPS (both
header formats), and the commands a group's standby gateway would still serve (PR IN/OUT,
MODE SENSE/SELECT) going through the runner's shared-state requests."""

from __future__ import annotations

import asyncio
import struct

import pytest

from .daemon import DEMO_IQN, Daemon
from .pyinitiator import Session

pytestmark = pytest.mark.integration

INITIATOR = "iqn.2026-11.org.test:alua-lone"


async def ready(s: Session) -> None:
    for _ in range(10):  # unit attentions after login
        status, _, _ = await s.scsi(bytes(6))
        if status == 0:
            return
    raise AssertionError("TEST UNIT READY never became GOOD")


def designators(vpd83: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 4
    while pos < 4 + int.from_bytes(vpd83[2:4], "big"):
        d = vpd83[pos : pos + 4 + vpd83[pos + 3]]
        out.setdefault(d[1] & 0x0F, d)
        pos += len(d)
    return out


async def probe(port: int) -> None:
    async with Session("127.0.0.1", port, DEMO_IQN, INITIATOR) as s:
        await ready(s)
        status, inq, _ = await s.scsi(bytes.fromhex("120000006000"), read_len=96)
        assert status == 0 and inq[5] & 0x30 == 0x10  # TPGS 01b: implicit ALUA
        status, vpd, _ = await s.scsi(bytes.fromhex("12018301ff00"), read_len=511)
        assert status == 0
        d = designators(vpd)
        assert d[4][:4] == bytes([0x51, 0x94, 0, 4])  # relative target port (iSCSI, binary)
        assert d[5][:4] == bytes([0x51, 0x95, 0, 4])  # target port group
        rel, group = int.from_bytes(d[4][6:8], "big"), int.from_bytes(d[5][6:8], "big")
        status, rtpg, _ = await s.scsi(bytes.fromhex("a30a00000000000001000000"), read_len=256)
        assert status == 0
        length = int.from_bytes(rtpg[0:4], "big")
        descs = rtpg[4 : 4 + length]
        found = {}
        pos = 0
        while pos < len(descs):
            count = descs[pos + 7]
            ports = [int.from_bytes(descs[pos + 10 + 4 * i : pos + 12 + 4 * i], "big")
                     for i in range(count)]
            found[int.from_bytes(descs[pos + 2 : pos + 4], "big")] = (descs[pos] & 0x0F, ports)
            pos += 8 + 4 * count
        assert found[group][0] == 0 and rel in found[group][1]  # active/optimized, our port
        status, ext, _ = await s.scsi(bytes.fromhex("a32a00000000000001000000"), read_len=256)
        assert status == 0 and ext[4:8] == bytes([0x10, 0, 0, 0]) and ext[8:] == rtpg[4:]
        # PR OUT and IN, MODE SELECT and SENSE: through SharedUpdate/SharedRefresh.
        key = 0x5EED
        params = struct.pack(">QQ4xBxH", 0, key, 0, 0)
        cdb = struct.pack(">BBBxxIx", 0x5F, 0, 0, len(params))
        assert (await s.scsi(cdb, data_out=params))[0] == 0
        status, keys, _ = await s.scsi(struct.pack(">BBxxxxxHx", 0x5E, 0, 64), read_len=64)
        assert status == 0 and keys[8:16] == key.to_bytes(8, "big")
        params = struct.pack(">QQ4xBxH", key, 0, 0, 0)  # unregister again
        assert (await s.scsi(cdb, data_out=params))[0] == 0
        page = bytes([0x0A, 10, 0, 0x10, 0x08, 0, 0, 0, 0xFF, 0xFF, 0, 0])  # SWP on
        assert (await s.scsi(bytes([0x15, 0x10, 0, 0, 16, 0]), data_out=bytes(4) + page))[0] == 0
        status, sense6, _ = await s.scsi(bytes.fromhex("1a080a00ff00"), read_len=255)
        assert status == 0 and sense6[2] & 0x80 and sense6[4 + 4] & 0x08  # WP, SWP
        page = bytes([0x0A, 10, 0, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0])  # SWP off again
        assert (await s.scsi(bytes([0x15, 0x10, 0, 0, 16, 0]), data_out=bytes(4) + page))[0] == 0


def test_a_lone_daemon_reports_implicit_alua_and_every_port_active_optimized(tmp_path) -> None:
    d = Daemon(tmp_path / "state")
    d.start()
    try:
        asyncio.run(probe(d.port))
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]
