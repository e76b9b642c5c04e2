"""The read caches' memory target (``backstore/cachetarget.py``): readings in, target out.
No clock, no files: every reading is made up here."""

from __future__ import annotations

from gluster_iscsi.backstore.cachetarget import (
    FLOOR,
    HOLD,
    CgroupLimit,
    MemoryTarget,
    Readings,
)

MiB = 1 << 20
GiB = 1 << 30
RAM = 16 * GiB
RESERVE = RAM // 32 + 256 * MiB  # 768 MiB


def test_a_bare_host_caps_at_half_of_ram_and_keeps_the_reserve():
    t = MemoryTarget()
    s = t.step(Readings(RAM, 14 * GiB, 0), now=0)
    assert s.target == RAM // 2 and s.reason is None and s.source == "host memory"
    # little room: the first reading leaves the reserve alone
    t = MemoryTarget()
    s = t.step(Readings(RAM, RESERVE + 100 * MiB, 0), now=0)
    assert s.target == 100 * MiB


def test_below_the_reserve_it_shrinks_by_the_deficit_and_a_little_more_then_holds():
    t = MemoryTarget()
    t.step(Readings(RAM, 12 * GiB, 0), now=0)
    assert t.target == 8 * GiB
    held = 4 * GiB
    s = t.step(Readings(RAM, RESERVE - 512 * MiB, held), now=10)
    want = held - 512 * MiB - (held - FLOOR) // 128
    assert (s.target, s.reason, s.deficit) == (want, "memory", 512 * MiB)
    assert t.last_shrink == (10, 8 * GiB - want, "memory")
    # room again, but within the hold the target does not grow
    s = t.step(Readings(RAM, RESERVE + 2 * GiB, want), now=10 + HOLD - 0.1)
    assert s.target == want and s.reason is None
    # after it: at most 1/32 of the room a tick
    s = t.step(Readings(RAM, RESERVE + 2 * GiB, want), now=10 + HOLD)
    assert s.target == want + 2 * GiB // 32


def test_growth_never_passes_what_is_held_plus_the_room_nor_the_ceiling():
    t = MemoryTarget()
    t.step(Readings(RAM, RESERVE + 1 * GiB, 0), now=0)
    assert t.target == 1 * GiB
    # another process took memory while the caches were idle: the target follows the room
    s = t.step(Readings(RAM, RESERVE + 100 * MiB, 200 * MiB), now=1)
    assert s.target == 300 * MiB and s.reason is None
    # then room again: 1/32 of it a tick
    s = t.step(Readings(RAM, RESERVE + 3200 * MiB, 300 * MiB), now=2)
    assert s.target == 400 * MiB
    # lots of room, the caches at the ceiling: the ceiling wins
    t = MemoryTarget()
    t.step(Readings(RAM, 15 * GiB, 0), now=0)
    s = t.step(Readings(RAM, 15 * GiB - RAM // 2, RAM // 2), now=1)
    assert s.target == RAM // 2


def test_under_a_cgroup_the_ceiling_is_0_8_of_its_limit_minus_what_else_it_holds():
    t = MemoryTarget()
    cg = CgroupLimit("/sys/fs/cgroup/x", limit=2 * GiB, usage=300 * MiB)  # 100 MiB of it ours
    s = t.step(Readings(RAM, 14 * GiB, 100 * MiB, (cg,)), now=0)
    allowed = int(2 * GiB * 0.8)
    assert s.target == allowed - 200 * MiB and s.source == "cgroup /sys/fs/cgroup/x"
    # the smallest limit up the tree wins (an ancestor's)
    outer = CgroupLimit("/sys/fs/cgroup", limit=1 * GiB, usage=400 * MiB)
    t = MemoryTarget()
    s = t.step(Readings(RAM, 14 * GiB, 100 * MiB, (cg, outer)), now=0)
    assert s.target == int(GiB * 0.8) - 300 * MiB and s.source == "cgroup /sys/fs/cgroup"


def test_a_cgroup_past_its_share_shrinks_even_with_host_memory_to_spare():
    t = MemoryTarget()
    t.step(Readings(RAM, 14 * GiB, 0, (CgroupLimit("c", GiB, 0),)), now=0)
    held = 700 * MiB
    over = CgroupLimit("c", GiB, int(GiB * 0.8) + 64 * MiB)  # someone else in it grew
    s = t.step(Readings(RAM, 14 * GiB, held, (over,)), now=1)
    assert s.reason == "cgroup" and s.deficit == 64 * MiB
    assert s.target == held - 64 * MiB - (held - FLOOR) // 128


def test_the_floor_and_a_fixed_target():
    t = MemoryTarget()
    s = t.step(Readings(RAM, 100 * MiB, 64 * MiB), now=0)  # far below the reserve
    assert s.target == FLOOR and s.reason == "memory"
    t = MemoryTarget(fixed=256 * MiB)
    s = t.step(Readings(RAM, 100 * MiB, 64 * MiB), now=0)
    assert (s.target, s.reason, s.source) == (256 * MiB, None, "option")
    assert t.pressure(64 * MiB, 1).target == 256 * MiB


def test_pressure_drops_an_eighth_of_what_is_held_and_holds_growth():
    t = MemoryTarget()
    t.step(Readings(RAM, 12 * GiB, 0), now=0)
    s = t.pressure(GiB, now=5)
    assert (s.target, s.reason) == (GiB - GiB // 8, "pressure")
    s = t.step(Readings(RAM, 12 * GiB, s.target), now=6)
    assert s.target == GiB - GiB // 8  # held


def test_no_memavailable_no_cgroup_means_the_ceiling():
    t = MemoryTarget()
    assert t.step(Readings(RAM, None, 0), now=0).target == RAM // 2
    assert t.step(Readings(RAM, None, GiB), now=1).target == RAM // 2
