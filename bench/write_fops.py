#!/usr/bin/env python3
"""Brick fops per 4 KiB random write, by client path (issue 19, docs/notes/write-fops.md).

    bench/write_fops.py VOLUME MOUNTPOINT CASE [CASE ...]

Each CASE writes 16,384 random 4 KiB blocks into its own fresh 1 GiB file (written whole
through the FUSE mount first) while `gluster volume profile` counts the fops each brick
serves; it prints one JSON line per case: fops per write summed over the bricks, the bricks'
average WRITE latency (their queue included), CPU, read/write syscalls and context switches
per write (and the target's Gluster client's: our daemon, or the FUSE mount's glusterfs),
the brick fds on the volume's files mid-run, and the fops sent when the target closed the
file. The volume must have `gluster volume profile VOLUME start`. Cases:

  fuse-qd1            fio psync on the FUSE file
  fuse-32jobs         fio psync, 32 jobs (32 fds) on the FUSE file
  fuse-uring-qd32     fio io_uring, iodepth 32, one fd on the FUSE file
  gfapi-qd1           fio's gfapi engine
  gfapi-qd32          fio's gfapi_async engine, iodepth 32
  ours-seq1m-qd16     512 sequential 1 MiB writes at QD16 (per_write: per 1 MiB write)
  ours-qd1 / ours-qd32 [ours args after '--' go to `serve`]: qemu-img bench -w over a
                      gluster:// LUN of our daemon (env GISCSI: its executable)
  tgt-qd1 / tgt-qd32  qemu-img bench -w over tgtd (a private instance) on the FUSE file

Environment: PREP=lun fills an ours-* file through the LUN (1 MiB writes at QD16, as bench/run's
prefill; else dd bs=1M on the FUSE mount), PREP=gfapi through fio's gfapi engine (bs=1M);
SETTLE=SECONDS to wait before measuring (65: past features.cache-invalidation-timeout, so
the filling client gets no upcalls); PIN=D:C puts the target (and the FUSE mount's glusterfs
for tgt) on CPUs D and qemu-img on CPUs C, as bench/run pins; PERF=PREFIX records the bricks
with `perf record` for 4 s into PREFIX.CASE.data.

qemu-img bench has no random mode: like bench/run it strides by a prime number of 4 KiB
slots, visiting the 1 GiB file as a permutation. Needs root (brick /proc/PID/fd), `gluster`,
fio, qemu-img, tgtd. Not part of the test suite; fop counts do not depend on machine noise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

N = 16384
BS = 4096
SIZE = 1 << 30
STRIDE = 104729  # prime: 4K slots visited as a permutation of the 1 GiB file
GISCSI = os.environ.get("GISCSI", "/work/main/.venv/bin/gluster-iscsi")
IQN_OURS = "iqn.2026-12.org.gluster-iscsi.wprof:ours"
IQN_TGT = "iqn.2026-12.org.gluster-iscsi.wprof:tgt"
TCK = os.sysconf("SC_CLK_TCK")


def sh(*cmd: str, check: bool = True, timeout: float = 600) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc {r.returncode}: {(r.stderr or r.stdout)[-400:]}")
    return r.stdout


def bricks(vol: str) -> list[int]:
    out = sh("pgrep", "-f", rf"glusterfsd .*--volfile-id {vol}\.")
    return sorted(int(p) for p in out.split())


def cpu(pids: list[int]) -> int:
    s = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            a = f.read().rsplit(")", 1)[1].split()
        s += int(a[11]) + int(a[12])
    return s


def counters(pids: list[int]) -> dict[str, int]:
    """Read/write syscalls (/proc/PID/io) and (non)voluntary context switches of every
    thread, summed."""
    res = {"syscr": 0, "syscw": 0, "vcsw": 0, "ivcsw": 0}
    for p in pids:
        with open(f"/proc/{p}/io") as f:
            for line in f:
                k, v = line.split(":")
                if k in ("syscr", "syscw"):
                    res[k] += int(v)
        for t in os.listdir(f"/proc/{p}/task"):
            try:
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            res["vcsw"] += int(line.split()[-1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            res["ivcsw"] += int(line.split()[-1])
            except OSError:
                pass
    return res


def fuse_pid(vol: str) -> int:
    return int(sh("pgrep", "-f", rf"glusterfs .*--volfile-id=/{vol} ").split()[0])


def profile(vol: str) -> dict[str, dict[str, int]]:
    """Cumulative fop counts per brick since the last clear."""
    out = sh("gluster", "--mode=script", "volume", "profile", vol, "info", "cumulative")
    res: dict[str, dict[str, int]] = {}
    brick = ""
    for line in out.splitlines():
        m = re.match(r"Brick: \S+:(\S+)", line)
        if m:
            brick = os.path.basename(m.group(1))
            res[brick] = {}
            continue
        m = re.match(r"\s+[\d.]+\s+([\d.]+) ([nu])s\s+[\d.]+ [nu]s\s+[\d.]+ [nu]s\s+(\d+)"
                     r"\s+(\w+)\s*$", line)
        if m and brick:
            res[brick][m.group(4)] = res[brick].get(m.group(4), 0) + int(m.group(3))
            if m.group(4) == "WRITE":  # the bricks' own time per WRITE (queue included), ns
                ns = float(m.group(1)) * (1 if m.group(2) == "n" else 1000)
                res[brick]["_write_ns"] = res[brick].get("_write_ns", 0) + int(ns)
    return res


def brick_fds(pids: list[int]) -> dict[str, int]:
    """Per brick: fds open on regular files of the brick (the file by its GFID handle, its
    shards), brick housekeeping files left out."""
    res = {}
    for p in pids:
        with open(f"/proc/{p}/cmdline") as f:
            argv = f.read().split("\0")
        d = argv[argv.index("--brick-name") + 1]
        n = 0
        for fd in os.listdir(f"/proc/{p}/fd"):
            try:
                t = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if t.startswith(d + "/") and "health_check" not in t and os.path.isfile(t):
                n += 1
        res[os.path.basename(d)] = n
    return res


def prepare(vol: str, mnt: str, name: str) -> None:
    path = os.path.join(mnt, name)
    if os.path.exists(path):
        os.unlink(path)
    if os.environ.get("PREP") == "gfapi":  # written by a gfapi client: FUSE never saw it
        sh("fio", "--name=prep", "--rw=write", "--bs=1m", "--size=1g", "--ioengine=gfapi",
           f"--volume={vol}", "--brick=127.0.0.1", f"--filename={name}", "--end_fsync=1")
        return
    sh("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={SIZE >> 20}", "conv=fsync",
       "status=none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, secs: float = 30) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited rc {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening")


#: PIN=D:C (e.g. 0:1): the target (our daemon, or tgtd and the FUSE mount's glusterfs) on
#: CPUs D, qemu-img on CPUs C, as bench/run pins; the bricks stay where they are.
PIN_D, _, PIN_C = os.environ.get("PIN", "").partition(":")


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def qemu_bench(url: str, qd: int) -> str:
    return sh(*pinned(PIN_C, ["qemu-img"]), "bench", "-f", "raw", "-t", "writeback", "-w", "-d", str(qd),
              "-s", str(BS), "-S", str(BS * STRIDE), "-c", str(N), url, timeout=900)


class Ours:
    def __init__(self, vol: str, name: str, args: list[str], size: str = ""):
        self.dir = tempfile.mkdtemp(prefix="wprof-ours-")
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "serve.log"), "wb")
        self.proc = subprocess.Popen(
            pinned(PIN_D, [GISCSI, "serve", "--state-dir", self.dir,
                           "--listen", f"127.0.0.1:{self.port}", *args]),
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc)
            self.cli("target", "create", IQN_OURS)
            self.cli("acl", "add", IQN_OURS, "ALL")
            self.cli("lun", "create", IQN_OURS, f"gluster://127.0.0.1/{vol}/{name}", "--lun", "1",
                     *(("--size", size) if size else ()))
        except BaseException:
            self.stop()
            raise
        self.url = f"iscsi://127.0.0.1:{self.port}/{IQN_OURS}/1"

    def cli(self, *args: str) -> str:
        return sh(GISCSI, "--state-dir", self.dir, *args)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Tgt:
    def __init__(self, path: str):
        self.port = free_port()
        self.ctl = 300 + os.getpid() % 5000
        self.proc = subprocess.Popen(
            pinned(PIN_D, ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.port}",
                           "-C", str(self.ctl)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(self.adm("--op", "show", "--mode", "target"),
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("tgtd did not come up")
            time.sleep(0.05)
        sh(*self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN_TGT))
        sh(*self.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                     "-b", path))
        sh(*self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"))
        wait_port(self.port, self.proc)
        self.url = f"iscsi://127.0.0.1:{self.port}/{IQN_TGT}/1"

    def adm(self, *args: str) -> list[str]:
        return ["tgtadm", "-C", str(self.ctl), "--lld", "iscsi", *args]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # tgtd -f exits on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fio(*args: str) -> str:
    return sh("fio", "--name=w", "--thread", "--rw=randwrite", f"--bs={BS}", "--randrepeat=0",
              "--size=1g", "--output-format=terse", "--terse-version=3", *args, timeout=900)


def run_case(vol: str, mnt: str, case: str, ours_args: list[str]) -> dict:
    n = 512 if "seq1m" in case else N  # ours-seq1m-qd16: 512 sequential 1 MiB writes
    name = f"wprof-{case}-{os.getpid()}-{int(time.time())}.img"
    by_lun = os.environ.get("PREP") == "lun" and case.startswith("ours")
    if not by_lun:
        prepare(vol, mnt, name)
    pids = bricks(vol)
    path = os.path.join(mnt, name)
    server: Ours | Tgt | None = None
    if case.startswith("ours"):
        server = Ours(vol, name, ours_args, "1GiB" if by_lun else "")
        if by_lun:  # written whole through the LUN, as bench/run's prefill does
            sh("qemu-img", "bench", "-f", "raw", "-t", "writeback", "-w", "-d", "16",
               "-s", "1M", "-c", str(SIZE >> 20), server.url, timeout=900)
    elif case.startswith("tgt"):
        server = Tgt(path)
        if PIN_D:  # tgt's Gluster client too, as bench/run does
            sh("taskset", "-a", "-p", "-c", PIN_D, str(fuse_pid(vol)))
    # SETTLE: seconds to wait first, e.g. past features.cache-invalidation-timeout (60 s):
    # until then the bricks send every other client that wrote the file an upcall per write.
    time.sleep(float(os.environ.get("SETTLE", "3")))  # (setup's own fops and delayed post-ops out of the way)
    sh("gluster", "--mode=script", "volume", "profile", vol, "info", "clear")
    fds: list[dict] = []

    def sample() -> None:
        time.sleep(1)
        out = os.environ.get("PERF")  # PERF=PREFIX: perf record the bricks for 4 s
        if out:
            subprocess.run(["perf", "record", "-q", "-F", "999", "-o", f"{out}.{case}.data",
                            "-p", ",".join(map(str, pids)), "--", "sleep", "4"],
                           capture_output=True, timeout=60)
        else:
            time.sleep(2)
        fds.append(brick_fds(pids))

    t = threading.Thread(target=sample)
    client = ([server.proc.pid] if isinstance(server, Ours)
              else [] if case.startswith("gfapi") else [fuse_pid(vol)])
    k0, kc0 = counters(pids), counters(client)
    c0, t0 = cpu(pids), time.monotonic()
    t.start()
    if case == "fuse-qd1":
        fio("--ioengine=psync", f"--filename={path}", f"--io_size={N * BS}")
    elif case == "fuse-32jobs":
        fio("--ioengine=psync", f"--filename={path}", f"--io_size={N * BS // 32}",
            "--numjobs=32", "--group_reporting")
    elif case == "fuse-uring-qd32":
        fio("--ioengine=io_uring", "--iodepth=32", f"--filename={path}", f"--io_size={N * BS}")
    elif case == "gfapi-qd1":
        fio("--ioengine=gfapi", f"--volume={vol}", "--brick=127.0.0.1", f"--filename={name}",
            f"--io_size={N * BS}")
    elif case == "gfapi-qd32":
        fio("--ioengine=gfapi_async", "--iodepth=32", f"--volume={vol}", "--brick=127.0.0.1",
            f"--filename={name}", f"--io_size={N * BS}")
    elif server is not None and "seq1m" in case:
        sh(*pinned(PIN_C, ["qemu-img"]), "bench", "-f", "raw", "-t", "writeback", "-w",
           "-d", "16", "-s", str(1 << 20), "-c", str(n), server.url, timeout=900)
    elif server is not None:
        qemu_bench(server.url, 32 if case.endswith("qd32") else 1)
    else:
        raise SystemExit(f"unknown case {case}")
    elapsed = time.monotonic() - t0
    t.join()
    time.sleep(4)  # AFR's delayed post-op (post-op-delay-secs 1) and write-behind drain
    c1 = cpu(pids)
    k1, kc1 = counters(pids), counters(client)
    prof = profile(vol)
    if server is not None:
        server.stop()
    if PIN_D and isinstance(server, Tgt):
        sh("taskset", "-a", "-p", "-c", f"0-{os.cpu_count() - 1}", str(fuse_pid(vol)))
    time.sleep(2)
    after_close = profile(vol)
    total: dict[str, int] = {}
    for b in prof.values():
        for k, v in b.items():
            total[k] = total.get(k, 0) + v
    write_us = round(total.pop("_write_ns", 0) / len(prof) / 1000, 1) if prof else 0
    for b in after_close.values():
        b.pop("_write_ns", None)
    closing = {}
    for b in after_close.values():
        for k, v in b.items():
            closing[k] = closing.get(k, 0) + v
    closing = {k: v - total.get(k, 0) for k, v in closing.items() if v - total.get(k, 0)}
    os.unlink(path)
    time.sleep(10)  # shard deletes its shards in the background: not into the next case
    return {
        "case": case + (" " + " ".join(ours_args) if ours_args else "")
        + (f" PIN={PIN_D}:{PIN_C}" if PIN_D else ""),
        "secs": round(elapsed, 1),
        "per_write": {k: round(v / n, 3) for k, v in sorted(total.items()) if v},
        "brick_write_latency_us": write_us,
        "writes_per_s": round(n / elapsed),
        "brick_cpu_us_per_write": round((c1 - c0) / TCK * 1e6 / n, 1),
        "brick_per_write": {k: round((k1[k] - k0[k]) / n, 2) for k in k0},
        "client_per_write": {k: round((kc1[k] - kc0[k]) / n, 2) for k in kc0} if client else None,
        "brick_fds_midrun": fds,
        "fops_at_close": closing,
    }


def main() -> None:
    argv = sys.argv[1:]
    ours_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, ours_args = argv[:i], argv[i + 1:]
    vol, mnt, *cases = argv
    for case in cases:
        print(json.dumps(run_case(vol, mnt, case, ours_args)), flush=True)


if __name__ == "__main__":
    main()
