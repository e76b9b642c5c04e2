"""Boot the cached Debian test guest under QEMU (TCG) and run one scenario in it.

The guest image comes from ``scripts/guest/build-image.sh`` (cached). Each run:

* creates a fresh qcow2 overlay on top of the cached raw image (the base stays clean);
* packs ``scripts/guest/in-guest/*`` plus an ``env.sh`` into a tar written to a small
  second virtio disk (``/dev/vdb``), which the image's stage-1 init unpacks and runs;
* streams the serial console into a log file and parses ``RESULT`` lines;
* serves a virtio-serial control port (``gi.ctl``): the guest writes
  ``HOSTCMD <word> [args]`` and blocks until the harness answers ``OK [info]`` or
  ``ERR <why>``. What a word does on the host is a callback supplied by the caller
  (the pytest layer or ``run-scenario.py``), e.g. ``stop-portal 2`` or ``restart-target``.

Only the standard library is used so that the CLI works without the project installed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
IN_GUEST = HERE / "in-guest"
BUILD_SCRIPT = HERE / "build-image.sh"

# guest view of the host (QEMU user networking maps 10.0.2.2 to the host's 127.0.0.1)
GUEST_HOST_ADDR = "10.0.2.2"

RESULT_RE = re.compile(r"RESULT (\S+) (PASS|FAIL) ([0-9.]+) ?(.*)$")

HostAction = Callable[[list[str]], "str | None"]


@dataclasses.dataclass
class StepResult:
    name: str
    status: str
    seconds: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


@dataclasses.dataclass
class HostCommand:
    line: str
    reply: str
    seconds: float


@dataclasses.dataclass
class GuestRun:
    scenario: str
    results: list[StepResult]
    hostcmds: list[HostCommand]
    log_path: Path
    returncode: int | None
    seconds: float
    timed_out: bool
    done_rc: int | None  # rc printed by the guest's stage-2 init ("GI DONE <s> rc=N")

    def result(self, name: str) -> StepResult | None:
        """The step ``name`` (relative to the scenario, e.g. "login" or "chap.login")."""
        for full in (f"{self.scenario}.{name}", name):
            for r in self.results:
                if r.name == full:
                    return r
        return None

    @property
    def failures(self) -> list[StepResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        lines = [
            f"scenario {self.scenario}: {len(self.results)} steps, "
            f"{len(self.failures)} failed, {self.seconds:.1f} s wall"
            f"{' (TIMED OUT)' if self.timed_out else ''}, guest rc={self.done_rc}, "
            f"log {self.log_path}"
        ]
        for r in self.results:
            lines.append(f"  {r.status:4} {r.seconds:7.2f}s  {r.name}  {r.detail}")
        for h in self.hostcmds:
            lines.append(f"  host: {h.line!r} -> {h.reply!r} ({h.seconds:.2f}s)")
        return "\n".join(lines)

    def check(self, required: list[str]) -> list[str]:
        """Problems (empty when OK): failed steps, required steps that never ran, a missing
        final ``done`` step, a timeout."""
        problems = [f"FAIL {r.name}: {r.detail}" for r in self.failures]
        missing = [n for n in [*required, "done"] if self.result(n) is None]
        if missing and (self.failures or len(missing) > 3):
            # after a failure the later steps never run: one line, not one per step
            problems.append(f"{len(missing)} required steps never reported: "
                            f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}")  # fmt: skip
        else:
            problems += [f"step {self.scenario}.{n} never reported" for n in missing]
        if self.timed_out:
            problems.append("guest timed out")
        return problems


def build_image(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Run build-image.sh (a no-op when cached) and return the image directory."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["GLUSTER_ISCSI_GUEST_CACHE"] = str(cache_dir)
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], env=env, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    path = Path(out.strip().splitlines()[-1])
    if not (path / ".complete").exists():
        raise RuntimeError(f"build-image.sh did not produce an image: {out!r}")
    return path


def _bundle(workdir: Path, scenario: str, env: Mapping[str, str]) -> Path:
    """The per-run tar the guest unpacks from /dev/vdb."""
    if not (IN_GUEST / f"scenario-{scenario}.sh").exists():
        raise ValueError(f"unknown scenario {scenario!r} (no in-guest/scenario-{scenario}.sh)")
    env_text = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for f in sorted(IN_GUEST.iterdir()):
            if f.is_file():
                tar.add(str(f), arcname=f.name)
        info = tarfile.TarInfo("env.sh")
        data = env_text.encode()
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    raw += b"\0" * (-len(raw) % (1 << 20))  # whole MiB: a tidy virtio disk
    path = workdir / "bundle.tar"
    path.write_bytes(raw)
    return path


class _ControlChannel:
    """Host side of the virtio-serial control port. QEMU connects to our Unix socket."""

    def __init__(self, path: Path, actions: Mapping[str, HostAction], log: Callable[[str], None]):
        self.path = path
        self.actions = actions
        self.log = log
        self.commands: list[HostCommand] = []
        if path.exists():
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(1.0)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="guest-ctl", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn = None
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
                break
            except TimeoutError:
                continue
            except OSError:
                return
        if conn is None:
            return
        conn.settimeout(1.0)
        buf = b""
        while not self.stopping.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                reply = self._dispatch(line)
                try:
                    conn.sendall(reply.encode() + b"\n")
                except OSError:
                    break
        conn.close()

    def _dispatch(self, line: str) -> str:
        t0 = time.monotonic()
        words = line.split()
        if len(words) < 2 or words[0] != "HOSTCMD":
            reply = f"ERR bad request {line!r}"
        else:
            action = self.actions.get(words[1])
            if action is None:
                reply = f"ERR no host action {words[1]!r}"
            else:
                self.log(f"[harness] host action {words[1:]}")
                try:
                    info = action(words[2:])
                    reply = "OK" + (f" {info}" if info else "")
                except Exception as exc:  # the guest must get an answer whatever happens
                    reply = f"ERR {type(exc).__name__}: {exc}".replace("\n", " ")[:400]
        hc = HostCommand(line, reply, time.monotonic() - t0)
        self.commands.append(hc)
        self.log(f"[harness] {line!r} -> {reply!r} in {hc.seconds:.2f}s")
        return reply

    def close(self) -> None:
        self.stopping.set()
        try:
            self.sock.close()
        finally:
            self.thread.join(timeout=5)
            if self.path.exists():
                self.path.unlink()


def run_scenario(
    scenario: str,
    env: Mapping[str, str],
    *,
    image_dir: Path,
    workdir: Path,
    host_actions: Mapping[str, HostAction] | None = None,
    timeout: float = 900,
    memory_mb: int = 1536,
    smp: int = 2,
    log_path: Path | None = None,
    echo: bool = False,
) -> GuestRun:
    """Boot the guest, run ``in-guest/scenario-<scenario>.sh`` and collect its results.

    ``env`` becomes the guest's env.sh (GI_TARGET_IQN, GI_PORTALS, ...). ``host_actions``
    maps HOSTCMD words to callbacks taking the remaining words; their return value (a
    short string or None) is sent back after ``OK``; an exception is sent back as ``ERR``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or workdir / f"console-{scenario}.log"
    guest_env = {
        "GI_SCENARIO": scenario,
        "GI_INITIATOR_NAME": "iqn.2026-11.org.gluster-iscsi.test:guest",
        "GI_SCENARIO_TIMEOUT": str(max(60, int(timeout) - 90)),
        **{k: str(v) for k, v in env.items()},
    }
    overlay = workdir / "overlay.qcow2"
    if overlay.exists():
        overlay.unlink()
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(image_dir / "rootfs.img"),
            str(overlay),
        ],
        check=True,
    )
    bundle = _bundle(workdir, scenario, guest_env)
    ctl_path = workdir / "ctl.sock"

    log_lock = threading.Lock()
    logf = open(log_path, "w", buffering=1, errors="replace")  # noqa: SIM115

    def log(line: str) -> None:
        with log_lock:
            logf.write(line + "\n")
        if echo:
            print(line, flush=True)

    ctl = _ControlChannel(ctl_path, host_actions or {}, log)
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        str(memory_mb),
        "-smp",
        str(smp),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(image_dir / "vmlinuz"),
        "-initrd",
        str(image_dir / "initrd.img"),
        "-append",
        "root=/dev/vda rw console=ttyS0 init=/sbin/gi-init net.ifnames=0 panic=-1 loglevel=4 quiet",
        "-drive",
        f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
        "-drive",
        f"file={bundle},format=raw,if=virtio,readonly=on",
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-chardev",
        f"socket,id=ctl,path={ctl_path}",
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtserialport,chardev=ctl,name=gi.ctl",
    ]
    log("[harness] " + shlex.join(cmd))
    results: list[StepResult] = []
    done_rc: list[int] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            log(line)
            m = RESULT_RE.search(line)
            if m:
                results.append(StepResult(m[1], m[2], float(m[3]), m[4].strip()))
            m2 = re.search(r"GI DONE \S+ rc=(\d+)", line)
            if m2:
                done_rc.append(int(m2[1]))

    rt = threading.Thread(target=reader, name="guest-console", daemon=True)
    rt.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        log(f"[harness] TIMEOUT after {timeout}s: killing QEMU")
        proc.kill()
        proc.wait()
    finally:
        rt.join(timeout=10)
        ctl.close()
        seconds = time.monotonic() - t0
        log(f"[harness] qemu exited rc={proc.returncode} after {seconds:.1f}s")
        logf.close()
        overlay.unlink(missing_ok=True)
        bundle.unlink(missing_ok=True)
    return GuestRun(
        scenario=scenario,
        results=results,
        hostcmds=ctl.commands,
        log_path=log_path,
        returncode=proc.returncode,
        seconds=seconds,
        timed_out=timed_out,
        done_rc=done_rc[-1] if done_rc else None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use scripts/guest/run-scenario.py")
