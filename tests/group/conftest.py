"""Fixtures for the group tests: a lock-holding child process; real Gluster volumes come from
tests/gluster_env.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluster_env import gluster_volume_fixture  # noqa: E402

HOLDER = Path(__file__).with_name("holder.py")

# The gluster-block profile (strict-o-direct, no data caches): the volume the product serves.
group_gluster_volume = gluster_volume_fixture("giscsi-group")
# Default volume options (write-behind, read-ahead, io-cache, quick-read... all on).
group_plain_volume = gluster_volume_fixture("giscsi-group-plain", profile="plain")


class Holder:
    """A child process holding (or failing to take) a lock: see holder.py."""

    def __init__(self, location: str, name: str, byte: int) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), location, name, str(byte)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline().strip()

    @property
    def locked(self) -> bool:
        return self.first == "locked"

    def release(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline().strip()
        self.proc.wait(30)
        return out

    def kill(self) -> float:
        """SIGKILL; returns the monotonic time the process was seen dead."""
        self.proc.kill()
        self.proc.wait(30)
        return time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def holder() -> Iterator[type[Holder]]:
    made: list[Holder] = []

    class _Tracked(Holder):
        def __init__(self, *a: object) -> None:
            super().__init__(*a)  # type: ignore[arg-type]
            made.append(self)

    yield _Tracked
    for h in made:
        h.close()
