"""Bench (not a test): 4 KiB random reads at QD32 with ``iscsi-perf`` through the owner and
through a non-owner that ships them (server/ship.py), two gateways on loopback, one file LUN
on tmpfs. Run: ``PYTHONPATH=src python -m tests.integration.bench_ship [seconds]``; the
figures go to docs/HA.md ("Measured")."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .daemon import Daemon, free_port
from .pyinitiator import Session
from .test_group_local import IQN, RTPG, TUR, cmd, rtpg_states, until, write_config


def perf(url: str, seconds: int) -> list[int]:
    """iscsi-perf's once-a-second "iops current" figures for ``seconds`` s (it has no
    duration option: stopped with SIGINT, as bench/harness.py does)."""
    p = subprocess.Popen(["stdbuf", "-o0", "iscsi-perf", "-m", "32", "-b", "8", "-r", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout is not None
    os.set_blocking(p.stdout.fileno(), False)
    out = b""
    end = time.monotonic() + seconds + 1
    while time.monotonic() < end and p.poll() is None:
        try:
            out += os.read(p.stdout.fileno(), 65536)
        except BlockingIOError:
            time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        rest, _ = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        rest, _ = p.communicate()
    out += rest or b""
    if b"iops current" not in out:
        print(out.decode(errors="replace")[-1500:])
    ticks = [int(m) for m in re.findall(rb"iops current (\d+)", out)]
    return ticks[1:]  # the first second ramps up


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
                ticks = perf(d.url(1, IQN), seconds)
                mean = sum(ticks) / len(ticks) if ticks else 0
                print(f"{name}: 4K random read QD32: {mean:.0f} IOPS (mean of {len(ticks)} s;"
                      f" per second {ticks})", flush=True)
        finally:
            for d in daemons:
                d.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
