"""100 sessions doing I/O at once leave every byte correct."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from .daemon import DEMO_IQN
from .pyinitiator import Session

pytestmark = pytest.mark.integration

SESSIONS = 100
REGION = 256 << 10  # bytes per session (512 blocks)
ROUNDS = 4


def pattern(session: int, rnd: int) -> bytes:
    seed = hashlib.sha256(f"{session}/{rnd}".encode()).digest()
    return (seed * (REGION // len(seed) + 1))[:REGION]


async def worker(port: int, i: int) -> None:
    async with Session("127.0.0.1", port, DEMO_IQN, f"iqn.2026-11.org.example:client{i}") as s:
        lba = i * (REGION // 512)
        for rnd in range(ROUNDS):
            data = pattern(i, rnd)
            await s.write10(lba, data)
            got = await s.read10(lba, REGION)
            assert got == data, f"session {i} round {rnd}: read back differs"


async def verify_all(port: int) -> None:
    async with Session("127.0.0.1", port, DEMO_IQN, "iqn.2026-11.org.example:verifier") as s:
        for i in range(SESSIONS):
            got = await s.read10(i * (REGION // 512), REGION)
            assert got == pattern(i, ROUNDS - 1), f"region of session {i} corrupted"


def test_hundred_concurrent_sessions_keep_every_byte(daemon):
    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(worker(daemon.port, i) for i in range(SESSIONS))), 300)
        await verify_all(daemon.port)

    asyncio.run(main())
    # and the file itself holds the same bytes (nothing cached only in the daemon)
    with open(daemon.state_dir / "demo-lun1.img", "rb") as f:
        for i in range(SESSIONS):
            assert f.read(REGION) == pattern(i, ROUNDS - 1)
