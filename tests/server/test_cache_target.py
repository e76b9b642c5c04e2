"""The memory target driven (``server/memory.py``): the cgroup and meminfo readings from
files made here, the PSI trigger's setup, and the governor over real caches with readings
passed in (no thread, no clock: each tick is called)."""

from __future__ import annotations

import base64
import os

from gluster_iscsi.backstore.cache import AUTO, CachedStore, CacheLedger
from gluster_iscsi.backstore.cachetarget import FLOOR, CgroupLimit, Readings
from gluster_iscsi.backstore.memory import MemoryStore
from gluster_iscsi.server.memory import (
    MemoryGovernor,
    cgroup_dirs,
    cgroup_limits,
    meminfo,
    open_pressure,
)

MiB = 1 << 20
GiB = 1 << 30
CHUNK = 64 << 10

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_which_cgroup_holds_the_memory_controller():
    v, dirs = cgroup_dirs("4:memory:/a/b\n0::/\n", HYBRID_MOUNTS)
    assert v == "v1" and [str(d) for d in dirs] == [
        "/sys/fs/cgroup/memory/a/b", "/sys/fs/cgroup/memory/a", "/sys/fs/cgroup/memory"]
    assert cgroup_dirs("0::/x\n", "") == ("", [])  # no mount found: no cgroup readings


def test_a_mounted_subtree_is_followed_from_its_root():
    # a container sees its own cgroup as the mount's root (the 4th field of mountinfo)
    mounts = ("35 31 0:31 /docker/c1 /sys/fs/cgroup/memory rw,relatime - cgroup cgroup "
              "rw,memory\n")
    v, dirs = cgroup_dirs("4:memory:/docker/c1/system.slice/svc\n", mounts)
    assert v == "v1" and [str(d) for d in dirs] == [
        "/sys/fs/cgroup/memory/system.slice/svc", "/sys/fs/cgroup/memory/system.slice",
        "/sys/fs/cgroup/memory"]
    # a path outside the mounted subtree cannot be read there: no readings, not wrong ones
    assert cgroup_dirs("4:memory:/other\n", mounts) == ("", [])


def test_v2_limits_come_from_high_or_max_up_the_tree(tmp_path):
    root = tmp_path / "cg"
    svc = root / "system.slice" / "gluster-iscsi.service"
    svc.mkdir(parents=True)
    (svc / "memory.max").write_text("max\n")
    (svc / "memory.high").write_text(f"{2 * GiB}\n")
    (svc / "memory.current").write_text(f"{300 * MiB}\n")
    (root / "system.slice" / "memory.max").write_text(f"{GiB}\n")
    (root / "system.slice" / "memory.current").write_text(f"{700 * MiB}\n")
    mounts = f"30 23 0:27 / {root} rw - cgroup2 cgroup2 rw\n"
    v, dirs = cgroup_dirs("0::/system.slice/gluster-iscsi.service\n", mounts)
    assert v == "v2" and dirs[0] == svc and dirs[-1] == root
    assert cgroup_limits(v, dirs) == (
        CgroupLimit(str(svc), 2 * GiB, 300 * MiB),
        CgroupLimit(str(root / "system.slice"), GiB, 700 * MiB))


def test_v1_limits_and_no_limit(tmp_path):
    d = tmp_path / "memory" / "x"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "none"
    (d / "memory.usage_in_bytes").write_text("1000\n")
    assert cgroup_limits("v1", [d]) == ()
    (d / "memory.limit_in_bytes").write_text(f"{512 * MiB}\n")
    assert cgroup_limits("v1", [d]) == (CgroupLimit(str(d), 512 * MiB, 1000),)
    # page cache the kernel reclaims by itself does not count (as kubelet's working set)
    (d / "memory.usage_in_bytes").write_text(f"{400 * MiB}\n")
    (d / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {300 * MiB}\n")
    assert cgroup_limits("v1", [d]) == (CgroupLimit(str(d), 512 * MiB, 100 * MiB),)


def test_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24684000 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n")
    assert meminfo(str(f)) == (24684000 << 10, 20000000 << 10)
    f.write_text("MemTotal:       1000 kB\n")  # a kernel before 3.14
    assert meminfo(str(f)) == (1000 << 10, None)
    total, _ = meminfo(str(tmp_path / "none"))  # unreadable: the total from sysconf
    assert total == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_the_pressure_trigger_systemd_gives_and_where_none_can_be_set(tmp_path):
    watch = tmp_path / "pressure"
    watch.write_bytes(b"")
    fd, where = open_pressure({"MEMORY_PRESSURE_WATCH": str(watch),
                               "MEMORY_PRESSURE_WRITE": base64.b64encode(b"some 1 2").decode()})
    assert fd is not None and where == str(watch)
    os.close(fd)
    assert watch.read_bytes() == b"some 1 2\0"  # systemd's trigger, as given
    assert open_pressure({"MEMORY_PRESSURE_WATCH": "/dev/null"}) == (
        None, "off (systemd: MemoryPressureWatch=off)")
    fd, why = open_pressure({"MEMORY_PRESSURE_WATCH": str(tmp_path / "gone" / "p")})
    assert fd is None and "No such file" in why


class Machine:
    """Readings the test sets: MemAvailable and a cgroup's usage, the caches' bytes real."""

    def __init__(self, ledger: CacheLedger) -> None:
        self.ledger = ledger
        self.total = 16 * GiB
        self.available = 12 * GiB
        self.now = 0.0

    def read(self) -> Readings:
        return Readings(self.total, self.available, self.ledger.used)


def test_the_governor_moves_the_ledger_shrinks_the_caches_and_trims():
    led = CacheLedger(0)
    m = Machine(led)
    trims = []
    caches = [CachedStore(MemoryStore(1024 * CHUNK), AUTO, ledger_=led) for _ in range(2)]
    gov = MemoryGovernor(led, readings=m.read, clock=lambda: m.now,
                         trim=lambda: trims.append(1), caches=lambda: caches)
    assert led.limit == 8 * GiB and gov.status()["source"] == "host memory"  # the first tick
    caches[0].read(0, 1024 * CHUNK)
    caches[1].read(0, 256 * CHUNK)
    held = led.used
    assert held == 1280 * CHUNK
    # someone else takes memory: MemAvailable 16 MiB under the reserve (768 MiB)
    m.available, m.now = 752 * MiB, 1
    step = gov.tick()
    assert step.reason == "memory" and led.limit == step.target < held
    assert led.used <= led.limit and trims == [1]
    assert caches[0].shrunk == held - led.used and caches[1].shrunk == 0  # the largest first
    st = gov.status()
    assert st["shrinks"] == {"memory": 1} and st["last_shrink"]["reason"] == "memory"
    assert st["shrunk_bytes"] == held - led.used
    # every read still matches its store, also where a write changed cached bytes
    caches[0].write(1000 * CHUNK + 100, b"n" * 5000)
    gov.tick()
    for c in caches:
        assert c.read(0, 1024 * CHUNK) == c.inner.read(0, 1024 * CHUNK)
    # pressure: an eighth of what is held goes at once
    before = led.used
    assert before > FLOOR + before // 8
    gov.on_pressure()
    assert led.used <= before - before // 8 + CHUNK and gov.status()["shrinks"]["pressure"] == 1
    for c in caches:
        c.close()


def test_a_fixed_target_ignores_the_readings():
    led = CacheLedger(0)
    m = Machine(led)
    m.available = 10 * MiB  # far below any reserve
    gov = MemoryGovernor(led, fixed=256 * MiB, readings=m.read, caches=lambda: [])
    assert led.limit == 256 * MiB and gov.status()["source"] == "option"
    assert gov.status()["pressure_trigger"] == "not set"


def test_the_floor_holds_however_short_memory_is():
    led = CacheLedger(0)
    m = Machine(led)
    m.available = 0
    MemoryGovernor(led, readings=m.read, caches=lambda: [])
    assert led.limit == FLOOR


def test_the_thread_ticks_and_stops_leaving_no_descriptor_behind():
    led = CacheLedger(0)
    m = Machine(led)
    gov = MemoryGovernor(led, readings=m.read, caches=lambda: [])
    before = sorted(os.listdir("/proc/self/fd"))
    gov.start()
    import time

    deadline = time.monotonic() + 30
    while gov.ticks < 3 and time.monotonic() < deadline:  # (the first came from __init__)
        time.sleep(0.05)
    assert gov.ticks >= 3, "the thread did not tick"
    gov.stop()
    assert gov._thread is None
    assert sorted(os.listdir("/proc/self/fd")) == before
    # fixed: the thread still runs (the rebalance between LUNs), with no pressure trigger
    fixed = MemoryGovernor(led, fixed=64 * MiB, readings=m.read, caches=lambda: [])
    fixed.start()
    assert fixed._thread is not None and fixed.pressure.startswith("not used")
    fixed.stop()
    assert sorted(os.listdir("/proc/self/fd")) == before
