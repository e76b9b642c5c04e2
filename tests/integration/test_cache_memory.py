"""The gfapi read caches follow the memory the daemon may use (issue 19, the memory target):
a real daemon in a real memory cgroup with a limit, a real Gluster volume, a LUN larger than
what the cgroup allows, read end to end through iSCSI; then another process in the same
cgroup needs memory, and the daemon gives it back before the kernel's OOM killer must act.

It needs root and a memory cgroup it can create (cgroup v1's memory controller, or v2 with
the memory controller delegated to the test's cgroup); it is skipped otherwise, and the
README says so. ``tests/server/test_cache_target.py`` covers the same rule with readings
made up, everywhere."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ..gluster_env import gluster_volume_fixture
from .daemon import DEMO_IQN, Daemon
from .pyinitiator import Session

pytestmark = [pytest.mark.integration, pytest.mark.gluster]

MiB = 1 << 20
LIMIT = 512 * MiB
LUN_SIZE = 640 * MiB
READ = 1 * MiB
GOOD = 0

cg_volume = gluster_volume_fixture("giscsi-it-cgmem", profile="plain", mount=False, replica=1)


def _memory_cgroup(limit: int) -> Path | None:
    """A new child of this process's memory cgroup with ``limit``, or None where none can be
    made (not root, no memory controller we may use)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = [ln.split(":", 2)[2] for ln in lines if "memory" in ln.split(":", 2)[1].split(",")]
    name = f"giscsi-test-{uuid.uuid4().hex[:8]}"
    if v1 and Path("/sys/fs/cgroup/memory").is_dir():
        d = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/") / name
        files = {"memory.limit_in_bytes": str(limit)}
    else:
        v2 = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
        base = Path("/sys/fs/cgroup") / (v2[0].lstrip("/") if v2 else "")
        try:
            if "memory" not in (base / "cgroup.subtree_control").read_text().split():
                return None
        except OSError:
            return None
        d = base / name
        files = {"memory.max": str(limit), "memory.swap.max": "0"}
    try:
        d.mkdir()
    except OSError:
        return None
    try:
        for f, v in files.items():
            (d / f).write_text(v)
    except OSError:
        d.rmdir()
        return None
    return d


def _remove(cg: Path) -> None:
    for _ in range(50):
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def _status(d: Daemon) -> dict:
    return json.loads(d.cli("status", "--json").stdout)["cache_target"]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


HOG = """
import os, sys, time
procs = sys.argv[1]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
chunks = []
for _ in range(int(sys.argv[2])):
    b = bytearray(4 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    chunks.append(b)
    time.sleep(0.1)
print("held", len(chunks) * 4, "MiB", flush=True)
time.sleep(3)
print("ok", flush=True)
"""


def test_the_caches_stay_inside_the_cgroup_and_give_memory_back_to_a_neighbour(
        tmp_path, cg_volume):
    cg = _memory_cgroup(LIMIT)
    if cg is None:
        pytest.skip("no memory cgroup can be made here (needs root and a memory controller)")
    d = Daemon(tmp_path / "state", cgroup=cg, extra=["--nop-interval", "0"])
    try:
        d.start()
        r = d.cli("--timeout", "90", "lun", "create", DEMO_IQN, cg_volume.url("cg.img"),
                  "--lun", "2", "--size", "640MiB", check=False, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        st = _status(d)
        allowed = int(LIMIT * 0.8)
        assert st["source"] == f"cgroup {cg}" and st["target"] <= allowed, st

        async def read_all() -> None:
            async with Session("127.0.0.1", d.port, DEMO_IQN,
                               "iqn.2026-11.org.example:cgmem") as s:
                for lba in range(0, LUN_SIZE // 512, READ // 512):
                    st, data, sense = await s.scsi(
                        bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0])
                        + (READ // 512).to_bytes(2, "big") + bytes([0]),
                        read_len=READ, lun=2)
                    if st != GOOD:  # a unit attention first (the LUN was just added)
                        st, data, sense = await s.scsi(
                            bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0])
                            + (READ // 512).to_bytes(2, "big") + bytes([0]),
                            read_len=READ, lun=2)
                    assert st == GOOD and len(data) == READ, sense.hex()

        asyncio.run(read_all())
        time.sleep(2.5)  # two ticks
        st = _status(d)
        held, target = st["held"], st["target"]
        # the cache was used (a LUN bigger than it), and stayed inside the target, which
        # keeps the cgroup under 0.8 of its limit
        assert held >= 128 * MiB and held <= target <= allowed, st
        assert d.proc is not None and d.proc.poll() is None
        rss_before = _rss(d.proc.pid)

        # a neighbour in the same cgroup takes 200 MiB, 40 MiB a second: without the daemon
        # giving memory back, the cgroup hits its limit and the OOM killer takes one of them
        hog = subprocess.run([sys.executable, "-c", HOG, str(cg / "cgroup.procs"), "50"],
                             capture_output=True, text=True, timeout=120)
        assert hog.returncode == 0 and "ok" in hog.stdout, (
            f"the neighbour was killed ({hog.returncode}): {hog.stdout} {hog.stderr}")
        assert d.proc.poll() is None, "the daemon was killed"
        st = _status(d)
        assert st["shrinks"].get("cgroup", 0) >= 1 and st["shrunk_bytes"] >= 64 * MiB, st
        assert st["last_shrink"]["reason"] == "cgroup"
        # the freed chunks left the process (malloc_trim), not just the ledger
        assert _rss(d.proc.pid) <= rss_before - 64 * MiB, (rss_before, _rss(d.proc.pid))
        text = d.cli("status").stdout
        assert "read cache memory:" in text and f"cgroup {cg}" in text, text
    finally:
        rc = d.stop() if d.proc is not None else 0
        _remove(cg)
    assert rc == 0, d.log_text()[-3000:]
