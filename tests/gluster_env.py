"""Start and stop a real Gluster volume for tests, through ``scripts/gluster-env.sh``.

Plain functions::

    env = start_volume("giscsi-test")          # -> GlusterEnv(volume, host, mountpoint, ...)
    stop_volume("giscsi-test")

and a factory for session-scoped pytest fixtures (in a conftest.py or a test module)::

    from tests.gluster_env import gluster_volume_fixture   # or: from gluster_env import ...
    gluster_volume = gluster_volume_fixture("giscsi-test")
    plain_volume = gluster_volume_fixture("giscsi-test-plain", profile="plain")

    @pytest.mark.gluster
    def test_something(gluster_volume):
        volume, host, mountpoint = gluster_volume

A test is skipped, with the script's reason, ONLY when glusterd itself cannot run here (the
script exits 3: not installed, or it does not come up). Any later failure (volume create,
bricks, mount) is an error: nothing is faked.

Each pytest session gets its own volumes (the name carries the session's pid), so sessions
running at the same time (several engineers, several suites) never stop or break each
other's volume. GLUSTER_KEEP=1 uses the plain names and leaves the volumes running after
the session, for fast reruns; GLUSTER_TEST_VOLUME=NAME prefixes the names instead.
Environment: GLUSTER_WORKDIR (default /var/tmp/gluster-iscsi-env), GLUSTER_TIMEOUT per step
in seconds.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gluster-env.sh"
DEFAULT_WORKDIR = "/var/tmp/gluster-iscsi-env"
UNAVAILABLE_EXIT = 3


class GlusterUnavailable(RuntimeError):
    """glusterd cannot be started on this machine (the only reason to skip)."""


class GlusterEnvError(RuntimeError):
    """glusterd runs but the volume could not be set up: a real failure."""


class GlusterEnv(NamedTuple):
    volume: str
    host: str
    mountpoint: str | None
    workdir: str = DEFAULT_WORKDIR

    def url(self, path: str) -> str:
        """``gluster://HOST/VOLUME/path`` for a file in this volume."""
        return f"gluster://{self.host}/{self.volume}/{path.lstrip('/')}"

    def fuse_path(self, path: str) -> str:
        if not self.mountpoint:
            raise GlusterEnvError(f"volume {self.volume} is not FUSE-mounted")
        return os.path.join(self.mountpoint, path.lstrip("/"))


def _run(
    action: str,
    volume: str,
    workdir: str | None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(extra_env or {})
    args = ["bash", str(SCRIPT), action, volume, workdir or _workdir()]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def _workdir() -> str:
    return os.environ.get("GLUSTER_WORKDIR", DEFAULT_WORKDIR)


def start_volume(
    volume: str,
    *,
    workdir: str | None = None,
    profile: str = "block",
    mount: bool = True,
    replica: int = 3,
    brick_host: str | None = None,
) -> GlusterEnv:
    """Start glusterd if needed and a ``replica``-way volume on local bricks; idempotent.

    ``brick_host``: a local address to create the bricks on (default: the host name); the
    returned ``host`` is then that address, for clients in network namespaces (tests/ha).
    """
    if os.geteuid() != 0:
        raise GlusterUnavailable("glusterd needs root")
    extra = {
        "GLUSTER_PROFILE": profile,
        "GLUSTER_MOUNT": "1" if mount else "0",
        "GLUSTER_REPLICA": str(replica),
    }
    if brick_host:
        extra["GLUSTER_BRICK_HOST"] = brick_host
    try:
        proc = _run("start", volume, workdir, extra)
    except FileNotFoundError as e:
        raise GlusterUnavailable(f"cannot run {SCRIPT}: {e}") from e
    if proc.returncode == UNAVAILABLE_EXIT:
        raise GlusterUnavailable(proc.stderr.strip().splitlines()[-1] if proc.stderr else "")
    if proc.returncode != 0:
        raise GlusterEnvError(
            f"gluster-env.sh start {volume} failed ({proc.returncode}):\n{proc.stderr}"
        )
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return GlusterEnv(
        volume=values["VOLUME"],
        host=values["HOST"],
        mountpoint=values.get("MOUNT") or None,
        workdir=values.get("WORKDIR", workdir or _workdir()),
    )


def stop_volume(volume: str, *, workdir: str | None = None) -> None:
    proc = _run("stop", volume, workdir)
    if proc.returncode != 0:
        raise GlusterEnvError(f"gluster-env.sh stop {volume} failed:\n{proc.stderr}")


def volume_started(volume: str, *, workdir: str | None = None) -> bool:
    return _run("status", volume, workdir, timeout=60).returncode == 0


def gluster_volume_fixture(
    volume: str = "giscsi-test",
    *,
    profile: str = "block",
    mount: bool = True,
    replica: int = 3,
) -> Callable[..., Any]:
    """A session-scoped pytest fixture yielding a :class:`GlusterEnv` (volume, host, mount).

    The volume is stopped and deleted at the end of the session unless GLUSTER_KEEP=1.
    """
    import pytest

    prefix = os.environ.get("GLUSTER_TEST_VOLUME")
    keep = os.environ.get("GLUSTER_KEEP") == "1"
    if prefix:
        name = f"{prefix}-{volume}"
    elif keep:
        name = volume
    else:
        name = f"{volume}-{os.getpid()}"

    @pytest.fixture(scope="session")
    def _fixture() -> Iterator[GlusterEnv]:
        try:
            env = start_volume(name, profile=profile, mount=mount, replica=replica)
        except GlusterUnavailable as e:
            if os.environ.get("CI"):
                # CI installs glusterfs-server (scripts/install): not starting is a failure there.
                pytest.fail(f"glusterd cannot be started: {e}")
            pytest.skip(f"glusterd cannot be started here: {e}")
        try:
            yield env
        finally:
            if not keep:
                stop_volume(name)

    return _fixture


def brick_write_sizes(volume: str) -> dict[int, int]:
    """WRITEs by size bucket (``131072`` = 128 KiB up to 256 KiB), all bricks, from
    ``gluster volume profile VOLUME info cumulative``."""
    out = subprocess.run(["gluster", "--mode=script", "volume", "profile", volume, "info",
                          "cumulative"], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    sizes: dict[int, int] = {}
    for i, line in enumerate(lines):
        if line.strip().startswith("Block Size:"):
            buckets = [int(b.rstrip("b+")) for b in line.split(":", 1)[1].split()]
            for follow in lines[i + 1:i + 3]:
                if follow.strip().startswith("No. of Writes:"):
                    for b, n in zip(buckets, follow.split(":", 1)[1].split(), strict=True):
                        sizes[b] = sizes.get(b, 0) + int(n)
    return {b: n for b, n in sizes.items() if n}
