"""How much all gfapi read caches may hold together: the memory target, from the machine.

tgt reads a FUSE file through the kernel's page cache, which grows into the memory nobody
else uses and is taken back under pressure. Our caches are anonymous memory: the kernel
cannot reclaim them, so the daemon sizes them itself, the way the ZFS ARC and Ceph's
``osd_memory_target`` do (``docs/notes/cache-memory-target.md`` has the sources and the
decisions). This module is the rule alone: readings in (passed by ``server/memory.py``,
which reads ``/proc/meminfo`` and the cgroup files once a second), a target out. No I/O,
no clock of its own.

The rule
--------
- **Ceiling.** Half of the machine's memory on a bare host (ZFS-on-Linux's old default; not
  its newer 5/8: the kernel can shrink the ARC, not us). Under cgroup limits, also
  :data:`CGROUP_SHARE` (0.8, Ceph's ratio) of each limit (``memory.high`` or ``memory.max``,
  ours or an ancestor's) minus what that cgroup holds besides our caches.
- **Reserve.** ``MemAvailable`` must stay above RAM/32 + 256 MiB (ZFS's form), and each
  cgroup's usage below 0.8 of its limit. Below that, the target *shrinks* by the deficit
  plus 1/128 of what it holds above the floor (so it does not stop one byte short), and does
  not grow for :data:`HOLD` (5 s).
- **Growth.** Otherwise it grows by at most 1/32 of the free room a tick (the room: how far
  ``MemAvailable`` is above the reserve, and each cgroup below its share), never to more than
  what the caches hold plus that room (so one tick of fills cannot eat the reserve), and never
  above the ceiling. The first reading sets it at once to the ceiling or what the room allows.
- **Floor.** :data:`FLOOR`, 32 MiB, whatever the readings say.
- **Pressure** (a PSI trigger fired: tasks stalled on memory): drop 1/8 of what is held, and
  hold growth.
- **Fixed** (``serve --gfapi-cache-total SIZE``): the target is SIZE, readings are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The target never goes below this (a cache too small to hold a hot set is worth nothing,
#: and 32 MiB is ZFS's floor too).
FLOOR = 32 << 20
#: The share of a cgroup's limit the daemon lets its usage reach (Ceph: 0.8 of the pod's).
CGROUP_SHARE = 0.8
#: After a shrink, how long the target does not grow (seconds; ZFS's arc_grow_retry).
HOLD = 5.0
#: The reserve of ``MemAvailable``: RAM / RESERVE_DIV + RESERVE_FIXED.
RESERVE_DIV = 32
RESERVE_FIXED = 256 << 20
#: Growth per tick: at most 1/GROW_DIV of the free room.
GROW_DIV = 32
#: A shrink takes the deficit plus 1/SHRINK_DIV of what is held above the floor.
SHRINK_DIV = 128
#: A PSI trigger drops 1/PRESSURE_DIV of what is held.
PRESSURE_DIV = 8


@dataclass(frozen=True)
class CgroupLimit:
    """One cgroup, ours or an ancestor, that has a memory limit: the smaller of its
    ``memory.high`` and ``memory.max`` (v1: ``memory.limit_in_bytes``), and its usage
    (``memory.current``; v1 ``memory.usage_in_bytes``)."""

    path: str
    limit: int
    usage: int

    @property
    def allowed(self) -> int:
        """The usage this cgroup may reach before the caches must give memory back."""
        return int(self.limit * CGROUP_SHARE)


@dataclass(frozen=True)
class Readings:
    """What the daemon read this tick. ``available``: ``MemAvailable`` (None where the
    kernel has none); ``held``: the bytes all caches hold now."""

    total: int
    available: int | None
    held: int
    cgroups: tuple[CgroupLimit, ...] = ()


@dataclass(frozen=True)
class Step:
    """A tick's outcome: the new ``target``, whether the caches must shrink to it now
    (``reason``: ``"memory"``, ``"cgroup"``, ``"pressure"``; None when they need not), and what
    bounds the target (``source``, for status: ``"host memory"``, ``"cgroup <path>"``,
    ``"option"``)."""

    target: int
    reason: str | None
    source: str
    deficit: int = 0


@dataclass
class MemoryTarget:
    """The target as it moves from tick to tick (see the module). ``fixed``: the target set by
    the operator (no adaptation). Not thread-safe: one timer calls it."""

    fixed: int | None = None
    floor: int = FLOOR
    target: int | None = None
    source: str = "not read yet"
    hold_until: float = float("-inf")
    #: The last shrink: (when, bytes the target dropped by, reason), for status.
    last_shrink: tuple[float, int, str] | None = field(default=None)

    def reserve(self, total: int) -> int:
        return total // RESERVE_DIV + RESERVE_FIXED

    def step(self, r: Readings, now: float) -> Step:
        if self.fixed is not None:
            self.target, self.source = self.fixed, "option"
            return Step(self.fixed, None, "option")
        ceiling, source = r.total // 2, "host memory"
        room: int | None = None
        deficit, reason = 0, None
        if r.available is not None:
            room = r.available - self.reserve(r.total)
            if room < 0:
                deficit, reason = -room, "memory"
        for cg in r.cgroups:
            cap = cg.allowed - max(0, cg.usage - r.held)
            if cap < ceiling:
                ceiling, source = cap, f"cgroup {cg.path}"
            free = cg.allowed - cg.usage
            room = free if room is None else min(room, free)
            if -free > deficit:
                deficit, reason = -free, "cgroup"
        ceiling = max(self.floor, ceiling)
        old = self.target
        if deficit:
            base = r.held if old is None else min(old, r.held)
            new = base - deficit - max(0, base - self.floor) // SHRINK_DIV
            self.hold_until = now + HOLD
        elif old is None:  # the first reading: at once, as far as the room allows
            new = ceiling if room is None else min(ceiling, r.held + room)
        elif now < self.hold_until:
            new = old if room is None else min(old, r.held + room)
        else:
            grown = old + (0 if room is None else room // GROW_DIV)
            new = grown if room is None else min(grown, r.held + room)
        new = max(self.floor, min(new, ceiling))
        self.source = source
        return self._settle(new, reason, source, deficit, now)

    def pressure(self, held: int, now: float) -> Step:
        """A PSI trigger fired: tasks stalled on memory. Drop 1/8 of what is held."""
        if self.fixed is not None:
            return Step(self.fixed, None, "option")
        base = held if self.target is None else min(self.target, held)
        self.hold_until = now + HOLD
        return self._settle(max(self.floor, base - base // PRESSURE_DIV), "pressure",
                            self.source, 0, now)

    def _settle(self, new: int, reason: str | None, source: str, deficit: int,
                now: float) -> Step:
        old = self.target
        self.target = new
        if reason is not None and old is not None and new < old:
            self.last_shrink = (now, old - new, reason)
        elif reason is not None and old is None:
            self.last_shrink = (now, 0, reason)
        return Step(new, reason, source, deficit)
