"""The read caches' memory target, driven: readings once a second, PSI as the fast path.

The rule is ``backstore/cachetarget.py`` (pure: readings in, a target out). This module does
its I/O: it reads ``/proc/meminfo`` and the memory files of the daemon's cgroup and of its
ancestors (cgroup v2, or v1's memory controller) on a thread of its own, every
:data:`TICK` seconds, sets the cache ledger's limit to the target, evicts down to it when it
shrank (the largest caches first) and gives the heap back (``malloc_trim``): freed chunks
stay in the process's RSS otherwise (measured: 1 GiB of cached chunks, half of them freed,
RSS unchanged until the trim). The same thread waits on a PSI trigger (tasks stalled on
memory for 200 ms within 2 s: systemd's default), and drops 1/8 of the caches when it fires.

A thread, not the event loop: a shrink of a few GiB frees tens of thousands of chunks and
trims the heap, milliseconds that commands should not wait for. It takes one cache's lock at
a time, as a fill does.
"""

from __future__ import annotations

import base64
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import buffers
from ..backstore import cache as read_cache
from ..backstore.cachetarget import CgroupLimit, MemoryTarget, Readings, Step

log = logging.getLogger("gluster_iscsi")

#: Seconds between two readings.
TICK = 1.0
#: systemd's default memory pressure trigger (and ours): 200 ms of stall within 2 s. A window
#: that is a multiple of 2 s lets an unprivileged process set it (Linux 6.5).
PSI_TRIGGER = b"some 200000 2000000"
#: At most one log line about shrinks per this many seconds (a pressed machine shrinks every
#: tick; the log says so once a minute, with the count).
LOG_EVERY = 60.0
#: Above this, a cgroup file's limit means "none" (v1 writes 2**63 - page size).
_NO_LIMIT = 1 << 62


# ------------------------------------------------------------------------------ readings


def meminfo(path: str = "/proc/meminfo") -> tuple[int, int | None]:
    """(MemTotal, MemAvailable) in bytes (``buffers.meminfo``); MemAvailable None where the
    kernel has none. Falls back to sysconf for the total if the file cannot be read."""
    total, avail = buffers.meminfo(path)
    if not total:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return total, avail


Mount = tuple[str, str]  # (the cgroup path at the mount's root, where it is mounted)


def _mounts(mountinfo: str) -> tuple[Mount | None, Mount | None]:
    """The cgroup2 mount and the cgroup v1 memory controller's, from mountinfo text: each
    (root, mount point). The root is not "/" where a subtree is mounted (a container sees its
    own cgroup as the mount's root)."""
    v2 = v1 = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup2" and v2 is None:
            v2 = (fields[3], fields[4])
        elif rfields[0] == "cgroup" and "memory" in rfields[2].split(",") and v1 is None:
            v1 = (fields[3], fields[4])
    return v2, v1


def cgroup_dirs(proc_cgroup: str, mountinfo: str) -> tuple[str, list[Path]]:
    """Which cgroup version holds the daemon's memory controller, and its cgroup directory with
    every ancestor up to the mount's root, innermost first (``("", [])``: none found). v1's
    memory controller wins where both exist (a hybrid host: v2 has no memory there)."""
    v2_mount, v1_mount = _mounts(mountinfo)
    v2_path = v1_path = None
    for line in proc_cgroup.splitlines():
        num, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if num == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path

    def chain(mount: Mount, path: str) -> list[Path]:
        top, where = mount
        top = "/" + top.strip("/")
        path = "/" + path.strip("/")
        if top != "/":  # a subtree is mounted: our path must lie inside it
            if path != top and not path.startswith(top + "/"):
                return []
            path = path[len(top):] or "/"
        root = Path(where)
        here = root / path.lstrip("/")
        out = []
        while True:
            out.append(here)
            if here == root or root not in here.parents:
                return out
            here = here.parent

    if v1_mount and v1_path is not None:
        dirs = chain(v1_mount, v1_path)
        if dirs:
            return "v1", dirs
    if v2_mount and v2_path is not None:
        dirs = chain(v2_mount, v2_path)
        if any((d / "memory.max").exists() or (d / "memory.current").exists() for d in dirs):
            return "v2", dirs
    return "", []


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n >= _NO_LIMIT else n


def _stat(path: Path, key: str) -> int:
    """One field of a cgroup's ``memory.stat`` (0 where it has none)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                name, _, value = line.partition(b" ")
                if name == key.encode():
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_limits(version: str, dirs: list[Path]) -> tuple[CgroupLimit, ...]:
    """Each cgroup of ``dirs`` that has a memory limit, with its usage now: without its
    inactive page cache, which the kernel reclaims by itself before the limit (as kubelet's
    working set): a cgroup whose files were read sits near its limit, full of such pages,
    and the caches must not shrink for them."""
    out = []
    for d in dirs:
        if version == "v2":
            limits = [n for n in (_read_int(d / "memory.high"), _read_int(d / "memory.max"))
                      if n is not None]
            usage = _read_int(d / "memory.current") if limits else None
            inactive = "inactive_file"
        else:
            limits = [n for n in (_read_int(d / "memory.limit_in_bytes"),) if n is not None]
            usage = _read_int(d / "memory.usage_in_bytes") if limits else None
            inactive = "total_inactive_file"
        if limits and usage is not None:
            usage = max(0, usage - _stat(d / "memory.stat", inactive))
            out.append(CgroupLimit(str(d), min(limits), usage))
    return tuple(out)


def own_cgroup() -> tuple[str, list[Path]]:
    """:func:`cgroup_dirs` of this process (``("", [])`` where /proc cannot say)."""
    try:
        return cgroup_dirs(Path("/proc/self/cgroup").read_text(),
                           Path("/proc/self/mountinfo").read_text())
    except OSError:
        return "", []


def host_readings() -> Callable[[], Readings]:
    """A reader of this machine's and this process's cgroups (the cgroup found once)."""
    version, dirs = own_cgroup()

    def read() -> Readings:
        total, avail = meminfo()
        return Readings(total, avail, read_cache.held(),
                        cgroup_limits(version, dirs) if dirs else ())

    return read


# ------------------------------------------------------------------------------ PSI


def open_pressure(environ: dict[str, str] | None = None,
                  cgroup_dir: Path | None = None) -> tuple[int | None, str]:
    """Set a memory pressure trigger: systemd's (``$MEMORY_PRESSURE_WATCH`` and the base64
    ``$MEMORY_PRESSURE_WRITE``) when it gives one, else ours on the cgroup's
    ``memory.pressure`` (v2) or ``/proc/pressure/memory``. Returns (descriptor, where) or
    (None, why not)."""
    env = os.environ if environ is None else environ
    watch = env.get("MEMORY_PRESSURE_WATCH")
    trigger = PSI_TRIGGER
    if watch:
        if watch == "/dev/null":
            return None, "off (systemd: MemoryPressureWatch=off)"
        raw = env.get("MEMORY_PRESSURE_WRITE")
        if raw:
            try:
                trigger = base64.b64decode(raw).rstrip(b"\0")
            except ValueError:
                return None, "unusable $MEMORY_PRESSURE_WRITE"
        paths = [watch]
    else:
        paths = []
        if cgroup_dir is not None and (cgroup_dir / "memory.pressure").exists():
            paths.append(str(cgroup_dir / "memory.pressure"))
        paths.append("/proc/pressure/memory")
    why = "no pressure file"
    for p in paths:
        try:
            fd = os.open(p, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            why = f"{p}: {e.strerror}"
            continue
        try:
            os.write(fd, trigger + b"\0")
        except OSError as e:
            os.close(fd)
            why = f"{p}: {e.strerror}"
            continue
        return fd, p
    return None, why


# ------------------------------------------------------------------------------ the governor


class MemoryGovernor:
    """Moves the cache ledger's limit to the memory target and shrinks the caches to it.

    ``readings``: what a tick reads (the host's by default; tests pass fakes), ``clock``: the
    time the rule sees, ``trim``: gives the freed heap back (``malloc_trim(0)``). :meth:`tick`
    and :meth:`on_pressure` may be called directly (tests); :meth:`start` runs them on a
    thread until :meth:`stop`."""

    def __init__(self, ledger: read_cache.CacheLedger, *, fixed: int | None = None,
                 readings: Callable[[], Readings] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 trim: Callable[[], None] | None = None,
                 caches: Callable[[], list[Any]] | None = None) -> None:
        self.ledger = ledger
        self.rule = MemoryTarget(fixed=fixed)
        self._read = readings if readings is not None else host_readings()
        self._clock = clock
        self._trim = trim
        self._caches = caches if caches is not None else read_cache.caches
        self.shrinks: dict[str, int] = {}
        self.shrunk_bytes = 0
        self.rebalanced_bytes = 0
        self.pressure = "not set"
        self.ticks = 0
        self.last: Readings | None = None
        self._logged_at = float("-inf")
        self._unlogged = 0
        self._lock = threading.Lock()  # a tick and a PSI event never run at once
        self._thread: threading.Thread | None = None
        self._wake_w = -1
        self.tick()  # the target from the first reading, before any LUN opens

    # -- one step ---------------------------------------------------------------------------

    def tick(self) -> Step:
        """Read, move the target, shrink to it if it fell below what is held, rebalance."""
        with self._lock:
            r = self._read()
            self.last = r
            self.ticks += 1
            step = self.rule.step(r, self._clock())
            return self._apply(step, rebalance=True)

    def on_pressure(self) -> Step:
        with self._lock:
            step = self.rule.pressure(self.ledger.used, self._clock())
            return self._apply(step, rebalance=False)

    def _apply(self, step: Step, rebalance: bool) -> Step:
        self.ledger.limit = step.target
        caches = self._caches()
        freed = 0
        if self.ledger.used > step.target:
            freed = read_cache.shrink_to(step.target, caches)
            self.shrunk_bytes += freed
            reason = step.reason or "target"
            self.shrinks[reason] = self.shrinks.get(reason, 0) + 1
            self._say(step, freed)
        if rebalance:
            moved = read_cache.rebalance(caches)
            self.rebalanced_bytes += moved
            freed += moved
        if freed and self._trim is not None:
            self._trim()
        return step

    def _say(self, step: Step, freed: int) -> None:
        now = time.monotonic()
        self._unlogged += 1
        if now - self._logged_at < LOG_EVERY:
            return
        log.info("read caches shrank to %d MiB (%s%s), %d MiB freed%s",
                 step.target >> 20, step.reason or "target", f", {step.source}",
                 freed >> 20, f"; {self._unlogged} shrinks since the last line"
                 if self._unlogged > 1 else "")
        self._logged_at, self._unlogged = now, 0

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        """The thread: ticks every second (with a fixed target too: the rebalance between
        LUNs), and the PSI trigger where the target follows the machine."""
        if self._thread is not None:
            return
        psi: int | None = None
        if self.rule.fixed is not None:
            self.pressure = "not used (--gfapi-cache-total)"
        else:
            version, dirs = own_cgroup()
            psi, self.pressure = open_pressure(
                cgroup_dir=dirs[0] if version == "v2" and dirs else None)
            if psi is None:
                log.info("memory pressure trigger: %s; the caches follow the 1 s readings "
                         "alone", self.pressure)
                self.pressure = f"unavailable: {self.pressure}"
        wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, args=(wake_r, psi),
                                        name="cache-target", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (blocking: up to a tick's work; the daemon calls it off its loop).
        The thread closes its own descriptors as it ends, never under a live poll."""
        t, self._thread = self._thread, None
        if t is None:
            return
        try:
            os.write(self._wake_w, b"x")
        finally:
            t.join(10)
            os.close(self._wake_w)
            self._wake_w = -1

    def _run(self, wake_r: int, psi: int | None) -> None:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if psi is not None:
            poller.register(psi, select.POLLPRI)
        due = time.monotonic() + TICK
        try:
            while True:
                wait = max(0.0, due - time.monotonic())
                for fd, ev in poller.poll(wait * 1000):
                    if fd == wake_r:
                        return
                    if ev & (select.POLLERR | select.POLLNVAL):
                        poller.unregister(fd)  # (the trigger went away: the ticks go on)
                        if psi is not None:
                            os.close(psi)
                            psi = None
                        self.pressure = "unavailable: the trigger's file failed"
                    elif ev & select.POLLPRI:
                        self._guarded(self.on_pressure)
                if time.monotonic() >= due:
                    self._guarded(self.tick)
                    due = time.monotonic() + TICK
        finally:
            os.close(wake_r)
            if psi is not None:
                os.close(psi)

    def _guarded(self, fn: Callable[[], Step]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the caches keep their last target
            log.exception("read cache memory target: a tick failed")

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rule, r = self.rule, self.last
        last = rule.last_shrink
        return {
            "target": rule.target,
            "source": rule.source,
            "fixed": rule.fixed is not None,
            "held": self.ledger.used,
            "mem_available": r.available if r is not None else None,
            "cgroups": [{"path": c.path, "limit": c.limit, "usage": c.usage}
                        for c in (r.cgroups if r is not None else ())],
            "pressure_trigger": self.pressure,
            "shrinks": dict(self.shrinks),
            "shrunk_bytes": self.shrunk_bytes,
            "rebalanced_bytes": self.rebalanced_bytes,
            "last_shrink": None if last is None else {
                "seconds_ago": round(self._clock() - last[0], 1), "bytes": last[1],
                "reason": last[2]},
        }
