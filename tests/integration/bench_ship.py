"""Bench (not a test): 4 KiB random reads at QD32 with ``iscsi-perf`` through the owner and
through a non-owner that ships them (server/ship.py), two gateways on loopback, one file LUN
on tmpfs. Run: ``PYTHONPATH=src python -m tests.integration.bench_ship [seconds]``; the
figures go to docs/HA.md ("Measured")."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .daemon import Daemon, free_port
from .pyinitiator import Session
from .test_group_local import IQN, RTPG, TUR, cmd, rtpg_states, until, write_config


def perf(url: str, seconds: int) -> str:
    proc = subprocess.run(["iscsi-perf", "-m", "32", "-b", "8", "-r", "-t", str(seconds), url],
                          capture_output=True, text=True, timeout=seconds + 60)
    return proc.stdout + proc.stderr


def main(seconds: int = 15) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm, tempfile.TemporaryDirectory() as tmp:
        lun = Path(shm) / "lun.img"
        with open(lun, "wb") as f:
            f.write(b"\x5a" * (256 << 20))
        daemons = []
        for n in (1, 2):
            port = free_port()
            state = Path(tmp) / f"gw{n}"
            write_config(state, port, lun, Path(tmp) / "group", f"gw{n}", n,
                         non_owner="non-optimized")
            daemons.append(Daemon(state, ports=[port], demo=False))
        daemons[0].start()

        async def owned() -> bool:
            async with Session("127.0.0.1", daemons[0].port, IQN, "iqn.2026-12.org.test:x") as s:
                return (await cmd(s, TUR))[0] == 0

        asyncio.run(until(owned, 10, "owner"))
        daemons[1].start()

        async def ano() -> bool:
            async with Session("127.0.0.1", daemons[1].port, IQN, "iqn.2026-12.org.test:x") as s:
                status, data, _ = await cmd(s, RTPG, read_len=1024)
                return status == 0 and rtpg_states(data).get(2, (0,))[0] == 1

        asyncio.run(until(ano, 15, "non-optimized"))
        try:
            for name, d in (("owner", daemons[0]), ("non-owner (shipped)", daemons[1]),
                            ("owner", daemons[0])):
                out = perf(d.url(1, IQN), seconds)
                rates = re.findall(r"(\d+) IOPS", out) or re.findall(r"([\d.]+) ?[Ii][Oo][Pp][Ss]",
                                                                       out)
                print(f"{name}: {out.strip().splitlines()[-3:] if out.strip() else out!r}")
                print(f"  IOPS samples: {rates[-5:]}")
        finally:
            for d in daemons:
                d.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
