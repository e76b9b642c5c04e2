"""Run a real ``gluster-iscsi serve`` and its CLI for the integration tests of this package."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gluster_iscsi.control.client import Client
from gluster_iscsi.control.protocol import ApiError

EXE = shutil.which("gluster-iscsi") or "gluster-iscsi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(
        self, state_dir: Path, port: int | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.extra = tuple(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> Serve:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.state_dir / "serve.log", "ab")
        self.proc = subprocess.Popen(
            [EXE, "--state-dir", str(self.state_dir), "serve", "--listen",
             f"127.0.0.1:{self.port}", *self.extra],
            stdout=self.logf, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                Client(self.state_dir, timeout=1).call("ping")
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except (ApiError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.logf.close()
        self.proc = None
        return rc

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        p = self.state_dir / "serve.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def cli(
        self, *args: str, timeout: float = 30, cwd: str | os.PathLike[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, GLUSTER_ISCSI_STATE_DIR=str(self.state_dir))
        return subprocess.run(
            [EXE, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
        )

    def client(self) -> Client:
        return Client(self.state_dir, timeout=10)

    def __enter__(self) -> Serve:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
