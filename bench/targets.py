"""Target adapters for the benchmark harness.

A target adapter is small on purpose: start(backing), stop(), url, pids() for CPU/RSS
accounting. Everything else (probing the negotiated terms, workloads, accounting) is
done by the harness from the outside, identically for every adapter.

Backing: what the LUN lives on. kind "file" = a regular file in `directory` (tmpfs or a
FUSE-mounted Gluster volume); kind "gfapi" = a file on a Gluster volume reached through
libgfapi (volume, host, path).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

LUN_SIZE = 1 << 30
#: A second LUN on every target the harness configures: the hot set's C client (iscsi-perf has
#: no span option) reads all of LUN 2, backed by its own file of this size next to LUN 1's.
HOT_LUN = 2
HOT_LUN_SIZE = 64 << 20

# Session parameters both targets are configured with (the target side of the
# negotiation). The harness probes every target after start and reports any difference.
SESSION_PARAMS = {
    "MaxRecvDataSegmentLength": 262144,
    "MaxBurstLength": 1048576,
    "FirstBurstLength": 262144,
    "ImmediateData": "Yes",
    "InitialR2T": "No",
}


@dataclass
class Backing:
    kind: str                      # "file" | "gfapi"
    directory: str = ""            # for kind == "file"
    volume: str = ""               # for kind == "gfapi"
    host: str = "127.0.0.1"
    path: str = ""                 # file path inside the volume
    label: str = ""
    file: str = ""                 # kind "file": this exact file (made by the harness, maybe
                                   # shared by both targets), instead of one per target

    def describe(self) -> str:
        if self.kind == "file" and self.file:
            return f"file {self.file}"
        if self.kind == "file":
            return f"file in {self.directory}"
        return f"gfapi {self.host}:{self.volume}/{self.path}"


def ours_exe() -> str | None:
    """Our console script: this checkout's `.venv` (what scripts/install built), else PATH."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        ".venv", "bin", "gluster-iscsi")
    return here if os.access(here, os.X_OK) else shutil.which("gluster-iscsi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class Target:
    """Adapter interface."""

    kind = "?"
    iqn = ""
    lun = 1

    def __init__(self, label: str, workdir: str):
        self.label = label          # "A" or "B"
        self.workdir = workdir      # private scratch directory (logs, state)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.notes: list[str] = []  # anything the report should say about this target
        self.cpus: set[int] | None = None  # CPU affinity for the daemon (set by the harness)
        self.hot_lun = 0            # HOT_LUN once start() made it, else 0 (no hot-set LUN)

    def popen(self, cmd: list[str], log) -> subprocess.Popen:
        cpus = self.cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=pin)

    # -- to implement --
    def supports(self, backing: Backing) -> str | None:
        """None if this adapter can serve on `backing`, else the reason it cannot."""
        return None

    def start(self, backing: Backing) -> None:
        raise NotImplementedError

    # -- common --
    @property
    def url(self) -> str:
        return self.url_for(self.lun)

    def url_for(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/{lun}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def name(self) -> str:
        return f"{self.kind}({self.label})"


class TgtTarget(Target):
    """Debian's tgt, as a private instance: own portal port and control port."""

    kind = "tgt"

    def __init__(self, label: str, workdir: str, block_size: int = 512, bsoflags: str = ""):
        super().__init__(label, workdir)
        self.block_size = block_size
        self.bsoflags = bsoflags  # "" (buffered, page cache), "direct" or "sync"; tgtadm --bsoflags
        self.iqn = f"iqn.2026-11.org.gluster-iscsi.bench:tgt-{label.lower()}"
        # tgtd's control "port" names an abstract unix socket; keep it unique per run.
        self.ctl = 200 + (os.getpid() * 2 + (0 if label == "A" else 1)) % 7000

    def supports(self, backing: Backing) -> str | None:
        if backing.kind != "file":
            return "tgt's glfs backing store segfaults against GlusterFS 10.3 (FIELD-NOTES)"
        if not shutil.which("tgtd"):
            return "tgtd not installed"
        return None

    def adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["tgtadm", "-C", str(self.ctl), "--lld", "iscsi", *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def start(self, backing: Backing) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        os.makedirs(backing.directory, exist_ok=True)
        self.backing_file = os.path.join(backing.directory, f"tgt-{self.label.lower()}-lun1.img")
        with open(self.backing_file, "wb") as f:  # 1 GiB sparse, like ours' demo LUN
            f.truncate(LUN_SIZE)
        log = open(os.path.join(self.workdir, "tgtd.log"), "wb")
        self.proc = self.popen(
            ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.port}", "-C", str(self.ctl)], log)
        deadline = time.monotonic() + 10
        while self.adm("--op", "show", "--mode", "target", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tgtd did not come up: " + tail(log.name))
            time.sleep(0.05)
        self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        def lu(lun: int, path: str) -> list[str]:
            out = ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun), "-b", path]
            if self.block_size != 512:
                out.append(f"--blocksize={self.block_size}")
            if self.bsoflags:
                out += ["--bsoflags", self.bsoflags]
            return out
        if self.bsoflags:
            self.notes.append(f"tgt backing store opened with --bsoflags {self.bsoflags}")
        self.adm(*lu(1, self.backing_file))
        # LUN 2: the hot set, its own file next to LUN 1's, opened the same way
        self.hot_file = os.path.join(backing.directory, f"tgt-{self.label.lower()}-lun{HOT_LUN}.img")
        with open(self.hot_file, "wb") as f:
            f.truncate(HOT_LUN_SIZE)
        self.adm(*lu(HOT_LUN, self.hot_file))
        self.hot_lun = HOT_LUN
        for k, v in SESSION_PARAMS.items():
            self.adm("--op", "update", "--mode", "target", "--tid", "1", "--name", k,
                     "--value", str(v))
        # tgt also caps what it sends per Data-In PDU; keep it equal to what it receives.
        self.adm("--op", "update", "--mode", "target", "--tid", "1",
                 "--name", "MaxXmitDataSegmentLength",
                 "--value", str(SESSION_PARAMS["MaxRecvDataSegmentLength"]))
        self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)  # tgtd -f ignores SIGTERM, exits on SIGINT
        self.proc = None
        for f in (getattr(self, "backing_file", None), getattr(self, "hot_file", None)):
            if f:
                try:
                    os.unlink(f)
                except OSError:
                    pass


class OursTarget(Target):
    """gluster-iscsi, configured through its own management CLI like an operator would:

      serve --state-dir W --listen 127.0.0.1:PORT        (state dir in private scratch space)
      target create IQN; acl add IQN ALL
      lun create IQN BACKING --lun 1 --size 1GiB --block-size BS
          BACKING = a file in the backing directory (tmpfs / FUSE), or
                    gluster://HOST/VOLUME/PATH for the gfapi store
      param set KEY VALUE --target IQN                   (SESSION_PARAMS)

    If the management CLI is missing or fails, a "file" backing falls back to
    `serve --demo` with the state directory in the backing directory (LUN 1 is then the
    1 GiB sparse DIR/demo-lun1.img) and the report says so.
    """

    kind = "ours"

    def __init__(self, label: str, workdir: str, cmd: list[str] | None = None,
                 serve_args: list[str] | None = None, block_size: int = 512):
        super().__init__(label, workdir)
        exe = ours_exe()
        self.cmd = cmd or ([exe] if exe else ["python3", "-m", "gluster_iscsi.cli.main"])
        self.serve_args = serve_args or []
        self.block_size = block_size
        self.iqn = f"iqn.2026-11.org.gluster-iscsi.bench:ours-{label.lower()}"
        self.state_dir = ""
        self.backing_file = ""
        self.hot_file = ""
        self.metrics_port = 0       # > 0: serve with --metrics-listen 127.0.0.1:PORT

    @classmethod
    def available(cls, cmd: list[str] | None = None) -> str | None:
        """None if `serve` exists, else why not."""
        found = ours_exe()
        exe = cmd or ([found] if found else None)
        if not exe:
            return "gluster-iscsi is not installed (run ./scripts/install, or put it on PATH)"
        try:
            r = subprocess.run([*exe, "serve", "--help"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"gluster-iscsi serve --help failed: {e}"
        if r.returncode != 0 or "--listen" not in r.stdout:
            msg = (r.stderr or r.stdout).strip().splitlines()
            return "gluster-iscsi serve is not available yet" + (f" ({msg[-1]})" if msg else "")
        return None

    def supports(self, backing: Backing) -> str | None:
        return None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.cmd, "--state-dir", self.state_dir, *args],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"gluster-iscsi {' '.join(args)}: rc {r.returncode}: "
                               f"{(r.stderr or r.stdout).strip()[-300:]}")
        return r

    def _serve(self, extra: list[str]) -> None:
        log = open(os.path.join(self.workdir, "ours.log"), "ab")
        if self.metrics_port:
            extra = [*extra, "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        self.proc = self.popen(
            [*self.cmd, "serve", "--state-dir", self.state_dir,
             "--listen", f"127.0.0.1:{self.port}", *self.serve_args, *extra], log)
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {tail(log.name)}") from None

    def start(self, backing: Backing) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.state_dir = os.path.join(self.workdir, "state")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        os.makedirs(self.state_dir)
        if backing.kind == "gfapi":
            spec = f"gluster://{backing.host}/{backing.volume}/{backing.path}"
        else:
            os.makedirs(backing.directory, exist_ok=True)
            self.backing_file = os.path.join(backing.directory, f"ours-{self.label.lower()}-lun1.img")
            spec = self.backing_file
        self._serve([])
        try:
            self.cli("target", "create", self.iqn)
            self.cli("acl", "add", self.iqn, "ALL")
            self.cli("lun", "create", self.iqn, spec, "--lun", "1", "--size", "1GiB",
                     "--block-size", str(self.block_size))
            self._hot_lun(backing, spec)
        except RuntimeError as e:
            if backing.kind == "gfapi":
                raise
            self.notes.append(f"management CLI failed ({e}); fell back to serve --demo")
            self.stop_daemon()
            self.iqn = "iqn.2026-11.org.gluster-iscsi:demo"
            self.state_dir = os.path.join(backing.directory, f"ours-{self.label.lower()}-state")
            shutil.rmtree(self.state_dir, ignore_errors=True)
            os.makedirs(self.state_dir)
            self._serve(["--demo"])
        self.apply_params()

    def _hot_lun(self, backing: Backing, spec: str) -> None:
        """LUN 2, the hot set: its own file next to LUN 1's, the same store and serve args."""
        if backing.kind == "gfapi":
            base, ext = os.path.splitext(spec)
            hot = f"{base}-lun{HOT_LUN}{ext or '.img'}"
        else:
            self.hot_file = os.path.join(backing.directory, f"ours-{self.label.lower()}-lun{HOT_LUN}.img")
            hot = self.hot_file
        r = self.cli("lun", "create", self.iqn, hot, "--lun", str(HOT_LUN), "--size",
                     f"{HOT_LUN_SIZE >> 20}MiB", "--block-size", str(self.block_size), check=False)
        if r.returncode == 0:
            self.hot_lun = HOT_LUN
        else:
            self.notes.append(f"{self.name()}: no hot-set LUN {HOT_LUN}: "
                              f"{(r.stderr or r.stdout).strip()[-200:]}")

    def apply_params(self) -> None:
        """Offer SESSION_PARAMS (new sessions only, so before any client logs in)."""
        for k, v in SESSION_PARAMS.items():
            r = self.cli("param", "set", k, str(v), "--target", self.iqn, check=False)
            if r.returncode != 0:
                r = self.cli("param", "set", k, str(v), check=False)  # daemon-wide
            if r.returncode != 0:
                self.notes.append(f"param set {k}={v} failed: {(r.stderr or r.stdout).strip()[-200:]}")

    def stop_daemon(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.proc = None

    def stop(self) -> None:
        self.stop_daemon()
        if self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        for f in (self.backing_file, self.hot_file):
            if f:
                try:
                    os.unlink(f)
                except OSError:
                    pass


class OursConfigTarget(OursTarget):
    """Ours started from a hand-written config (no management CLI), on a backing file the
    harness made: a lone gateway with the LUN options it is given (``o_direct``, ``cache``),
    or, with ``group``, a member of a gateway group (docs/HA.md: the config's ``group``
    section, the LUN opened O_DIRECT and without read cache by the daemon itself).

    ``group`` = {"location": DIR, "standby": bool, ...}: gateway ``bench1`` (number 1) is
    started first and measured once it owns the LUN; with ``standby`` a second gateway
    (``bench2``, number 2, its own port) joins the same group and LUN and stands by, trying
    the lease lock every beat as a real standby does (its CPU is not the measured daemon's).
    """

    def __init__(self, label: str, workdir: str, cmd: list[str] | None = None,
                 serve_args: list[str] | None = None, block_size: int = 512,
                 lun_options: dict | None = None, group: dict | None = None):
        super().__init__(label, workdir, cmd=cmd, serve_args=serve_args, block_size=block_size)
        self.lun_options = dict(lun_options or {})
        self.group = dict(group) if group else None
        self.standby: subprocess.Popen | None = None
        self.standby_port = 0
        self.uuid = str(uuid.uuid4())
        what = "group" if group else "lone"
        self.iqn = f"iqn.2026-11.org.gluster-iscsi.bench:{what}"

    def _config(self, port: int, spec: str, bstype: str, gateway: str = "", number: int = 0) -> dict:
        lun = {"lun": 1, "backing": spec, "bstype": bstype, "block_size": self.block_size,
               # a fresh identity per run and side: a lone gateway records its file's identity
               # in the volume's group directory and refuses one UUID for two files
               "uuid": self.uuid, "serial": self.uuid.replace("-", "")[:16]}
        if self.lun_options:
            lun["options"] = self.lun_options
        cfg: dict = {"version": 1,
                     "portals": [{"host": "127.0.0.1", "port": port, "advertise": None}],
                     "targets": [{"name": self.iqn, "tid": 1, "acl": [{"network": "ALL"}],
                                  "params": {k: str(v) for k, v in SESSION_PARAMS.items()},
                                  "luns": [lun]}]}
        if self.group is not None:
            g = {k: v for k, v in self.group.items() if k != "standby"}
            cfg["group"] = {**g, "gateway": gateway, "number": number}
        return cfg

    def _write_config(self, state: str, cfg: dict) -> None:
        import json
        shutil.rmtree(state, ignore_errors=True)
        os.makedirs(state)
        with open(os.path.join(state, "config.json"), "w") as f:
            json.dump(cfg, f)

    def start(self, backing: Backing) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        if backing.kind == "gfapi":
            spec, bstype = f"gluster://{backing.host}/{backing.volume}/{backing.path}", "gluster"
        else:
            spec, bstype = backing.file, "rdwr"
        self.state_dir = os.path.join(self.workdir, "state")
        self._write_config(self.state_dir, self._config(self.port, spec, bstype, "bench1", 1))
        self._serve([])
        if self.group is None:
            return
        self.notes.append(f"{self.name()}: gateway bench1 (number 1) of a group in "
                          f"{self.group['location']}, beat {self.group.get('beat_seconds', 1)} s, "
                          f"lease {self.group.get('lease_seconds', 5)} s")
        self._wait_log("owner, epoch", os.path.join(self.workdir, "ours.log"), self.proc)
        if self.group.get("standby"):
            self.standby_port = free_port()
            state2 = os.path.join(self.workdir, "state-standby")
            self._write_config(state2, self._config(self.standby_port, spec, bstype, "bench2", 2))
            log = open(os.path.join(self.workdir, "standby.log"), "ab")
            self.standby = self.popen(
                [*self.cmd, "serve", "--state-dir", state2,
                 "--listen", f"127.0.0.1:{self.standby_port}", *self.serve_args], log)
            wait_port(self.standby_port, self.standby)
            self.notes.append(f"{self.name()}: a second gateway bench2 (number 2) of the group "
                              "runs as standby of the LUN (its heartbeats and lock tries load "
                              "the volume; its CPU is not counted as the daemon's)")

    @staticmethod
    def _wait_log(text: str, path: str, proc: subprocess.Popen | None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in tail(path, 1 << 16):
            if proc is None or proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"group member never logged {text!r}: {tail(path)}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.standby, signal.SIGTERM)
        self.standby = None
        self.stop_daemon()
        for d in (self.state_dir, os.path.join(self.workdir, "state-standby")):
            if d:
                shutil.rmtree(d, ignore_errors=True)


class Scraper:
    """What a Prometheus server does to the daemon: GET /metrics every `interval` seconds, in
    a thread of the harness, for as long as the target runs. Counts what it got."""

    def __init__(self, label: str, port: int, interval: float = 1.0):
        self.label = label
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.ok = 0
        self.failed = 0
        self.last_bytes = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    body = r.read()
                if b"gluster_iscsi_lun_read_commands_total" not in body:
                    raise ValueError("no per-LUN read counter in the answer")
                self.ok += 1
                self.last_bytes = len(body)
            except (OSError, ValueError) as e:
                self.failed += 1
                self.last_error = str(e)

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(timeout=10)
        return (f"{self.label}'s /metrics scraped every {self.interval:g} s during the run: {self.ok} scrapes "
                f"({self.last_bytes} bytes the last), {self.failed} failed"
                + (f" ({self.last_error})" if self.failed else ""))


@dataclass
class ProcStat:
    cpu: float = 0.0      # user+system seconds
    rss: int = 0          # bytes
    pids: list[int] = field(default_factory=list)


_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """root and all of its descendants (daemons that fork helpers are counted whole)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_stat(root: int) -> ProcStat:
    st = ProcStat()
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            st.cpu += (int(fields[11]) + int(fields[12])) / _TCK   # utime, stime (all threads)
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        st.rss += int(line.split()[1]) * 1024
            st.pids.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return st
