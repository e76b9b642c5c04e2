"""APTPL: persistent reservations made with APTPL=1 survive a daemon restart (SPC-4 5.13.4)."""

from __future__ import annotations

import asyncio
import json
import stat
import struct

import pytest

from .daemon import DEMO_IQN, Daemon
from .pyinitiator import Session

pytestmark = pytest.mark.integration

INITIATOR = "iqn.2026-11.org.test:pr-restart"
KEY = 0x1122334455667788
WRITE_EXCLUSIVE = 1


def pr_out(action: int, key: int, sa_key: int = 0, *, rtype: int = 0, aptpl: bool = False):
    params = struct.pack(">QQ4xBxH", key, sa_key, 0x01 if aptpl else 0, 0)
    cdb = struct.pack(">BBBxxIx", 0x5F, action, rtype, len(params))
    return cdb, params


def pr_in(action: int, alloc: int = 512) -> bytes:
    return struct.pack(">BBxxxxxHx", 0x5E, action, alloc)


async def ready(s: Session) -> None:
    for _ in range(10):  # unit attentions after login (power on, nexus loss)
        status, _, _ = await s.scsi(bytes(6))
        if status == 0:
            return
    raise AssertionError("TEST UNIT READY never became GOOD")


async def reserve(port: int) -> None:
    async with Session("127.0.0.1", port, DEMO_IQN, INITIATOR) as s:
        await ready(s)
        cdb, params = pr_out(0, 0, KEY, aptpl=True)  # REGISTER, APTPL=1
        assert (await s.scsi(cdb, data_out=params))[0] == 0
        cdb, params = pr_out(1, KEY, rtype=WRITE_EXCLUSIVE)  # RESERVE
        assert (await s.scsi(cdb, data_out=params))[0] == 0


async def read_back(port: int) -> tuple[list[int], tuple[int, int] | None, int]:
    async with Session("127.0.0.1", port, DEMO_IQN, INITIATOR) as s:
        await ready(s)
        status, keys, _ = await s.scsi(pr_in(0), read_len=512)  # READ KEYS
        assert status == 0
        n = struct.unpack(">I", keys[4:8])[0] // 8
        found = [struct.unpack(">Q", keys[8 + 8 * i : 16 + 8 * i])[0] for i in range(n)]
        status, res, _ = await s.scsi(pr_in(1), read_len=512)  # READ RESERVATION
        assert status == 0
        held = None
        if struct.unpack(">I", res[4:8])[0] >= 16:
            held = (struct.unpack(">Q", res[8:16])[0], res[21] & 0x0F)
        status, caps, _ = await s.scsi(pr_in(2), read_len=8)  # REPORT CAPABILITIES
        assert status == 0
        return found, held, caps[3]


def test_aptpl_reservation_survives_a_daemon_restart(tmp_path) -> None:
    state = tmp_path / "state"
    first = Daemon(state)
    first.start()
    try:
        asyncio.run(reserve(first.port))
    finally:
        assert first.stop() == 0, first.log_text()[-3000:]
    saved = list((state / "pr").glob("*.json"))
    assert len(saved) == 1
    assert stat.S_IMODE(saved[0].stat().st_mode) == 0o600
    assert json.loads(saved[0].read_text())["aptpl"] is True

    second = Daemon(state, ports=first.ports, demo=False)
    second.start()
    try:
        keys, held, caps_flags = asyncio.run(read_back(second.port))
    finally:
        assert second.stop() == 0, second.log_text()[-3000:]
    assert keys == [KEY]
    assert held == (KEY, WRITE_EXCLUSIVE)
    assert caps_flags & 0x01  # PTPL_A: persistence through power loss is active
