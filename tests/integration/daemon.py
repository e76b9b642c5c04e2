"""Run a real ``gluster-iscsi serve`` process for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO_IQN = "iqn.2026-11.org.gluster-iscsi:demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Daemon:
    """A ``gluster-iscsi serve`` subprocess with its own state directory and port(s)."""

    def __init__(self, state_dir: Path, *, ports: list[int] | None = None, demo: bool = True,
                 extra: list[str] | None = None, cgroup: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        #: A cgroup directory the daemon starts in (its ``cgroup.procs``), or None.
        self.cgroup = cgroup
        self.ports = ports or [free_port()]
        self.demo = demo
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.state_dir / "daemon.log"

    @property
    def port(self) -> int:
        return self.ports[0]

    def url(self, lun: int = 1, iqn: str = DEMO_IQN, port: int | None = None, auth: str = "") -> str:
        return f"iscsi://{auth}127.0.0.1:{port or self.port}/{iqn}/{lun}"

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gluster_iscsi", "--state-dir", str(self.state_dir), *args],
            capture_output=True, text=True, timeout=timeout, check=check,
        )

    def start(self) -> Daemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "gluster_iscsi", "serve", "--state-dir", str(self.state_dir)]
        for p in self.ports:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        if self.demo:
            cmd.append("--demo")
        cmd += self.extra
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logf = open(self.log, "ab")
        procs = None if self.cgroup is None else str(self.cgroup / "cgroup.procs")

        def enter() -> None:  # in the child, before exec: the daemon starts in the cgroup
            if procs is not None:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))

        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=enter if procs is not None else None)
        for p in self.ports:
            wait_port(p, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
