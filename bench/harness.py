"""gluster-iscsi benchmark harness: tgt vs ours (or tgt vs tgt) on equal terms.

See BENCHMARKS.md for what it measures and how to read it. Entry point: bench/run.
Python 3.11 stdlib only. Benchmark traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from targets import (  # noqa: E402
    HOT_LUN,
    HOT_LUN_SIZE,
    LUN_SIZE,
    SESSION_PARAMS,
    Backing,
    OursConfigTarget,
    OursTarget,
    Scraper,
    Target,
    TgtTarget,
    free_port,
    ours_exe,
    proc_stat,
    stop_process,
)

GIB = float(1 << 30)
LATCLIENT = os.path.join(HERE, "latclient.py")
BG_DISTURBED = 0.25  # CPUs' worth of other work above which a row's ops/s ratio is flagged
QEMU_RANDOM_STRIDE = 104729  # prime: 4K slots visited as a permutation of the 1 GiB LUN


# --------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    name: str
    client: str        # iscsi-perf | qemu-img | latclient
    op: str            # read | write
    size: int          # bytes per I/O
    qd: int
    random: bool
    desc: str
    span: int = 0      # bytes of the LUN used (0: all); latclient only
    sessions: int = 1  # clients at once, each its own session (-xN): the row is their aggregate
    lun: int = 1       # HOT_LUN: the hot-set LUN (HOT_LUN_SIZE), read whole before measuring


#: The hot set: well inside the gfapi LUN's read cache and tgt-on-FUSE's page cache alike; the
#: cold set is the whole 1 GiB LUN, beyond the cache when it is smaller than that (with the
#: default memory target it is not, on a machine with a few GiB free: pass
#: ``--ours-args=--gfapi-cache-total 256MiB`` to measure misses against fio).
HOT_SET = HOT_LUN_SIZE


WORKLOADS = [
    Workload("randread-4k-qd1", "iscsi-perf", "read", 4096, 1, True, "4K random read, QD1"),
    Workload("randread-4k-qd32", "iscsi-perf", "read", 4096, 32, True, "4K random read, QD32"),
    Workload("randwrite-4k-qd32", "qemu-img", "write", 4096, 32, True,
             "4K write, QD32, strided over the LUN (qemu-img bench has no random mode)"),
    Workload("seqread-256k-qd16", "iscsi-perf", "read", 256 << 10, 16, False, "256 KiB sequential read, QD16"),
    Workload("seqread-1m-qd16", "iscsi-perf", "read", 1 << 20, 16, False, "1 MiB sequential read, QD16"),
    Workload("seqwrite-256k-qd16", "qemu-img", "write", 256 << 10, 16, False, "256 KiB sequential write, QD16"),
    Workload("seqwrite-1m-qd16", "qemu-img", "write", 1 << 20, 16, False, "1 MiB sequential write, QD16"),
    Workload("lat-randread-4k-qd1", "latclient", "read", 4096, 1, True, "4K random read, QD1, latency"),
    Workload("lat-randwrite-4k-qd1", "latclient", "write", 4096, 1, True, "4K random write, QD1, latency"),
    Workload("hotset-randread-4k-qd1", "latclient", "read", 4096, 1, True,
             "4K random read, QD1, in a 64 MiB hot set (read once before: inside the caches)", HOT_SET),
    Workload("coldset-randread-4k-qd1", "latclient", "read", 4096, 1, True,
             "4K random read, QD1, over the whole LUN (beyond a read cache smaller than it)"),
    # the hot set again with the C client: iscsi-perf has no span option, so it reads all of
    # the 64 MiB LUN 2 (its own file next to LUN 1's, read once whole before measuring)
    Workload("hotset-randread-4k-qd32", "iscsi-perf", "read", 4096, 32, True,
             "4K random read, QD32, all of the 64 MiB hot-set LUN 2 (read once before)", HOT_SET,
             lun=HOT_LUN),
    Workload("hotset-randread-4k-qd1-perf", "iscsi-perf", "read", 4096, 1, True,
             "4K random read, QD1, all of the 64 MiB hot-set LUN 2 (read once before)", HOT_SET,
             lun=HOT_LUN),
]

#: Workloads also run as N sessions at once (`NAME-xN`, N = --sessions): what a user with several
#: initiators sees (quote them with --pin none). Each client is its own session with its own
#: initiator name; qemu-img writers on disjoint LBA ranges.
MULTI_BASES = ("randread-4k-qd32", "randwrite-4k-qd32", "seqread-256k-qd16")
DEFAULT_SESSIONS = 4


def multi(w: Workload, n: int) -> Workload:
    return replace(w, name=f"{w.name}-x{n}", sessions=n,
                   desc=f"{w.desc}; {n} sessions at once, each its own initiator name (aggregate)")


def workload_list(names: list[str], sessions: int) -> list[Workload]:
    """The named workloads (all, and the -x`sessions` ones, when none are named). A name
    NAME-xK of a MULTI_BASES workload is K sessions of NAME, whatever --sessions says."""
    base = {w.name: w for w in WORKLOADS}
    if not names:
        return WORKLOADS + [multi(base[b], sessions) for b in MULTI_BASES]
    out = []
    for n in names:
        m = re.fullmatch(r"(.+)-x(\d+)", n)
        if n in base:
            out.append(base[n])
        elif m and m.group(1) in MULTI_BASES and int(m.group(2)) >= 1:
            out.append(multi(base[m.group(1)], int(m.group(2))))
        else:
            raise SystemExit(f"unknown workload {n!r}; known: {sorted(base)} and "
                             f"{', '.join(b + '-xN' for b in MULTI_BASES)}")
    return out


def initiator_name(k: int) -> str:
    """Client k's initiator name in a multi-session workload (both targets accept ALL)."""
    return f"iqn.2026-11.org.gluster-iscsi.bench:client{k}"


@dataclass
class Sample:
    ops_s: float
    mb_s: float
    seconds: float
    nbytes: int
    cpu_s: float            # daemon CPU over the measured window
    p50_us: float | None = None
    p99_us: float | None = None
    client_cpu_s: float = 0.0
    error: str | None = None
    other_cpu: float = 0.0  # CPUs' worth busy with anything else (other daemons, other users)
    storage_cpu_s: float = 0.0  # CPU of the benchmark volume's Gluster processes (bricks, FUSE client)
    brick_cpu_s: float = 0.0    # ... of which its bricks (glusterfsd): the rest is the FUSE client
    wall_s: float = 0.0         # the client's whole run (login and ramp too): what those two cover


def system_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = os.times()
    return ru.children_user + ru.children_system


def run_iscsi_perf(t: Target, w: Workload, seconds: float, block_size: int) -> Sample:
    """iscsi-perf has no duration option: run it, read its once-a-second report lines
    live, sample the daemon's CPU at each report, stop it with SIGINT."""
    cmd = ["stdbuf", "-o0", "iscsi-perf", "-m", str(w.qd), "-b", str(w.size // block_size)]
    if w.random:
        cmd.append("-r")
    cmd.append(t.url_for(w.lun))
    c0 = _children_cpu()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ticks: list[tuple[float, int, float]] = []    # (time, iops current, daemon cpu)
    start_cpu = proc_stat(t.pid).cpu
    t_start = time.monotonic()
    buf = b""
    out = b""
    # seconds of reports wanted, +1 for the first (ramp) report that is dropped
    want = max(1, round(seconds)) + (1 if seconds >= 2 else 0)
    deadline = t_start + want + 10
    os.set_blocking(p.stdout.fileno(), False)
    try:
        while time.monotonic() < deadline and len(ticks) < want:
            try:
                chunk = os.read(p.stdout.fileno(), 65536)
            except BlockingIOError:
                if p.poll() is not None:
                    break
                time.sleep(0.01)
                continue
            if not chunk:
                break
            now = time.monotonic()
            cpu = proc_stat(t.pid).cpu
            out += chunk
            buf += chunk
            for m in re.finditer(rb"iops current (\d+)", buf):
                ticks.append((now, int(m.group(1)), cpu))
            buf = buf[buf.rfind(b"iops current") + 1:] if b"iops current" in buf else buf[-200:]
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            rest, _ = p.communicate(timeout=10)
            out += rest or b""
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    client_cpu = _children_cpu() - c0
    if not ticks:
        return Sample(0, 0, 0, 0, 0, error="iscsi-perf: " + out.decode(errors="replace")[-300:])
    if len(ticks) >= 3:
        used = ticks[1:]
        base_cpu = ticks[0][2]
    else:
        used = ticks
        base_cpu = start_cpu
    ops = sum(x[1] for x in used)
    secs = float(len(used))  # iscsi-perf reports once per second
    nbytes = ops * w.size
    return Sample(ops / secs, nbytes / secs / 1e6, secs, nbytes, used[-1][2] - base_cpu,
                  client_cpu_s=client_cpu)


def run_qemu_bench(t: Target, w: Workload, count: int, timeout: float = 120) -> Sample:
    step = w.size * (QEMU_RANDOM_STRIDE if w.random else 1)
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "writeback", "-d", str(w.qd), "-s", str(w.size),
           "-S", str(step), "-c", str(count)]
    if w.op == "write":
        cmd.append("-w")
    cmd.append(t.url_for(w.lun))
    c0 = _children_cpu()
    cpu0 = proc_stat(t.pid).cpu
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Sample(0, 0, 0, 0, 0, error=f"qemu-img bench: no completion within {timeout:.0f} s")
    cpu1 = proc_stat(t.pid).cpu
    m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
    if r.returncode != 0 or not m:
        return Sample(0, 0, 0, 0, 0, error="qemu-img bench: " + (r.stderr or r.stdout)[-300:])
    secs = max(float(m.group(1)), 1e-3)
    nbytes = count * w.size
    return Sample(count / secs, nbytes / secs / 1e6, secs, nbytes, cpu1 - cpu0,
                  client_cpu_s=_children_cpu() - c0)


def run_latclient(t: Target, w: Workload, seconds: float, seed: int, count: int = 0) -> Sample:
    cmd = [sys.executable, LATCLIENT, "bench", t.url_for(w.lun), "--op", w.op, "--size", str(w.size),
           "--seconds", str(seconds), "--seed", str(seed)]
    if count:
        cmd += ["--count", str(count)]
    if w.random:
        cmd.append("--random")
    if w.span:
        cmd += ["--span", str(w.span)]
    c0 = _children_cpu()
    cpu0 = proc_stat(t.pid).cpu
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    cpu1 = proc_stat(t.pid).cpu
    try:
        d = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        d = {"error": (r.stderr or r.stdout)[-300:]}
    if "error" in d:
        return Sample(0, 0, 0, 0, 0, error="latclient: " + d["error"])
    return Sample(d["ops_per_s"], d["mb_per_s"], d["seconds"], d["bytes"], cpu1 - cpu0,
                  p50_us=d["lat_us"]["p50"], p99_us=d["lat_us"]["p99"],
                  client_cpu_s=_children_cpu() - c0)


def run_iscsi_perf_multi(t: Target, w: Workload, seconds: float, block_size: int) -> Sample:
    """w.sessions iscsi-perf clients at once, each its own session (-i: its own initiator
    name). Every client's first (ramp) report is dropped; the window opens when all of them
    have reported once and closes `seconds` later, once each has reported again. ops/s = the
    sum of the clients' mean reported rates in the window; daemon CPU = over the window."""
    n = w.sessions
    procs = []
    for k in range(n):
        cmd = ["stdbuf", "-o0", "iscsi-perf", "-i", initiator_name(k + 1), "-m", str(w.qd),
               "-b", str(w.size // block_size)]
        if w.random:
            cmd.append("-r")
        cmd.append(t.url_for(w.lun))
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    c0 = _children_cpu()
    fds = {p.stdout.fileno(): i for i, p in enumerate(procs)}
    for fd in fds:
        os.set_blocking(fd, False)
    ticks: list[list[int]] = [[] for _ in procs]
    bufs = [b""] * n
    outs = [b""] * n
    closed: set[int] = set()
    base: list[int] = []
    t0 = t1 = cpu0 = cpu1 = 0.0
    deadline = time.monotonic() + max(1.0, seconds) + 20
    try:
        while time.monotonic() < deadline and not closed:
            ready, _, _ = select.select(list(fds), [], [], 0.1)
            for fd in ready:
                i = fds[fd]
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    closed.add(i)
                    continue
                outs[i] += chunk
                bufs[i] += chunk
                ticks[i] += [int(m.group(1)) for m in re.finditer(rb"iops current (\d+)", bufs[i])]
                bufs[i] = (bufs[i][bufs[i].rfind(b"iops current") + 1:] if b"iops current" in bufs[i]
                           else bufs[i][-200:])
            now = time.monotonic()
            if not base and all(ticks):
                base, t0, cpu0 = [len(x) for x in ticks], now, proc_stat(t.pid).cpu
            elif base and now - t0 >= max(1.0, seconds) and all(
                    len(x) > b for x, b in zip(ticks, base, strict=True)):
                t1, cpu1 = now, proc_stat(t.pid).cpu
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for i, p in enumerate(procs):
            try:
                rest, _ = p.communicate(timeout=10)
                outs[i] += rest or b""
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
    client_cpu = _children_cpu() - c0
    if not t1:
        bad = next((i for i, x in enumerate(ticks) if i in closed or not x), 0)
        return Sample(0, 0, 0, 0, 0, error=f"iscsi-perf session {bad + 1} of {n}: "
                      + outs[bad].decode(errors="replace")[-300:])
    ops_s = float(sum(statistics.mean(x[b:]) for x, b in zip(ticks, base, strict=True)))
    secs = t1 - t0
    nbytes = int(ops_s * secs) * w.size
    return Sample(ops_s, ops_s * w.size / 1e6, secs, nbytes, cpu1 - cpu0, client_cpu_s=client_cpu)


def run_qemu_multi(t: Target, w: Workload, count: int, timeout: float = 120) -> Sample:
    """w.sessions qemu-img bench clients at once, `count` requests each, each its own session
    (--image-opts: its own initiator-name) on its own LBA range: sequential clients start at
    k/N of the LUN; strided ones at position k/N of the stride's permutation of the LUN's
    slots (qemu-img wraps modulo the image size), so up to slots/N requests each never touch
    another client's blocks. ops/s = all requests / the longest client's run time."""
    n = w.sessions
    slots = LUN_SIZE // w.size if w.lun == 1 else HOT_LUN_SIZE // w.size
    stride = QEMU_RANDOM_STRIDE if w.random else 1
    if w.random:
        count = min(count, slots // n)
    procs = []
    c0 = _children_cpu()
    cpu0 = proc_stat(t.pid).cpu
    for k in range(n):
        first = (k * (slots // n) * stride) % slots
        opts = (f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:{t.port},"
                f"file.target={t.iqn},file.lun={w.lun},file.initiator-name={initiator_name(k + 1)}")
        cmd = ["qemu-img", "bench", "--image-opts", "-t", "writeback", "-d", str(w.qd),
               "-s", str(w.size), "-S", str(w.size * stride), "-c", str(count),
               "-o", str(first * w.size)]
        if w.op == "write":
            cmd.append("-w")
        cmd.append(opts)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    secs: list[float] = []
    err = ""
    deadline = time.monotonic() + timeout
    for k, p in enumerate(procs):
        try:
            out, e = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            err = err or f"qemu-img bench session {k + 1} of {n}: no completion within {timeout:.0f} s"
            continue
        m = re.search(r"Run completed in ([\d.]+) seconds", out)
        if p.returncode != 0 or not m:
            err = err or f"qemu-img bench session {k + 1} of {n}: " + (e or out)[-300:]
        else:
            secs.append(max(float(m.group(1)), 1e-3))
    cpu1 = proc_stat(t.pid).cpu
    if err:
        return Sample(0, 0, 0, 0, 0, error=err)
    wall = max(secs)
    nbytes = n * count * w.size
    return Sample(n * count / wall, nbytes / wall / 1e6, wall, nbytes, cpu1 - cpu0,
                  client_cpu_s=_children_cpu() - c0)


STORAGE_VOLUME = ""  # Gluster volume whose processes count as storage, not background


def storage_cpu() -> tuple[float, float]:
    """utime+stime of the benchmark volume's bricks and FUSE client (not charged to any
    daemon), and of its bricks alone: the bricks' cost per write differs between files of
    one volume (BENCHMARKS.md "Stop 24"), the FUSE client's is tgt's Gluster client."""
    vol = STORAGE_VOLUME
    if not vol:
        return 0.0, 0.0
    total = bricks = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            if not argv or not os.path.basename(argv[0]).startswith("glusterfs"):
                continue
            if not any(a == f"--volfile-id=/{vol}" or a.startswith(f"{vol}.") for a in argv):
                continue
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            total += used
            if os.path.basename(argv[0]) == "glusterfsd":
                bricks += used
        except (OSError, ValueError, IndexError):
            continue
    return total, bricks


def cache_counts(t: Target, lun: int) -> tuple[int, int] | None:
    """(hits, misses) of our read cache on LUN ``lun`` (``lun list --json``), None if the
    target is not ours or the LUN has no read cache (not gfapi, or ``--gfapi-cache 0``)."""
    if not isinstance(t, OursTarget) or t.proc is None:
        return None
    try:
        r = t.cli("lun", "list", "--json", check=False)
        for x in json.loads(r.stdout or "[]"):
            c = x.get("cache")
            if x.get("lun") == lun and isinstance(c, dict) and c.get("enabled"):
                return int(c["hits"]), int(c["misses"])
    except (ValueError, KeyError, TypeError, AttributeError, OSError, subprocess.SubprocessError):
        pass
    return None


def hit_ratio(before: tuple[int, int] | None, after: tuple[int, int] | None) -> dict | None:
    """The cache's hits and misses between two ``cache_counts`` (None if either is missing)."""
    if before is None or after is None:
        return None
    hits, misses = after[0] - before[0], after[1] - before[1]
    if hits < 0 or misses < 0 or hits + misses == 0:
        return None  # (the cache was reset meanwhile, or nothing read through it)
    return {"hits": hits, "misses": misses, "hit_ratio": hits / (hits + misses)}


#: Workloads of ours on a gfapi LUN set against a job of fio's gfapi engine on the same volume
#: in the same run (``ceilings``): the issue's "cold set within 10% of fio's gfapi engine".
FIO_PAIRS = (("coldset-randread-4k-qd1", "randread-4k-qd1"),
             ("randread-4k-qd1", "randread-4k-qd1"),
             ("randread-4k-qd32", "randread-4k-qd32"))
#: fio's jobs run again on the gfapi LUN's own file after our rounds (``gluster-gfapi-lunfile``)
FIO_LUN_JOBS = ("randread-4k-qd1", "randread-4k-qd32")
#: ... and, for these workloads of ours, after each of their rounds too (``fio_rounds``): one
#: fio run after our rounds sets a whole run's medians against one moment of the volume, and
#: on a shared VM fio's own figures move by half within minutes (BENCHMARKS.md "Stop 38").
#: Alternated with the rounds, as tgt is, each round gets a ratio of its own.
FIO_ROUND_JOBS = dict(FIO_PAIRS)


def measured(fn, t: Target, *a) -> Sample:
    """Run one client, note how much CPU the rest of the machine burnt meanwhile."""
    def me() -> float:
        x = os.times()
        return x.user + x.system
    g0, k0 = storage_cpu()
    b0, d0, c0, m0, w0 = system_busy(), proc_stat(t.pid).cpu, _children_cpu(), me(), time.monotonic()
    s = fn(t, *a)
    b1, d1, c1, m1, w1 = system_busy(), proc_stat(t.pid).cpu, _children_cpu(), me(), time.monotonic()
    g1, k1 = storage_cpu()
    s.storage_cpu_s = g1 - g0
    s.brick_cpu_s = k1 - k0
    s.wall_s = w1 - w0
    s.other_cpu = max(0.0, ((b1 - b0) - (d1 - d0) - (c1 - c0) - (m1 - m0) - (g1 - g0))
                      / max(w1 - w0, 1e-3))
    return s


def probe(t: Target) -> dict:
    r = subprocess.run([sys.executable, LATCLIENT, "probe", t.url], capture_output=True,
                       text=True, timeout=60)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (r.stderr or r.stdout)[-300:]}


# --------------------------------------------------------------------------- results
@dataclass
class WorkloadResult:
    workload: Workload
    a: list[Sample] = field(default_factory=list)
    b: list[Sample] = field(default_factory=list)

    @staticmethod
    def _ok(xs: list[Sample]) -> list[Sample]:
        return [x for x in xs if x.error is None]

    def summary(self, side: str) -> dict:
        xs = self._ok(self.a if side == "a" else self.b)
        if not xs:
            errs = [x.error for x in (self.a if side == "a" else self.b) if x.error]
            return {"error": errs[0] if errs else "no samples"}
        tot_bytes = sum(x.nbytes for x in xs)
        d = {"ops_s": statistics.median(x.ops_s for x in xs),
             "mb_s": statistics.median(x.mb_s for x in xs),
             "cpu_s_per_gib": (sum(x.cpu_s for x in xs) / (tot_bytes / GIB)) if tot_bytes else None,
             "n": len(xs), "other_cpu": statistics.mean(x.other_cpu for x in xs),
             "storage_cpu_s_per_gib": (sum(x.storage_cpu_s for x in xs) / (tot_bytes / GIB)) if tot_bytes else None,
             "brick_cpu_s_per_gib": (sum(x.brick_cpu_s for x in xs) / (tot_bytes / GIB)) if tot_bytes else None}
        if xs[0].p50_us is not None:
            d["p50_us"] = statistics.median(x.p50_us for x in xs)
            d["p99_us"] = statistics.median(x.p99_us for x in xs)
        return d

    def cpu_ratios(self) -> list[float]:
        out = []
        for sa, sb in zip(self.a, self.b, strict=False):
            if sa.error is None and sb.error is None and sa.nbytes and sb.nbytes and sa.cpu_s > 0:
                out.append((sb.cpu_s / sb.nbytes) / (sa.cpu_s / sa.nbytes))
        return out

    def ratios(self) -> list[float]:
        out = []
        for sa, sb in zip(self.a, self.b, strict=False):
            if sa.error is None and sb.error is None and sa.ops_s > 0:
                out.append(sb.ops_s / sa.ops_s)
        return out


# --------------------------------------------------------------------------- ceilings
def iperf3_ceiling(seconds: float) -> dict:
    if not shutil.which("iperf3"):
        return {"error": "iperf3 not installed"}
    port = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(max(1, round(seconds))),
                            "-J"], capture_output=True, text=True, timeout=seconds + 30)
        d = json.loads(r.stdout)
        bps = d["end"]["sum_received"]["bits_per_second"]
        return {"gbit_s": bps / 1e9, "mb_s": bps / 8 / 1e6, "streams": 1}
    except (ValueError, KeyError, subprocess.TimeoutExpired) as e:
        return {"error": f"iperf3: {e}"}
    finally:
        stop_process(srv, grace=3)


FIO_JOBS = [  # writes first: they lay the file out for the reads (fio's gfapi engine does not)
    ("seqwrite-1m", ["--rw=write", "--bs=1m", "--ioengine=psync", "--iodepth=1"]),
    ("randwrite-4k-qd1", ["--rw=randwrite", "--bs=4k", "--ioengine=psync", "--iodepth=1"]),
    ("randread-4k-qd1", ["--rw=randread", "--bs=4k", "--ioengine=psync", "--iodepth=1"]),
    ("randread-4k-qd32", ["--rw=randread", "--bs=4k", "--ioengine=io_uring", "--iodepth=32"]),
    ("seqread-1m", ["--rw=read", "--bs=1m", "--ioengine=psync", "--iodepth=1"]),
]


def fio_ceiling(target_args: list[str], seconds: float, size: str, only: tuple[str, ...] = (),
                cpus: set[int] | None = None, layout: bool = True) -> dict:
    """fio's jobs on one file; ``cpus``: fio confined to those (the daemon's, when pinned)."""
    if not shutil.which("fio"):
        return {"error": "fio not installed"}
    out: dict = {}
    if cpus:
        out["cpus"] = sorted(cpus)
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    if layout and any(a.startswith("--ioengine=gfapi") for a in target_args):
        # fio lays out no file through gfapi: write it whole first, else the read jobs run
        # past the end of what the time-bound write job wrote (0 IOPS)
        subprocess.run(["fio", "--name=layout", *target_args, f"--size={size}", "--rw=write",
                        "--bs=1m", "--numjobs=1", "--output-format=json"],
                       capture_output=True, text=True, timeout=600)
    for name, args in FIO_JOBS:
        if only and name not in only:
            continue
        if any(a.startswith("--ioengine=gfapi") for a in target_args):
            # engine options (--volume, --brick) must follow --ioengine; QD>1 needs the async engine
            engine = "gfapi_async" if "--iodepth=32" in args else "gfapi"
            args = [a for a in args if not a.startswith("--ioengine=")]
            target_args = [f"--ioengine={engine}"] + [a for a in target_args if not a.startswith("--ioengine=")]
        cmd = [*pin, "fio", "--name=ceiling", *target_args, f"--size={size}", "--time_based",
               f"--runtime={max(1, round(seconds))}", "--numjobs=1", "--output-format=json",
               "--randrepeat=1", *args]
        _, k0 = storage_cpu()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        _, k1 = storage_cpu()
        try:
            j = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
            side = j["read"] if j["read"]["io_bytes"] else j["write"]
            pct = side.get("clat_ns", {}).get("percentile", {})
            out[name] = {"ops_s": side["iops"], "mb_s": side["bw_bytes"] / 1e6,
                         "p50_us": pct.get("50.000000", 0) / 1000,
                         "p99_us": pct.get("99.000000", 0) / 1000}
            # the bricks' CPU a completed op over fio's whole run (its volume setup and its
            # glfs_fini, seconds long, too: a few us a read high). Not fio's own CPU: run
            # without --thread, its job process's was not in our children's times (0.2 s for
            # 34,000 reads).
            ops = side.get("total_ios") or 0
            if ops and STORAGE_VOLUME:
                out[name]["brick_cpu_us"] = (k1 - k0) / ops * 1e6
        except (ValueError, KeyError, IndexError):
            out[name] = {"error": (r.stderr or r.stdout)[-200:]}
    return out


def gfapi_path_ceiling(host: str, vol: str, path: str, smoke: bool,
                       cpus: set[int] | None = None) -> dict:
    """Our own gfapi path without the iSCSI hop (``bench/gfapi_calls.py`` in a process of its
    own, on the daemon's CPUs when pinned): a plain ``glfs_pread`` loop at QD1 (what fio's
    gfapi engine does) and the daemon's asynchronous path (``server/gfaio.py``) at QD1 and
    QD32, 4 KiB at random over the file. Against fio on the same file it says how much of
    the distance to fio is our Gluster client path and how much the target around it."""
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    out_file = os.path.join(tempfile.gettempdir(), f"gfapi-path-{os.getpid()}.json")
    n, reps = (2000, 1) if smoke else (8000, 3)  # (medians of 3, order reversed every other)
    # the interpreter of the build the daemon runs (its console script's), not bench/run's
    exe = ours_exe()
    python = os.path.join(os.path.dirname(exe), "python") if exe else ""
    if not os.access(python, os.X_OK):
        python = sys.executable
    cmd = [*pin, python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gfapi_calls.py"),
           "--volume", vol, "--host", host, "--path", path, "--size-mib", str(LUN_SIZE >> 20),
           "--cases", "read.raw,read.engine", "--qd", "32", "--n", str(n), "--reps", str(reps), "--uvloop",
           "--json", out_file]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode:
            return {"error": (r.stderr or r.stdout).strip()[-200:], "file": path}
        with open(out_file) as f:
            rows = json.load(f)["rows"]
        out: dict = {f"{row['case']}-qd{row['qd']}": {"ops_s": row["ops_s"], "p50_us": row["p50_us"],
                                                     "cpu_us": row["cpu_us"]} for row in rows}
        out["file"] = path
        if cpus:
            out["cpus"] = sorted(cpus)
        return out
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}", "file": path}
    finally:
        if os.path.exists(out_file):
            os.unlink(out_file)


# --------------------------------------------------------------------------- idle
def idle_measure(t: Target, sessions: int, seconds: float) -> dict:
    """RSS before, then with N idle logged-in sessions; daemon CPU over an idle window."""
    before = proc_stat(t.pid)
    ready = os.path.join(t.workdir, "hold.ready")
    if os.path.exists(ready):
        os.unlink(ready)
    hold_for = seconds + 10
    p = subprocess.Popen([sys.executable, LATCLIENT, "hold", t.url, "--sessions", str(sessions),
                          "--seconds", str(hold_for), "--ready-file", ready],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if p.poll() is not None or time.monotonic() > deadline:
                return {"error": "hold client failed: " + (p.communicate()[0] or "")[-300:]}
            time.sleep(0.05)
        time.sleep(min(1.0, seconds / 4))   # let login work settle
        s0 = proc_stat(t.pid)
        t0 = time.monotonic()
        time.sleep(seconds)
        s1 = proc_stat(t.pid)
        dt = time.monotonic() - t0
        return {"sessions": sessions, "rss_before_mib": before.rss / 2**20,
                "rss_mib": s1.rss / 2**20, "cpu_s": s1.cpu - s0.cpu, "window_s": dt,
                "cpu_pct": 100 * (s1.cpu - s0.cpu) / dt}
    finally:
        stop_process(p, signal.SIGTERM, grace=3)


# --------------------------------------------------------------------------- environment
def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except OSError:
        pass

    def ver(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    def deb(pkg: str) -> str:
        return ver(["dpkg-query", "-W", "-f=${Version}", pkg])

    git = ver(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "memory": mem, "python": platform.python_version(), "hostname": platform.node(),
            "tgt": deb("tgt"), "libiscsi": deb("libiscsi-bin"), "qemu-utils": deb("qemu-utils"),
            "fio": ver(["fio", "--version"]), "glusterfs": deb("glusterfs-server"),
            "git": git, "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def gluster_env(cmd: str, volume: str) -> tuple[str, str, bool, str]:
    """scripts/gluster-env.sh CMD VOLUME -> (mountpoint, 'host:/volume', started_by_us, note)."""
    script = os.path.join(REPO, "scripts", "gluster-env.sh")
    if not os.path.exists(script):
        return "", "", False, "scripts/gluster-env.sh not found"
    if cmd == "stop":
        subprocess.run(["bash", script, "stop", volume], capture_output=True, timeout=300)
        return "", "", False, ""
    was_up = subprocess.run(["bash", script, "status", volume], capture_output=True,
                            timeout=120).returncode == 0
    log(f"gluster: scripts/gluster-env.sh start {volume} (running already: {was_up})")
    try:
        r = subprocess.run(["bash", script, "start", volume], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "", "", not was_up, "scripts/gluster-env.sh start timed out"
    kv = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    if r.returncode != 0 or not kv.get("MOUNT"):
        return "", "", not was_up and r.returncode == 0, (
            f"scripts/gluster-env.sh start {volume} exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return kv["MOUNT"], f"{kv.get('HOST', '127.0.0.1')}:/{kv.get('VOLUME', volume)}", not was_up, ""


def fuse_mounts() -> list[tuple[str, str]]:
    """(source, mountpoint) of mounted FUSE Gluster volumes."""
    out = []
    try:
        with open("/proc/mounts") as f:
            for line in f:
                src, mnt, fstype = line.split()[:3]
                if fstype == "fuse.glusterfs":
                    out.append((src, mnt.replace("\\040", " ")))
    except OSError:
        pass
    return out


def fuse_client_pids(mountpoint: str) -> list[int]:
    """The glusterfs processes serving the FUSE mount at ``mountpoint`` (its client side)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) in (b"glusterfs", b"glusterfsd") \
                and os.path.normpath(mountpoint).encode() in argv[1:]:  # the mount's last argument
            pids.append(int(d))
    return pids


def pin_threads(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    """Set every thread of ``pid`` to ``cpus``; returns what each had, for :func:`unpin`."""
    before: dict[int, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            before[int(tid)] = os.sched_getaffinity(int(tid))
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass
    return before


def unpin(before: dict[int, set[int]]) -> None:
    for tid, cpus in before.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


# --------------------------------------------------------------------------- orchestration
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_target(kind: str, label: str, workdir: str, args: argparse.Namespace) -> Target:
    wd = os.path.join(workdir, f"target-{label.lower()}-{kind}")
    t: Target
    if kind == "tgt":
        t = TgtTarget(label, wd, block_size=args.block_size, bsoflags=args.tgt_bsoflags)
    elif kind == "ours":
        extra = args.ours_args_a if label == "A" and args.ours_args_a is not None else args.ours_args
        t = OursTarget(label, wd, cmd=args.ours_cmd.split() if args.ours_cmd else None,
                       serve_args=extra.split(), block_size=args.block_size)
        if label == args.metrics_on:
            t.metrics_port = free_port()
    else:
        raise SystemExit(f"unknown target kind {kind!r} (tgt, ours)")
    t.cpus = args.daemon_cpus
    return t


def parse_pin(spec: str) -> tuple[set[int] | None, set[int] | None]:
    """'auto' | 'none' | 'DAEMON_CPUS:CLIENT_CPUS' (e.g. '0:1', '0-1:2-3')."""
    def cpuset(x: str) -> set[int]:
        out: set[int] = set()
        for part in x.split(","):
            a, _, b = part.partition("-")
            out.update(range(int(a), int(b or a) + 1))
        return out
    if spec == "none":
        return None, None
    if spec == "auto":
        avail = sorted(os.sched_getaffinity(0))
        if len(avail) < 2:
            return None, None
        half = len(avail) // 2
        return set(avail[:half]), set(avail[half:])
    d, _, c = spec.partition(":")
    return cpuset(d), cpuset(c)


TERM_KEYS = ["MaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength", "ImmediateData",
             "InitialR2T", "MaxOutstandingR2T", "HeaderDigest", "DataDigest"]


def terms_of(p: dict) -> dict:
    if "error" in p:
        return {"error": p["error"]}
    d = {k: p["negotiated"].get(k) for k in TERM_KEYS}
    d["block_size"] = p["block_size"]
    d["capacity_bytes"] = p["capacity_bytes"]
    d["WCE"] = p["caching"].get("WCE")
    return d


def prefill(t: Target, seconds_cap: float) -> None:
    """Write the whole LUN once (1 MiB, QD16) so both backing files hold data, not holes."""
    w = Workload("prefill", "qemu-img", "write", 1 << 20, 16, False, "")
    s = run_qemu_bench(t, w, LUN_SIZE >> 20)
    if s.error:
        log(f"  prefill {t.name()}: {s.error}")
    else:
        log(f"  prefill {t.name()}: {s.mb_s:.0f} MB/s")
    if t.hot_lun:
        s = run_qemu_bench(t, replace(w, lun=t.hot_lun), HOT_LUN_SIZE >> 20)
        if s.error:
            log(f"  prefill {t.name()} LUN {t.hot_lun}: {s.error}")


def run_backend(label: str, back_a: Backing, back_b: Backing, args: argparse.Namespace,
                workdir: str, workloads: list[Workload], report: dict,
                targets: tuple[Target, Target] | None = None, do_prefill: bool = True,
                fio_lun: list[str] | None = None) -> None:
    """Both targets through every workload, rounds alternated. ``fio_lun``: fio's gfapi
    arguments for B's LUN file (B ours on gfapi): fio's job of :data:`FIO_ROUND_JOBS` then
    runs on it after each round of those workloads, on the daemons' CPUs (``fio_rounds``)."""
    sec = report.setdefault("backends", {}).setdefault(label, {})
    sec["backing_a"], sec["backing_b"] = back_a.describe(), back_b.describe()
    if targets is not None:
        ta, tb = targets
    else:
        ta = make_target(args.target_a, "A", os.path.join(workdir, label), args)
        tb = make_target(args.target_b, "B", os.path.join(workdir, label), args)
    # one backing file for both (a group backend's --group-file shared): written once, by A
    shared = back_a == back_b and bool(back_a.file or back_a.path)
    for t, bk in ((ta, back_a), (tb, back_b)):
        why = t.supports(bk)
        if why:
            sec["skipped"] = f"{t.name()}: {why}"
            log(f"{label}: skipped: {sec['skipped']}")
            return
    scraper = None
    try:
        for t, bk in ((ta, back_a), (tb, back_b)):
            log(f"{label}: starting {t.name()} on {bk.describe()} port {t.port}")
            t.start(bk)
        for t in (ta, tb):
            if isinstance(t, OursTarget) and t.metrics_port:
                scraper = Scraper(t.label, t.metrics_port, args.metrics_interval)
                scraper.start()
        pa, pb = probe(ta), probe(tb)
        terms = {"A": terms_of(pa), "B": terms_of(pb)}
        diff = [k for k in terms["A"] if terms["A"].get(k) != terms["B"].get(k)]
        sec["terms"], sec["terms_differ"] = terms, diff
        sec["notes"] = ta.notes + tb.notes
        if "error" in terms["A"] or "error" in terms["B"]:
            sec["skipped"] = f"probe failed: A={terms['A'].get('error')} B={terms['B'].get('error')}"
            log(f"{label}: {sec['skipped']}")
            return
        if diff:
            log(f"{label}: WARNING: targets differ on {diff}: A={[terms['A'][k] for k in diff]} "
                f"B={[terms['B'][k] for k in diff]}")
            if args.strict:
                sec["skipped"] = f"--strict and terms differ on {diff}"
                return
        bs = {"A": terms["A"]["block_size"], "B": terms["B"]["block_size"]}
        if not args.smoke and not args.no_prefill and do_prefill:
            for t in ((ta,) if shared else (ta, tb)):
                prefill(t, 60)
        results = []
        caches: dict[str, dict] = {}  # workload -> side -> our read cache over its rounds
        fio_rounds: dict[str, list[dict]] = {}  # workload -> fio's job after each round
        if fio_lun:
            sec["fio_paired"] = {"cpus": sorted(args.daemon_cpus) if args.daemon_cpus else None,
                                 "args": fio_lun}
        for w in workloads:
            wr = WorkloadResult(w)
            counts = {}
            if w.lun != 1 and not (ta.hot_lun == w.lun and tb.hot_lun == w.lun):
                why = f"skipped: no hot-set LUN {w.lun} on " + " and ".join(
                    t.name() for t in (ta, tb) if t.hot_lun != w.lun)
                wr.a.append(Sample(0, 0, 0, 0, 0, error=why))
                wr.b.append(Sample(0, 0, 0, 0, 0, error=why))
                log(f"{label}: {w.name}: skipped, a target has no hot-set LUN {w.lun}")
                results.append(wr)
                continue
            multi_s = w.sessions > 1
            # warm-up: one short run on each; it also calibrates qemu-img's op count.
            for t, side in ((ta, "A"), (tb, "B")):
                if w.span and w.op == "read":  # a hot set: read it once, on both sides alike
                    whole = Workload("warm", "latclient", "read", 1 << 20, 1, False, "", w.span,
                                     lun=w.lun)
                    run_latclient(t, whole, 3600, seed=0, count=max(1, w.span >> 20))
                if w.client == "qemu-img":
                    c0 = max(16 * w.qd, int(args.calib_bytes // w.size))
                    if multi_s:  # per client: the same calibration, each of the N clients
                        c0 = max(16 * w.qd, c0 // w.sessions)
                        s = run_qemu_multi(t, w, c0, 60)
                        rate = s.ops_s / w.sessions if not s.error and s.ops_s > 0 else c0
                    else:
                        s = run_qemu_bench(t, w, c0, 60)
                        rate = s.ops_s if not s.error and s.ops_s > 0 else c0
                    counts[side] = max(w.qd * 4, int(rate * args.seconds))
                elif args.warmup > 0:
                    if w.client == "iscsi-perf" and multi_s:
                        run_iscsi_perf_multi(t, w, 1, bs[side])
                    elif w.client == "iscsi-perf":
                        run_iscsi_perf(t, w, 1, bs[side])
                    else:
                        run_latclient(t, w, args.warmup, seed=99)
            cache0 = {side: cache_counts(t, w.lun) for t, side in ((ta, "A"), (tb, "B"))}
            for r in range(args.rounds):
                order = ((ta, "A"), (tb, "B"))
                if args.order == "abba" and r % 2 == 1:
                    order = order[::-1]
                for t, side in order:
                    if w.client == "iscsi-perf" and multi_s:
                        s = measured(run_iscsi_perf_multi, t, w, args.seconds, bs[side])
                    elif w.client == "iscsi-perf":
                        s = measured(run_iscsi_perf, t, w, args.seconds, bs[side])
                    elif w.client == "qemu-img" and multi_s:
                        s = measured(run_qemu_multi, t, w, counts[side], 30 + 10 * args.seconds)
                    elif w.client == "qemu-img":
                        s = measured(run_qemu_bench, t, w, counts[side], 30 + 10 * args.seconds)
                    else:
                        s = measured(run_latclient, t, w, args.seconds, r + 1)
                    (wr.a if side == "A" else wr.b).append(s)
                    if s.error:
                        log(f"  {w.name} {t.name()} round {r + 1}: ERROR {s.error}")
                    if t.proc is not None and t.proc.poll() is not None:
                        raise RuntimeError(f"{t.name()} died during {w.name}")
                job = FIO_ROUND_JOBS.get(w.name) if fio_lun else None
                if job:
                    f = fio_ceiling(fio_lun, args.seconds, "1g", (job,), cpus=args.daemon_cpus,
                                    layout=False)
                    fio_rounds.setdefault(w.name, []).append(
                        f.get(job) or {"error": f.get("error", "fio gave no result")})
            hits = {side: hit_ratio(cache0[side], cache_counts(t, w.lun))
                    for t, side in ((ta, "A"), (tb, "B"))}
            caches[w.name] = {side: h for side, h in hits.items() if h is not None}
            rs = wr.ratios()
            log(f"{label}: {w.name}: A {wr.summary('a').get('ops_s', 0):.0f} ops/s, "
                f"B {wr.summary('b').get('ops_s', 0):.0f} ops/s, "
                f"B/A {statistics.median(rs) if rs else float('nan'):.2f}")
            results.append(wr)
        sec["workloads"] = [
            {"name": wr.workload.name, "client": wr.workload.client
             + (f" x{wr.workload.sessions}" if wr.workload.sessions > 1 else "")
             + (f" (LUN {wr.workload.lun})" if wr.workload.lun != 1 else ""),
             "desc": wr.workload.desc, "sessions": wr.workload.sessions, "lun": wr.workload.lun,
             "A": wr.summary("a"), "B": wr.summary("b"),
             "ratio": ({"median": statistics.median(wr.ratios()), "min": min(wr.ratios()),
                        "max": max(wr.ratios())} if wr.ratios() else None),
             "cpu_ratio": ({"median": statistics.median(wr.cpu_ratios()), "min": min(wr.cpu_ratios()),
                            "max": max(wr.cpu_ratios())} if wr.cpu_ratios() else None),
             "samples": {"A": [s.__dict__ for s in wr.a], "B": [s.__dict__ for s in wr.b]},
             "cache": caches.get(wr.workload.name) or None,
             "fio_rounds": fio_rounds.get(wr.workload.name) or None}
            for wr in results]
    except Exception as e:  # keep the other backends going, report the failure
        sec["error"] = f"{type(e).__name__}: {e}"
        log(f"{label}: ERROR {sec['error']}")
    finally:
        if scraper is not None:
            note = scraper.stop()
            log(f"{label}: {note}")
            sec.setdefault("notes", []).append(note)
        for t in (ta, tb):
            t.stop()


#: How the lone gateway A of a group backend opens the shared LUN: (what the report says,
#: LUN options for a gfapi LUN, for a file LUN)
LONE_VARIANTS = {
    "direct": ("lone gateway, LUN opened O_DIRECT and without read cache, as the group opens "
               "its LUNs (the fair comparison)", {"o_direct": True, "cache": "off"},
               {"o_direct": True}),
    "default": ("lone gateway with default LUN options (gfapi: buffered, read cache on; "
                "file: buffered, kernel page cache)", {}, {}),
}


def run_group(be: str, args: argparse.Namespace, workdir: str, workloads: list[Workload],
              report: dict, gdir: str = "", host: str = "", vol: str = "") -> None:
    """Issue 20's yardstick: one gateway-group member (the LUN's owner) against the same
    daemon as a lone gateway, on the same backing file, same run. be = group-gfapi (the LUN
    through gfapi on the benchmark volume, the group directory on that volume) or group-local
    (a file on a local disk, not tmpfs: O_DIRECT; the group directory beside it)."""
    variants = [v for v in args.lone.split(",") if v]
    for v in variants:
        if v not in LONE_VARIANTS:
            raise SystemExit(f"--lone: unknown {v!r}; known: {', '.join(LONE_VARIANTS)}")
    sides = ("a", "b") if args.group_file == "separate" else ("shared",)
    if be == "group-gfapi":
        rel = f"gluster-iscsi-bench-{os.getpid()}"
        os.makedirs(os.path.join(gdir, "group"), exist_ok=True)
        files = [os.path.join(gdir, f"group-{x}-lun.img") for x in sides]  # gdir: rel on FUSE
        backs = [Backing("gfapi", volume=vol, host=host, path=f"{rel}/group-{x}-lun.img") for x in sides]
        location = f"gluster://{host}/{vol}/{rel}/group"
        tmp = ""
    else:
        tmp = tempfile.mkdtemp(prefix="gluster-iscsi-bench-group-", dir=args.local_dir)
        files = [os.path.join(tmp, f"group-{x}-lun.img") for x in sides]
        backs = [Backing("file", file=f) for f in files]
        location = os.path.join(tmp, "group")
        os.makedirs(location)
    back_a, back_b = backs[0], backs[-1]
    try:
        for lun_file in files:
            with open(lun_file, "wb") as f:
                f.truncate(LUN_SIZE)
        for i, v in enumerate(variants):
            desc, gfapi_opts, file_opts = LONE_VARIANTS[v]
            label = f"{be} (A: lone {v})"
            wd = os.path.join(workdir, be, v)
            cmd = args.ours_cmd.split() if args.ours_cmd else None
            ta = OursConfigTarget("A", os.path.join(wd, "a"), cmd=cmd, serve_args=args.ours_args.split(),
                                  block_size=args.block_size,
                                  lun_options=gfapi_opts if back_a.kind == "gfapi" else file_opts)
            tb = OursConfigTarget("B", os.path.join(wd, "b"), cmd=cmd, serve_args=args.ours_args.split(),
                                  block_size=args.block_size,
                                  group={"location": location, "beat_seconds": args.group_beat,
                                         "lease_seconds": args.group_lease,
                                         "standby": args.group_standby})
            ta.notes.append(f"A: {desc}")
            tb.notes.append("B: gateway group member owning the LUN (the daemon opens group LUNs "
                            "O_DIRECT, no read cache: docs/HA.md decision 3)")
            ta.cpus = tb.cpus = args.daemon_cpus
            run_backend(label, back_a, back_b, args, workdir, workloads, report, targets=(ta, tb),
                        do_prefill=i == 0)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for lun_file in files:
                try:
                    os.unlink(lun_file)
                except OSError:
                    pass


def run_idle(args: argparse.Namespace, workdir: str, report: dict) -> None:
    out = report.setdefault("idle", {})
    d = tempfile.mkdtemp(prefix="idle-", dir="/dev/shm")
    try:
        for kind, label in ((args.target_a, "A"), (args.target_b, "B")):
            t = make_target(kind, label, os.path.join(workdir, "idle"), args)
            try:
                t.start(Backing("file", directory=d))
                time.sleep(0.5)
                out[label] = idle_measure(t, args.idle_sessions, args.idle_seconds)
                out[label]["target"] = t.name()
                log(f"idle {t.name()}: {out[label]}")
            except Exception as e:
                out[label] = {"error": f"{type(e).__name__}: {e}", "target": t.name()}
            finally:
                t.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- report
def fmt(x, nd=0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:,.{nd}f}"
    return str(x)


def render(report: dict) -> str:
    m = report["machine"]
    a, b = report["targets"]["A"], report["targets"]["B"]
    L = []
    L.append(f"- Machine: {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, {m['memory']} RAM, "
             f"Python {m['python']}")
    L.append(f"- Versions: tgt {m['tgt']}, libiscsi {m['libiscsi']}, qemu-utils {m['qemu-utils']}, "
             f"{m['fio']}, glusterfs {m['glusterfs']}; repo {m['git']}; {m['date_utc']}")
    L.append(f"- Command: `{report['command']}`")
    L.append(f"- A = {a}, B = {b}; ratio = B/A of ops/s per round (median [min..max] over "
             f"{report['settings']['rounds']} rounds, {report['settings']['seconds']} s each, order "
             f"{report['settings']['order']})")
    pin = report["settings"]["pin"]
    L.append(f"- CPU placement: daemons on CPUs {pin['daemon'] or 'any'}, clients on CPUs {pin['client'] or 'any'}; "
             f"nice {report['settings'].get('nice', 0)} for both daemons and all clients")
    if report["settings"].get("fuse_client_pinned"):
        L.append(f"- gfapi vs FUSE: tgt's Gluster client (the FUSE mount's glusterfs) pinned to the daemon "
                 f"CPUs {report['settings']['fuse_client_pinned']} too, as our gfapi client's threads are "
                 "(they run in our daemon)")
    L.append("- Target session params set on both: " + ", ".join(f"{k}={v}" for k, v in SESSION_PARAMS.items()))
    L.append("- bg CPU = CPUs' worth of other work on the machine during the runs (other daemons, other users); "
             "well above 0 means the numbers were disturbed. CPU s/GiB = the daemon's user+system CPU per GiB moved.")
    g = report.get("gluster")
    if g:
        L.append(f"- Gluster: volume {g['volume']} ({g['source'] or '-'}) mounted at {g['mount'] or '-'}"
                 + (f"; {g['note']}" if g.get("note") else ""))
    if report.get("target_b_note"):
        L.append(f"- NOTE: {report['target_b_note']}")
    L.append("")
    c = report.get("ceilings", {})
    if c:
        L.append("### Ceilings")
        ip = c.get("iperf3", {})
        L.append("- loopback TCP (iperf3, 1 stream): "
                 + (f"{ip['gbit_s']:.1f} Gbit/s ({ip['mb_s']:,.0f} MB/s)" if "gbit_s" in ip else ip.get("error", "-")))
        for be, jobs in c.get("fio", {}).items():
            if "error" in jobs:
                L.append(f"- fio on {be}: {jobs['error']}")
                continue
            parts = []
            for name, j in jobs.items():
                if name in ("cpus", "file"):
                    continue
                if "error" in j:
                    parts.append(f"{name} ERROR")
                elif name.startswith("rand"):
                    parts.append(f"{name} {j['ops_s']:,.0f} IOPS (p50 {j['p50_us']:.0f} us, p99 {j['p99_us']:.0f} us)"
                                 if name.endswith("qd1") else f"{name} {j['ops_s']:,.0f} IOPS")
                else:
                    parts.append(f"{name} {j['mb_s']:,.0f} MB/s")
            where = f" (on CPUs {','.join(map(str, jobs['cpus']))})" if jobs.get("cpus") else ""
            L.append(f"- fio on {be}{where}: " + "; ".join(parts))
        if c.get("gfapi-path"):
            L.append(gfapi_path_line(c["gfapi-path"]))
        L.append("")
    for be, sec in report.get("backends", {}).items():
        L.append(f"### Backend: {be} (A: {sec.get('backing_a')}; B: {sec.get('backing_b')})")
        if sec.get("skipped"):
            L.append(f"- SKIPPED: {sec['skipped']}")
            L.append("")
            continue
        if sec.get("error"):
            L.append(f"- ERROR: {sec['error']}")
        terms = sec.get("terms")
        if terms:
            ta, tb = terms["A"], terms["B"]
            same = "same on both" if not sec.get("terms_differ") else "DIFFER: " + ", ".join(sec["terms_differ"])
            L.append(f"- Terms as negotiated ({same}): "
                     + ", ".join(f"{k}={ta.get(k)}" + (f"/{tb.get(k)}" if ta.get(k) != tb.get(k) else "")
                                 for k in ta))
        for n in sec.get("notes", []):
            L.append(f"- Note: {n}")
        if sec.get("workloads"):
            L.append("")
            L.append("| workload | client | A ops/s | B ops/s | A MB/s | B MB/s | A p50/p99 us | B p50/p99 us "
                     "| A CPU s/GiB | B CPU s/GiB | B/A ops/s [min..max] | B/A CPU per GiB [min..max] | bg CPU "
                     "| Gluster CPU s/GiB A/B | of which bricks A/B |")
            L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for w in sec["workloads"]:
                A, B, r = w["A"], w["B"], w["ratio"]

                def lat(s):
                    return f"{s['p50_us']:.0f}/{s['p99_us']:.0f}" if "p50_us" in s else "-"

                def cell(s, k, nd=0):
                    return "ERR" if "error" in s else fmt(s.get(k), nd)
                rtxt = f"{r['median']:.2f} [{r['min']:.2f}..{r['max']:.2f}]" if r else "-"
                cr = w.get("cpu_ratio")
                if cr is None and w.get("samples"):  # runs saved before the column existed
                    wr = WorkloadResult(WORKLOADS[0], [Sample(**x) for x in w["samples"]["A"]],
                                        [Sample(**x) for x in w["samples"]["B"]])
                    rs = wr.cpu_ratios()
                    cr = {"median": statistics.median(rs), "min": min(rs), "max": max(rs)} if rs else None
                ctxt = f"{cr['median']:.2f} [{cr['min']:.2f}..{cr['max']:.2f}]" if cr else "-"
                gs = [x.get("storage_cpu_s_per_gib") for x in (A, B)]
                gtxt = (f"{gs[0]:.2f}/{gs[1]:.2f}" if all(g is not None for g in gs) and any(gs) else "-")
                ks = [x.get("brick_cpu_s_per_gib") for x in (A, B)]
                ktxt = (f"{ks[0]:.2f}/{ks[1]:.2f}" if all(k is not None for k in ks) and any(ks) else "-")
                bg = [x["other_cpu"] for x in (A, B) if "other_cpu" in x]
                bgtxt = f"{max(bg):.2f}" if bg else "-"
                if bg and max(bg) > BG_DISTURBED:
                    rtxt += " *"
                L.append(f"| {w['name']} | {w['client']} | {cell(A, 'ops_s')} | {cell(B, 'ops_s')} | "
                         f"{cell(A, 'mb_s')} | {cell(B, 'mb_s')} | {lat(A)} | {lat(B)} | "
                         f"{cell(A, 'cpu_s_per_gib', 2)} | {cell(B, 'cpu_s_per_gib', 2)} | {rtxt} | {ctxt} | {bgtxt} | {gtxt} | {ktxt} |")
            if any(max([w[x].get("other_cpu", 0) for x in "AB"] or [0]) > BG_DISTURBED for w in sec["workloads"]):
                L.append(f"\n\\* bg CPU > {BG_DISTURBED}: other work competed for the CPUs during these runs; "
                         "the ops/s ratio is not trustworthy there (the CPU-per-GiB ratio holds up much better).")
            L.extend(cache_lines(sec, report))
            errs = [(w["name"], s, w[s]["error"]) for w in sec["workloads"] for s in "AB" if "error" in w[s]]
            for name, s, e in errs:
                L.append(f"- {name} {s}: {e.strip()[:200]}")
        L.append("")
    idle = report.get("idle")
    if idle:
        L.append(f"### Idle daemon with {report['settings']['idle_sessions']} logged-in idle sessions "
                 f"(goal for ours: RSS <= 100 MiB)")
        L.append("| target | RSS before MiB | RSS with sessions MiB | CPU % idle | CPU s over window |")
        L.append("|---|---:|---:|---:|---:|")
        for lab in ("A", "B"):
            d = idle.get(lab, {})
            if "error" in d:
                L.append(f"| {d.get('target', lab)} | ERROR: {d['error'][:150]} | | | |")
            elif d:
                L.append(f"| {d['target']} | {d['rss_before_mib']:.1f} | {d['rss_mib']:.1f} | "
                         f"{d['cpu_pct']:.2f} | {d['cpu_s']:.2f} / {d['window_s']:.0f} s |")
        L.append("")
    return "\n".join(L)


def _on_file(ceiling: dict, sec: dict) -> bool:
    """Whether a ceiling measured on a LUN's own file (``file``) was on this section's B."""
    path = ceiling.get("file")
    return bool(path) and str(sec.get("backing_b", "")).endswith(path)


def _fio_for(fio: dict, sec: dict) -> bool:
    """Whether fio's figures can be set against this section's B: measured, not failed, and
    if on a LUN's own file (``file``), on this section's."""
    return bool(fio) and "error" not in fio and ("file" not in fio or _on_file(fio, sec))


def gfapi_path_line(gp: dict) -> str:
    """The ceilings' line of ``gfapi_path_ceiling``: its rows, or why there are none."""
    if "error" in gp:
        return f"- our gfapi path in-process: {gp['error']}"
    where = f", on CPUs {','.join(map(str, gp['cpus']))}" if gp.get("cpus") else ""
    return (f"- our gfapi path in-process on the LUN's own file, no iSCSI (bench/gfapi_calls.py{where}): "
            + "; ".join(f"{k} {v['ops_s']:,.0f} IOPS (p50 {v['p50_us']:.0f} us)"
                        for k, v in gp.items() if k not in ("cpus", "file")))


def cache_lines(sec: dict, report: dict) -> list[str]:
    """Below a backend's table: our read cache's hit ratio in each workload, and where B is
    ours on gfapi, its random reads against fio's gfapi engine on the same volume."""
    L: list[str] = []
    rows = [(w["name"], side, w["cache"][side]) for w in sec["workloads"]
            for side in "AB" if (w.get("cache") or {}).get(side)]
    if rows:
        L.append("- Read cache hit ratio of ours over the measured rounds: " + ", ".join(
            f"{name} {side} {c['hit_ratio']:.2f}" for name, side, c in rows))
    ceilings = report.get("ceilings", {}).get("fio", {})
    if "gfapi" not in str(sec.get("backing_b", "")):
        return L
    by_name = {w["name"]: w for w in sec["workloads"]}
    for key, how in (("gluster-gfapi", ""), ("gluster-gfapi-unpinned", ", fio unpinned"),
                     ("gluster-gfapi-lunfile", ", fio on the LUN's own file after our rounds"),
                     ("gluster-gfapi-lunfile-unpinned",
                      ", fio on the LUN's own file after our rounds, fio unpinned")):
        fio = ceilings.get(key, {})
        if not _fio_for(fio, sec):
            continue  # (none, failed, or measured on another section's LUN file)
        if fio.get("cpus"):
            how += f", fio on CPUs {','.join(map(str, fio['cpus']))} as the daemons"
        parts = []
        for ours_name, fio_name in FIO_PAIRS:
            w, f = by_name.get(ours_name), fio.get(fio_name, {})
            ops = w["B"].get("ops_s") if w else None
            if not w or not ops or not f.get("ops_s"):
                continue
            hit = (w.get("cache") or {}).get("B")
            parts.append(f"{ours_name} {ops / f['ops_s']:.2f} ({ops:,.0f} against fio {fio_name} "
                         f"{f['ops_s']:,.0f} IOPS" + (f"; hit ratio {hit['hit_ratio']:.2f}" if hit else "")
                         + ")")
        if parts:
            L.append(f"- B against fio's gfapi engine on the same volume in this run (fio in-process, "
                     f"no initiator or network round trip; QD32 with gfapi_async{how}): " + "; ".join(parts))
    # where the distance to fio is: our Gluster client path alone (no iSCSI) against fio, both
    # on the LUN's own file after our rounds, on the same CPUs
    gp, fio = report.get("ceilings", {}).get("gfapi-path") or {}, ceilings.get("gluster-gfapi-lunfile", {})
    if gp and "error" not in gp and fio and "error" not in fio and _on_file(gp, sec) and _on_file(fio, sec):
        parts = []
        for ours_name, fio_name in (("read.raw-qd1", "randread-4k-qd1"), ("read.engine-qd1", "randread-4k-qd1"),
                                    ("read.engine-qd32", "randread-4k-qd32")):
            o, f = gp.get(ours_name, {}), fio.get(fio_name, {})
            if o.get("ops_s") and f.get("ops_s"):
                parts.append(f"{ours_name} {o['ops_s'] / f['ops_s']:.2f} ({o['ops_s']:,.0f} against fio "
                             f"{fio_name} {f['ops_s']:,.0f} IOPS)")
        if parts:
            L.append("- Our gfapi path without the iSCSI hop (bench/gfapi_calls.py, in-process) against fio, "
                     "both on the LUN's own file: " + "; ".join(parts))
    hop = hop_line(by_name, ceilings, sec)
    if hop:
        L.append(hop)
    L.extend(paired_lines(by_name, sec))
    return L


def _per_round(w: dict | None) -> list[tuple[dict, dict]]:
    """(ours' sample, fio's job right after it) for each round both measured."""
    if not w:
        return []
    # (the same length: fio runs after each round; a section that failed mid-round has no
    # workloads list at all)
    pairs = zip((w.get("samples") or {}).get("B") or [], w.get("fio_rounds") or [], strict=False)
    return [(o, f) for o, f in pairs
            if not o.get("error") and o.get("ops_s") and not f.get("error") and f.get("ops_s")]


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}..{max(xs):.2f}]"


def paired_lines(by_name: dict, sec: dict) -> list[str]:
    """B against fio's job run right after each of its rounds on B's LUN file (``fio_rounds``):
    a ratio per round, median [min..max]; and the cold QD1 round trip of :func:`hop_line`
    round by round (ours' p50 of the round against fio's p50 right after it plus ours on a hit,
    the hot-set row's p50), under the same conditions as that line."""
    how = sec.get("fio_paired") or {}
    if not how:
        return []
    where = f", on CPUs {','.join(map(str, how['cpus']))} as the daemons" if how.get("cpus") else ""
    L, parts = [], []
    for ours_name, fio_name in FIO_PAIRS:
        pairs = _per_round(by_name.get(ours_name))
        if pairs:
            parts.append(f"{ours_name} {_spread([o['ops_s'] / f['ops_s'] for o, f in pairs])} "
                         f"against fio {fio_name} over {len(pairs)} rounds")
    if parts:
        L.append("- B against fio's gfapi engine alternated with the rounds (fio on the LUN's own "
                 f"file right after each round of ours{where}; ratio per round, median [min..max]): "
                 + "; ".join(parts))
    bricks = []
    for ours_name, _ in FIO_PAIRS:
        # (ours: over the client's whole run, at the rate of its window: its login and first
        # report are in the bricks' CPU too)
        pairs = [(o, f) for o, f in _per_round(by_name.get(ours_name))
                 if o.get("wall_s") and f.get("brick_cpu_us") is not None]
        if pairs:
            ours_us = [o["brick_cpu_s"] / (o["ops_s"] * o["wall_s"]) * 1e6 for o, _ in pairs]
            fio_us = [f["brick_cpu_us"] for _, f in pairs]
            bricks.append(f"{ours_name} {statistics.median(ours_us):.0f} us under ours, "
                          f"{statistics.median(fio_us):.0f} under fio")
    if bricks:
        L.append("- The bricks' CPU a read in those rounds, median (a daemon that costs them "
                 "more a read than fio does would show here): " + "; ".join(bricks))
    terms = _hop_terms(by_name)
    if terms is None:
        return L
    cold, hot_p50 = terms
    line = [(f["p50_us"] + hot_p50) / o["p50_us"] for o, f in _per_round(cold)
            if o.get("p50_us") and f.get("p50_us")]
    if line:
        L.append(f"- Cold QD1 reads against fio plus the iSCSI hop, round by round (ours' p50 against "
                 f"fio's p50 right after it + ours from the cache {hot_p50:.0f} us): "
                 f"{_spread(line)} over {len(line)} rounds")
    return L


def _hop_terms(by_name: dict) -> tuple[dict, float] | None:
    """The cold-set row and the p50 of ours on a cache hit (the hot-set row), where the cold
    QD1 read can be set against fio plus a hit: the hot row all hits, the cold row mostly
    misses (not a cache sized to the whole LUN); else None."""
    cold, hot = by_name.get("coldset-randread-4k-qd1"), by_name.get("hotset-randread-4k-qd1")
    if not cold or not hot:
        return None
    hot_p50 = hot["B"].get("p50_us")
    hot_cache = (hot.get("cache") or {}).get("B") or {}
    cold_cache = (cold.get("cache") or {}).get("B")
    if (not hot_p50 or hot_cache.get("hit_ratio", 0.0) < 0.99
            or (cold_cache and cold_cache["hit_ratio"] >= 0.5)):
        return None
    return cold, hot_p50


def hop_line(by_name: dict, ceilings: dict, sec: dict) -> str:
    """Cold QD1 reads against fio plus the iSCSI hop, all measured in this run: fio's QD1
    latency (p50) plus the round trip of a read ours answers from its cache at QD1 (the
    hot-set latclient row, if all its reads were hits) is what a target whose cold read cost
    nothing beyond those two would take. The cold row's p50 is set against that sum, if most
    of its reads missed (not when the cache holds the whole LUN). fio on the LUN's own file
    when it ran there (the same file as ours), else on its own file."""
    terms = _hop_terms(by_name)
    if terms is None:
        return ""
    cold, hot_p50 = terms
    cold_p50, cold_cache = cold["B"].get("p50_us"), (cold.get("cache") or {}).get("B")
    if not cold_p50:
        return ""
    for key in ("gluster-gfapi-lunfile", "gluster-gfapi"):
        fio = ceilings.get(key, {})
        f = fio.get("randread-4k-qd1", {}) if _fio_for(fio, sec) else {}
        if not f.get("p50_us"):
            continue
        ideal = f["p50_us"] + hot_p50
        return (f"- Cold QD1 reads against fio plus the iSCSI hop, p50 latencies of this run: "
                f"ours {cold_p50:.0f} us (coldset-randread-4k-qd1"
                + (f", hit ratio {cold_cache['hit_ratio']:.2f}" if cold_cache else "")
                + f") against fio {f['p50_us']:.0f} us ({key} randread-4k-qd1) + ours from the "
                f"cache {hot_p50:.0f} us (hotset-randread-4k-qd1) = {ideal:.0f} us: "
                f"{ideal / cold_p50:.2f} (1.00: a cold read costs ours nothing beyond a hit's round "
                f"trip and fio's gfapi read)")
    return ""


def md_section(report: dict) -> str:
    """A run of a target against itself is the sanity check; anything else is "the last run"."""
    t = report.get("targets", {})
    if t.get("A") == t.get("B"):
        return "sanity"
    if report.get("settings", {}).get("tgt_bsoflags") or "--tgt-bsoflags" in report.get("command", ""):
        return "tgt-direct"
    return "last-run"


def update_benchmarks_md(text: str, path: str, section: str = "last-run") -> None:
    begin, end = f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    _, tail_ = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail_}")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--target-a", default="tgt", help="reference target: tgt (default) | ours")
    ap.add_argument("--target-b", default="auto",
                    help="target under test: ours | tgt | auto (ours if `gluster-iscsi serve` "
                         "exists, else tgt, said loudly)")
    ap.add_argument("--backends", default="tmpfs,fuse,gfapi",
                    help="comma list of: tmpfs (file on /dev/shm), fuse (file on a FUSE-mounted Gluster "
                         "volume, both targets), gfapi (B on its gfapi store vs A on FUSE), gfapi-both "
                         "(A and B each on a gfapi store: --target-a ours, e.g. with "
                         "--ours-args-a='--gfapi-cache 0' for the cache against none)")
    ap.add_argument("--lone", default="direct,default",
                    help="group-* backends: how lone gateway A opens the shared LUN, one backend "
                         "section each: direct (O_DIRECT, no read cache: as the group member B) and/or "
                         "default (the lone default: buffered, gfapi read cache on)")
    ap.add_argument("--group-file", choices=["separate", "shared"], default="separate",
                    help="group-* backends: A and B each on its own LUN file of the same make in the "
                         "same directory (default), or both on one file. One Gluster file open in two "
                         "clients at once turns AFR's eager lock off for both (every write takes and "
                         "drops its inode lock): a cost neither side has alone")
    ap.add_argument("--group-standby", action="store_true",
                    help="group-* backends: a second gateway joins the group as standby of the LUN "
                         "(its heartbeats and lock tries on the volume during the runs)")
    ap.add_argument("--group-beat", type=float, default=1.0, help="group-* backends: beat_seconds")
    ap.add_argument("--group-lease", type=float, default=5.0, help="group-* backends: lease_seconds")
    ap.add_argument("--local-dir", default="/var/tmp",
                    help="group-local: directory on a local disk (not tmpfs: the LUN is opened O_DIRECT)")
    ap.add_argument("--workloads", default="", help="comma list of workload names (default: all). "
                    f"{', '.join(b + '-xN' for b in MULTI_BASES)}: N sessions at once (N clients, each its "
                    "own initiator name), the row their aggregate")
    ap.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS,
                    help="N of the -xN workloads in the default (all) list (default %(default)s); a named "
                         "NAME-xK runs K")
    ap.add_argument("--rounds", type=int, default=3, help="measured A,B pairs per workload")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measured run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per workload and target")
    ap.add_argument("--order", choices=["abab", "abba"], default="abab")
    ap.add_argument("--calib-bytes", type=float, default=64e6,
                    help="bytes of the qemu-img warm-up run that calibrates its op count")
    ap.add_argument("--block-size", type=int, default=512, help="LUN block size (both targets)")
    ap.add_argument("--fuse-dir", default="", help="directory on a FUSE-mounted Gluster volume "
                    "(default: first fuse.glusterfs mount in /proc/mounts)")
    ap.add_argument("--gluster-volume", default="giscsi-bench",
                    help="volume for the fuse/gfapi backends, made by scripts/gluster-env.sh start VOLUME "
                         "(replica 3, gluster-block profile) unless it runs already; stopped after if this run "
                         "started it")
    ap.add_argument("--keep-gluster", action="store_true", help="leave the volume this run started running")
    ap.add_argument("--tgt-bsoflags", default="", choices=["", "direct", "sync"],
                    help="tgtadm --bsoflags for tgt's backing file (default: buffered, like a plain open). "
                         "'direct' takes the kernel page cache out of tgt-on-FUSE, e.g. against ours on gfapi")
    ap.add_argument("--ours-cmd", default="", help="command for our daemon (default: gluster-iscsi)")
    ap.add_argument("--ours-args", default="", help="extra arguments for `gluster-iscsi serve` "
                    "(e.g. --ours-args=--no-uvloop)")
    ap.add_argument("--ours-args-a", default=None, metavar="ARGS",
                    help="with --target-a ours: its own `serve` arguments instead of --ours-args, to "
                         "compare two settings of ours (e.g. --target-a ours --ours-args-a=--no-io-uring)")
    ap.add_argument("--metrics-on", choices=["A", "B"], default="",
                    help="that target (ours) serves --metrics-listen on a free loopback port and the "
                         "harness scrapes its /metrics every --metrics-interval s while it runs. The "
                         "metrics on/off ratio: --target-a ours --target-b ours --metrics-on B")
    ap.add_argument("--metrics-interval", type=float, default=1.0, help="seconds between scrapes (--metrics-on)")
    ap.add_argument("--no-prefill", action="store_true", help="skip writing the whole LUN before measuring")
    ap.add_argument("--no-ceilings", action="store_true")
    ap.add_argument("--no-idle", action="store_true")
    ap.add_argument("--idle-sessions", type=int, default=64)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--strict", action="store_true", help="skip a backend when the targets' terms differ")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds, not minutes: tmpfs only, 1 round, short runs (CI; never pass/fail on numbers)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "last.json"), help="where to write raw results")
    ap.add_argument("--update-benchmarks", action="store_true",
                    help="replace the last-run section of BENCHMARKS.md with this run's report")
    ap.add_argument("--nice", type=int, default=-10,
                    help="scheduling priority for daemons, clients and harness alike (default -10: a shared "
                         "machine's background work disturbs the runs less; 0 to leave it)")
    ap.add_argument("--pin", default="auto",
                    help="CPU placement, identical for both targets: auto (daemons on the first half of "
                         "the CPUs, clients and harness on the rest), none, or DAEMON:CLIENT cpu lists "
                         "like 0:1. Unpinned runs on 2 CPUs vary by 2x with the scheduler's placement.")
    ap.add_argument("--render", default="", metavar="JSON",
                    help="print the report of a saved run (with --update-benchmarks: put it in BENCHMARKS.md)")
    args = ap.parse_args(argv)
    # A shell that starts us in the background (`bench/run &`) sets SIGINT to "ignore", which
    # every child would inherit: iscsi-perf (stopped with SIGINT) and tgtd would not stop.
    # A handler (not an ignore) is reset to the default in children at exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        text = render(saved) + f"\nElapsed: {saved.get('elapsed_s', 0):.0f} s\n"
        print(text)
        if args.update_benchmarks:
            update_benchmarks_md(text, os.path.join(REPO, "BENCHMARKS.md"), md_section(saved))
        return 0
    args.daemon_cpus, client_cpus = parse_pin(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # the harness and every client it starts
    if args.nice:
        try:  # inherited by both daemons and every client alike
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as e:
            log(f"cannot renice to {args.nice}: {e}")
            args.nice = 0

    if args.smoke:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.0
        args.calib_bytes = 4e6
        args.idle_seconds = 1.0
        if "--backends" not in " ".join(argv or sys.argv):
            args.backends = "tmpfs"
    if os.geteuid() != 0:
        log("note: tgtd usually needs root")
    missing = [t for t in ("tgtd", "tgtadm", "iscsi-perf", "qemu-img", "stdbuf") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing tools: {missing} (apt-get install tgt libiscsi-bin qemu-utils qemu-block-extra)")

    report: dict = {"machine": machine_info(), "command": " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
                    "settings": {"tgt_bsoflags": args.tgt_bsoflags, "nice": args.nice, "pin": {"daemon": sorted(args.daemon_cpus or []), "client": sorted(client_cpus or [])},
                                 "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
                                 "order": args.order, "idle_sessions": args.idle_sessions, "smoke": args.smoke}}
    if args.target_b == "auto":
        why = OursTarget.available(args.ours_cmd.split() if args.ours_cmd else None)
        if why is None:
            args.target_b = "ours"
        else:
            args.target_b = "tgt"
            report["target_b_note"] = f"target B is tgt, not ours: {why}. This run is the harness's tgt-vs-tgt sanity check."
            log(report["target_b_note"])
    report["targets"] = {"A": args.target_a, "B": args.target_b}
    if all(b.startswith("group-") for b in args.backends.split(",") if b):
        report["targets"] = {"A": "ours (lone gateway)", "B": "ours (gateway group member, owner)"}
    if args.metrics_on and {"A": args.target_a, "B": args.target_b}[args.metrics_on] != "ours":
        raise SystemExit(f"--metrics-on {args.metrics_on}: that target must be ours (tgt has no metrics endpoint)")

    names = [n for n in args.workloads.split(",") if n]
    if args.sessions < 1:
        raise SystemExit("--sessions: at least 1")
    workloads = workload_list(names, args.sessions)
    backends = [b for b in args.backends.split(",") if b]

    t_begin = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="gluster-iscsi-bench-")
    shm = tempfile.mkdtemp(prefix="gluster-iscsi-bench-", dir="/dev/shm")
    started_gluster = False
    try:
        fuse_dir, fuse_src = args.fuse_dir, ""
        gluster_note = ""
        if any(b in ("fuse", "gfapi", "gfapi-both", "group-gfapi") for b in backends) and not fuse_dir:
            fuse_dir, fuse_src, started_gluster, gluster_note = gluster_env("start", args.gluster_volume)
            report["gluster"] = {"volume": args.gluster_volume, "mount": fuse_dir, "source": fuse_src,
                                 "started_by_harness": started_gluster, "note": gluster_note}
        if fuse_dir and not fuse_src:
            fuse_src = next((s for s, m in fuse_mounts() if fuse_dir.startswith(m)), "")
        gdir = os.path.join(fuse_dir, f"gluster-iscsi-bench-{os.getpid()}") if fuse_dir else ""
        global STORAGE_VOLUME
        STORAGE_VOLUME = fuse_src.split(":/", 1)[1].strip("/") if ":/" in fuse_src else ""
        no_gluster = ("no FUSE-mounted Gluster volume: " + (gluster_note or "pass --fuse-dir")
                      + " (scripts/gluster-env.sh start VOLUME makes one; or pass --fuse-dir DIR)")

        if not args.no_ceilings:
            c = report.setdefault("ceilings", {})
            log("ceiling: iperf3 loopback")
            c["iperf3"] = iperf3_ceiling(1 if args.smoke else 3)
            fio = c.setdefault("fio", {})
            log("ceiling: fio on tmpfs")
            fio["tmpfs"] = fio_ceiling([f"--filename={shm}/fio-ceiling.dat"], 1 if args.smoke else 2,
                                       "128m" if args.smoke else "1g",
                                       ("randread-4k-qd1", "seqwrite-1m") if args.smoke else ())
            if gdir and any(b in ("fuse", "gfapi") for b in backends):
                os.makedirs(gdir, exist_ok=True)
                log("ceiling: fio on Gluster FUSE")
                fio["gluster-fuse"] = fio_ceiling([f"--filename={gdir}/fio-ceiling.dat"], 1 if args.smoke else 2, "256m")
                if "gfapi" in backends and ":" in fuse_src:
                    host, vol = fuse_src.split(":", 1)
                    gfapi_args = ["--ioengine=gfapi", f"--volume={vol.strip('/')}", f"--brick={host}",
                                  f"--filename=gluster-iscsi-bench-{os.getpid()}/gfapi-ceiling.dat"]
                    # the LUN's size: its 4K random reads are the cold set's yardstick
                    secs, size = (1, "256m") if args.smoke else (2, "1g")
                    # On equal terms with ours: fio's gfapi client is in fio, ours in the
                    # daemon, so a pinned run confines fio to the daemon's CPUs as it does the
                    # daemon (and tgt's FUSE client); the unpinned figure is kept beside it.
                    log("ceiling: fio gfapi engine" + (f" on CPUs {sorted(args.daemon_cpus)}, as the daemons"
                                                        if args.daemon_cpus else ""))
                    fio["gluster-gfapi"] = fio_ceiling(gfapi_args, secs, size, cpus=args.daemon_cpus)
                    if args.daemon_cpus and not args.smoke:
                        log("ceiling: fio gfapi engine, unpinned")
                        fio["gluster-gfapi-unpinned"] = fio_ceiling(
                            gfapi_args, secs, size, ("randread-4k-qd1", "randread-4k-qd32"), layout=False)
            for f in os.listdir(shm):
                os.unlink(os.path.join(shm, f))

        for be in backends:
            if be == "tmpfs":
                run_backend("tmpfs", Backing("file", directory=shm), Backing("file", directory=shm),
                            args, workdir, workloads, report)
            elif be == "fuse":
                if not gdir:
                    report.setdefault("backends", {})["fuse"] = {"skipped": no_gluster}
                    log(f"fuse: skipped: {no_gluster}")
                    continue
                os.makedirs(gdir, exist_ok=True)
                run_backend("fuse", Backing("file", directory=gdir), Backing("file", directory=gdir),
                            args, workdir, workloads, report)
            elif be == "gfapi":
                if not gdir:
                    report.setdefault("backends", {})["gfapi"] = {"skipped": no_gluster}
                    log(f"gfapi: skipped: {no_gluster}")
                    continue
                os.makedirs(gdir, exist_ok=True)
                host, vol = (fuse_src.split(":", 1) + [""])[:2] if ":" in fuse_src else ("127.0.0.1", "")
                # Equal terms when pinned: our gfapi client's threads run in our daemon, on the
                # daemon CPUs; tgt's Gluster client is the FUSE mount's glusterfs process, which
                # would otherwise run on the client CPUs (the harness's affinity, inherited at
                # mount) and give tgt a second CPU. So it goes on the daemon CPUs for this section.
                pinned: list[dict[int, set[int]]] = []
                if args.daemon_cpus and fuse_dir:
                    for pid in fuse_client_pids(fuse_dir):
                        pinned.append(pin_threads(pid, set(args.daemon_cpus)))
                    log(f"gfapi: tgt's FUSE client (pids {fuse_client_pids(fuse_dir)}) pinned to the "
                        f"daemon CPUs {sorted(args.daemon_cpus)} for this section")
                    report["settings"]["fuse_client_pinned"] = sorted(args.daemon_cpus)
                lun_path = f"gluster-iscsi-bench-{os.getpid()}/ours-lun1.img"
                lun_args = ["--ioengine=gfapi", f"--volume={vol.strip('/')}", f"--brick={host}",
                            f"--filename={lun_path}"]
                # fio after each round of the workloads it is set against (FIO_ROUND_JOBS),
                # where fio's ceilings run at all
                paired = (lun_args if report.get("ceilings", {}).get("fio") is not None
                          and ":" in fuse_src else None)
                try:
                    run_backend("gfapi-vs-fuse", Backing("file", directory=gdir),
                                Backing("gfapi", volume=vol.strip("/"), host=host, path=lun_path),
                                args, workdir, workloads, report, fio_lun=paired)
                finally:
                    for before in pinned:
                        unpin(before)
                fio = report.get("ceilings", {}).get("fio")
                names = {w.name for w in workloads}
                ran = report.get("backends", {}).get("gfapi-vs-fuse", {})
                if (fio is not None and ":" in fuse_src and any(o in names for o, _ in FIO_PAIRS)
                        and ran.get("workloads") and not ran.get("error")):
                    # fio's file was laid out by fio before our runs; the LUN's file was written
                    # by our prefill and read by our rounds, so the bricks' page cache may hold
                    # either differently. The same jobs on the LUN's own file, right after ours
                    # (daemons stopped), compare the two clients on the same bytes.
                    log("ceiling: fio gfapi engine on the LUN's own file"
                        + (f", on CPUs {sorted(args.daemon_cpus)}" if args.daemon_cpus else ""))
                    fio["gluster-gfapi-lunfile"] = dict(fio_ceiling(
                        lun_args, 1 if args.smoke else 2, "1g", FIO_LUN_JOBS, cpus=args.daemon_cpus,
                        layout=False), file=lun_path)
                    if args.daemon_cpus and not args.smoke:
                        log("ceiling: fio gfapi engine on the LUN's own file, unpinned")
                        fio["gluster-gfapi-lunfile-unpinned"] = dict(fio_ceiling(
                            lun_args, 2, "1g", FIO_LUN_JOBS, layout=False), file=lun_path)
                    log("ceiling: our gfapi path in-process on the LUN's own file (no iSCSI)"
                        + (f", on CPUs {sorted(args.daemon_cpus)}" if args.daemon_cpus else ""))
                    report["ceilings"]["gfapi-path"] = gfapi_path_ceiling(
                        host, vol.strip("/"), lun_path, args.smoke, args.daemon_cpus)
            elif be == "gfapi-both":  # ours against ours, both on gfapi (--target-a ours)
                if not gdir:
                    report.setdefault("backends", {})["gfapi-both"] = {"skipped": no_gluster}
                    log(f"gfapi-both: skipped: {no_gluster}")
                    continue
                os.makedirs(gdir, exist_ok=True)
                host, vol = (fuse_src.split(":", 1) + [""])[:2] if ":" in fuse_src else ("127.0.0.1", "")
                run_backend("gfapi-both",
                            *(Backing("gfapi", volume=vol.strip("/"), host=host,
                                      path=f"gluster-iscsi-bench-{os.getpid()}/{side}-lun1.img")
                              for side in ("a", "b")),
                            args, workdir, workloads, report)
            elif be in ("group-gfapi", "group-local"):
                if be == "group-gfapi" and not gdir:
                    report.setdefault("backends", {})[be] = {"skipped": no_gluster}
                    log(f"{be}: skipped: {no_gluster}")
                    continue
                if gdir:
                    os.makedirs(gdir, exist_ok=True)
                host, vol = (fuse_src.split(":", 1) + [""])[:2] if ":" in fuse_src else ("127.0.0.1", "")
                run_group(be, args, workdir, workloads, report, gdir, host, vol.strip("/"))
            else:
                raise SystemExit(f"unknown backend {be!r}")
        if not args.no_idle:
            run_idle(args, workdir, report)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        if fuse_dir:
            shutil.rmtree(os.path.join(fuse_dir, f"gluster-iscsi-bench-{os.getpid()}"), ignore_errors=True)
        if started_gluster and not args.keep_gluster:
            log(f"stopping the Gluster volume {args.gluster_volume} this run started")
            gluster_env("stop", args.gluster_volume)
        shutil.rmtree(workdir, ignore_errors=True)

    report["elapsed_s"] = time.monotonic() - t_begin
    text = render(report) + f"\nElapsed: {report['elapsed_s']:.0f} s\n"
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        log(f"raw results: {args.json}")
    if args.update_benchmarks:
        update_benchmarks_md(text, os.path.join(REPO, "BENCHMARKS.md"), md_section(report))
        log("updated BENCHMARKS.md")
    # Exit status reports breakage (a target that did not start, a client that failed),
    # never performance: numbers are not assertions.
    broken = []
    for be, sec in report.get("backends", {}).items():
        if sec.get("error"):
            broken.append(f"{be}: {sec['error']}")
        elif sec.get("skipped", "").startswith("probe failed"):
            broken.append(f"{be}: {sec['skipped']}")
        for w in sec.get("workloads", []):
            for side in "AB":
                if "error" in w[side] and not w[side]["error"].startswith("skipped"):
                    broken.append(f"{be}/{w['name']}/{side}: {w[side]['error'][:120]}")
    for lab, d in report.get("idle", {}).items():
        if "error" in d:
            broken.append(f"idle/{lab}: {d['error'][:120]}")
    if broken:
        log("FAILED runs (not a performance verdict):\n  " + "\n  ".join(broken))
        return 1
    return 0
