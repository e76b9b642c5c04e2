"""Random sequences of management commands against a real daemon (issue 15).

A hypothesis state machine drives the real CLI (``python -m gluster_iscsi --state-dir S ...
--json``) against a real ``serve`` process: targets, LUNs, ACL rules and portals are created,
deleted and resized, whole configs applied and reloaded (``config reload`` and SIGHUP), the
daemon restarted and killed with SIGKILL, with failures injected on the way: a portal port
held by a socket of the test, backing stores that cannot open (a path in a missing directory,
under a regular file, a directory, an unreadable file when not root), existing files with
data given again with ``--size``, files already exported, relative paths, sizes below one
block. After every step the test checks that

- the saved config (``STATE/config.json``), the running one (``config export``), ``target
  list``, ``lun list``, ``portal list``, the daemon's own listening sockets (``/proc``) and a
  TCP connect to each portal agree with the small model kept here;
- every file in the data directory is what the model says, byte for byte: no byte of an
  existing file changes unless a command was asked to (``lun resize`` grows it, ``--size``
  may grow it, ``--overwrite`` may rewrite it), and no file appears that the model does not
  expect (a failed ``lun create`` leaves nothing behind);
- a command that fails (non-zero exit) changed nothing at all: config bytes, running config,
  listening sockets, files; its exit code is one the README documents for that failure, and
  it prints no traceback;
- after SIGTERM or SIGKILL and a plain ``serve`` (no ``--listen``), the daemon comes back with
  exactly the saved config.

The model holds only what the documented contract fixes (README "Managing the daemon", the
CLI help, issue 15); where the contract leaves a choice (the exit code of a refusal, whether
an existing file given with ``--size`` is refused or exported as it is) every documented
answer is accepted, but never one that changes something after failing.

CI runs a fixed-seed profile (~1-2 minutes on 2 cores). A long run, by hand or from bench::

    GLUSTER_ISCSI_MGMT_STEPS=3000 [GLUSTER_ISCSI_MGMT_SEED=7] \\
        python -m pytest -m integration -s tests/integration/test_mgmt_property.py

The number of sequences and steps run is printed at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import gluster_iscsi
from gluster_iscsi.backstore.provision import parse_size
from gluster_iscsi.control import config as cfgmod

from .daemon import Daemon, free_port, wait_port

pytestmark = pytest.mark.integration

STEPS_ENV = "GLUSTER_ISCSI_MGMT_STEPS"
SEED_ENV = "GLUSTER_ISCSI_MGMT_SEED"
CI_SEED = 15  # the number: CI runs the same sequences every time
CI_SEQUENCES = 8
CI_STEPS = 12
LONG_STEPS_PER_SEQUENCE = 25

HOST = "127.0.0.1"
TARGETS = [f"iqn.2026-11.org.gluster-iscsi.mgmt:t{i}" for i in range(3)]
BAD_TARGET = "not-an-iqn"
RULES = ["ALL", "127.0.0.1", "10.0.0.0/24", "iqn.2026-11.org.example:host1", "10.0.0.0/33"]
BAD_RULES = {"10.0.0.0/33"}
DATA_FILES = 3  # files with data the test makes before the daemon starts
KiB = 1024
MiB = 1 << 20
SIZES = ["10", "511", "64KiB", "256KiB", "1MiB", "4MiB"]
BLOCK = 512  # lun create's default --block-size

# Exit codes (README "Managing the daemon", `gluster-iscsi --help`).
NOT_FOUND, EXISTS, INVALID, BUSY, UNAVAILABLE = 4, 5, 6, 7, 9
#: A backing store that cannot be opened: unavailable, or refused up front as not found or
#: invalid (the contract lets an implementation check before it tries).
BAD_STORE = {NOT_FOUND, INVALID, UNAVAILABLE}
#: A file already exported as another LUN: refused (issue 15, "one file, one LUN identity").
DUPLICATE = {EXISTS, INVALID, BUSY}

BACKING_KINDS = [
    "existing",  # one of the test's files with data (maybe exported already)
    "new",  # a new path in the data directory
    "missing_file",  # a path that does not exist (fails without --size)
    "missing_dir",  # a path in a directory that does not exist
    "under_file",  # a path whose parent is a regular file
    "is_dir",  # a directory
    "unreadable",  # mode 000 (when not root; root can read anything: then under_file)
    "relative",  # a relative path: resolved against the CLI's directory, or refused
]
APPLY_MUTATIONS = [
    "add_target", "remove_target", "add_lun", "remove_lun", "grow_lun", "add_acl",
    "remove_acl", "add_portal", "remove_portal", "replace_portal",
    # failures injected into an otherwise good document
    "busy_portal", "replace_with_busy", "bad_lun", "dup_lun",
]  # fmt: skip

STATS = {"sequences": 0, "steps": 0, "commands": 0, "failed_as_expected": 0}


# ------------------------------------------------------------------------------ the model


@dataclass
class FileState:
    """A file's expected content: ``data``, then zeroes up to ``size``."""

    data: bytes
    size: int

    def digest(self) -> str:
        h = hashlib.sha256(self.data[: self.size])
        rest = self.size - min(len(self.data), self.size)
        zero = bytes(MiB)
        while rest:
            n = min(rest, len(zero))
            h.update(zero[:n])
            rest -= n
        return h.hexdigest()


@dataclass
class MLun:
    backing: str
    size: int | None  # what the admin declared (config "size")


@dataclass
class MTarget:
    tid: int
    luns: dict[int, MLun] = field(default_factory=dict)
    acl: set[str] = field(default_factory=set)


@dataclass
class Model:
    portals: set[int]
    targets: dict[str, MTarget] = field(default_factory=dict)
    files: dict[str, FileState] = field(default_factory=dict)

    def exported(self) -> set[str]:
        return {lu.backing for t in self.targets.values() for lu in t.luns.values()}

    def projection(self) -> dict[str, Any]:
        return {
            "portals": sorted((HOST, p) for p in self.portals),
            "targets": {
                name: {
                    "tid": t.tid,
                    "acl": sorted(t.acl),
                    "luns": {n: lu.backing for n, lu in sorted(t.luns.items())},
                }
                for name, t in sorted(self.targets.items())
            },
        }


def rule_key(r: dict[str, Any]) -> str:
    return r.get("initiator") or r["network"]


def project(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the model tracks of a config document (schema of control/config.py)."""
    return {
        "portals": sorted((p["host"], p["port"]) for p in cfg.get("portals", [])),
        "targets": {
            t["name"]: {
                "tid": t["tid"],
                "acl": sorted(rule_key(r) for r in t.get("acl", [])),
                "luns": {
                    lu["lun"]: lu["backing"] for lu in sorted(t["luns"], key=lambda x: x["lun"])
                },
            }
            for t in sorted(cfg.get("targets", []), key=lambda t: t["name"])
        },
    }


def without_epoch(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if cfg is None else {k: v for k, v in cfg.items() if k != "epoch"}


def model_from_doc(doc: dict[str, Any], files: dict[str, FileState]) -> Model:
    m = Model({p["port"] for p in doc["portals"]}, files=files)
    for t in doc["targets"]:
        m.targets[t["name"]] = MTarget(
            t["tid"],
            {lu["lun"]: MLun(lu["backing"], lu.get("size")) for lu in t["luns"]},
            {rule_key(r) for r in t["acl"]},
        )
    return m


# ------------------------------------------------------------------------------ the system


_VIOLATIONS: dict[str, type[AssertionError]] = {}


def violation(rule_name: str, kind: str) -> type[AssertionError]:
    """One exception type per (step, kind of broken promise): hypothesis reports, and
    shrinks, each distinct one on its own instead of only the first it met."""
    name = f"{''.join(w.title() for w in rule_name.split('_'))}_{kind.replace('-', '_')}"
    cls = _VIOLATIONS.get(name)
    if cls is None:
        cls = _VIOLATIONS[name] = type(name, (AssertionError,), {})
    return cls


def _env() -> dict[str, str]:
    """The CLI and daemon import the same gluster_iscsi as this process, from any cwd."""
    src = str(Path(gluster_iscsi.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return dict(
        os.environ,
        PYTHONPATH=src + (os.pathsep + path if path else ""),
        PYTHONUNBUFFERED="1",
        GLUSTER_ISCSI_TIMEOUT="60",
    )


class MgmtDaemon(Daemon):
    """A daemon started in its own working directory; restarted without ``--listen`` so it
    comes back with the saved portals only."""

    def __init__(self, state_dir: Path, cwd: Path, port: int) -> None:
        super().__init__(state_dir, ports=[port], demo=False)
        self.cwd = cwd

    def launch(self, *, listen: bool, ports: set[int], env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "gluster_iscsi", "serve", "--state-dir", str(self.state_dir)]
        if listen:
            cmd += [a for p in self.ports for a in ("--listen", f"{HOST}:{p}")]
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
        )
        deadline = time.monotonic() + 60
        while True:  # the control socket answers once the saved config is in force
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode}\n{self.log_text()[-3000:]}"
                )
            r = subprocess.run(
                [sys.executable, "-m", "gluster_iscsi", "--state-dir", str(self.state_dir),
                 "status", "--json"],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"control socket never answered: {r.stderr}")
            time.sleep(0.05)
        for p in sorted(ports):
            wait_port(p, HOST, timeout=30, proc=self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._logf.close()
        self.proc = None


def listening(pid: int) -> set[tuple[str, int]]:
    """The TCP sockets process ``pid`` itself listens on (no probing, no races)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            hexip, hexport = f[1].split(":")
            raw = bytes.fromhex(hexip)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.add((socket.inet_ntop(family, raw), int(hexport, 16)))
    return out


def disk_files(*roots: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                if not os.path.isfile(p) or os.path.islink(p):
                    continue
                h = hashlib.sha256()
                try:
                    with open(p, "rb") as f:
                        while chunk := f.read(MiB):
                            h.update(chunk)
                except PermissionError:
                    out[p] = (os.path.getsize(p), "unreadable")
                    continue
                out[p] = (os.path.getsize(p), h.hexdigest())
    return out


@dataclass
class Snapshot:
    config: bytes | None
    export: dict[str, Any] | None
    listening: set[tuple[str, int]]
    files: dict[str, tuple[int, str]]

    def differences(self, other: Snapshot) -> list[str]:
        out = []
        if self.config != other.config:
            out.append(f"config.json changed:\n{_text(self.config)}\n->\n{_text(other.config)}")
        if self.export != other.export:
            out.append(f"running config changed:\n{self.export}\n->\n{other.export}")
        if self.listening != other.listening:
            out.append(
                f"listening sockets changed: {sorted(self.listening)} -> {sorted(other.listening)}"
            )
        if self.files != other.files:
            for p in sorted(set(self.files) | set(other.files)):
                if self.files.get(p) != other.files.get(p):
                    out.append(f"file {p}: {self.files.get(p)} -> {other.files.get(p)}")
        return out


def _text(b: bytes | None) -> str:
    return "(none)" if b is None else b.decode(errors="replace")


class Outcome:
    """Exit codes a command may end with; 0 among them when success is allowed."""

    def __init__(self) -> None:
        self.codes: set[int] = set()
        self.must_fail = False
        self.may_fail: set[int] = set()

    def fail(self, codes: int | set[int]) -> None:
        self.must_fail = True
        self.codes |= {codes} if isinstance(codes, int) else set(codes)

    def maybe(self, codes: int | set[int]) -> None:
        self.may_fail |= {codes} if isinstance(codes, int) else set(codes)

    def allowed(self) -> set[int]:
        return set(self.codes) if self.must_fail else {0} | self.may_fail


# ------------------------------------------------------------------------------ the machine


class MgmtMachine(RuleBasedStateMachine):
    def __init__(self, base: Path, overwrite: bool) -> None:
        super().__init__()
        STATS["sequences"] += 1
        self.has_overwrite = overwrite
        self.root = Path(tempfile.mkdtemp(prefix="mgmt-", dir=base)).resolve()
        self.state = self.root / "state"
        self.data = self.root / "data"
        self.cwd = self.root / "cwd"  # the daemon's working directory: must stay empty
        self.env = _env()
        self.step = "init"
        self.counter = 0
        self.busy: socket.socket | None = None
        self.daemon: MgmtDaemon | None = None
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise

    def _setup(self) -> None:
        self.data.mkdir()
        self.cwd.mkdir()
        (self.data / "adir").mkdir()
        files = {}
        for i in range(DATA_FILES):
            p = self.data / f"data-{i}.img"
            body = random.Random(i).randbytes((16 << i) * 4 * KiB)  # 64, 128, 256 KiB
            p.write_bytes(body)
            files[str(p)] = FileState(body, len(body))
        self.unreadable = self.data / "locked.img"
        self.unreadable.write_bytes(b"locked")
        self.unreadable.chmod(0)
        files[str(self.unreadable)] = FileState(b"locked", 6)
        # A port in use: held by the test, listening, so the daemon's bind fails.
        self.busy = socket.socket()
        self.busy.bind((HOST, 0))
        self.busy.listen(1)
        self.busy_port = self.busy.getsockname()[1]
        port = free_port()
        self.model = Model({port}, files=files)
        self.daemon = MgmtDaemon(self.state, self.cwd, port)
        self.daemon.launch(listen=True, ports={port}, env=self.env)

    def teardown(self) -> None:
        try:
            if self.daemon is not None and self.daemon.proc is not None:
                self.daemon.stop(timeout=30)
        finally:
            if self.busy is not None:
                self.busy.close()
            if self.root.exists():
                for dirpath, dirs, names in os.walk(self.root):
                    for n in dirs + names:
                        p = os.path.join(dirpath, n)
                        if not os.path.islink(p):
                            os.chmod(p, 0o700)
                shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------------------------------------- plumbing

    def check(self, ok: bool, kind: str, message: str) -> None:
        if not ok:
            tail = self.daemon.log_text()[-2500:] if self.daemon else ""
            raise violation(self.step, kind)(
                f"after {self.step}: {message}\n--- daemon log (tail):\n{tail}"
            )

    def begin(self, name: str) -> None:
        self.step = name
        STATS["steps"] += 1

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        STATS["commands"] += 1
        return subprocess.run(
            [sys.executable, "-m", "gluster_iscsi", "--state-dir", str(self.state), *args],
            capture_output=True, text=True, timeout=180, env=self.env, cwd=self.data,
        )  # fmt: skip

    def query(self, *args: str) -> Any:
        r = self.cli(*args)
        self.check(
            r.returncode == 0, "query", f"{args} exited {r.returncode}: {r.stdout}{r.stderr}"
        )
        return json.loads(r.stdout)

    def saved(self) -> dict[str, Any] | None:
        path = self.state / "config.json"
        return json.loads(path.read_text()) if path.exists() else None

    def snapshot(self) -> Snapshot:
        path = self.state / "config.json"
        assert self.daemon is not None and self.daemon.proc is not None
        return Snapshot(
            path.read_bytes() if path.exists() else None,
            self.query("config", "export"),
            listening(self.daemon.proc.pid),
            disk_files(self.data, self.cwd),
        )

    def command(self, args: list[str], outcome: Outcome) -> subprocess.CompletedProcess[str] | None:
        """Run one management command; None if it failed (as allowed, changing nothing)."""
        before = self.snapshot()
        r = self.cli(*args, "--json")
        shown = f"`{' '.join(args)}` exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        self.check("Traceback" not in r.stderr + r.stdout, "traceback", shown)
        self.check(r.returncode in outcome.allowed(), "exit-code",
                   f"expected exit {sorted(outcome.allowed())}: {shown}")  # fmt: skip
        if r.returncode == 0:
            return r
        STATS["failed_as_expected"] += 1
        after = self.snapshot()
        diffs = before.differences(after)
        self.check(not diffs, "failed-but-changed", f"{shown}\n" + "\n".join(diffs))
        return None

    # ---------------------------------------------------------------- invariants

    @invariant()
    def everything_agrees(self) -> None:
        d = self.daemon
        assert d is not None and d.proc is not None
        self.check(d.proc.poll() is None, "daemon-died", f"daemon exited with {d.proc.returncode}")
        m = self.model
        saved = self.saved()
        self.check(saved is not None, "saved-config", "no config.json")
        assert saved is not None
        self.check(project(saved) == m.projection(), "saved-config",
                   f"saved config {project(saved)}\n!= model {m.projection()}")  # fmt: skip
        export = self.query("config", "export")
        self.check(without_epoch(export) == without_epoch(saved), "export-vs-saved",
                   f"running {export}\n!= saved {saved}")  # fmt: skip
        # LUN sizes: what the admin declared, or the real size; the store measures the file.
        for t in saved["targets"]:
            for lu in t["luns"]:
                mlu = m.targets[t["name"]].luns[lu["lun"]]
                actual = m.files[mlu.backing].size if mlu.backing in m.files else None
                self.check(lu["size"] in (mlu.size, actual), "saved-config",
                           f"{t['name']} LUN {lu['lun']}: size {lu['size']}, declared {mlu.size},"
                           f" file {actual}")  # fmt: skip
        tl = self.query("target", "list", "--json")
        want = {
            name: (t.tid, len(t.luns), sorted(t.acl),
                   sum(m.files[lu.backing].size for lu in t.luns.values()))
            for name, t in m.targets.items()
        }  # fmt: skip
        got = {r["name"]: (r["tid"], r["luns"], sorted(r["acl"]), r["size"]) for r in tl}
        self.check(got == want, "target-list", f"target list {got}\n!= model {want}")
        ll = self.query("lun", "list", "--json")
        got_l = {(r["target"], r["lun"]): (r["backing"], r["size"], r["online"]) for r in ll}
        want_l = {
            (name, n): (lu.backing, m.files[lu.backing].size, True)
            for name, t in m.targets.items()
            for n, lu in t.luns.items()
        }
        self.check(got_l == want_l, "lun-list", f"lun list {got_l}\n!= model {want_l}")
        pl = self.query("portal", "list", "--json")
        got_p = {(r["host"], r["port"], r["listening"]) for r in pl}
        want_p = {(HOST, p, True) for p in m.portals}
        self.check(got_p == want_p, "portal-list", f"portal list {got_p} != model {want_p}")
        live = listening(d.proc.pid)
        self.check(live == {(HOST, p) for p in m.portals}, "listening",
                   f"daemon listens on {sorted(live)}, model has {sorted(m.portals)}")  # fmt: skip
        for p in m.portals:
            try:
                socket.create_connection((HOST, p), timeout=10).close()
                ok, why = True, ""
            except OSError as e:
                ok, why = False, str(e)
            self.check(ok, "connect", f"cannot connect to portal {HOST}:{p}: {why}")
        files = disk_files(self.data, self.cwd)
        self.check(set(files) == set(m.files), "files",
                   f"files on disk {sorted(set(files) ^ set(m.files))} differ from the model"
                   f" (on disk {sorted(files)})")  # fmt: skip
        for p, fs in m.files.items():
            if files[p][1] == "unreadable":
                continue
            self.check(files[p] == (fs.size, fs.digest()), "file-content",
                       f"{p}: size {files[p][0]}, model {fs.size}; content differs: "
                       f"{files[p][1] != fs.digest()}")  # fmt: skip

    # ---------------------------------------------------------------- targets

    @rule(i=st.integers(0, len(TARGETS)))
    def target_create(self, i: int) -> None:
        self.begin("target_create")
        name = TARGETS[i] if i < len(TARGETS) else BAD_TARGET
        o = Outcome()
        if name == BAD_TARGET:
            o.fail(INVALID)
        if name in self.model.targets:
            o.fail(EXISTS)
        r = self.command(["target", "create", name], o)
        if r is not None:
            out = json.loads(r.stdout)
            tid = out["tid"]
            used = {t.tid for t in self.model.targets.values()}
            self.check(tid not in used and tid >= 1, "tid", f"tid {tid} given, in use: {used}")
            self.model.targets[name] = MTarget(tid)

    @rule(i=st.integers(0, len(TARGETS) - 1))
    def target_delete(self, i: int) -> None:
        self.begin("target_delete")
        name = TARGETS[i]
        o = Outcome()
        if name not in self.model.targets:
            o.fail(NOT_FOUND)
        if self.command(["target", "delete", name], o) is not None:
            del self.model.targets[name]  # its backing files stay

    # ---------------------------------------------------------------- LUNs

    def _backing(self, kind: str, file_i: int) -> tuple[str, str]:
        """(argument, absolute path it names)"""
        if kind == "unreadable" and os.geteuid() == 0:
            kind = "under_file"
        self.counter += 1
        paths = {
            "existing": str(self.data / f"data-{file_i % DATA_FILES}.img"),
            "new": str(self.data / f"new-{self.counter}.img"),
            "missing_file": str(self.data / "absent.img"),
            "missing_dir": str(self.data / "no-such-dir" / "x.img"),
            "under_file": str(self.data / "data-0.img" / "x.img"),
            "is_dir": str(self.data / "adir"),
            "unreadable": str(self.unreadable),
        }
        if kind == "relative":
            return f"rel-{self.counter}.img", str(self.data / f"rel-{self.counter}.img")
        return paths[kind], paths[kind]

    @rule(
        ti=st.integers(0, len(TARGETS) - 1),
        lun=st.sampled_from([None, 0, 1, 2]),
        kind=st.sampled_from(BACKING_KINDS),
        file_i=st.integers(0, DATA_FILES - 1),
        size=st.sampled_from([None, *SIZES]),
        prealloc=st.sampled_from(["sparse", "falloc", "full"]),
        overwrite=st.booleans(),
    )
    def lun_create(self, ti: int, lun: int | None, kind: str, file_i: int, size: str | None,
                   prealloc: str, overwrite: bool) -> None:  # fmt: skip
        self.begin("lun_create")
        m = self.model
        name = TARGETS[ti]
        arg, path = self._backing(kind, file_i)
        nbytes = parse_size(size) if size else None
        overwrite = overwrite and self.has_overwrite and size is not None
        args = ["lun", "create", name, arg, "--prealloc", prealloc]
        args += ["--lun", str(lun)] if lun is not None else []
        args += ["--size", size] if size else []
        args += ["--overwrite"] if overwrite else []
        o = Outcome()
        t = m.targets.get(name)
        if t is None:
            o.fail(NOT_FOUND)
        elif lun is not None and lun in t.luns:
            o.fail(EXISTS)
        if nbytes is not None and nbytes < BLOCK:
            o.fail(INVALID)  # "sizes below one block refused"
        existing = path in m.files
        if path in m.exported():
            o.fail(DUPLICATE)
        if kind in ("missing_dir", "under_file", "is_dir", "unreadable") or (
            not existing and nbytes is None
        ):
            o.fail(BAD_STORE)
        if kind == "relative":
            o.maybe(INVALID)  # refused, or taken relative to the CLI's directory
        if existing and nbytes is not None and not overwrite:
            o.maybe({EXISTS, INVALID})  # refused, or exported as it is (grown to --size)
        r = self.command(args, o)
        if r is None:
            return
        out = json.loads(r.stdout)
        assert t is not None
        n = lun if lun is not None else min(i for i in range(1, 16384) if i not in t.luns)
        self.check(out["lun"] == n, "lun-number", f"LUN {out['lun']} made, expected {n}")
        t.luns[n] = MLun(path, nbytes)
        if not existing:
            assert nbytes is not None
            m.files[path] = FileState(b"", nbytes)
            return
        old = m.files[path]
        now = disk_files(self.data)[path]
        if overwrite:  # told to: whatever it wrote is the new content
            m.files[path] = FileState(Path(path).read_bytes(), now[0])
            return
        if nbytes is not None:
            grown = FileState(old.data, max(old.size, nbytes))
            # --size: "Create/grow the backing file to this size"; never a byte of old data.
            self.check(now in ((old.size, old.digest()), (grown.size, grown.digest())),
                       "overwrote-existing-file",
                       f"{path} ({old.size} bytes of data) became {now[0]} bytes with other"
                       f" content after `{' '.join(args)}` without --overwrite")  # fmt: skip
            m.files[path] = grown if now[0] == grown.size else old

    @rule(ti=st.integers(0, len(TARGETS) - 1), lun=st.integers(0, 2))
    def lun_delete(self, ti: int, lun: int) -> None:
        self.begin("lun_delete")
        t = self.model.targets.get(TARGETS[ti])
        o = Outcome()
        if t is None or lun not in t.luns:
            o.fail(NOT_FOUND)
        if self.command(["lun", "delete", TARGETS[ti], str(lun)], o) is not None:
            assert t is not None
            del t.luns[lun]  # the file stays as it is

    @rule(ti=st.integers(0, len(TARGETS) - 1), lun=st.integers(0, 2),
          size=st.sampled_from(["64KiB", "256KiB", "1MiB", "2MiB"]))  # fmt: skip
    def lun_resize(self, ti: int, lun: int, size: str) -> None:
        self.begin("lun_resize")
        nbytes = parse_size(size)
        t = self.model.targets.get(TARGETS[ti])
        o = Outcome()
        if t is None or lun not in t.luns:
            o.fail(NOT_FOUND)
        elif nbytes < self.model.files[t.luns[lun].backing].size:
            o.fail(INVALID)  # no shrinking
        if self.command(["lun", "resize", TARGETS[ti], str(lun), size], o) is not None:
            assert t is not None
            lu = t.luns[lun]
            lu.size = nbytes
            f = self.model.files[lu.backing]
            self.model.files[lu.backing] = FileState(f.data, max(f.size, nbytes))

    # ---------------------------------------------------------------- ACLs

    @rule(ti=st.integers(0, len(TARGETS) - 1), ri=st.integers(0, len(RULES) - 1))
    def acl_add(self, ti: int, ri: int) -> None:
        self.begin("acl_add")
        t = self.model.targets.get(TARGETS[ti])
        o = Outcome()
        if t is None:
            o.fail(NOT_FOUND)
        if RULES[ri] in BAD_RULES:
            o.fail(INVALID)
        elif t is not None and RULES[ri] in t.acl:
            o.fail(EXISTS)
        if self.command(["acl", "add", TARGETS[ti], RULES[ri]], o) is not None:
            assert t is not None
            t.acl.add(RULES[ri])

    @rule(ti=st.integers(0, len(TARGETS) - 1), ri=st.integers(0, len(RULES) - 1))
    def acl_remove(self, ti: int, ri: int) -> None:
        self.begin("acl_remove")
        t = self.model.targets.get(TARGETS[ti])
        o = Outcome()
        if t is None or RULES[ri] not in t.acl:
            o.fail({NOT_FOUND, INVALID} if RULES[ri] in BAD_RULES else NOT_FOUND)
        if self.command(["acl", "remove", TARGETS[ti], RULES[ri]], o) is not None:
            assert t is not None
            t.acl.discard(RULES[ri])

    # ---------------------------------------------------------------- portals

    @rule(kind=st.sampled_from(["free", "busy", "existing"]))
    def portal_add(self, kind: str) -> None:
        self.begin("portal_add")
        port = {"free": free_port(), "busy": self.busy_port,
                "existing": min(self.model.portals)}[kind]  # fmt: skip
        o = Outcome()
        if kind == "busy":
            o.fail(UNAVAILABLE)
        elif kind == "existing":
            o.fail(EXISTS)
        if self.command(["portal", "add", f"{HOST}:{port}"], o) is not None:
            self.model.portals.add(port)

    @rule(known=st.booleans())
    def portal_delete(self, known: bool) -> None:
        self.begin("portal_delete")
        # The last portal stays: with none saved, a restart would listen on the machine-wide
        # default 127.0.0.1:3260, which other tests and daemons may use.
        if known and len(self.model.portals) < 2:
            return
        port = max(self.model.portals) if known else self.busy_port
        o = Outcome()
        if not known:
            o.fail(NOT_FOUND)
        if self.command(["portal", "delete", f"{HOST}:{port}"], o) is not None:
            self.model.portals.discard(port)

    # ---------------------------------------------------------------- whole configs

    def _desired(
        self, mutations: list[tuple[str, int]]
    ) -> tuple[dict[str, Any], Outcome, dict[str, int]]:
        """The saved config with ``mutations`` made; what applying it must end in; the files
        it grows (path -> new size)."""
        saved = self.saved()
        assert saved is not None
        doc = json.loads(json.dumps(saved))
        o = Outcome()
        original = {
            (t["name"], lu["lun"]): lu["backing"] for t in saved["targets"] for lu in t["luns"]
        }
        grown: dict[tuple[str, int], int] = {}

        def exported() -> set[str]:
            return {lu["backing"] for t in doc["targets"] for lu in t["luns"]}

        def free_lun(t: dict[str, Any]) -> int:
            used = {x["lun"] for x in t["luns"]}
            return min(i for i in range(1, 100) if i not in used)

        data_files = [str(self.data / f"data-{i}.img") for i in range(DATA_FILES)]
        for what, i in mutations:
            targets = doc["targets"]
            t = targets[i % len(targets)] if targets else None
            if what == "add_target":
                names = [n for n in TARGETS if n not in {x["name"] for x in targets}]
                if names:
                    tid = max((x["tid"] for x in targets), default=0) + 1
                    targets.append({"name": names[i % len(names)], "tid": tid, "alias": None,
                                    "luns": [], "acl": [{"network": "ALL"}], "incoming": [],
                                    "outgoing": None, "params": {}})  # fmt: skip
            elif what == "remove_target" and t is not None:
                targets.remove(t)
            elif what == "add_lun" and t is not None:
                free = [f for f in data_files if f not in exported()]
                if free:
                    t["luns"].append(
                        {"lun": free_lun(t), "backing": free[i % len(free)], "size": None}
                    )
            elif what == "remove_lun" and t is not None and t["luns"]:
                t["luns"].pop(i % len(t["luns"]))
            elif what == "grow_lun" and t is not None:
                old = [
                    lu for lu in t["luns"] if original.get((t["name"], lu["lun"])) == lu["backing"]
                ]
                if old:
                    lu = old[i % len(old)]
                    lu["size"] = self.model.files[lu["backing"]].size + 64 * KiB
                    grown[(t["name"], lu["lun"])] = lu["size"]
            elif what == "add_acl" and t is not None:
                rules = [
                    r
                    for r in RULES
                    if r not in BAD_RULES and r not in {rule_key(x) for x in t["acl"]}
                ]
                if rules:
                    r = rules[i % len(rules)]
                    t["acl"].append({"initiator": r} if r.startswith("iqn.") else {"network": r})
            elif what == "remove_acl" and t is not None and t["acl"]:
                t["acl"].pop(i % len(t["acl"]))
            elif what == "add_portal":
                doc["portals"].append({"host": HOST, "port": free_port(), "advertise": None})
            elif what == "remove_portal" and len(doc["portals"]) > 1:
                doc["portals"].pop(i % len(doc["portals"]))
            elif what == "replace_portal":
                doc["portals"] = [{"host": HOST, "port": free_port(), "advertise": None}]
            elif what == "busy_portal":
                doc["portals"].append({"host": HOST, "port": self.busy_port, "advertise": None})
            elif what == "replace_with_busy":
                doc["portals"] = [{"host": HOST, "port": self.busy_port, "advertise": None}]
            elif what == "bad_lun" and t is not None:
                bad = [str(self.data / "no-such-dir" / "x.img"), str(self.data / "adir")][i % 2]
                t["luns"].append({"lun": free_lun(t), "backing": bad, "size": None})
            elif what == "dup_lun" and t is not None and exported():
                t["luns"].append({"lun": free_lun(t), "backing": sorted(exported())[i % len(exported())],
                                  "size": None})  # fmt: skip
        # What the final document asks for decides the outcome (a later mutation may have
        # removed what an earlier one injected).
        if any(p["port"] == self.busy_port for p in doc["portals"]):
            o.fail(UNAVAILABLE)
        backings = [lu["backing"] for t in doc["targets"] for lu in t["luns"]]
        if any(b not in self.model.files for b in backings):
            o.fail(BAD_STORE)
        if len(set(backings)) != len(backings):
            o.fail(DUPLICATE)
        files: dict[str, int] = {}
        for t in doc["targets"]:
            for lu in t["luns"]:
                key = (t["name"], lu["lun"])
                if key in grown and grown[key] == lu["size"] and original.get(key) == lu["backing"]:
                    files[lu["backing"]] = lu["size"]
        return doc, o, files

    def _adopt(self, doc: dict[str, Any], grows: dict[str, int]) -> None:
        files = dict(self.model.files)
        for path, size in grows.items():
            files[path] = FileState(files[path].data, max(files[path].size, size))
        self.model = model_from_doc(doc, files)

    mutation_lists = st.lists(
        st.tuples(st.sampled_from(APPLY_MUTATIONS), st.integers(0, 7)), max_size=3
    )

    @rule(mutations=mutation_lists)
    def config_apply(self, mutations: list[tuple[str, int]]) -> None:
        self.begin("config_apply")
        doc, o, grows = self._desired(mutations)
        path = self.root / "desired.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        if self.command(["config", "apply", str(path)], o) is not None:
            self._adopt(doc, grows)

    @rule(mutations=mutation_lists, sighup=st.booleans())
    def config_reload(self, mutations: list[tuple[str, int]], sighup: bool) -> None:
        """An admin edits config.json, then reloads it (``config reload`` or SIGHUP)."""
        self.begin("sighup_reload" if sighup else "config_reload")
        doc, o, grows = self._desired(mutations)
        cfg = self.state / "config.json"
        old = cfg.read_bytes()
        try:  # as `config export` writes it, so the saved and running configs compare equal
            normalized = cfgmod.validate(doc)
        except cfgmod.ConfigError:  # refused at once, as it must be
            normalized = doc
        written = (json.dumps(normalized, indent=2) + "\n").encode()
        before = self.snapshot()
        cfg.write_bytes(written)
        if sighup:
            assert self.daemon is not None and self.daemon.proc is not None
            seen = self.daemon.log_text().count("SIGHUP")
            self.daemon.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            # serve logs one "SIGHUP: ..." line when the reload succeeded or failed
            while self.daemon.log_text().count("SIGHUP") == seen:
                self.check(time.monotonic() < deadline, "sighup", "no SIGHUP log line in 60 s")
                time.sleep(0.05)
            failed = "reload failed" in self.daemon.log_text()[-4000:].split("SIGHUP")[-1]
            self.check(failed == o.must_fail, "exit-code",
                       f"SIGHUP reload {'failed' if failed else 'succeeded'}, expected"
                       f" {'failure' if o.must_fail else 'success'}")  # fmt: skip
            rc = 1 if failed else 0
        else:
            r = self.cli("config", "reload", "--json")
            shown = f"`config reload` exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
            self.check("Traceback" not in r.stderr + r.stdout, "traceback", shown)
            self.check(r.returncode in o.allowed(), "exit-code",
                       f"expected exit {sorted(o.allowed())}: {shown}")  # fmt: skip
            rc = r.returncode
        if rc == 0:
            self._adopt(doc, grows)
            return
        after = self.snapshot()
        # The admin's file is left as written; the running daemon is as it was.
        self.check(after.config == written, "failed-but-changed",
                   f"a failed reload rewrote config.json:\n{_text(after.config)}")  # fmt: skip
        after.config = before.config
        diffs = before.differences(after)
        self.check(not diffs, "failed-but-changed", "failed reload changed:\n" + "\n".join(diffs))
        cfg.write_bytes(old)  # the admin undoes the edit

    # ---------------------------------------------------------------- restarts

    @rule(kill=st.booleans())
    def restart(self, kill: bool) -> None:
        self.begin("kill9_restart" if kill else "restart")
        d = self.daemon
        assert d is not None
        saved = self.saved()
        if kill:
            d.kill9()
        else:
            rc = d.stop(signal.SIGTERM, timeout=60)
            self.check(rc == 0, "stop", f"SIGTERM: exit code {rc}")
        assert saved is not None and saved["portals"], saved  # else it would take port 3260
        d.launch(listen=False, ports=self.model.portals, env=self.env)
        export = self.query("config", "export")
        self.check(without_epoch(export) == without_epoch(saved), "restored",
                   f"came back with {export}\nsaved was {saved}")  # fmt: skip
        self.check(without_epoch(self.saved()) == without_epoch(saved), "restored",
                   f"config.json after restart {self.saved()}\nwas {saved}")  # fmt: skip


# ------------------------------------------------------------------------------ the test


def _profile() -> tuple[settings, int, str]:
    common: dict[str, Any] = dict(
        deadline=None, database=None, suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink], print_blob=True,
    )  # fmt: skip
    steps = os.environ.get(STEPS_ENV)
    if not steps:
        return (
            settings(max_examples=CI_SEQUENCES, stateful_step_count=CI_STEPS, **common),
            CI_SEED,
            "CI",
        )
    n = max(1, math.ceil(int(steps) / LONG_STEPS_PER_SEQUENCE))
    chosen = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 32))
    return (
        settings(max_examples=n, stateful_step_count=LONG_STEPS_PER_SEQUENCE, **common),
        chosen,
        f"long ({STEPS_ENV}={steps})",
    )


def test_management_sequences_keep_config_state_and_files_in_agreement(tmp_path, capsys):
    help_text = subprocess.run(
        [sys.executable, "-m", "gluster_iscsi", "lun", "create", "--help"],
        capture_output=True, text=True, env=_env(), check=True,
    ).stdout  # fmt: skip
    overwrite = "--overwrite" in help_text
    profile, chosen_seed, mode = _profile()
    for k in STATS:
        STATS[k] = 0

    def factory() -> MgmtMachine:
        return MgmtMachine(tmp_path, overwrite)

    start = time.monotonic()
    try:
        run_state_machine_as_test(hypothesis_seed(chosen_seed)(factory), settings=profile)
    finally:
        with capsys.disabled():
            print(
                f"\nmanagement property test ({mode}, seed {chosen_seed}, --overwrite"
                f" {'used' if overwrite else 'absent'}): {STATS['sequences']} sequences,"
                f" {STATS['steps']} steps, {STATS['commands']} CLI calls,"
                f" {STATS['failed_as_expected']} refusals checked, {time.monotonic() - start:.0f} s"
            )
